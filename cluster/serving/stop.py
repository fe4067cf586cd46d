"""stop-pd: per host, one script: verify each recorded process's identity and SIGTERM
the verified groups (a pid now someone else's is reported ``pid-reused`` and never
signalled: :mod:`cluster.detach`), a shared grace, SIGKILL, sweep leftovers by command
line (by default only this deployment's, by its run id marker; every process of the
engine of the login user with ``sweep="user"``), check the ports, remove the per-host
records of what is gone, read GPU memory via nvidia-smi.

Failure kinds: ``survivors`` (alive after SIGKILL), ``port-busy`` (a port still has a
listener).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import detach, gpu, shell
from ..errors import ParameterError
from ..hosts import Host
from ..options import seconds
from ..result import Failure, Outcome, Report
from .plan import RUN_ID_ENV, safe_name
from .records import Manifest, ServerRecord, fill_identities, manifest_file, records_on_hosts, save_manifest
from .scripts import parse_ports_free, parse_sweep, ports_free_command, sweep_command

if TYPE_CHECKING:
    from ..ssh import Engine, HostSession

DEFAULT_GRACE_S = 30.0
SWEEP_SCOPES = ("deployment", "user", "none")
DEFAULT_SWEEP = "deployment"
SURVIVORS = "survivors"
PORT_BUSY = "port-busy"


@dataclass
class GpuAfter:
    """GPU memory on a host right after the stop (nvidia-smi), or why it is unknown."""

    available: bool
    memory_used_mib: int = 0
    memory_total_mib: int = 0
    processes: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HostStop:
    """What stop-pd did on one host: ``Outcome.data``."""

    servers: list[str] = field(default_factory=list)       # "prefill :30000", "router :8000"
    stopped_pids: list[int] = field(default_factory=list)  # group members found at the start
    pid_reused: list[int] = field(default_factory=list)    # recorded pgids now someone else's: untouched
    killed_after_grace: list[int] = field(default_factory=list)
    how: str = ""                                          # term | kill | mixed | "" (nothing ran)
    seconds: int | None = None
    leftovers: list[tuple[int, str]] = field(default_factory=list)  # swept by command line
    survivors: list[int] = field(default_factory=list)
    ports: dict[int, bool] = field(default_factory=dict)   # port -> free?
    gpu: GpuAfter | None = None
    pruned: list[str] = field(default_factory=list)        # per-host records removed

    @property
    def ports_free(self) -> bool:
        return all(self.ports.values())

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["leftovers"] = [{"pid": p, "command": c} for p, c in self.leftovers]
        doc["ports"] = {str(k): v for k, v in self.ports.items()}
        doc["ports_free"] = self.ports_free
        doc["gpu"] = self.gpu.to_json() if self.gpu else None
        return doc


@dataclass
class StopResult:
    """What :func:`stop_pd` did: one outcome per host (``data``: `HostStop`), the manifest."""

    report: Report
    manifest: Manifest | None = None
    manifest_file: Path | None = None
    router_stopped: bool = False


@dataclass
class StopWork:
    """What to stop and check on one host.

    ``sweep``: ``user`` (every process of the engine of the login user), ``deployment``
    (only those of ``run_ids``, or writing to ``logs``), ``none``.
    """

    host: Host
    identities: list[detach.Identity] = field(default_factory=list)
    engine: str = "sglang"
    labels: list[str] = field(default_factory=list)
    address: str | None = None       # where the ports are checked (None: any address)
    ports: list[int] = field(default_factory=list)
    sweep: str = DEFAULT_SWEEP
    run_ids: tuple[str, ...] = ()
    logs: tuple[str, ...] = ()       # scope a deployment sweep to these servers' logs
    sweep_servers: bool = True       # this host ran servers: sweep their patterns
    sweep_router: bool = False       # the router stopped here: sweep router patterns too
    spare_router: bool = True
    gpu: bool = True
    prune: list[tuple[str, str]] = field(default_factory=list)  # (run dir, slot glob) whose gone records go

    def add(self, record: ServerRecord, ports: Sequence[int] | None = None) -> None:
        """Stop ``record``'s process group here, and check ``ports`` (default: all of its
        ports) are free afterwards."""
        self.labels.append(f"{record.role} :{record.port}")
        if record.identity is None:  # never started (as far as anyone knows): its run id is swept
            self.run_ids += () if record.run_id in self.run_ids else (record.run_id,)
            return
        self.identities.append(record.identity)
        self.address = self.address or record.host
        self.ports += [p for p in (record.ports if ports is None else ports) if p not in self.ports]
        if record.run_id not in self.run_ids:
            self.run_ids += (record.run_id,)

    def script(self, grace: float) -> str:
        sections = [("stop", detach.stop_script(self.identities, grace, RUN_ID_ENV))]
        sweep = self._sweep()
        if sweep:
            sections.append(("sweep", sweep))
        for i, (run_dir, pattern) in enumerate(dict.fromkeys(self.prune)):
            sections.append((f"prune{i}", detach.prune_script(run_dir, pattern, RUN_ID_ENV)))
        if self.ports:
            sections.append(("ports", ports_free_command(self.ports, self.address)))
        if self.gpu:
            sections.append(("gpu", "if command -v nvidia-smi >/dev/null 2>&1; then "
                                    f"( {gpu.COMMAND} ); else echo @@no-nvidia-smi; fi"))
        return shell.sections_script(sections)

    def _sweep(self) -> str | None:
        scoped = self.sweep == "deployment"
        if self.sweep == "none" or (scoped and not (self.run_ids or self.logs)):
            return None  # nothing to scope a deployment sweep by: no sweep
        run_ids = self.run_ids if scoped and not self.logs else ()
        logs = self.logs if scoped else ()
        if self.sweep_servers:
            spare = self.spare_router and not self.sweep_router
            return sweep_command(self.engine, None, spare, run_ids=run_ids, logs=logs)
        if self.sweep_router:
            return sweep_command(self.engine, None, False, servers=False, run_ids=run_ids, logs=logs)
        return None


def stop_hosts(engine: Engine, work: dict[Host, StopWork], grace: float,
               fanout: int | None = None) -> Report:
    """Run each host's stop script: one outcome per host, ``data`` = `HostStop`."""
    timeout = grace + shell.STEP_TIMEOUT_S + 10  # grace, the SIGKILL wait (5 s), sweep, nvidia-smi

    def one(session: HostSession) -> HostStop:
        item = work[session.host]
        result = shell.run_script(session, item.script(grace), timeout)
        return parse_host_stop(item, shell.parse_sections(result.stdout))

    return shell.call_report(engine, list(work), one, fanout)


def parse_host_stop(item: StopWork, sections: dict[str, shell.Section]) -> HostStop:
    """A host's `HostStop` from the sections of its stop script."""
    stop = HostStop(servers=list(item.labels))
    groups = detach.parse_stop(sections["stop"].output) if "stop" in sections else {}
    hows = set()
    for group, result in groups.items():
        if result.verdict == detach.REUSED:
            stop.pid_reused.append(group)
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
    for key, section in sections.items():
        if key.startswith("prune"):
            stop.pruned += detach.parse_pruned(section.output)
    if "ports" in sections:
        stop.ports = parse_ports_free(sections["ports"].output)
    if "gpu" in sections:
        stop.gpu = gpu_after(sections["gpu"])
    return stop


def gpu_after(section: shell.Section) -> GpuAfter:
    """GPU memory still used, from the nvidia-smi section of a stop script."""
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


def check_sweep(sweep: str) -> str:
    """``sweep`` if it is a known scope; `ParameterError` otherwise."""
    if sweep not in SWEEP_SCOPES:
        raise ParameterError("sweep", f"{{name}} must be one of {', '.join(SWEEP_SCOPES)}, got {sweep!r}")
    return sweep


def check_grace(grace: float) -> float:
    """A grace period in seconds (>= 0), or `ParameterError`."""
    return seconds(grace, "grace", allow_minimum=True)


def no_deployment(deployment: str | None) -> ParameterError:
    """The error for "nothing recorded and no hosts named" (``{name}`` = the host options)."""
    return ParameterError("hosts", f"no recorded deployment ({manifest_file(deployment)} not found): "
                                   "name the hosts with {name}")


def stop_pd(engine: Engine, manifest: Manifest | None, *, hosts: Sequence[Host] | None = None,
            run_dir: str | None = None, grace: float = DEFAULT_GRACE_S, sweep: str = DEFAULT_SWEEP,
            keep_router: bool = False, fanout: int | None = None,
            deployment: str | None = None) -> StopResult:
    """Stop the recorded deployment (``hosts`` None), or what start-pd started on ``hosts``.

    Whole deployment: every recorded server, and the router unless ``keep_router``.
    ``hosts``: the servers recorded on those hosts — in the manifest, and in the
    per-server records in ``run_dir`` on each host (so it works without a manifest);
    the router is kept. Every group is signalled only after its identity is verified on
    its host (a reused pid is reported in ``pid_reused``, untouched). ``sweep``:
    ``deployment`` (default) kills leftovers carrying the run id marker of what is
    stopped, ``user`` every process of the engine owned by the login user (by command
    line), ``none`` skips it. Then the per-host records of processes that are gone are
    removed. Raises `ParameterError` for a bad ``sweep`` / ``grace``, and when nothing is
    recorded and no host was named.
    """
    check_sweep(sweep)
    grace = check_grace(grace)
    if hosts is None and manifest is None:
        raise no_deployment(deployment)
    failures: dict[Host, Failure] = {}
    if hosts is None:
        assert manifest is not None
        records = list(manifest.servers)
        order = list(dict.fromkeys(r.ssh_host for r in manifest.servers))
    else:
        order = list(dict.fromkeys(hosts))
        records, failures = records_on_hosts(engine, manifest, order, run_dir, fanout)
    engine_name = manifest.engine if manifest else (records[0].engine if records else "sglang")
    router = manifest.router if (manifest and hosts is None and not keep_router) else None
    fill_identities(engine, records + ([router] if router else []), fanout)
    work = stop_work(order, records, router, engine_name, sweep, failures)
    results = stop_hosts(engine, work, grace, fanout)
    report = Report(_host_outcomes(order, work, failures, results), task="stop-pd")
    path = None
    if manifest is not None:
        mark_stopped(manifest, [r for r in records if r.pid], router, report)
        path = save_manifest(manifest)
    report.extra.update(deployment=manifest.name if manifest else deployment,
                        router_stopped=router is not None, manifest=str(path) if path else None)
    return StopResult(report, manifest, path, router_stopped=router is not None)


def _host_outcomes(order: Sequence[Host], work: dict[Host, StopWork], failures: dict[Host, Failure],
                   results: Report) -> list[Outcome]:
    by_host = {o.host: o for o in results}
    outcomes = []
    for host in dict.fromkeys(list(order) + list(work)):
        outcome = by_host.get(host)
        if outcome is None:
            outcome = Outcome(host, False, error=failures.get(host), data=HostStop())
        elif outcome.error is not None:
            outcome.data = HostStop(servers=work[host].labels)
        else:
            failure = stop_failure(outcome.data)
            if failure:
                outcome.fail(failure)
        outcomes.append(outcome)
    return outcomes


def stop_work(order: Sequence[Host], records: Sequence[ServerRecord], router: ServerRecord | None,
              engine_name: str, sweep: str, failures: dict[Host, Failure]) -> dict[Host, StopWork]:
    """Per host: the groups to stop, ports to check, what to sweep."""
    work: dict[Host, StopWork] = {}
    for host in order:
        if host not in failures:
            work[host] = StopWork(host=host, engine=engine_name, sweep=sweep)
    for record in records:
        item = work.get(record.ssh_host)
        if item is not None:
            item.add(record)
            item.prune.append(_host_records(record))
    if router is not None:
        rhost = router.ssh_host
        item = work.setdefault(rhost, StopWork(host=rhost, engine=engine_name, sweep=sweep,
                                               sweep_servers=False, gpu=False))
        item.add(router, ports=[router.port])
        item.prune.append(_host_records(router))
        item.sweep_router = True
    for item in work.values():
        if item.host.is_local and not item.labels:
            item.gpu = False
    return work


def _host_records(record: ServerRecord) -> tuple[str, str]:
    """(run dir, slot glob) of the per-host records of ``record``'s host address."""
    return record.spec.run_dir, f"*-{safe_name(record.spec.host)}-[0-9]*"


def stop_failure(stop: HostStop) -> Failure | None:
    """Why a host's stop failed: survivors of SIGKILL, or ports still in use."""
    if stop.survivors:
        return Failure(SURVIVORS, f"process(es) {', '.join(map(str, stop.survivors))} survived SIGKILL",
                       "stuck in uninterruptible I/O (D state)? check `ps -o pid,stat,cmd` on the host")
    busy = [p for p, free in stop.ports.items() if not free]
    if busy:
        return Failure(PORT_BUSY, f"port(s) still in use after the stop: {', '.join(map(str, busy))}",
                       "another process holds them: find it with `ss -ltnp` on the host")
    return None


def mark_stopped(manifest: Manifest, records: Sequence[ServerRecord], router: ServerRecord | None,
                 report: Report) -> None:
    """Stamp ``stopped_at`` on what was stopped cleanly; the manifest when all is."""
    now = time.time()
    clean = {str(o.host) for o in report if o.ok}
    stopped = {(r.record_path, r.pid) for r in records if str(r.ssh_host) in clean}
    for record in manifest.servers:
        if (record.record_path, record.pid) in stopped:
            record.stopped_at = now
    if router is not None and manifest.router is not None and str(router.ssh_host) in clean:
        manifest.router.stopped_at = now
    if all(r.stopped_at or not r.pid for r in manifest.servers) and (
            manifest.router is None or manifest.router.stopped_at or not manifest.router.pid):
        manifest.stopped_at = now
