"""`inv` starts without the heavy modules: listing or helping loads no SSH, rich or serving code,
and a task module names what it needs lazily (cluster/lazy.py). Speed itself: benchmarks/startup.py."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.lazy import LazyModule, lazy

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("paramiko", "fabric", "rich", "cluster.serving", "cluster.api", "cluster.testing")
# Runs an invoke Program as `inv` / `cluster` do, then prints what it loaded (its exit code kept).
PROBE = """
import atexit, json, sys
atexit.register(lambda: print("MODULES " + json.dumps(sorted(sys.modules))))
from {module} import program
program.run([{argv}])
"""


def loaded_by(module: str, *argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    code = PROBE.format(module=module, argv=", ".join(repr(a) for a in ("inv", *argv)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("MODULES ")), None)
    assert line is not None, done.stdout + done.stderr
    return done, set(json.loads(line.removeprefix("MODULES ")))


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("module,argv", [
    ("invoke.main", ("--list",)),
    ("invoke.main", ("run", "--help")),
    ("invoke.main", ("gpu-status", "--help")),
    ("cluster_cli.main", ("--list",)),
])
def test_listing_and_help_load_no_ssh_rich_or_serving_code(module, argv):
    done, modules = loaded_by(module, *argv)
    assert done.returncode == 0, done.stderr
    assert "cluster_cli.tasks" in modules  # the tasks were really loaded ...
    assert "gpu-status" in done.stdout or "--role" in done.stdout
    assert heavy_in(modules) == []  # ... without what only running them needs


def test_running_a_task_loads_what_it_needs_and_no_serving_code():
    done, modules = loaded_by("invoke.main", "run", "echo started", "-H", "local")
    assert done.returncode == 0, done.stderr
    assert "started" in done.stdout
    assert "cluster.api" in modules and "cluster.ssh" in modules
    # Piped, every host answered: the summary is plain text, rich is not loaded.
    assert not [m for m in modules if m == "rich" or m.startswith("rich.")]
    assert not [m for m in modules if m.startswith(("cluster.serving", "cluster.testing"))]
    # The modules behind other tasks load on first use (their defaults: cluster.defaults).
    assert not {"cluster.gpu", "cluster.kill", "cluster.logs", "cluster.service", "cluster.transfer"} & modules


def test_a_bad_option_value_exits_2_without_loading_ssh_code():
    done, modules = loaded_by("invoke.main", "gpu-status", "--state", "sideways")
    assert done.returncode == 2 and "--state" in done.stderr, done.stderr
    assert not [m for m in modules if m.startswith(("paramiko", "fabric", "cluster.serving"))]


def task_module_lazies() -> list[tuple[str, str, LazyModule]]:
    from cluster_cli import tasks

    found = []
    for module in (*tasks.TASK_MODULES, importlib.import_module("cluster_cli.common"),
                   importlib.import_module("cluster.api")):
        found += [(module.__name__, name, value) for name, value in vars(module).items()
                  if isinstance(value, LazyModule)]
    return found


def test_every_lazy_name_is_an_importable_module():
    # A typo in lazy("...") would only show when the task runs: check them all here.
    lazies = task_module_lazies()
    assert len(lazies) > 10
    for owner, name, value in lazies:
        target = object.__getattribute__(value, "_name")
        assert importlib.util.find_spec(target) is not None, f"{owner}.{name}: no module {target}"


def test_a_lazy_module_imports_on_first_attribute_read():
    module = lazy("json")
    assert module.dumps([1]) == "[1]" and module.dumps is json.dumps
    with pytest.raises(ModuleNotFoundError):
        lazy("cluster.no_such_module").anything  # noqa: B018 (the read is the import)
    assert "cluster.no_such_module" in repr(lazy("cluster.no_such_module"))


def test_put_help_states_the_library_idle_timeout():
    # The help text writes the default out (importing cluster.transfer would load paramiko).
    # (Read from the module's dict: invoke's get_arguments() pops a task's help texts.)
    from cluster import defaults
    from cluster_cli import transfer_tasks

    for helps in (transfer_tasks.PUT_HELP, transfer_tasks.GET_HELP):
        assert f"(default {defaults.TRANSFER_IDLE_TIMEOUT_S:g})" in helps["timeout"], helps["timeout"]


def test_stop_job_help_states_the_library_grace():
    from cluster import jobs
    from cluster_cli import job_tasks

    assert f"(default {jobs.DEFAULT_GRACE_S:g})" in job_tasks.JOB_HELP["grace"]


def test_inv_caches_the_bytecode_of_the_modules_it_loads(tmp_path):
    # invoke switches bytecode writing off; without caches every start compiles every module.
    for package in ("cluster", "cluster_cli"):
        shutil.copytree(REPO / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "testing"))
    shutil.copy(REPO / "tasks.py", tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run([sys.executable, "-m", "invoke", "run", "true", "-H", "local"], cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    cached = {p.name.split(".")[0] for p in tmp_path.glob("cluster*/__pycache__/*.pyc")}
    assert {"core_tasks", "common", "api", "ssh"} <= cached, sorted(cached)
    # ... and PYTHONDONTWRITEBYTECODE still turns it off.
    shutil.rmtree(tmp_path / "cluster" / "__pycache__")
    subprocess.run([sys.executable, "-m", "invoke", "--list"], cwd=tmp_path, check=True,
                   env={**env, "PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"},
                   capture_output=True, timeout=120)
    assert not (tmp_path / "cluster" / "__pycache__").exists()


def test_garbage_left_at_exit_is_still_finalized():
    # cluster_cli shortens the exit (gc.freeze); what is garbage then must still be finalized.
    code = ("import cluster_cli\n"
            "class Noisy:\n"
            "    def __del__(self):\n"
            "        print('finalized', flush=True)\n"
            "a, b = Noisy(), Noisy()\n"
            "a.other, b.other = b, a\n"
            "del a, b\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("finalized") == 2, done.stdout


def test_what_a_task_loaded_is_frozen_out_of_later_collections(tmp_path):
    # `opened` freezes what exists once the cluster is open (invoke, paramiko, the engine), so
    # the run's collections and the exit one walk only what the run made.
    roles = tmp_path / "roles.yaml"
    roles.write_text("roles:\n  all: [local]\n")
    code = ("import gc\n"
            "from cluster_cli.common import opened\n"
            "before = gc.get_freeze_count()\n"
            f"with opened({str(roles)!r}) as cluster:\n"
            "    during = gc.get_freeze_count()\n"
            "    assert 'paramiko' in __import__('sys').modules\n"
            "print(before, during)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    before, during = map(int, done.stdout.split())
    assert before == 0 and during > 10000


def test_the_task_parser_gets_the_named_tasks_and_completion_gets_them_all():
    # ClusterProgram._make_parser builds contexts only for the tasks a command line
    # names; nothing a user types may parse differently for it.
    from cluster_cli.tasks import ns

    every = set(ns.task_names)
    done, _ = loaded_by("invoke.main", "--complete", "--", "inv")
    assert done.returncode == 0, done.stderr
    assert every <= set(done.stdout.split())  # completion still offers every task
    done, _ = loaded_by("invoke.main", "--help", "hosts")
    assert done.returncode == 0 and "--role" in done.stdout, done.stderr
    # Two tasks on one line, an option value that is also a task name.
    done, _ = loaded_by("invoke.main", "hosts", "-H", "10.8.0.81", "run", "echo run", "-H", "local")
    assert done.returncode == 0, done.stderr
    assert "10.8.0.81" in done.stdout and "echo run" not in done.stdout and "\nrun\n" in f"\n{done.stdout}"
    done, _ = loaded_by("invoke.main", "hosts", "no-such-task")
    assert done.returncode == 2 and "no-such-task" in done.stderr


def test_the_task_parser_keeps_aliases():
    from invoke import Collection, Program, task

    from cluster_cli.program import ClusterProgram

    @task(aliases=["ls"])
    def listing(c):
        """A task with an alias."""

    @task
    def other(c):
        """Another task."""

    program = ClusterProgram(namespace=Collection(listing, other))
    program.create_config()  # what Program.run does first
    program.parse_core(["inv", "ls"])
    program.parse_collection()
    program.parse_tasks()
    assert [context.name for context in program.tasks] == ["listing"]
    assert set(program.parser.contexts) == {"listing"}  # `other` was not built
    assert isinstance(program, Program)
