"""PD serving tasks: start-pd, stop-pd, pd-status (docs/pd.md, docs/vllm.md).

Thin: parse options, call one `cluster.api.Cluster` method (`cluster.serving.lifecycle`),
render (`cluster.render.serving`), exit 0 / 1 / 2.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from invoke import Exit
from rich.live import Live

from cluster.errors import InputError
from cluster.render import core as render
from cluster.render import serving as view
from cluster.serving import lifecycle

from .common import VIEW_HELP, cluster_task, finish, opened, view_options

START_HELP = {
    "prefill": "Prefill hosts (host expression). Default: the roles file's 'prefill' role.",
    "decode": "Decode hosts (host expression). Default: the roles file's 'decode' role.",
    "model_path": "Model (HF id or path on the hosts). Default: serving.model_path.",
    "tp_size": "Tensor-parallel size of each server (across its nnodes hosts), both roles.",
    "nnodes": "Hosts per server, both roles (e.g. 2 for DeepSeek-V3 with --tp-size 16).",
    "prefill_port": "HTTP port of the prefill servers (SGLang default 30000, vLLM 8100).",
    "decode_port": "HTTP port of the decode servers (SGLang default 30001, vLLM 8200).",
    "bootstrap_port": "SGLang prefill bootstrap port (default 8998).",
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
}

STOP_HELP = {
    "hosts": "Stop only what start-pd started on these hosts (the router is kept).",
    "role": "Stop only what start-pd started on the hosts of these roles.",
    "deployment": "Name of the recorded deployment (default 'default').",
    "grace": "Seconds between SIGTERM and SIGKILL of each process group (default 30).",
    "sweep": "Leftover sweep by command line: 'user' (every process of the engine owned by "
             "the login user, default), 'deployment' (only this deployment's processes), 'none'.",
    "keep_router": "Leave the router running.",
}

STATUS_HELP = {
    **VIEW_HELP,
    "hosts": "Only the servers start-pd started on these hosts.",
    "role": "Only the servers on the hosts of these roles.",
    "deployment": "Name of the recorded deployment (default 'default').",
}


def _seconds(value: Any, option: str, default: float, *, positive: bool) -> float:
    """A number of seconds from an option (> 0 or >= 0); exit 2 on anything else."""
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{option} must be a number of seconds, got {value!r}") from None
    if number < 0 or (positive and number == 0):
        raise InputError(f"{option} must be {'> 0' if positive else '>= 0'} seconds, got {value!r}")
    return number


def _summary(report, started: float, noun: str) -> None:
    render.stdout_console().print(render.summary_line(report, time.monotonic() - started, noun=noun))


@cluster_task(name="start-pd", help=START_HELP)
def start_pd(c, prefill=None, decode=None, model_path=None, tp_size=None, nnodes=None,
             prefill_port=None, decode_port=None, bootstrap_port=None, env_file=None,
             extra_args=None, router=None, router_port=None, engine=None, deployment=None,
             no_wait=False, timeout=None, dry_run=False, restart=False, grace=None,
             roles_file=None, json=False, fanout=None):
    """Start SGLang/vLLM prefill + decode servers (and the router); wait until healthy."""
    started = time.monotonic()
    limit = _seconds(timeout, "--timeout", lifecycle.DEFAULT_TIMEOUT_S, positive=True)
    pause = _seconds(grace, "--grace", lifecycle.DEFAULT_GRACE_S, positive=False)
    overrides = dict(model_path=model_path, tp_size=tp_size, nnodes=nnodes,
                     prefill_port=prefill_port, decode_port=decode_port,
                     bootstrap_port=bootstrap_port, env_file=env_file, extra_args=extra_args,
                     router_port=router_port, engine=engine)
    with opened(roles_file, fanout) as cluster:
        plan = cluster.plan_pd(prefill, decode, router=router, deployment=deployment, **overrides)
        if dry_run:
            _print_dry_run(plan, json)
            return
        live = None if json or not sys.stderr.isatty() else Live(
            console=render.stderr_console(), auto_refresh=False, transient=True)

        def show(rows, elapsed):
            if live is not None:
                live.update(view.progress_view(rows, elapsed), refresh=True)

        try:
            if live is not None:
                live.start()
            result = cluster.start_pd(prefill, decode, router=router, deployment=deployment,
                                      wait=not no_wait, timeout=limit, restart=restart,
                                      grace=pause, on_progress=show, **overrides)
        except KeyboardInterrupt:
            # Only the waiting stops: what was launched keeps starting, and is recorded.
            raise Exit(f"interrupted: servers already launched keep running (recorded in "
                       f"{lifecycle.manifest_file(plan.deployment)}); follow them with "
                       "`inv pd-status`, stop them with `inv stop-pd`", code=130) from None
        finally:
            if live is not None:
                live.stop()
    if json:
        render.print_json(render.json_document("start-pd", result.report, view.start_fields,
                                               view.start_extra(result)))
    else:
        render.stdout_console().print(view.start_view(result))
        _summary(result.report, started, "servers")
    finish(result.report)


def _print_dry_run(plan, as_json: bool) -> None:
    scripts = lifecycle.dry_run_scripts(plan)
    if as_json:
        hosts = [{"host": row.target, "ok": True, "error": None, **row.to_json(), "script": script}
                 for row, script in scripts]
        render.print_json({"task": "start-pd", "dry_run": True, "hosts": hosts,
                           "summary": {"ok": len(hosts), "failed": 0},
                           "deployment": plan.deployment, "run_id": plan.run_id,
                           "engine": plan.config.engine})
        return
    sys.stdout.write(view.dry_run_text(scripts))
    sys.stdout.write(f"# dry run: {len(scripts)} process(es), nothing was started, "
                     "no host was contacted\n")
    sys.stdout.flush()


@cluster_task(name="stop-pd", help=STOP_HELP)
def stop_pd(c, hosts=None, role=None, deployment=None, grace=None, sweep="user",
            keep_router=False, roles_file=None, json=False, fanout=None):
    """Stop the PD deployment: SIGTERM, grace, SIGKILL each group, sweep leftovers, verify."""
    started = time.monotonic()
    pause = _seconds(grace, "--grace", lifecycle.DEFAULT_GRACE_S, positive=False)
    with opened(roles_file, fanout) as cluster:
        result = cluster.stop_pd(hosts=hosts, role=role, deployment=deployment, grace=pause,
                                 sweep=sweep, keep_router=keep_router)
    extra = {"deployment": result.manifest.name if result.manifest else deployment,
             "router_stopped": result.router_stopped,
             "manifest": str(result.manifest_file) if result.manifest_file else None}
    if json:
        render.print_json(render.json_document("stop-pd", result.report, view.stop_fields, extra))
    else:
        console = render.stdout_console()
        console.print(view.stop_table(result.report))
        _summary(result.report, started, "hosts")
    finish(result.report)


@cluster_task(name="pd-status", help=STATUS_HELP)
def pd_status(c, hosts=None, role=None, deployment=None, roles_file=None, json=False, fanout=None,
              expand=False, fold=False, state=None):
    """Per server: process alive, port listening, /health, uptime, last log line; the router."""
    started = time.monotonic()
    console = render.stdout_console()
    options = view_options(console, expand, fold, state)
    with opened(roles_file, fanout) as cluster:
        result = cluster.pd_status(hosts=hosts, role=role, deployment=deployment)
    manifest = result.manifest
    extra = {"deployment": manifest.name if manifest else deployment,
             "run_id": manifest.run_id if manifest else None,
             "engine": manifest.engine if manifest else None}
    if json:
        render.print_json(render.json_document("pd-status", result.report, view.status_fields, extra))
    else:
        console.print(view.status_table(result.report, options), crop=False)
        _summary(result.report, started, "servers")
    finish(result.report)
