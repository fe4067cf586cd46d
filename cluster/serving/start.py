"""start-pd: plan a deployment (pure), show it (``--dry-run``), and start it
(:func:`start_pd`; the steps are :class:`~cluster.serving.start_run.StartRun`'s)."""

from __future__ import annotations

import os
import time
from typing import Sequence

from ..errors import InputError
from ..hosts import Host
from ..ssh import Engine
from .config import ServingConfig
from .launch import render_for_display
from .manifest import DEFAULT_DEPLOYMENT
from .model import (
    DEFAULT_GRACE_S,
    DEFAULT_TIMEOUT_S,
    DRY_RUN,
    NOT_STARTED,
    PLANNED,
    POLL_INTERVAL_S,
    ROUTER,
    ROUTER_MIN_WAIT_S,
    STARTED,
    ProgressFn,
    ServerRow,
    StartPlan,
    StartResult,
    row_of_router,
    row_of_spec,
)
from .plan import plan_deployment, plan_router
from .start_run import StartRun
from .store import manifest_file


def plan_start(config: ServingConfig, prefill: Sequence[str | Host], decode: Sequence[str | Host], *,
               router: str | Host | None = None, deployment: str | None = None,
               run_id: str | None = None, environ: dict[str, str] | None = None) -> StartPlan:
    """Plan a deployment (pure; raises `InputError` on bad input before any connection)."""
    servers = plan_deployment(config, prefill, decode, run_id=run_id,
                              environ=os.environ if environ is None else environ)
    router_spec = plan_router(config, servers, host=router)
    return StartPlan(config, tuple(servers), router_spec, servers[0].run_id,
                     deployment or DEFAULT_DEPLOYMENT)


def dry_run_scripts(plan: StartPlan) -> list[tuple[ServerRow, str]]:
    """Each process's launch script as it would run, secrets masked (``--dry-run``)."""
    out = [(row_of_spec(s), render_for_display(s)) for s in plan.servers]
    if plan.router:
        out.append((row_of_router(plan.router), render_for_display(plan.router)))
    for row, _ in out:
        row.status = DRY_RUN
    return out


def start_pd(engine: Engine, plan: StartPlan, *, wait: bool = True,
             timeout: float = DEFAULT_TIMEOUT_S, restart: bool = False,
             grace: float = DEFAULT_GRACE_S, fanout: int | None = None,
             on_progress: ProgressFn | None = None, poll_s: float = POLL_INTERVAL_S) -> StartResult:
    """Start the planned deployment (the steps: see the docstring of :mod:`cluster.serving.lifecycle`).

    Per-server results are values (``report``: one outcome per server node-rank, then
    the router), never exceptions; ``stage`` says how far it got. Only bad input
    (before any connection) raises `InputError`. ``on_progress(rows, elapsed)`` is
    called after every poll round.
    """
    if timeout <= 0:
        raise InputError(f"--timeout must be > 0 seconds, got {timeout!r}")
    run = StartRun(engine, plan, restart=restart, grace=grace, fanout=fanout,
                   on_progress=on_progress, poll_s=poll_s)
    deadline = run.started + timeout

    def result(stage: str) -> StartResult:
        for row in run.rows.values():
            if row.status == PLANNED:
                row.status = NOT_STARTED
        return StartResult(run.report(), stage, plan, run.manifest,
                           manifest_file(plan.deployment) if run.manifest else None,
                           elapsed_s=run.elapsed())

    run.progress()
    if not run.preflight():
        return result("preflight")
    if restart:
        run.stop_running()
        if run.failures:
            return result("preflight")
    server_keys = list(run.specs)
    launched = run.launch(server_keys)
    started = [k for k in server_keys if run.rows[k].pid]
    if started:
        run.record()
    if not launched:
        return result("launch")
    run.progress()
    if not wait:
        if plan.router:
            if run.launch([ROUTER]):
                run.rows[ROUTER].status = STARTED
                run.record()
        for key in server_keys:
            run.rows[key].status = STARTED
        return result("done")
    if not run.wait(server_keys, deadline):
        return result("wait")
    if plan.router:
        if not run.launch([ROUTER]):
            return result("router")
        run.record()
        router_deadline = max(deadline, time.monotonic() + ROUTER_MIN_WAIT_S)
        if not run.wait([ROUTER], router_deadline, health_path="/readiness"):
            return result("router")
    return result("done")
