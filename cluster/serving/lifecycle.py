"""The PD deployment lifecycle over SSH: :func:`start_pd`, :func:`stop_pd`, :func:`pd_status`.

Everything that runs on a host is built by :mod:`cluster.serving.commands` (pure) and
fed to the host's shell **on stdin** (:func:`run_script`), so secrets in the
environment never appear in any process's command line. Each step is one round trip
per host over connections that stay open (``keep_open``) for the next step.

start (``start_pd``)
    1. plan (pure, :func:`plan_start`): bad input raises `InputError` before any
       connection; ``dry_run`` stops here (:func:`dry_run_scripts`).
    2. preflight on every host, changing nothing: env file, a live server from the
       pid file (``already-running``), ports, launcher; plus the recorded deployment of
       the same name (still running elsewhere?). Any failure: nothing starts anywhere.
    3. ``restart``: stop what the preflight found running (and the recorded deployment).
    4. launch every server in its own session, record the manifest (controller) and a
       per-server record (on its host, in the run dir).
    5. wait (unless ``wait=False``): poll ``/health`` of each rank 0 *from its host*,
       check every rank's process; a dead server fails fast with its last 30 log lines;
       an overall deadline.
    6. the router, if asked: launch, wait for ``/readiness``.

stop (``stop_pd``): per host, one script: SIGTERM every group, a shared grace, SIGKILL,
sweep leftovers by command line (the user's, or only this deployment's by the
``CLUSTER_PD_RUN_ID`` marker), check the ports, read GPU memory via nvidia-smi.

status (``pd_status``): per server pid alive, ports listening, ``/health``, uptime,
last log line; router ``/readiness`` and ``/workers``.

Failure kinds added here (docs/pd.md): ``env-file``, ``run-dir``, ``already-running``,
``port-busy``, ``no-launcher``, ``launch``, ``died``, ``not-ready``, ``survivors``,
``not-running``, ``unhealthy``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .. import gpu
from ..errors import InputError
from ..hosts import Host
from ..result import Failure, Outcome, Report
from ..ssh import Engine, HostSession
from . import commands as cmd
from .commands import Manifest, RouterRecord, RouterSpec, ServerRecord, ServerSpec
from .config import ServingConfig
from .remote import STEP_TIMEOUT_S, each, host_of, run_script, sections_on, transport_failure
from .store import load_manifest, manifest_file, save_manifest

__all__ = [  # the lifecycle's public names, including those it re-exports
    "ServerRow", "StartPlan", "StartResult", "GpuAfter", "HostStop", "StopResult", "StatusResult",
    "StopWork", "plan_start", "dry_run_scripts", "start_pd", "stop_pd", "pd_status",
    "discover_records", "server_key", "host_of", "run_script", "manifest_file", "load_manifest",
    "save_manifest",
]

ROUTER = "router"
DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_GRACE_S = 30.0
POLL_INTERVAL_S = 1.0
LOG_TAIL_LINES = 30
ROUTER_MIN_WAIT_S = 60.0       # the router gets at least this long, even late in the timeout
TRANSPORT_STRIKES = 3          # consecutive failed polls of a host before its servers fail
SWEEP_SCOPES = ("user", "deployment", "none")

# Failure kinds (see the module docstring).
ENV_FILE = "env-file"
RUN_DIR = "run-dir"
ALREADY_RUNNING = "already-running"
PORT_BUSY = "port-busy"
NO_LAUNCHER = "no-launcher"
LAUNCH = "launch"
DIED = "died"
NOT_READY = "not-ready"
SURVIVORS = "survivors"
NOT_RUNNING = "not-running"
UNHEALTHY = "unhealthy"

_EXIT_KINDS = {
    cmd.EXIT_ENV_FILE_MISSING: (ENV_FILE, "create it on that host, or fix serving.env_file / --env-file"),
    cmd.EXIT_RUN_DIR: (RUN_DIR, "check serving.run_dir and the login user's permissions there"),
    cmd.EXIT_ALREADY_RUNNING: (ALREADY_RUNNING, "stop it first (inv stop-pd), or pass --restart"),
    cmd.EXIT_PORT_BUSY: (PORT_BUSY, "something else listens there: find it on the host "
                                    "(ss -ltnp) or choose other ports"),
    cmd.EXIT_LAUNCHER_MISSING: (NO_LAUNCHER, "install it, or set serving.env_file to the file that "
                                             "activates its environment"),
}

# Per-server phases shown while starting (and in the final table).
PLANNED, NOT_STARTED, STARTING, LOADING, READY, RUNNING = (
    "planned", "not started", "starting", "loading", "ready", "running")
STARTED, FAILED, DRY_RUN, STOPPED, HEALTHY = "started", "failed", "dry-run", "stopped", "healthy"

ProgressFn = Callable[[list["ServerRow"], float], None]


# --------------------------------------------------------------------------- data


@dataclass
class ServerRow:
    """One server node-rank (or the router) in start-pd / pd-status output: ``Outcome.data``."""

    role: str
    host: str                      # the address the process binds / advertises
    target: str                    # how it is reached (host expression item, or "local")
    port: int
    key: str
    node_rank: int = 0
    server_index: int = 0
    nnodes: int = 1
    is_api: bool = True
    run_id: str = ""
    pid: int | None = None
    status: str = PLANNED
    ready_after_s: float | None = None
    log_path: str = ""
    command: str = ""
    log_tail: list[str] = field(default_factory=list)
    # pd-status (and the last poll of start-pd)
    alive: bool | None = None
    members: int | None = None
    listening: bool | None = None
    health: int | None = None
    uptime_s: int | None = None
    last_log: str | None = None
    workers: list[dict[str, Any]] | None = None   # router: GET /workers
    url: str | None = None
    stopped_at: float | None = None  # recorded by stop-pd

    @property
    def label(self) -> str:
        return f"{self.role} {self.host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["address"] = doc.pop("host")
        return doc


@dataclass(frozen=True)
class StartPlan:
    """What start-pd will do: the servers, the router, and where it is recorded."""

    config: ServingConfig
    servers: tuple[ServerSpec, ...]
    router: RouterSpec | None
    run_id: str
    deployment: str


@dataclass
class StartResult:
    """What :func:`start_pd` did. ``stage`` = how far it got: ``dry-run``, ``preflight``
    (refused, nothing started), ``launch``, ``wait``, ``router``, ``done`` (all ready, or
    everything started with ``wait=False``)."""

    report: Report
    stage: str
    plan: StartPlan
    manifest: Manifest | None = None
    manifest_file: Path | None = None
    dry_run: list[tuple[ServerRow, str]] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.report.all_ok

    @property
    def router_url(self) -> str | None:
        return self.plan.router.url if self.plan.router else None


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
    killed_after_grace: list[int] = field(default_factory=list)
    how: str = ""                                          # term | kill | mixed | "" (nothing ran)
    seconds: int | None = None
    leftovers: list[tuple[int, str]] = field(default_factory=list)  # swept by command line
    survivors: list[int] = field(default_factory=list)
    ports: dict[int, bool] = field(default_factory=dict)   # port -> free?
    gpu: GpuAfter | None = None

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
    """What :func:`stop_pd` did: one outcome per host, and the updated manifest."""

    report: Report
    manifest: Manifest | None = None
    manifest_file: Path | None = None
    router_stopped: bool = False


@dataclass
class StatusResult:
    """What :func:`pd_status` found: one outcome per server (and the router)."""

    report: Report
    manifest: Manifest | None = None


# --------------------------------------------------------------------------- planning (pure)


def plan_start(config: ServingConfig, prefill: Sequence[str | Host], decode: Sequence[str | Host], *,
               router: str | Host | None = None, deployment: str | None = None,
               run_id: str | None = None, environ: dict[str, str] | None = None) -> StartPlan:
    """Plan a deployment (pure; raises `InputError` on bad input before any connection)."""
    servers = cmd.plan_deployment(config, prefill, decode, run_id=run_id,
                                  environ=os.environ if environ is None else environ)
    router_spec = cmd.plan_router(config, servers, host=router)
    return StartPlan(config, tuple(servers), router_spec, servers[0].run_id,
                     deployment or cmd.DEFAULT_DEPLOYMENT)


def server_key(spec: ServerSpec | ServerRecord) -> str:
    """Stable key of one server node-rank: ``prefill-0-0`` (role, server, rank)."""
    return f"{spec.role}-{spec.server_index}-{spec.node_rank}"


def _row_of_spec(spec: ServerSpec) -> ServerRow:
    return ServerRow(role=spec.role, host=spec.host, target=spec.target, port=spec.port,
                     key=server_key(spec), node_rank=spec.node_rank, server_index=spec.server_index,
                     nnodes=spec.nnodes, is_api=spec.is_api, run_id=spec.run_id,
                     log_path=spec.log_path, command=cmd.display_command(spec), url=spec.url)


def _reachable(bind: str) -> str:
    """Where a router bound to ``bind`` answers on its own host (a wildcard: loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)


def _row_of_router(spec: RouterSpec) -> ServerRow:
    return ServerRow(role=ROUTER, host=_reachable(spec.bind), target=spec.target, port=spec.port, key=ROUTER,
                     run_id=spec.run_id, log_path=spec.log_path, command=cmd.display_command(spec),
                     url=spec.url)


def _row_of_record(record: ServerRecord) -> ServerRow:
    return ServerRow(role=record.role, host=record.host, target=record.target, port=record.port,
                     key=server_key(record), node_rank=record.node_rank,
                     server_index=record.server_index, nnodes=record.nnodes, is_api=record.is_api,
                     run_id=record.run_id, pid=record.pid, log_path=record.log_path,
                     command=record.command, url=cmd.http_url(record.host, record.port),
                     stopped_at=record.stopped_at)


def _row_of_router_record(record: RouterRecord) -> ServerRow:
    return ServerRow(role=ROUTER, host=_reachable(record.bind), target=record.target, port=record.port,
                     key=ROUTER, run_id=record.run_id, pid=record.pid, log_path=record.log_path,
                     command=record.command, url=record.url, stopped_at=record.stopped_at)


def dry_run_scripts(plan: StartPlan) -> list[tuple[ServerRow, str]]:
    """Each process's launch script as it would run, secrets masked (``--dry-run``)."""
    out = [(_row_of_spec(s), cmd.render_for_display(s)) for s in plan.servers]
    if plan.router:
        out.append((_row_of_router(plan.router), cmd.render_for_display(plan.router)))
    for row, _ in out:
        row.status = DRY_RUN
    return out


# --------------------------------------------------------------------------- start


class _Start:
    """State of one start-pd run (rows, launches, hosts); the steps are methods."""

    def __init__(self, engine: Engine, plan: StartPlan, *, restart: bool, grace: float,
                 fanout: int | None, on_progress: ProgressFn | None, poll_s: float) -> None:
        self.engine, self.plan, self.restart, self.grace = engine, plan, restart, grace
        self.fanout, self.on_progress, self.poll_s = fanout, on_progress, poll_s
        self.started = time.monotonic()
        self.specs = {server_key(s): s for s in plan.servers}
        self.rows: dict[str, ServerRow] = {k: _row_of_spec(s) for k, s in self.specs.items()}
        self.failures: dict[str, Failure] = {}
        self.launches = {k: cmd.server_launch(s) for k, s in self.specs.items()}
        self.hosts = {k: host_of(s.target) for k, s in self.specs.items()}
        self.router_host = host_of(plan.router.target) if plan.router else None
        if plan.router:
            self.rows[ROUTER] = _row_of_router(plan.router)
            self.launches[ROUTER] = cmd.router_launch(plan.router)
            self.hosts[ROUTER] = self.router_host  # type: ignore[assignment]
        self.previous = load_manifest(plan.deployment)
        # Servers of the recorded deployment that still run (refused without --restart).
        self.extra: list[tuple[ServerRow, Failure]] = []
        self.manifest: Manifest | None = None
        self.started_at: dict[str, float] = {}
        self.running: dict[Host, set[int]] = {}        # live groups named by the new pid files
        self.previous_alive: dict[Host, list[int]] = {}  # live groups of the recorded deployment

    # -- helpers
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def fail(self, key: str, failure: Failure, status: str = FAILED) -> None:
        self.failures[key] = failure
        self.rows[key].status = status

    def fail_host(self, keys: Iterable[str], failure: Failure) -> None:
        for key in keys:
            self.fail(key, failure)

    def keys_on(self, host: Host, keys: Iterable[str] | None = None) -> list[str]:
        return [k for k in (keys if keys is not None else self.rows) if self.hosts.get(k) == host]

    def progress(self) -> None:
        if self.on_progress:
            self.on_progress(self.all_rows(), self.elapsed())

    def all_rows(self) -> list[ServerRow]:
        return list(self.rows.values()) + [row for row, _ in self.extra]

    def report(self) -> Report:
        pairs = [(row, self.failures.get(key)) for key, row in self.rows.items()] + [
            (row, failure) for row, failure in self.extra]
        return Report([Outcome(host_of(row.target), failure is None, error=failure, data=row)
                       for row, failure in pairs])

    # -- step 2: preflight
    def preflight(self) -> bool:
        """Check every host; True when everything may start. Changes nothing."""
        work: dict[Host, list[tuple[str, str]]] = {}
        for key, launch in self.launches.items():
            script = cmd.preflight_script(launch, running_ok=self.restart)
            work.setdefault(self.hosts[key], []).append((key, script))
        previous = self._previous_targets()
        for host, targets in previous.items():
            work.setdefault(host, []).append(("previous", cmd.probe_command(targets)))
        results = sections_on(self.engine, work, STEP_TIMEOUT_S, self.fanout)
        for host, value in results.items():
            keys = [k for k, _ in work[host] if k != "previous"]
            if isinstance(value, BaseException):
                self.fail_host(keys, transport_failure(self.engine, host, value))
                continue
            for key in keys:
                self._judge_preflight(key, host, value.get(key))
            if host in previous:
                self._judge_previous(host, previous[host], value.get("previous"))
        ok = not self.failures and not self.extra
        for key, row in self.rows.items():
            if key not in self.failures:
                row.status = PLANNED if ok else NOT_STARTED
        return ok

    def _judge_preflight(self, key: str, host: Host, section: cmd.Section | None) -> None:
        if section is None or section.rc is None:
            self.fail(key, Failure(LAUNCH, "preflight did not finish", "check the host (inv check)"))
            return
        lines = [line for line in section.output.splitlines() if line.strip()]
        for line in lines:
            if line.startswith("RUNNING ") and line.split()[1].isdigit():
                self.running.setdefault(host, set()).add(int(line.split()[1]))
        if section.rc != 0:
            self.fail(key, _exit_failure(section.rc, lines))

    def _previous_targets(self) -> dict[Host, list[cmd.ProbeTarget]]:
        """Probes of the recorded deployment of the same name, when it may still run."""
        prev = self.previous
        if prev is None or prev.stopped_at is not None or prev.run_id == self.plan.run_id:
            return {}
        out: dict[Host, list[cmd.ProbeTarget]] = {}
        for record in prev.servers:
            if record.pid and record.stopped_at is None:
                target = cmd.ProbeTarget(key=server_key(record), pgid=record.pid, host=record.host,
                                         port=record.port, log_path=record.log_path, health_path=None)
                out.setdefault(host_of(record.target), []).append(target)
        if prev.router and prev.router.pid and prev.router.stopped_at is None:
            r = prev.router
            out.setdefault(host_of(r.target), []).append(cmd.ProbeTarget(
                key=ROUTER, pgid=r.pid, host=r.bind, port=r.port, log_path=r.log_path, health_path=None))
        return out

    def _judge_previous(self, host: Host, targets: list[cmd.ProbeTarget],
                        section: cmd.Section | None) -> None:
        probes = cmd.parse_probe(section.output) if section else {}
        prev = self.previous
        assert prev is not None
        for target in targets:
            probe = probes.get(target.key)
            if probe is None or not probe.alive:
                continue
            self.previous_alive.setdefault(host, []).append(int(target.pgid or 0))
            planned = {(r.host, r.port) for r in self.rows.values()}
            if self.restart or (target.host, target.port) in planned:
                continue  # restarted, or refused already by its pid file on that host:port
            record = next((r for r in prev.servers if server_key(r) == target.key), None)
            row = (_row_of_record(record) if record else
                   _row_of_router_record(prev.router))  # type: ignore[arg-type]
            row.status = "running (recorded)"
            row.alive = True
            self.extra.append((row, Failure(
                ALREADY_RUNNING,
                f"deployment '{prev.name}' (run {prev.run_id}) still runs here: {row.role} "
                f"{row.host}:{row.port}, process group {target.pgid}",
                "stop it first (inv stop-pd), pass --restart, or use another --deployment name")))

    # -- step 3: restart
    def stop_running(self) -> None:
        """``--restart``: stop what the preflight found (pid files, recorded deployment)."""
        prev = self.previous
        run_ids = (prev.run_id,) if prev is not None else ()
        work: dict[Host, StopWork] = {}
        for host in set(self.running) | set(self.previous_alive):
            groups = sorted(self.running.get(host, set()) | set(self.previous_alive.get(host, [])))
            engine_name = self.plan.config.engine
            work[host] = StopWork(host=host, pgids=groups, engine=engine_name,
                                  sweep="deployment" if run_ids else "none", run_ids=run_ids,
                                  sweep_servers=True, spare_router=False, gpu=False)
        if work:
            results = _stop_hosts(self.engine, work, self.grace, self.fanout)
            for host, value in results.items():
                if isinstance(value, BaseException):
                    self.fail_host(self.keys_on(host), transport_failure(self.engine, host, value))
                elif value.survivors:
                    self.fail_host(self.keys_on(host), Failure(
                        SURVIVORS, f"--restart: processes {value.survivors} survived SIGKILL",
                        "they are stuck (uninterruptible I/O?); check the host"))
        if prev is not None and prev.run_id != self.plan.run_id and prev.stopped_at is None:
            prev.stopped_at = time.time()
            save_manifest(prev)

    # -- step 4: launch
    def launch(self, keys: Sequence[str]) -> bool:
        """Start the given processes (grouped per host); True when all started."""
        work: dict[Host, list[tuple[str, str]]] = {}
        for key in keys:
            work.setdefault(self.hosts[key], []).append((key, cmd.launch_script(self.launches[key])))
        results = sections_on(self.engine, work, STEP_TIMEOUT_S, self.fanout)
        now = time.time()
        for host, value in results.items():
            mine = [k for k, _ in work[host]]
            if isinstance(value, BaseException):
                self.fail_host(mine, transport_failure(self.engine, host, value))
                continue
            for key in mine:
                section = value.get(key)
                lines = [line for line in (section.output if section else "").splitlines() if line.strip()]
                if section is None or section.rc != 0 or not lines or not lines[-1].strip().isdigit():
                    rc = section.rc if section and section.rc is not None else -1
                    self.fail(key, _exit_failure(rc, lines) if rc > 0 else Failure(
                        LAUNCH, "the launch did not report a pid", "see the log on that host"))
                    continue
                self.rows[key].pid = int(lines[-1])
                self.rows[key].status = STARTING
                self.rows[key].uptime_s = 0
                self.started_at[key] = now
        return all(k not in self.failures for k in keys)

    def record(self) -> Path:
        """Write (or update) the manifest on the controller and the per-server records."""
        started_at = self.started_at
        if self.manifest is None:
            self.manifest = Manifest(
                name=self.plan.deployment, engine=self.plan.config.engine, run_id=self.plan.run_id,
                model_path=self.plan.config.model_path or "", created_at=time.time(),
                servers=[ServerRecord.from_spec(s, pid=self.rows[k].pid, started_at=started_at.get(k))
                         for k, s in self.specs.items()])
            self._write_host_records()
        router = self.plan.router
        if router and self.rows[ROUTER].pid:
            self.manifest.router = RouterRecord.from_spec(router, pid=self.rows[ROUTER].pid,
                                                          started_at=started_at.get(ROUTER))
        return save_manifest(self.manifest)

    def _write_host_records(self) -> None:
        assert self.manifest is not None
        work: dict[Host, list[tuple[str, str]]] = {}
        for record in self.manifest.servers:
            if record.pid:
                work.setdefault(host_of(record.target), []).append(
                    (server_key(record), cmd.record_write_command(record)))
        # Best effort: the controller's manifest is the primary record.
        sections_on(self.engine, work, STEP_TIMEOUT_S, self.fanout)

    # -- step 5/6: wait
    def wait(self, keys: Sequence[str], deadline: float, health_path: str = "/health") -> bool:
        """Poll until every API process in ``keys`` answers 200 on ``health_path``.

        Returns False (with failures set) when a process dies or the deadline passes.
        """
        pending = [k for k in keys if k not in self.failures]
        strikes: dict[Host, int] = {}
        while True:
            targets = self._probe_targets(pending, health_path)
            results = sections_on(self.engine, {h: [("probe", cmd.probe_command(t))]
                                                 for h, t in targets.items()}, STEP_TIMEOUT_S, self.fanout)
            dead: list[str] = []
            for host, value in results.items():
                mine = [t.key for t in targets[host]]
                if isinstance(value, BaseException):
                    strikes[host] = strikes.get(host, 0) + 1
                    if strikes[host] >= TRANSPORT_STRIKES:
                        self.fail_host(mine, transport_failure(self.engine, host, value))
                    continue
                strikes.pop(host, None)
                probes = cmd.parse_probe(value["probe"].output) if "probe" in value else {}
                for key in mine:
                    if self._update(key, probes.get(key)):
                        dead.append(key)
            self._mark_followers_ready(pending)
            if dead:
                self._fail_with_tails(dead, DIED)
            self.progress()
            if any(k in self.failures for k in pending):
                return False
            if all(self.rows[k].status == READY for k in pending):
                return True
            if time.monotonic() >= deadline:
                late = [k for k in pending if self.rows[k].status != READY]
                self._fail_with_tails(late, NOT_READY)
                self.progress()
                return False
            time.sleep(self.poll_s)

    def _probe_targets(self, keys: Sequence[str], health_path: str) -> dict[Host, list[cmd.ProbeTarget]]:
        out: dict[Host, list[cmd.ProbeTarget]] = {}
        for key in keys:
            row = self.rows[key]
            if key in self.failures or row.pid is None:
                continue
            path = health_path if row.is_api else None
            out.setdefault(self.hosts[key], []).append(cmd.ProbeTarget(
                key=key, pgid=row.pid, host=row.host, port=row.port, log_path=row.log_path,
                health_path=path))
        return out

    def _update(self, key: str, probe: cmd.ProbeResult | None) -> bool:
        """Apply one poll to a row; True when its process is gone (it died)."""
        row = self.rows[key]
        if probe is None:
            return False
        row.alive, row.members, row.health = probe.leader_alive, probe.members, probe.health
        row.uptime_s, row.last_log = probe.uptime_s, probe.last_log
        if not probe.leader_alive:
            return True
        if row.status == READY:
            return False
        if row.is_api and probe.health == 200:
            row.status = READY
            row.ready_after_s = round(time.time() - self.started_at.get(key, time.time()), 1)
        elif probe.health not in (None, 0) or probe.last_log:
            row.status = LOADING if row.is_api else RUNNING
        else:
            row.status = STARTING
        return False

    def _mark_followers_ready(self, keys: Sequence[str]) -> None:
        """A rank >= 1 is ready when the rank 0 of its server is (only rank 0 has the API)."""
        for key in keys:
            row = self.rows[key]
            if row.is_api or row.status in (READY, FAILED) or key in self.failures:
                continue
            head = self.rows.get(f"{row.role}-{row.server_index}-0")
            if head is not None and head.status == READY and row.alive:
                row.status = READY
                row.ready_after_s = head.ready_after_s

    def _fail_with_tails(self, keys: Sequence[str], kind: str) -> None:
        work: dict[Host, list[tuple[str, str]]] = {}
        for key in keys:
            work.setdefault(self.hosts[key], []).append(
                (key, cmd.tail_command(self.rows[key].log_path, LOG_TAIL_LINES)))
        results = sections_on(self.engine, work, STEP_TIMEOUT_S, self.fanout)
        for host, value in results.items():
            for key, _ in work[host]:
                row = self.rows[key]
                if not isinstance(value, BaseException) and key in value:
                    row.log_tail = cmd.clean_log_lines(value[key].output)
                last = next((line for line in reversed(row.log_tail) if line.strip()), "")
                if kind == DIED:
                    lived = time.time() - self.started_at.get(key, time.time())
                    message = (f"{row.label}: the process exited during start-up "
                               f"after {lived:.0f} s"
                               + (f"; last log line: {last}" if last else ""))
                    hint = f"see the last {LOG_TAIL_LINES} log lines below ({row.log_path})"
                else:
                    message = (f"{row.label}: not ready after {self.elapsed():.0f} s "
                               f"(status {row.status}, /health {row.health or 'no answer'})")
                    hint = (f"raise --timeout, or read {row.log_path}; the process is left running "
                            "(inv pd-status, inv stop-pd)")
                self.fail(key, Failure(kind, message, hint), status=kind)


def _exit_failure(rc: int, lines: list[str]) -> Failure:
    """A failed preflight/launch step: the documented exit codes, else a generic one."""
    message = next((line for line in reversed(lines) if not line.startswith("RUNNING ")), "")
    kind, hint = _EXIT_KINDS.get(rc, (LAUNCH, "see the message; rerun with --dry-run to see the script"))
    return Failure(kind, message or cmd.EXIT_MESSAGES.get(rc, f"exit code {rc}"), hint, exit_code=rc)


def start_pd(engine: Engine, plan: StartPlan, *, wait: bool = True,
             timeout: float = DEFAULT_TIMEOUT_S, restart: bool = False,
             grace: float = DEFAULT_GRACE_S, fanout: int | None = None,
             on_progress: ProgressFn | None = None, poll_s: float = POLL_INTERVAL_S) -> StartResult:
    """Start the planned deployment (see the module docstring for the steps).

    Per-server results are values (``report``: one outcome per server node-rank, then
    the router), never exceptions; ``stage`` says how far it got. Only bad input
    (before any connection) raises `InputError`. ``on_progress(rows, elapsed)`` is
    called after every poll round.
    """
    if timeout <= 0:
        raise InputError(f"--timeout must be > 0 seconds, got {timeout!r}")
    run = _Start(engine, plan, restart=restart, grace=grace, fanout=fanout,
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


# --------------------------------------------------------------------------- stop


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
        sections = [("stop", cmd.stop_groups_command(self.pgids, grace))]
        if self.sweep != "none" and (self.sweep == "user" or self.run_ids):
            run_ids = self.run_ids if self.sweep == "deployment" else ()
            if self.sweep_servers:
                spare = self.spare_router and not self.sweep_router
                sections.append(("sweep", cmd.sweep_command(self.engine, None, spare, run_ids=run_ids)))
            elif self.sweep_router:
                sections.append(("sweep", cmd.sweep_command(self.engine, None, False, servers=False,
                                                            run_ids=run_ids)))
        if self.ports:
            sections.append(("ports", cmd.ports_free_command(self.ports, self.address)))
        if self.gpu:
            sections.append(("gpu", "if command -v nvidia-smi >/dev/null 2>&1; then "
                                    f"( {gpu.COMMAND} ); else echo @@no-nvidia-smi; fi"))
        return cmd.sections_script(sections)


def _stop_hosts(engine: Engine, work: dict[Host, StopWork], grace: float,
                fanout: int | None = None) -> dict[Host, HostStop | BaseException]:
    timeout = grace + STEP_TIMEOUT_S + 10  # grace, the SIGKILL wait (5 s), sweep, nvidia-smi

    def one(session: HostSession) -> HostStop:
        item = work[session.host]
        result = run_script(session, item.script(grace), timeout)
        return _parse_host_stop(item, cmd.parse_sections(result.stdout))

    return each(engine, list(work), one, fanout)


def _parse_host_stop(item: StopWork, sections: dict[str, cmd.Section]) -> HostStop:
    stop = HostStop(servers=list(item.labels))
    groups = cmd.parse_stop_groups(sections["stop"].output) if "stop" in sections else {}
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
        swept = cmd.parse_sweep(sections["sweep"].output)
        stop.leftovers = list(swept.killed)
        stop.survivors += list(swept.survived)
    if "ports" in sections:
        stop.ports = cmd.parse_ports_free(sections["ports"].output)
    if "gpu" in sections:
        stop.gpu = _gpu_after(sections["gpu"])
    return stop


def _gpu_after(section: cmd.Section) -> GpuAfter:
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


def discover_records(engine: Engine, hosts: Sequence[Host], run_dir: str,
                     fanout: int | None = None) -> dict[Host, list[ServerRecord] | BaseException]:
    """The server records start-pd left in ``run_dir`` on each host (its own files only)."""
    def one(session: HostSession) -> list[ServerRecord]:
        address = "127.0.0.1" if session.host.is_local else session.host.hostname
        result = run_script(session, cmd.records_command(run_dir, address))
        return [r for r in cmd.parse_records(result.stdout) if r.host == address]

    return each(engine, hosts, one, fanout)


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
        wanted = {h.hostname for h in order}
        if manifest is not None:
            records = [r for r in manifest.servers if r.pid and host_of(r.target).hostname in wanted]
        if run_dir:
            for host, found in discover_records(engine, order, run_dir, fanout).items():
                if isinstance(found, BaseException):
                    failures[host] = transport_failure(engine, host, found)
                    continue
                known = {(r.record_path, r.pid) for r in records}
                records += [r for r in found if r.pid and (r.record_path, r.pid) not in known]
    engine_name = manifest.engine if manifest else (records[0].engine if records else "sglang")
    router = manifest.router if (manifest and stop_router and manifest.router) else None
    work = _stop_work(order, records, router, engine_name, sweep, failures)
    results = _stop_hosts(engine, work, grace, fanout) if work else {}
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


# --------------------------------------------------------------------------- status


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
        wanted = {h.hostname for h in hosts}
        if manifest is not None:
            records = [r for r in manifest.servers if host_of(r.target).hostname in wanted]
        if run_dir:
            for host, found in discover_records(engine, hosts, run_dir, fanout).items():
                if isinstance(found, BaseException):
                    unreachable[host] = transport_failure(engine, host, found)
                    continue
                known = {(r.record_path, r.pid) for r in records}
                records += [r for r in found if (r.record_path, r.pid) not in known]
    rows = [_row_of_record(r) for r in records]
    router = manifest.router if (manifest and hosts is None) else None
    if router is not None:
        rows.append(_row_of_router_record(router))
    targets: dict[Host, list[cmd.ProbeTarget]] = {}
    for row in rows:
        is_router = row.role == ROUTER
        targets.setdefault(host_of(row.target), []).append(cmd.ProbeTarget(
            key=row.key, pgid=row.pid, host=row.host, port=row.port, log_path=row.log_path,
            ports=(row.port,) if row.is_api or is_router else (),
            health_path="/readiness" if is_router else ("/health" if row.is_api else None),
            fetch_path="/workers" if is_router else None))
    # A selected host with nothing recorded is named, not silently left out.
    empty = [h for h in (hosts or ()) if h.hostname not in {host_of(r.target).hostname for r in rows}]
    results = sections_on(engine, {h: [("probe", cmd.probe_command(t))] for h, t in targets.items()},
                           STEP_TIMEOUT_S, fanout)
    outcomes = []
    for row in rows:
        host = host_of(row.target)
        value = results.get(host)
        if isinstance(value, BaseException):
            row.status = FAILED
            failure: Failure | None = transport_failure(engine, host, value)
        else:
            probes = cmd.parse_probe(value["probe"].output) if value and "probe" in value else {}
            failure = _judge_status(row, probes.get(row.key))
        outcomes.append(Outcome(host, failure is None, error=failure, data=row))
    nothing = Failure(NOT_RUNNING, "no server recorded on this host",
                      "nothing was started here by start-pd (or serving.run_dir differs)")
    outcomes += [Outcome(h, False, error=unreachable.get(h, nothing),
                         data=ServerRow(role="—", host=h.hostname, target=str(h), port=0,
                                        key="none", status="none" if h not in unreachable else FAILED))
                 for h in empty]
    return StatusResult(Report(outcomes), manifest)


def _judge_status(row: ServerRow, probe: cmd.ProbeResult | None) -> Failure | None:
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
