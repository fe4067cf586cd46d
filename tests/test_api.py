"""The Python API against the CLI: ``report.to_dict()`` is the ``--json`` document, library
errors name parameters while the CLI names the options, and dependencies point one way
(pure modules load no SSH code, ``inv`` loads no test harness, logs/kill no serving code).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.api import Cluster
from cluster.errors import ParameterError

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "cluster" / "testing" / "bin"


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "cluster_cli", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def gpu_roles(fleet, tmp_path_factory):
    """Two fleet hosts with the stand-in nvidia-smi (an idle and a busy H100)."""
    hosts = ["127.0.1.5", "127.0.1.6"]
    made = []
    for address, state in zip(hosts, ["h100-idle", "h100-busy"]):
        link, state_file = fleet.host_dir(address) / "bin" / "nvidia-smi", fleet.host_dir(address) / "gpu-state"
        if not (link.exists() or link.is_symlink()):
            link.symlink_to(BIN / "nvidia-smi")
            made.append(link)
        previous = state_file.read_text() if state_file.exists() else None
        state_file.write_text(state + "\n")
        made.append((state_file, previous))
    roles = fleet.write_roles(tmp_path_factory.mktemp("api") / "roles.yaml", {"gpu": hosts})
    yield roles
    for item in made:
        if isinstance(item, tuple):
            path, previous = item
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(previous)
        else:
            item.unlink(missing_ok=True)


def test_report_to_dict_is_what_the_task_prints_with_json(gpu_roles):
    code, out, err = cli("gpu-status", "--roles-file", str(gpu_roles), "--json")
    assert code == 0, out + err
    with Cluster.from_roles(gpu_roles) as cluster:
        report = cluster.gpu_status()
        assert report["127.0.1.6"].data.processes  # the busy one
        assert report.to_dict() == json.loads(out)
        assert json.loads(report.to_json()) == json.loads(out)
        assert cluster.run("printf 'a\\nb\\nc\\n' > ~/api-json.log").all_ok
        logs = cluster.logs(file="~/api-json.log", lines=2)
    code, out, err = cli("logs", "--file", "~/api-json.log", "-n", "2", "--roles-file", str(gpu_roles),
                         "--json")
    assert code == 0, err
    assert logs.to_dict() == json.loads(out) and logs.to_dict()["hosts"][0]["lines"] == ["b", "c"]


@pytest.mark.parametrize("call, parameter, option_args, flag", [
    (lambda c: c.gpu_status(timeout=0), "timeout", ["gpu-status", "--timeout", "0"], "--timeout"),
    (lambda c: c.watch_gpu_status(0, print), "interval", ["gpu-status", "--watch", "0"], "--watch"),
    (lambda c: c.watch_gpu_status(1, print, max_ticks=0), "max_ticks",
     ["gpu-status", "--watch", "1", "--count", "0"], "--count"),
    (lambda c: c.logs(file="/x", lines=-1), "lines", ["logs", "--file", "/x", "-n", "-1"], "-n/--lines"),
    (lambda c: c.kill("x", wait=-1), "wait", ["kill", "--pattern", "x", "--wait", "-1"], "--wait"),
    (lambda c: c.stop_pd(sweep="all"), "sweep", ["stop-pd", "-H", "127.0.1.5", "--sweep", "all"],
     "--sweep"),
    (lambda c: c.plan_pd("127.0.1.5", "127.0.1.6", prefill_port="http"), "prefill_port",
     ["start-pd", "--prefill", "127.0.1.5", "--decode", "127.0.1.6", "--prefill-port", "http"],
     "--prefill-port"),
])
def test_library_errors_name_the_parameter_and_the_cli_the_option(gpu_roles, call, parameter,
                                                                  option_args, flag):
    with Cluster.from_roles(gpu_roles, model_path=None) as cluster:
        with pytest.raises(ParameterError) as info:
            call(cluster)
    assert info.value.parameter == parameter and str(info.value).startswith(parameter)
    assert flag not in str(info.value)
    code, _, err = cli(*option_args, "--roles-file", str(gpu_roles),
                       env={"CLUSTER_STATE_DIR": "/nonexistent-state"})
    assert code == 2 and f"error: {flag}" in err, err


@pytest.mark.parametrize("model", ["-h", "--trust-remote-code"])
def test_a_model_path_that_looks_like_an_option_is_refused_with_exit_2(gpu_roles, model):
    code, _, err = cli("start-pd", "--prefill", "127.0.1.5", "--decode", "127.0.1.6",
                       f"--model-path={model}", "--dry-run", "--roles-file", str(gpu_roles))
    assert code == 2 and "--model-path: may not start with '-'" in err, err


# --------------------------------------------------------------------------- dependencies


def loaded_after(statement: str) -> set[str]:
    """The top-level names and cluster modules a fresh interpreter has after ``statement``."""
    probe = (f"{statement}\nimport sys, json\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('paramiko', 'fabric', 'invoke', 'cluster', 'rich'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("module", ["cluster.gpu", "cluster.system", "cluster.service", "cluster.hosts",
                                    "cluster.result", "cluster.probe", "cluster.shell",
                                    "cluster.serving.config", "cluster.serving.plan",
                                    "cluster.serving.scripts", "cluster"])
def test_pure_modules_load_no_ssh_code(module):
    loaded = loaded_after(f"import {module}")
    assert not loaded & {"paramiko", "fabric", "invoke"}, sorted(loaded)


def test_only_the_rehearsal_tasks_import_the_test_harness():
    loaded = loaded_after("import cluster_cli.tasks")
    assert not [m for m in loaded if m.startswith("cluster.testing")]


def test_logs_and_kill_import_no_serving_code():
    loaded = loaded_after("import cluster.logs, cluster.kill")
    assert not [m for m in loaded if m.startswith("cluster.serving")]


def test_the_serving_surface_names_exist():
    import cluster.serving as serving

    assert sorted(serving.__all__) == sorted(serving._PUBLIC)
    assert all(getattr(serving, name) is not None for name in serving.__all__)
    with pytest.raises(AttributeError):
        serving.lifecycle  # noqa: B018 (the old re-export modules are gone)


def test_architecture_page_lists_every_module():
    """docs/architecture.md names every module of cluster/ and cluster_cli/ (the test
    harness and the renderers as packages), and no file that is not there."""
    text = (REPO / "docs" / "architecture.md").read_text()
    missing = []
    for package in ("cluster", "cluster_cli"):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO / package).parts
            if parts[0] in ("testing", "render") and len(parts) > 1:
                continue  # listed as packages
            if path.name not in text and not (path.name == "__init__.py" and len(parts) == 1):
                missing.append(str(path.relative_to(REPO)))
    assert missing == []
    named = set(re.findall(r"\b([a-z_]+\.py)\b", text))
    existing = {p.name for p in REPO.rglob("*.py")}
    assert named <= existing, named - existing
