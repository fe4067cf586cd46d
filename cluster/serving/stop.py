"""stop-pd: per host, one script: SIGTERM every group, a shared grace, SIGKILL, sweep
leftovers by command line (the user's, or only this deployment's by the
``CLUSTER_PD_RUN_ID`` marker), check the ports, read GPU memory via nvidia-smi."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from .. import gpu
from ..errors import InputError
from ..hosts import Host
from ..result import Failure, Outcome, Report
from ..ssh import Engine, HostSession
from .manifest import Manifest, RouterRecord, ServerRecord
from .model import (
    DEFAULT_GRACE_S,
    PORT_BUSY,
    SURVIVORS,
    SWEEP_SCOPES,
    GpuAfter,
    HostStop,
    StopResult,
)
from .probe import parse_ports_free, ports_free_command
from .remote import STEP_TIMEOUT_S, each, host_of, run_script, transport_failure
from .sections import Section, parse_sections, sections_script
from .store import manifest_file, records_on_hosts, save_manifest
from .terminate import parse_stop_groups, parse_sweep, stop_groups_command, sweep_command


@dataclass
class StopWork:
    """What to stop and check on one host."""

    host: Host
    pgids: list[int] = field(default_factory=list)
    engine: str = "sglang"
    labels: list[str] = field(default_factory=list)
    address: str | None = None       # where the ports are checked (None: any address)
    ports: list[int] = field(default_factory=list)
    sweep: str = "user"              # user | deployment | none
    run_ids: tuple[str, ...] = ()
    sweep_servers: bool = True       # this host ran servers: sweep their patterns
    sweep_router: bool = False       # the router stopped here: sweep router patterns too
    spare_router: bool = True
    gpu: bool = True

    def script(self, grace: float) -> str:
        sections = [("stop", stop_groups_command(self.pgids, grace))]
        if self.sweep != "none" and (self.sweep == "user" or self.run_ids):
            run_ids = self.run_ids if self.sweep == "deployment" else ()
            if self.sweep_servers:
                spare = self.spare_router and not self.sweep_router
                sections.append(("sweep", sweep_command(self.engine, None, spare, run_ids=run_ids)))
            elif self.sweep_router:
                sections.append(("sweep", sweep_command(self.engine, None, False, servers=False,
                                                        run_ids=run_ids)))
        if self.ports:
            sections.append(("ports", ports_free_command(self.ports, self.address)))
        if self.gpu:
            sections.append(("gpu", "if command -v nvidia-smi >/dev/null 2>&1; then "
                                    f"( {gpu.COMMAND} ); else echo @@no-nvidia-smi; fi"))
        return sections_script(sections)


def stop_hosts(engine: Engine, work: dict[Host, StopWork], grace: float,
               fanout: int | None = None) -> dict[Host, HostStop | BaseException]:
    timeout = grace + STEP_TIMEOUT_S + 10  # grace, the SIGKILL wait (5 s), sweep, nvidia-smi

    def one(session: HostSession) -> HostStop:
        item = work[session.host]
        result = run_script(session, item.script(grace), timeout)
        return _parse_host_stop(item, parse_sections(result.stdout))

    return each(engine, list(work), one, fanout)


def _parse_host_stop(item: StopWork, sections: dict[str, Section]) -> HostStop:
    stop = HostStop(servers=list(item.labels))
    groups = parse_stop_groups(sections["stop"].output) if "stop" in sections else {}
    hows = set()
    for result in groups.values():
        stop.stopped_pids += list(result.pids)
        stop.killed_after_grace += list(result.killed)
        stop.survivors += list(result.alive)
        if result.was_running:
            hows.add(result.how)
            stop.seconds = max(stop.seconds or 0, result.seconds or 0)
    stop.how = "" if not hows else hows.pop() if len(hows) == 1 else "mixed"
    if "sweep" in sections:
        swept = parse_sweep(sections["sweep"].output)
        stop.leftovers = list(swept.killed)
        stop.survivors += list(swept.survived)
    if "ports" in sections:
        stop.ports = parse_ports_free(sections["ports"].output)
    if "gpu" in sections:
        stop.gpu = _gpu_after(sections["gpu"])
    return stop


def _gpu_after(section: Section) -> GpuAfter:
    if "@@no-nvidia-smi" in section.output:
        return GpuAfter(False, note="no nvidia-smi on this host")
    status = gpu.parse(section.output)
    if not status.gpus:
        first = next((line for line in section.output.splitlines() if line.strip()), "")
        return GpuAfter(False, note=f"nvidia-smi: {first[:120]}" if first else "nvidia-smi listed no GPU")
    return GpuAfter(
        True,
        memory_used_mib=sum(g.memory_used_mib or 0 for g in status.gpus),
        memory_total_mib=sum(g.memory_total_mib or 0 for g in status.gpus),
        processes=[{"pid": p.pid, "name": p.name, "used_memory_mib": p.used_memory_mib,
                    "gpu_index": p.gpu_index} for p in status.processes],
    )


def _check_sweep(sweep: str) -> str:
    if sweep not in SWEEP_SCOPES:
        raise InputError(f"--sweep must be one of {', '.join(SWEEP_SCOPES)}, got {sweep!r}")
    return sweep


def stop_pd(engine: Engine, manifest: Manifest | None, *, hosts: Sequence[Host] | None = None,
            run_dir: str | None = None, grace: float = DEFAULT_GRACE_S, sweep: str = "user",
            keep_router: bool = False, fanout: int | None = None) -> StopResult:
    """Stop the recorded deployment (``hosts`` None), or what start-pd started on ``hosts``.

    Whole deployment: every recorded server, and the router unless ``keep_router``.
    ``hosts``: the servers recorded on those hosts — in the manifest, and in the
    per-server records in ``run_dir`` on each host (so it works without a manifest);
    the router is kept. ``sweep``: ``user`` kills leftovers of the engine owned by the
    login user by command line (DESIGN.md), ``deployment`` only those carrying the run id
    marker of what is stopped, ``none`` skips it. Raises `InputError` when there is
    nothing to stop and no host was named.
    """
    _check_sweep(sweep)
    if grace < 0:
        raise InputError(f"--grace must be >= 0 seconds, got {grace!r}")
    if hosts is None and manifest is None:
        raise InputError(f"no recorded deployment ({manifest_file()} not found): name the hosts "
                         "with --hosts/--role")
    records: list[ServerRecord] = []
    failures: dict[Host, Failure] = {}
    stop_router = hosts is None and not keep_router
    if hosts is None:
        assert manifest is not None
        records = [r for r in manifest.servers if r.pid]
        order = list(dict.fromkeys(host_of(r.target) for r in manifest.servers))
    else:
        order = list(dict.fromkeys(hosts))
        found, failures = records_on_hosts(engine, manifest, order, run_dir, fanout)
        records = [r for r in found if r.pid]  # a server that never got a pid has nothing to stop
    engine_name = manifest.engine if manifest else (records[0].engine if records else "sglang")
    router = manifest.router if (manifest and stop_router and manifest.router) else None
    work = _stop_work(order, records, router, engine_name, sweep, failures)
    results = stop_hosts(engine, work, grace, fanout) if work else {}
    outcomes = []
    for host in list(dict.fromkeys(list(order) + list(work))):
        if host in failures:
            outcomes.append(Outcome(host, False, error=failures[host], data=HostStop()))
            continue
        value = results.get(host)
        if isinstance(value, BaseException):
            outcomes.append(Outcome(host, False, error=transport_failure(engine, host, value),
                                    data=HostStop(servers=work[host].labels)))
            continue
        assert value is not None
        outcomes.append(Outcome(host, True, data=value).fail(_stop_failure(value))
                        if _stop_failure(value) else Outcome(host, True, data=value))
    report = Report(outcomes)
    path = None
    if manifest is not None:
        _mark_stopped(manifest, records, router, report)
        path = save_manifest(manifest)
    return StopResult(report, manifest, path, router_stopped=router is not None)


def _stop_work(order: Sequence[Host], records: Sequence[ServerRecord], router: RouterRecord | None,
               engine_name: str, sweep: str, failures: dict[Host, Failure]) -> dict[Host, StopWork]:
    work: dict[Host, StopWork] = {}
    for host in order:
        if host not in failures:
            work[host] = StopWork(host=host, engine=engine_name, sweep=sweep)
    for record in records:
        item = work.get(host_of(record.target))
        if item is None:
            continue
        item.pgids.append(int(record.pgid or record.pid or 0))
        item.labels.append(f"{record.role} :{record.port}")
        item.address = record.host
        item.ports += [p for p in record.ports if p not in item.ports]
        if record.run_id not in item.run_ids:
            item.run_ids += (record.run_id,)
    if router is not None and router.pid:
        rhost = host_of(router.target)
        item = work.setdefault(rhost, StopWork(host=rhost, engine=engine_name, sweep=sweep,
                                               sweep_servers=False, gpu=False))
        item.pgids.append(int(router.pgid or router.pid))
        item.labels.append(f"router :{router.port}")
        item.sweep_router = True
        item.address = item.address or router.bind
        item.ports += [router.port]
        if router.run_id not in item.run_ids:
            item.run_ids += (router.run_id,)
    for item in work.values():
        item.pgids = [g for g in dict.fromkeys(item.pgids) if g > 1]
        if item.host.is_local and not item.labels:
            item.gpu = False
    return work


def _stop_failure(stop: HostStop) -> Failure | None:
    if stop.survivors:
        return Failure(SURVIVORS, f"process(es) {', '.join(map(str, stop.survivors))} survived SIGKILL",
                       "stuck in uninterruptible I/O (D state)? check `ps -o pid,stat,cmd` on the host")
    busy = [p for p, free in stop.ports.items() if not free]
    if busy:
        return Failure(PORT_BUSY, f"port(s) still in use after the stop: {', '.join(map(str, busy))}",
                       "another process holds them: find it with `ss -ltnp` on the host")
    return None


def _mark_stopped(manifest: Manifest, records: Sequence[ServerRecord], router: RouterRecord | None,
                  report: Report) -> None:
    """Stamp ``stopped_at`` on what was stopped cleanly; the manifest when all is."""
    now = time.time()
    clean = {str(o.host) for o in report if o.ok}
    stopped = {(r.record_path, r.pid) for r in records if str(host_of(r.target)) in clean}
    for record in manifest.servers:
        if (record.record_path, record.pid) in stopped:
            record.stopped_at = now
    if router is not None and manifest.router is not None and str(host_of(router.target)) in clean:
        manifest.router.stopped_at = now
    if all(r.stopped_at or not r.pid for r in manifest.servers) and (
            manifest.router is None or manifest.router.stopped_at or not manifest.router.pid):
        manifest.stopped_at = now
