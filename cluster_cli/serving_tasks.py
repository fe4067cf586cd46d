"""PD serving tasks: start-pd, restart-pd, stop-pd, pd-status (docs/pd.md, docs/vllm.md).

Thin: parse options, call one `cluster.api.Cluster` method (`cluster.serving`), render
(`cluster.render.serving`), exit 0 / 1 / 2. start-pd builds its plan once: ``--dry-run``
prints that plan's scripts, otherwise that same plan is started.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from invoke import Exit

from cluster.errors import ParameterError
from cluster.lazy import lazy

from .common import VIEW_HELP, cluster_task, opened, show, view_options

if TYPE_CHECKING:
    from cluster.serving.records import ServerRecord

serving = lazy("cluster.serving")
render = lazy("cluster.render.core")
view = lazy("cluster.render.serving")

START_HELP = {
    "prefill": "Prefill hosts (host expression). Default: the roles file's 'prefill' role.",
    "decode": "Decode hosts (host expression). Default: the roles file's 'decode' role.",
    "model_path": "Model (HF id or path on the hosts). Default: serving.model_path.",
    "tp_size": "Tensor-parallel size of each server (across its nnodes hosts), both roles.",
    "nnodes": "Hosts per server, both roles (e.g. 2 for DeepSeek-V3 with --tp-size 16).",
    "prefill_port": "HTTP port of the prefill servers (SGLang default 30000, vLLM 8100).",
    "decode_port": "HTTP port of the decode servers (SGLang default 30001, vLLM 8200).",
    "bootstrap_port": "SGLang prefill bootstrap port (default 8998).",
    "env": "Environment variable NAME=VAL for every server (repeatable); treated as a secret: never "
           "printed, recorded or put on a command line.",
    "env_file": "File sourced on each host before launching (e.g. /opt/deepep/unified-env.sh); "
                "missing on a host = nothing starts anywhere.",
    "extra_args": "More server arguments for both roles, one quoted string: "
                  "--extra-args='--trust-remote-code --mem-fraction-static 0.8'.",
    "router": "Start the PD router on HOST, or 'local' (this machine). Default: serving.router.host.",
    "router_port": "Router HTTP port (default 8000).",
    "engine": "sglang or vllm (default: serving.engine, else sglang).",
    "deployment": "Name of the recorded deployment (default 'default').",
    "no_wait": "Start and record, then return without waiting for readiness.",
    "timeout": "Seconds to wait for every server to be ready (default 1800).",
    "dry_run": "Print each host's exact launch script (secrets masked); connect nowhere.",
    "restart": "Stop what runs on those hosts/ports (and the recorded deployment) first.",
    "grace": "With --restart: seconds between SIGTERM and SIGKILL (default 30).",
    "skip_preflight": "Launch without the fast checks first (GPUs free, env file, engine "
                      "importable, model present: see inv preflight).",
}

RESTART_HELP = {
    "hosts": "Restart the recorded servers with a rank on these hosts (every rank of each). "
             "Default: the servers whose process is gone.",
    "role": "Restart the recorded servers on the hosts of these roles.",
    "deployment": "Name of the recorded deployment (default 'default').",
    "no_wait": "Launch and record, then return without waiting for readiness.",
    "timeout": "Seconds to wait for the restarted servers to be ready (default 1800).",
    "grace": "Seconds between SIGTERM and SIGKILL of what is left of them (default 30).",
}

STOP_HELP = {
    "hosts": "Stop only what start-pd started on these hosts (the router is kept).",
    "role": "Stop only what start-pd started on the hosts of these roles.",
    "deployment": "Name of the recorded deployment (default 'default').",
    "grace": "Seconds between SIGTERM and SIGKILL of each process group (default 30).",
    "sweep": "Leftover sweep: 'deployment' (default: only processes carrying this deployment's "
             "run id), 'user' (every process of the engine owned by the login user, by command "
             "line), 'none'.",
    "keep_router": "Leave the router running.",
}

STATUS_HELP = {
    **VIEW_HELP,
    "hosts": "Only the servers start-pd started on these hosts.",
    "role": "Only the servers on the hosts of these roles.",
    "deployment": "Name of the recorded deployment (default 'default').",
    "prune": "Remove the stale per-host records found (processes gone, not the recorded "
             "deployment's); logs are kept.",
}

# What a library parameter is called on these tasks' command lines.
SERVING_FLAGS = {"hosts": "--hosts/--role"}


@cluster_task(name="start-pd", help=START_HELP, flags=SERVING_FLAGS, iterable=["env"])
def start_pd(c, prefill=None, decode=None, model_path=None, tp_size=None, nnodes=None,
             prefill_port=None, decode_port=None, bootstrap_port=None, env_file=None, env=None,
             extra_args=None, router=None, router_port=None, engine=None, deployment=None,
             no_wait=False, timeout=None, dry_run=False, restart=False, grace=None,
             skip_preflight=False, roles_file=None, json=False, fanout=None):
    """Start SGLang/vLLM prefill + decode servers (and the router); wait until healthy."""
    started = time.monotonic()
    limit, pause = _wait_options(timeout, grace)
    overrides = dict(model_path=model_path, tp_size=tp_size, nnodes=nnodes,
                     prefill_port=prefill_port, decode_port=decode_port,
                     bootstrap_port=bootstrap_port, env_file=env_file, extra_args=extra_args,
                     router_port=router_port, engine=engine, env=env_items(env))
    with opened(roles_file, fanout) as cluster:
        plan = cluster.plan_pd(prefill, decode, router=router, deployment=deployment, **overrides)
        if dry_run:
            _print_dry_run(plan, json)
            return
        with _waiting(json, lambda: _where_recorded(plan)) as show_progress:
            result = cluster.start_pd(plan, wait=not no_wait, timeout=limit, restart=restart,
                                      grace=pause, on_progress=show_progress,
                                      preflight=not skip_preflight)
    show(result.report, json, lambda report: view.start_view(result), started,
         lambda report, elapsed: render.summary_line(report, elapsed, noun="server"))


@cluster_task(name="restart-pd", help=RESTART_HELP, flags=SERVING_FLAGS)
def restart_pd(c, hosts=None, role=None, deployment=None, no_wait=False, timeout=None,
               grace=None, roles_file=None, json=False, fanout=None):
    """Replace servers of the recorded deployment (dead ones, or those on -H/-r); leave the rest."""
    started = time.monotonic()
    limit, pause = _wait_options(timeout, grace)
    with opened(roles_file, fanout) as cluster:
        with _waiting(json, lambda: _where_recorded(None, deployment)) as show_progress:
            result = cluster.restart_pd(hosts=hosts, role=role, deployment=deployment,
                                        wait=not no_wait, timeout=limit, grace=pause,
                                        on_progress=show_progress)
    show(result.report, json, lambda report: view.restart_view(result), started,
         lambda report, elapsed: render.summary_line(report, elapsed, noun="server"))


def _wait_options(timeout: str | None, grace: str | None) -> tuple[float, float]:
    """--timeout and --grace, checked before anything else (--dry-run, the manifest)."""
    from cluster.serving.start import check_timeout
    from cluster.serving.stop import check_grace

    return (check_timeout(serving.DEFAULT_TIMEOUT_S if timeout is None else timeout),
            check_grace(serving.DEFAULT_GRACE_S if grace is None else grace))


def env_items(items: list[str] | None) -> dict[str, str] | None:
    """``--env NAME=VALUE`` (repeatable) as a mapping; the value is never echoed back."""
    if not items:
        return None
    env = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq:
            raise ParameterError("env", "{name} expects NAME=VALUE (an item has no '=')")
        env[name] = value
    return env


def _where_recorded(plan: serving.StartPlan | None, deployment: str | None = None) -> str:
    """Where what was launched is recorded, naming only files that exist (asked at Ctrl-C)."""
    path = serving.manifest_file(plan.deployment if plan else deployment)
    run_dir = plan.config.run_dir if plan else None
    hosts = f"per-host records in {run_dir} on each host" if run_dir else "per-host records in the run dir"
    if path.exists():
        return f"recorded in {path} and {hosts}"
    return f"nothing was recorded in {path}; {hosts} name anything launched"


@contextmanager
def _waiting(as_json: bool, recorded: Callable[[], str]) -> Iterator[Callable[[list[ServerRecord], float], None]]:
    """A live progress view on stderr (a terminal, not --json) while servers start; Ctrl-C
    stops only the waiting (exit 130): what was launched keeps starting, and is recorded
    (``recorded()`` says where, asked at that moment)."""
    from rich.live import Live

    live = None if as_json or not sys.stderr.isatty() else Live(
        console=render.stderr_console(), auto_refresh=False, transient=True)

    def show_progress(records: list[ServerRecord], elapsed: float) -> None:
        if live is not None:
            live.update(view.progress_view(records, elapsed), refresh=True)

    try:
        if live is not None:
            live.start()
        yield show_progress
    except KeyboardInterrupt:
        raise Exit(f"interrupted: servers already launched keep running ({recorded()}); follow "
                   "them with `inv pd-status`, stop them with `inv stop-pd`", code=130) from None
    finally:
        if live is not None:
            live.stop()


def _print_dry_run(plan: serving.StartPlan, as_json: bool) -> None:
    scripts = serving.dry_run_scripts(plan)
    if as_json:
        hosts = [{"host": record.target, "ok": True, "error": None, **record.to_json(), "script": script}
                 for record, script in scripts]
        render.print_json({"task": "start-pd", "dry_run": True, "hosts": hosts,
                           "summary": {"ok": len(hosts), "failed": 0},
                           "deployment": plan.deployment, "run_id": plan.run_id,
                           "engine": plan.config.engine})
        return
    sys.stdout.write(view.dry_run_text(scripts))
    sys.stdout.write(f"# dry run: {len(scripts)} process(es), nothing was started, "
                     "no host was contacted\n")
    sys.stdout.flush()


@cluster_task(name="stop-pd", help=STOP_HELP, flags=SERVING_FLAGS)
def stop_pd(c, hosts=None, role=None, deployment=None, grace=None, sweep="deployment",
            keep_router=False, roles_file=None, json=False, fanout=None):
    """Stop the PD deployment: verify each process, SIGTERM, grace, SIGKILL, sweep leftovers, verify."""
    started = time.monotonic()
    pause = serving.DEFAULT_GRACE_S if grace is None else grace
    with opened(roles_file, fanout) as cluster:
        result = cluster.stop_pd(hosts=hosts, role=role, deployment=deployment, grace=pause,
                                 sweep=sweep, keep_router=keep_router)
    show(result.report, json, view.stop_table, started)


@cluster_task(name="pd-status", help={**STATUS_HELP, **VIEW_HELP}, flags=SERVING_FLAGS)
def pd_status(c, hosts=None, role=None, deployment=None, prune=False, roles_file=None, json=False,
              fanout=None, expand=False, fold=False, state=None):
    """Per server: process alive, port listening, /health, uptime, last log line; the router."""
    started = time.monotonic()
    console = render.stdout_console()
    options = view_options(console, expand, fold, state)
    with opened(roles_file, fanout) as cluster:
        result = cluster.pd_status(hosts=hosts, role=role, deployment=deployment, prune=prune)
    show(result.report, json, lambda report: view.status_table(report, options), started,
         lambda report, elapsed: render.summary_line(report, elapsed, noun="server"))

