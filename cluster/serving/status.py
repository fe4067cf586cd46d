"""pd-status: per server pid alive, ports listening, ``/health``, uptime, last log line;
router ``/readiness`` and ``/workers``."""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

from ..errors import InputError
from ..hosts import Host
from ..result import Failure, Outcome, Report
from ..ssh import Engine
from .manifest import Manifest, ServerRecord
from .model import (
    FAILED,
    HEALTHY,
    LAUNCH,
    LOADING,
    NOT_RUNNING,
    READY,
    ROUTER,
    RUNNING,
    STOPPED,
    UNHEALTHY,
    ServerRow,
    StatusResult,
    row_of_record,
    row_of_router_record,
)
from .probe import ProbeResult, ProbeTarget, parse_probe, probe_command
from .remote import STEP_TIMEOUT_S, host_of, sections_on, transport_failure
from .store import manifest_file, records_on_hosts


def pd_status(engine: Engine, manifest: Manifest | None, *, hosts: Sequence[Host] | None = None,
              run_dir: str | None = None, fanout: int | None = None) -> StatusResult:
    """Per server: pid alive, ports listening, ``/health``, uptime, last log line; the
    router's ``/readiness`` and ``/workers``. ``hosts`` limits it to those hosts (records
    from the manifest and from ``run_dir`` on each host)."""
    if hosts is None and manifest is None:
        raise InputError(f"no recorded deployment ({manifest_file()} not found): name the hosts "
                         "with --hosts/--role")
    records: list[ServerRecord] = []
    unreachable: dict[Host, Failure] = {}
    if hosts is None:
        assert manifest is not None
        records = list(manifest.servers)
    else:
        records, unreachable = records_on_hosts(engine, manifest, hosts, run_dir, fanout)
    rows = [row_of_record(r) for r in records]
    router = manifest.router if (manifest and hosts is None) else None
    if router is not None:
        rows.append(row_of_router_record(router))
    targets: dict[Host, list[ProbeTarget]] = {}
    for row in rows:
        is_router = row.role == ROUTER
        targets.setdefault(host_of(row.target), []).append(ProbeTarget(
            key=row.key, pgid=row.pid, host=row.host, port=row.port, log_path=row.log_path,
            ports=(row.port,) if row.is_api or is_router else (),
            health_path="/readiness" if is_router else ("/health" if row.is_api else None),
            fetch_path="/workers" if is_router else None))
    # A selected host with nothing recorded is named, not silently left out.
    empty = [h for h in (hosts or ()) if h.hostname not in {host_of(r.target).hostname for r in rows}]
    results = sections_on(engine, {h: [("probe", probe_command(t))] for h, t in targets.items()},
                          STEP_TIMEOUT_S, fanout)
    outcomes = []
    for row in rows:
        host = host_of(row.target)
        value = results.get(host)
        if isinstance(value, BaseException):
            row.status = FAILED
            failure: Failure | None = transport_failure(engine, host, value)
        else:
            probes = parse_probe(value["probe"].output) if value and "probe" in value else {}
            failure = _judge_status(row, probes.get(row.key))
        outcomes.append(Outcome(host, failure is None, error=failure, data=row))
    nothing = Failure(NOT_RUNNING, "no server recorded on this host",
                      "nothing was started here by start-pd (or serving.run_dir differs)")
    outcomes += [Outcome(h, False, error=unreachable.get(h, nothing),
                         data=ServerRow(role="—", host=h.hostname, target=str(h), port=0,
                                        key="none", status="none" if h not in unreachable else FAILED))
                 for h in empty]
    return StatusResult(Report(outcomes), manifest)


def _judge_status(row: ServerRow, probe: ProbeResult | None) -> Failure | None:
    """Fill the row from its probe; the failure when it is not healthy."""
    if probe is None:
        row.status = FAILED
        return Failure(LAUNCH, "no answer from the status probe", "check the host (inv check)")
    row.alive, row.members, row.health = probe.leader_alive, probe.members, probe.health
    row.uptime_s, row.last_log = probe.uptime_s, probe.last_log
    row.listening = row.port in probe.listening if (row.is_api or row.role == ROUTER) else None
    if row.role == ROUTER and probe.body:
        row.workers = _workers(probe.body)
    if not probe.leader_alive:
        row.status = STOPPED if probe.members == 0 else "dead (children left)"
        extra = f"; {probe.members} process(es) of its group still run" if probe.members else ""
        if row.stopped_at is not None and not probe.members:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.stopped_at))
            return Failure(NOT_RUNNING, f"{row.label}: stopped by stop-pd at {when}",
                           "inv start-pd starts the deployment again")
        return Failure(NOT_RUNNING, f"{row.label}: process group {row.pid} is not running{extra}",
                       "inv logs to see why; inv stop-pd cleans up, inv start-pd --restart restarts")
    if not row.is_api:
        row.status = RUNNING
        return None
    if probe.health == 200:
        row.status = HEALTHY if row.role != ROUTER else READY
        unhealthy = [w for w in (row.workers or []) if not w.get("is_healthy", True)]
        if unhealthy:
            row.status = "degraded"
            return Failure(UNHEALTHY, f"router reports {len(unhealthy)} unhealthy worker(s): "
                           + ", ".join(str(w.get("url")) for w in unhealthy),
                           "inv pd-status shows which server; inv logs for why")
        return None
    row.status = LOADING if probe.health == 503 else UNHEALTHY
    what = "/readiness" if row.role == ROUTER else "/health"
    return Failure(UNHEALTHY, f"{row.label}: {what} answered {probe.health or 'nothing'}",
                   "still loading? (start-up takes minutes) otherwise see its log (inv logs)")


def _workers(body: str) -> list[dict[str, Any]] | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    items = doc.get("workers") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        return None
    keep = ("url", "worker_type", "is_healthy", "load", "bootstrap_port")
    return [{k: w.get(k) for k in keep if k in w} for w in items if isinstance(w, dict)]
