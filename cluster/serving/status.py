"""pd-status: per server pid alive, ports listening, ``/health``, uptime, last log line;
the router's readiness and worker list.

Every verdict starts from the process's identity, verified on its host
(:mod:`cluster.detach`): a recorded process group id that now belongs to another process
is ``gone (pid reused)``, never ``alive``. A per-host record of a process that is gone and
is not the recorded deployment's current one is ``stale`` (``--prune`` removes those).

Failure kinds: ``not-running`` (the recorded process group is gone, never started, or
its pid was reused), ``stale``, ``unhealthy`` (alive but not answering 200, or the router
reports unhealthy workers), ``launch`` (no answer from the probe).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import detach, shell
from ..hosts import Host
from ..result import Failure, Outcome, Report
from . import engines
from .plan import RUN_ID_ENV
from .records import (
    FAILED,
    HEALTHY,
    LOADING,
    NOT_STARTED,
    PID_REUSED,
    READY,
    RUNNING,
    STALE,
    STOPPED,
    Manifest,
    ServerRecord,
    fill_identities,
    records_on_hosts,
)
from .scripts import ProbeResult, ProbeTarget, parse_probe, probe_command
from .stop import no_deployment

if TYPE_CHECKING:
    from ..ssh import Engine

NOT_RUNNING = "not-running"
STALE_KIND = "stale"
UNHEALTHY = "unhealthy"
NO_PROBE = "launch"


@dataclass
class StatusResult:
    """What :func:`pd_status` found: one outcome per server (and the router)."""

    report: Report
    manifest: Manifest | None = None


def probe_target(record: ServerRecord, *, health: bool = True) -> ProbeTarget:
    """What to probe for one process: its group, API health (rank 0 / the router's
    readiness), listening port, log, and the router's worker list."""
    engine = engines.get(record.engine)
    serves = record.is_api
    path = engine.router_ready_path if record.is_router else engine.health_path
    return ProbeTarget(
        key=record.uid, identity=record.identity, host=record.host, port=record.port,
        log_path=record.log_path, ports=(record.port,) if serves else (),
        health_path=path if (serves and health) else None,
        fetch_path=engine.router_workers_path if (record.is_router and health) else None)


def probe_records(engine: Engine, records: Sequence[ServerRecord], fanout: int | None = None,
                  *, health: bool = True) -> dict[Host, Outcome]:
    """One probe round trip per host for ``records``: the host's outcome, ``data`` =
    ``{key: ProbeResult}``."""
    targets: dict[Host, list[ProbeTarget]] = {}
    for record in records:
        targets.setdefault(record.ssh_host, []).append(probe_target(record, health=health))
    report = shell.run_sections(engine, {h: [("probe", probe_command(t))] for h, t in targets.items()},
                                shell.STEP_TIMEOUT_S, fanout)
    for outcome in report:
        if outcome.ok:
            section = outcome.data.get("probe")
            outcome.data = parse_probe(section.output) if section else {}
    return {o.host: o for o in report}


def pd_status(engine: Engine, manifest: Manifest | None, *, hosts: Sequence[Host] | None = None,
              run_dir: str | None = None, fanout: int | None = None,
              deployment: str | None = None, prune: bool = False) -> StatusResult:
    """Per server: pid alive, ports listening, ``/health``, uptime, last log line; the
    router's readiness and workers. ``hosts`` limits it to those hosts (records from the
    manifest and from ``run_dir`` on each host). ``prune``: remove the stale per-host
    records found (``extra["pruned"]`` lists them)."""
    if hosts is None and manifest is None:
        raise no_deployment(deployment)
    unreachable: dict[Host, Failure] = {}
    if hosts is None:
        assert manifest is not None
        records = manifest.records
    else:
        records, unreachable = records_on_hosts(engine, manifest, hosts, run_dir, fanout)
    fill_identities(engine, records, fanout)
    current = {r.uid for r in manifest.records} if manifest else set()
    probes = probe_records(engine, [r for r in records if r.identity], fanout)
    outcomes = []
    for record in records:
        answer = probes.get(record.ssh_host)
        failure: Failure | None
        if record.identity is None:
            failure = _never_started(record, current)
        elif answer is None or answer.error is not None:
            record.status = FAILED
            failure = answer.error if answer is not None and answer.error is not None else Failure(
                NO_PROBE, "no answer from the status probe", "check the host (inv check)")
        else:
            failure = judge_status(record, answer.data.get(record.uid), current=current)
        outcomes.append(Outcome(record.ssh_host, failure is None, error=failure, data=record))
    # A selected host with nothing recorded is named, not silently left out.
    seen = {r.ssh_host.hostname for r in records}
    nothing = Failure(NOT_RUNNING, "no server recorded on this host",
                      "nothing was started here by start-pd (or serving.run_dir differs)")
    outcomes += [Outcome(h, False, error=unreachable.get(h, nothing))
                 for h in (hosts or ()) if h.hostname not in seen]
    extra = _extra(manifest, deployment)
    if prune:
        extra["pruned"] = prune_stale(engine, [r for r in records if r.status == STALE], fanout)
    return StatusResult(Report(outcomes, task="pd-status", extra=extra), manifest)


def prune_stale(engine: Engine, stale: Sequence[ServerRecord], fanout: int | None = None) -> list[str]:
    """Remove the per-host files (record, pid, exit code; not the log) of ``stale``
    records, checked again on the host (a running one is kept): the paths removed."""
    by_host: dict[Host, list[ServerRecord]] = {}
    for record in stale:
        by_host.setdefault(record.ssh_host, []).append(record)
    work = {h: [(f"p{i}", detach.prune_script(r.spec.run_dir, r.spec.name, RUN_ID_ENV, unstarted_after_min=0))
                for i, r in enumerate(rs)] for h, rs in by_host.items()}
    wanted = {r.record_path.rsplit("/", 1)[-1] for r in stale}
    removed: list[str] = []
    for outcome in shell.run_sections(engine, work, shell.STEP_TIMEOUT_S, fanout):
        if outcome.ok:
            for section in outcome.data.values():
                removed += [p for p in detach.parse_pruned(section.output) if p.rsplit("/", 1)[-1] in wanted]
    return removed


def _extra(manifest: Manifest | None, deployment: str | None) -> dict[str, Any]:
    return {"deployment": manifest.name if manifest else deployment,
            "run_id": manifest.run_id if manifest else None,
            "engine": manifest.engine if manifest else None}


def observe(record: ServerRecord, probe: ProbeResult) -> None:
    """Copy what a probe saw into the record (alive, members, health, uptime, last log)."""
    record.alive, record.members, record.health = probe.leader_alive, probe.members, probe.health
    record.uptime_s, record.last_log = probe.uptime_s, probe.last_log


def judge_status(record: ServerRecord, probe: ProbeResult | None, *,
                 current: set[str] | None = None) -> Failure | None:
    """Fill the record from its probe; the failure when it is not healthy. ``current``:
    the uids of the recorded deployment's processes (a gone process outside it is stale)."""
    if probe is None:
        record.status = FAILED
        return Failure(NO_PROBE, "no answer from the status probe", "check the host (inv check)")
    observe(record, probe)
    record.listening = record.port in probe.listening if record.is_api else None
    if record.is_router and probe.body:
        record.workers = parse_workers(probe.body)
    if probe.verdict != detach.OK:
        # Nothing of it runs: what answers on its port is someone else.
        record.health = record.listening = None
    if probe.verdict == detach.REUSED:
        record.status, record.alive = PID_REUSED, False
        if _stale(record, current):
            return _stale_failure(record)
        return Failure(NOT_RUNNING, f"{record.label}: its process is gone; process group {record.pid} "
                                    "now belongs to another process (pid reused): nothing was signalled",
                       "inv restart-pd replaces it; inv stop-pd cleans up its records")
    if not probe.leader_alive and not probe.members and _stale(record, current):
        return _stale_failure(record)
    if not probe.leader_alive:
        return _not_running(record, probe)
    if not record.is_api:
        record.status = RUNNING
        return None
    if probe.health == 200:
        return _healthy(record)
    record.status = LOADING if probe.health == 503 else UNHEALTHY
    what = "/readiness" if record.is_router else "/health"
    return Failure(UNHEALTHY, f"{record.label}: {what} answered {probe.health or 'nothing'}",
                   "still loading? (start-up takes minutes) otherwise see its log (inv logs)")


def _stale(record: ServerRecord, current: set[str] | None) -> bool:
    """A record read from a host that is not one of the recorded deployment's processes."""
    return record.on_host is not None and record.uid not in (current or set())


def _stale_failure(record: ServerRecord) -> Failure:
    record.status = STALE
    return Failure(STALE_KIND, f"{record.label}: a record of run {record.run_id} ({record.engine}, "
                               f"deployment {record.deployment}) whose process is gone",
                   "inv pd-status --prune (or inv stop-pd) removes it")


def _never_started(record: ServerRecord, current: set[str]) -> Failure:
    if _stale(record, current):
        return _stale_failure(record)
    record.status = NOT_STARTED
    return Failure(NOT_RUNNING, f"{record.label}: not started (no process was recorded for it)",
                   "inv start-pd starts the deployment")


def _not_running(record: ServerRecord, probe: ProbeResult) -> Failure:
    record.status = STOPPED if probe.members == 0 else "dead (children left)"
    extra = f"; {probe.members} process(es) of its group still run" if probe.members else ""
    if record.stopped_at is not None and not probe.members:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.stopped_at))
        return Failure(NOT_RUNNING, f"{record.label}: stopped by stop-pd at {when}",
                       "inv start-pd starts the deployment again")
    return Failure(NOT_RUNNING, f"{record.label}: process group {record.pid} is not running{extra}",
                   "inv logs to see why; inv restart-pd replaces it, inv stop-pd cleans up")


def _healthy(record: ServerRecord) -> Failure | None:
    record.status = READY if record.is_router else HEALTHY
    unhealthy = [w for w in (record.workers or []) if not w.get("is_healthy", True)]
    if not unhealthy:
        return None
    record.status = "degraded"
    return Failure(UNHEALTHY, f"router reports {len(unhealthy)} unhealthy worker(s): "
                   + ", ".join(str(w.get("url")) for w in unhealthy),
                   "inv pd-status shows which server; inv logs for why")


def parse_workers(body: str) -> list[dict[str, Any]] | None:
    """The router's ``/workers`` answer as ``[{url, worker_type, is_healthy, load,
    bootstrap_port}]`` (None when it is not that JSON)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    items = doc.get("workers") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        return None
    keep = ("url", "worker_type", "is_healthy", "load", "bootstrap_port")
    return [{k: w.get(k) for k in keep if k in w} for w in items if isinstance(w, dict)]


def worker_urls(record: ServerRecord) -> dict[str, bool]:
    """The router's workers as ``{url: healthy?}`` (from its last probe)."""
    return {str(w.get("url")): bool(w.get("is_healthy", True)) for w in record.workers or []}
