"""What was started, and where it is written down.

:class:`ServerRecord` is the one type for one process of a deployment (a server
node-rank or the router) everywhere: a row of start-pd and pd-status (``Outcome.data``),
an entry of the controller's :class:`Manifest`, and the per-host record in the run dir.
It holds the process's spec (what was planned, secret values left out) and what
happened to it (pid, times, observed state).

The manifest lives on the controller at ``$CLUSTER_STATE_DIR/<name>.json``, else
``~/.cluster/deployments/<name>.json``, written atomically; the per-host records are
``<run_dir>/<engine>-<role>-<address>-<port>.json`` on each server's host, so stop-pd
and pd-status also work from a host list alone (:func:`records_on_hosts`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import shell
from ..errors import InputError
from ..hosts import Host, parse_hosts
from ..logs import LogSource
from ..result import Failure, Report
from .plan import DEFAULT_DEPLOYMENT, ProcessSpec, RouterSpec, ServerSpec, safe_name, trim_dir
from .scripts import display_command

if TYPE_CHECKING:
    from ..ssh import Engine, HostSession

MANIFEST_VERSION = 2
DEFAULT_STATE_DIR = "~/.cluster/deployments"
STATE_DIR_ENV = "CLUSTER_STATE_DIR"

# Per-process phases shown while starting (and in the final table).
PLANNED, NOT_STARTED, STARTING, LOADING, READY, RUNNING = (
    "planned", "not started", "starting", "loading", "ready", "running")
STARTED, FAILED, DRY_RUN, STOPPED, HEALTHY = "started", "failed", "dry-run", "stopped", "healthy"


def public_spec(spec: ProcessSpec) -> ProcessSpec:
    """``spec`` without the values of its secret variables (None in their place): what
    records, manifests and JSON hold."""
    if isinstance(spec, RouterSpec) or not spec.env:
        return spec
    env = tuple((name, None if _is_secret(spec, name) else value) for name, value in spec.env)
    return dataclasses.replace(spec, env=env)


def _is_secret(spec: ProcessSpec, name: str) -> bool:
    return name in spec.secret_env or shell.is_secret_name(name)


@dataclass
class ServerRecord:
    """One process of a deployment: its spec, its pid and times, and what was observed.

    ``status`` and the fields after it are filled by start-pd's polls and pd-status
    (not written to the manifest); ``pgid`` = ``pid`` (every launch is ``setsid``).
    """

    spec: ProcessSpec
    pid: int | None = None
    pgid: int | None = None
    started_at: float | None = None
    stopped_at: float | None = None
    status: str = PLANNED
    ready_after_s: float | None = None
    log_tail: list[str] = field(default_factory=list)
    alive: bool | None = None
    members: int | None = None
    listening: bool | None = None
    health: int | None = None
    uptime_s: int | None = None
    last_log: str | None = None
    workers: list[dict[str, Any]] | None = None   # router: GET /workers

    def __post_init__(self) -> None:
        self.spec = public_spec(self.spec)
        if self.pgid is None:
            self.pgid = self.pid

    # -- the spec's identity, for callers that hold a record
    @property
    def engine(self) -> str:
        return self.spec.engine

    @property
    def role(self) -> str:
        return self.spec.role

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def host(self) -> str:
        """The address the process binds / answers on."""
        return self.spec.address

    @property
    def target(self) -> str:
        """How its host is reached (host expression item, or ``local``)."""
        return self.spec.target

    @property
    def ssh_host(self) -> Host:
        return host_of(self.spec.target)

    @property
    def port(self) -> int:
        return self.spec.port

    @property
    def ports(self) -> tuple[int, ...]:
        return self.spec.ports

    @property
    def node_rank(self) -> int:
        return self.spec.node_rank

    @property
    def server_index(self) -> int:
        return self.spec.server_index

    @property
    def nnodes(self) -> int:
        return self.spec.nnodes

    @property
    def is_api(self) -> bool:
        return self.spec.is_api

    @property
    def is_router(self) -> bool:
        return isinstance(self.spec, RouterSpec)

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def log_path(self) -> str:
        return self.spec.log_path

    @property
    def record_path(self) -> str:
        return self.spec.record_path

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def label(self) -> str:
        return f"{self.role} {self.host}:{self.port}"

    @property
    def command(self) -> str:
        """The command line it runs with, secrets masked."""
        return display_command(self.spec)

    def launched(self, pid: int, at: float) -> None:
        """Record a fresh start (pid = process group)."""
        self.pid = self.pgid = pid
        self.started_at, self.stopped_at = at, None

    # -- JSON: the row shown by --json, and the record written to disk
    def to_json(self) -> dict[str, Any]:
        """The row of start-pd / pd-status ``--json`` (``address`` = where it answers)."""
        return {
            "role": self.role, "address": self.host, "target": self.target, "port": self.port,
            "key": self.key, "engine": self.engine, "node_rank": self.node_rank,
            "server_index": self.server_index, "nnodes": self.nnodes, "is_api": self.is_api,
            "run_id": self.run_id, "pid": self.pid, "status": self.status,
            "ready_after_s": self.ready_after_s, "log_path": self.log_path,
            "command": self.command, "log_tail": list(self.log_tail), "alive": self.alive,
            "members": self.members, "listening": self.listening, "health": self.health,
            "uptime_s": self.uptime_s, "last_log": self.last_log, "workers": self.workers,
            "url": self.url, "stopped_at": self.stopped_at,
        }

    def to_doc(self) -> dict[str, Any]:
        """What is written to the manifest and the per-host record (no secret values)."""
        spec = dataclasses.asdict(self.spec)
        spec["kind"] = "router" if self.is_router else "server"
        return {"spec": spec, "pid": self.pid, "pgid": self.pgid, "started_at": self.started_at,
                "stopped_at": self.stopped_at, "command": self.command}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ServerRecord:
        """Inverse of :meth:`to_doc`; unknown keys are ignored (newer writers). Reads the
        flat records of manifest version 1 too (:func:`_from_version_1`)."""
        if isinstance(doc, Mapping) and "spec" not in doc and "port" in doc:
            return _from_version_1(doc)
        if not isinstance(doc, Mapping) or not isinstance(doc.get("spec"), Mapping):
            raise TypeError("expected an object with a spec")
        raw = dict(doc["spec"])
        kind = RouterSpec if raw.pop("kind", "server") == "router" else ServerSpec
        spec = kind(**_fields(kind, _tuples(raw)))
        return cls(spec=spec, **_fields(cls, doc, exclude=("spec",)))


def _from_version_1(doc: Mapping[str, Any]) -> ServerRecord:
    """A record written before records held their spec (manifest version 1): enough of
    the spec to find, probe and stop the process (files, ports, ranks), not to relaunch
    it — restart-pd refuses such a deployment."""
    run_dir = os.path.dirname(str(doc["log_path"]))
    ports = [int(p) for p in doc.get("ports", [])]
    common = {"engine": doc["engine"], "target": doc["target"], "port": int(doc["port"]),
              "run_dir": run_dir, "run_id": doc["run_id"]}
    spec: ProcessSpec
    if "bind" in doc:  # the router
        spec = RouterSpec(host=doc["host"], bind=doc["bind"], metrics_port=0, **common)
    else:
        extra = ports[1:]  # after --port: bootstrap (prefill rank 0), then dist-init (nnodes > 1)
        bootstrap = extra.pop(0) if doc["role"] == "prefill" and doc["node_rank"] == 0 and extra else 8998
        spec = ServerSpec(role=doc["role"], host=doc["host"], server_index=doc["server_index"],
                          node_rank=doc["node_rank"], nnodes=doc["nnodes"], bootstrap_port=bootstrap,
                          dist_init_port=extra[0] if extra else 5000, **common)
    return ServerRecord(spec, **_fields(ServerRecord, doc, exclude=("spec",)))


def _fields(cls: type, doc: Mapping[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls) if f.init} - set(exclude)
    return {k: v for k, v in doc.items() if k in names}


def _tuples(raw: dict[str, Any]) -> dict[str, Any]:
    """JSON lists back to the tuples the frozen specs hold."""
    def freeze(value: Any) -> Any:
        return tuple(freeze(v) for v in value) if isinstance(value, list) else value
    return {k: freeze(v) for k, v in raw.items()}


@dataclass
class Manifest:
    """A deployment: every server and the router, as started. Plain JSON on disk."""

    name: str
    engine: str
    run_id: str
    model_path: str
    created_at: float
    servers: list[ServerRecord] = field(default_factory=list)
    router: ServerRecord | None = None
    version: int = MANIFEST_VERSION
    stopped_at: float | None = None  # set when stop-pd stopped the whole deployment

    @property
    def records(self) -> list[ServerRecord]:
        """Every process: the servers, then the router."""
        return self.servers + ([self.router] if self.router else [])

    def api_servers(self, role: str | None = None) -> list[ServerRecord]:
        """Rank-0 servers (the ones with an API), optionally of one role."""
        return [s for s in self.servers if s.is_api and (role is None or s.role == role)]

    def to_json(self) -> dict[str, Any]:
        """The JSON document written to disk (``json.dumps`` it)."""
        return {"version": self.version, "name": self.name, "engine": self.engine,
                "run_id": self.run_id, "model_path": self.model_path,
                "created_at": self.created_at, "stopped_at": self.stopped_at,
                "servers": [s.to_doc() for s in self.servers],
                "router": self.router.to_doc() if self.router else None}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Manifest:
        """Inverse of :meth:`to_json`; unknown keys are ignored (newer writers)."""
        if not isinstance(doc, Mapping):
            raise InputError("deployment manifest: expected a JSON object")
        try:
            servers = [ServerRecord.from_doc(s) for s in doc.get("servers", [])]
            router = ServerRecord.from_doc(doc["router"]) if doc.get("router") else None
            top = _fields(cls, doc, exclude=("servers", "router"))
            return cls(servers=servers, router=router, **top)
        except (TypeError, KeyError, ValueError) as exc:
            raise InputError(f"deployment manifest: malformed ({exc})") from None

    @classmethod
    def loads(cls, text: str) -> Manifest:
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InputError(f"deployment manifest: not JSON ({exc})") from None


# --------------------------------------------------------------------------- the controller's store


def manifest_path(name: str = DEFAULT_DEPLOYMENT, base: str | None = None) -> str:
    """Controller-side manifest location for deployment ``name``.

    ``base`` defaults to ``$CLUSTER_STATE_DIR``, else ``~/.cluster/deployments`` (not
    expanded here: callers ``expanduser`` it on the controller).
    """
    if base is None:
        base = os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    return f"{trim_dir(base)}/{safe_name(name)}.json"


def manifest_file(name: str | None = None) -> Path:
    """The manifest of deployment ``name`` (default ``default``) on this machine."""
    return Path(manifest_path(name or DEFAULT_DEPLOYMENT)).expanduser()


def load_manifest(name: str | None = None) -> Manifest | None:
    """The recorded deployment ``name``, or None when there is none."""
    path = manifest_file(name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"cannot read the deployment manifest {path}: {exc.strerror}") from None
    return Manifest.loads(text)


def save_manifest(manifest: Manifest) -> Path:
    """Write the manifest atomically (temp file + rename); returns its path."""
    path = manifest_file(manifest.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(manifest.dumps() + "\n")
    os.replace(tmp, path)
    return path


def host_of(target: str) -> Host:
    """The SSH target of a recorded process (its host expression item, or ``local``)."""
    hosts = parse_hosts(target)
    if len(hosts) != 1:
        raise InputError(f"bad recorded target {target!r}")
    return hosts[0]


# --------------------------------------------------------------------------- per-host records


def record_write_command(record: ServerRecord) -> str:
    """Shell text that writes ``record`` as JSON to its ``record_path`` on its host."""
    return shell.write_file(record.record_path, json.dumps(record.to_doc(), sort_keys=True))


def records_command(run_dir: str, host: str) -> str:
    """Shell text printing every server record of ``host`` in ``run_dir`` (one JSON per
    line). File names carry the host address, so on a shared (NFS) run dir each host
    only reads its own."""
    # safe_name() leaves only [A-Za-z0-9._-]: the glob needs no quoting (and must not have any).
    pattern = f"*-{safe_name(host)}-[0-9]*.json"
    return (f"for f in {shell.path(run_dir)}/{pattern}; do "
            '[ -f "$f" ] && { tr -d "\\n" < "$f"; echo; }; done; true')


def parse_records(stdout: str) -> list[ServerRecord]:
    """ServerRecords from :func:`records_command` output (unreadable lines skipped)."""
    records = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            records.append(ServerRecord.from_doc(json.loads(line)))
        except (ValueError, TypeError):
            continue
    return records


def discover_records(engine: Engine, hosts: Sequence[Host], run_dir: str,
                     fanout: int | None = None) -> Report:
    """The server records start-pd left in ``run_dir`` on each host (its own files only):
    ``Outcome.data`` = list of `ServerRecord`."""
    def one(session: HostSession) -> list[ServerRecord]:
        address = "127.0.0.1" if session.host.is_local else session.host.hostname
        result = shell.run_script(session, records_command(run_dir, address))
        return [r for r in parse_records(result.stdout) if r.host == address]

    return shell.call_report(engine, hosts, one, fanout)


def records_on_hosts(engine: Engine, manifest: Manifest | None, hosts: Sequence[Host],
                     run_dir: str | None, fanout: int | None = None
                     ) -> tuple[list[ServerRecord], dict[Host, Failure]]:
    """The servers recorded on ``hosts``: the manifest's, then those found in ``run_dir``
    on each host that the manifest did not list (so it works without a manifest).

    Also returns the hosts whose run dir could not be read, with their failure.
    """
    wanted = {h.hostname for h in hosts}
    records = [r for r in manifest.servers if r.ssh_host.hostname in wanted] if manifest else []
    failures: dict[Host, Failure] = {}
    if run_dir:
        for outcome in discover_records(engine, hosts, run_dir, fanout):
            if outcome.error is not None:
                failures[outcome.host] = outcome.error
                continue
            known = {(r.record_path, r.pid) for r in records}
            records += [r for r in outcome.data if (r.record_path, r.pid) not in known]
    return records, failures


# --------------------------------------------------------------------------- log files


def log_sources(manifest: Manifest, hosts: Sequence[Host] | None = None,
                roles: Iterable[str] | None = None) -> list[LogSource]:
    """One `cluster.logs.LogSource` per host: the log files of the deployment's servers on it.

    ``hosts`` None = every host of the deployment, in manifest order. Hosts are
    matched by name/address (SSH user and port do not matter). ``roles`` keeps
    only servers of those roles (prefill, decode) when any server has one of
    them. A selected host without a server gets a source with no paths (the
    read then fails it as ``no-log``).
    """
    wanted = {r for r in (roles or ()) if r}
    records = manifest.servers
    if wanted & {s.role for s in records}:
        records = [s for s in records if s.role in wanted]
    by_name: dict[str, list[ServerRecord]] = {}
    order: list[Host] = []
    for record in records:
        target = _log_host(record)
        if target.hostname not in by_name:
            order.append(target)
        by_name.setdefault(target.hostname, []).append(record)
    chosen = list(hosts) if hosts is not None else order
    sources = []
    for host in chosen:
        mine = by_name.get(host.hostname, [])
        sources.append(LogSource(host, tuple(dict.fromkeys(r.log_path for r in mine)),
                                 tuple(dict.fromkeys(r.role for r in mine))))
    return sources


def select_log_sources(manifest: Manifest, select: Callable[[Any, Any], list[Host]],
                       hosts: Any = None, roles: Any = None) -> list[LogSource]:
    """The sources for ``hosts`` / ``roles`` (``-H`` / ``-r``) against a recorded deployment.

    ``roles`` naming roles the deployment's servers carry (prefill, decode) picks its
    servers of those roles, on whatever hosts they run, whether or not the roles file
    defines those roles; ``hosts`` adds hosts (all their servers). Other role names are
    looked up in the roles file through ``select(hosts, roles)``
    (`cluster.api.Cluster.hosts`). Neither: every server of the deployment.
    """
    names = _names(roles)
    served = {s.role for s in manifest.servers}
    if names and set(names) <= served:
        sources = log_sources(manifest, None, names)
        if hosts:
            seen = {s.host.hostname for s in sources}
            sources += [s for s in log_sources(manifest, select(hosts, None))
                        if s.host.hostname not in seen]
        return sources
    chosen = select(hosts, roles) if (hosts or roles) else None
    return log_sources(manifest, chosen, names)


def _names(roles: Any) -> list[str]:
    if not roles:
        return []
    items = roles.replace(",", " ").split() if isinstance(roles, str) else list(roles)
    return [str(r).strip() for r in items if str(r).strip()]


def _log_host(record: ServerRecord) -> Host:
    try:
        return parse_hosts(record.target)[0]
    except Exception:  # an odd target in a hand-edited manifest: fall back to the address
        return Host(record.host)

