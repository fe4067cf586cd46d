"""The PD lifecycle's data (pure): tunables, failure kinds, per-server phases, the row
shown per server (:class:`ServerRow`), the plan and the results of start / stop /
status, and the rows built from specs and records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..result import Report
from .argv import display_command
from .config import ServingConfig
from .manifest import Manifest, RouterRecord, ServerRecord
from .plan import RouterSpec, ServerSpec
from .text import http_url

ROUTER = "router"
DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_GRACE_S = 30.0
POLL_INTERVAL_S = 1.0
LOG_TAIL_LINES = 30
ROUTER_MIN_WAIT_S = 60.0       # the router gets at least this long, even late in the timeout
TRANSPORT_STRIKES = 3          # consecutive failed polls of a host before its servers fail
SWEEP_SCOPES = ("user", "deployment", "none")


# Failure kinds (listed in the docstring of cluster.serving.lifecycle; docs/pd.md).
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


# Per-server phases shown while starting (and in the final table).
PLANNED, NOT_STARTED, STARTING, LOADING, READY, RUNNING = (
    "planned", "not started", "starting", "loading", "ready", "running")
STARTED, FAILED, DRY_RUN, STOPPED, HEALTHY = "started", "failed", "dry-run", "stopped", "healthy"


ProgressFn = Callable[[list["ServerRow"], float], None]


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


def server_key(spec: ServerSpec | ServerRecord) -> str:
    """Stable key of one server node-rank: ``prefill-0-0`` (role, server, rank)."""
    return f"{spec.role}-{spec.server_index}-{spec.node_rank}"


def row_of_spec(spec: ServerSpec) -> ServerRow:
    return ServerRow(role=spec.role, host=spec.host, target=spec.target, port=spec.port,
                     key=server_key(spec), node_rank=spec.node_rank, server_index=spec.server_index,
                     nnodes=spec.nnodes, is_api=spec.is_api, run_id=spec.run_id,
                     log_path=spec.log_path, command=display_command(spec), url=spec.url)


def _reachable(bind: str) -> str:
    """Where a router bound to ``bind`` answers on its own host (a wildcard: loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)


def row_of_router(spec: RouterSpec) -> ServerRow:
    return ServerRow(role=ROUTER, host=_reachable(spec.bind), target=spec.target, port=spec.port, key=ROUTER,
                     run_id=spec.run_id, log_path=spec.log_path, command=display_command(spec),
                     url=spec.url)


def row_of_record(record: ServerRecord) -> ServerRow:
    return ServerRow(role=record.role, host=record.host, target=record.target, port=record.port,
                     key=server_key(record), node_rank=record.node_rank,
                     server_index=record.server_index, nnodes=record.nnodes, is_api=record.is_api,
                     run_id=record.run_id, pid=record.pid, log_path=record.log_path,
                     command=record.command, url=http_url(record.host, record.port),
                     stopped_at=record.stopped_at)


def row_of_router_record(record: RouterRecord) -> ServerRow:
    return ServerRow(role=ROUTER, host=_reachable(record.bind), target=record.target, port=record.port,
                     key=ROUTER, run_id=record.run_id, pid=record.pid, log_path=record.log_path,
                     command=record.command, url=record.url, stopped_at=record.stopped_at)
