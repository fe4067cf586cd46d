"""pd-status: per server pid alive, ports listening, ``/health``, uptime, last log line;
the router's readiness and worker list.

Failure kinds: ``not-running`` (the recorded process group is gone), ``unhealthy``
(alive but not answering 200, or the router reports unhealthy workers), ``launch`` (no
answer from the probe).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import shell
from ..hosts import Host
from ..result import Failure, Outcome, Report
from . import engines
from .records import FAILED, HEALTHY, LOADING, READY, RUNNING, STOPPED, Manifest, ServerRecord, records_on_hosts
from .scripts import ProbeResult, ProbeTarget, parse_probe, probe_command
from .stop import no_deployment

if TYPE_CHECKING:
    from ..ssh import Engine

NOT_RUNNING = "not-running"
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
        key=record.key, pgid=record.pid, host=record.host, port=record.port,
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
              deployment: str | None = None) -> StatusResult:
    """Per server: pid alive, ports listening, ``/health``, uptime, last log line; the
    router's readiness and workers. ``hosts`` limits it to those hosts (records from the
    manifest and from ``run_dir`` on each host)."""
    if hosts is None and manifest is None:
        raise no_deployment(deployment)
    unreachable: dict[Host, Failure] = {}
    if hosts is None:
        assert manifest is not None
        records = manifest.records
    else:
        records, unreachable = records_on_hosts(engine, manifest, hosts, run_dir, fanout)
    probes = probe_records(engine, records, fanout)
    outcomes = []
    for record in records:
        answer = probes[record.ssh_host]
        if answer.error is not None:
            record.status = FAILED
            failure: Failure | None = answer.error
        else:
            failure = judge_status(record, answer.data.get(record.key))
        outcomes.append(Outcome(record.ssh_host, failure is None, error=failure, data=record))
    # A selected host with nothing recorded is named, not silently left out.
    seen = {r.ssh_host.hostname for r in records}
    nothing = Failure(NOT_RUNNING, "no server recorded on this host",
                      "nothing was started here by start-pd (or serving.run_dir differs)")
    outcomes += [Outcome(h, False, error=unreachable.get(h, nothing))
                 for h in (hosts or ()) if h.hostname not in seen]
    return StatusResult(Report(outcomes, task="pd-status", extra=_extra(manifest, deployment)), manifest)


def _extra(manifest: Manifest | None, deployment: str | None) -> dict[str, Any]:
    return {"deployment": manifest.name if manifest else deployment,
            "run_id": manifest.run_id if manifest else None,
            "engine": manifest.engine if manifest else None}


def observe(record: ServerRecord, probe: ProbeResult) -> None:
    """Copy what a probe saw into the record (alive, members, health, uptime, last log)."""
    record.alive, record.members, record.health = probe.leader_alive, probe.members, probe.health
    record.uptime_s, record.last_log = probe.uptime_s, probe.last_log


def judge_status(record: ServerRecord, probe: ProbeResult | None) -> Failure | None:
    """Fill the record from its probe; the failure when it is not healthy."""
    if probe is None:
        record.status = FAILED
        return Failure(NO_PROBE, "no answer from the status probe", "check the host (inv check)")
    observe(record, probe)
    record.listening = record.port in probe.listening if record.is_api else None
    if record.is_router and probe.body:
        record.workers = parse_workers(probe.body)
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
