"""What was started, and where it is written down.

:class:`ServerRecord` is the one type for one process of a deployment (a server
node-rank or the router) everywhere: a row of start-pd and pd-status (``Outcome.data``),
an entry of the controller's :class:`Manifest`, and the per-host record in the run dir.
It holds the process's spec (what was planned, secret values left out) and what
happened to it (pid, times, observed state).

The manifest lives on the controller at ``$CLUSTER_STATE_DIR/<name>.json``, else
``~/.cluster/deployments/<name>.json``: written atomically (temp file, fsync, rename),
0600 in a 0700 directory, before the first launch and again as processes come up. The
per-host records are ``<run_dir>/<engine>-<role>-<address>-<port>@<run_id>.json`` on each
process's host, written by the launch itself before the process starts
(:mod:`cluster.detach`), so stop-pd and pd-status also work from a host list alone
(:func:`records_on_hosts`), and find what an interrupted start-pd launched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import detach, shell
from ..errors import InputError
from ..hosts import Host, parse_hosts
from ..logs import LogSource
from ..result import Failure, Report
from .plan import DEFAULT_DEPLOYMENT, RUN_ID_ENV, ProcessSpec, RouterSpec, ServerSpec, safe_name, trim_dir
from .scripts import display_command

if TYPE_CHECKING:
    from ..ssh import Engine, HostSession

MANIFEST_VERSION = 2
_WORD = re.compile(r"^[A-Za-z0-9._-]+$")
DEFAULT_STATE_DIR = "~/.cluster/deployments"
STATE_DIR_ENV = "CLUSTER_STATE_DIR"

# Per-process phases shown while starting (and in the final table).
PLANNED, NOT_STARTED, STARTING, LOADING, READY, RUNNING = (
    "planned", "not started", "starting", "loading", "ready", "running")
STARTED, FAILED, DRY_RUN, STOPPED, HEALTHY = "started", "failed", "dry-run", "stopped", "healthy"
# A recorded process group id that now belongs to another process: nothing is signalled.
PID_REUSED = "gone (pid reused)"
# A per-host record of a process that is gone, not the recorded deployment's current one.
STALE = "stale"


def public_spec(spec: ProcessSpec) -> ProcessSpec:
    """``spec`` without the values of its secret variables (None in their place) and of
    secret options in its extra args (``--api-key ***``): what records, manifests and
    JSON hold."""
    masked = tuple(shell.mask_argv(spec.extra_args))
    if masked != spec.extra_args:
        spec = dataclasses.replace(spec, extra_args=masked)
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
    (not written to the manifest); ``pgid`` = ``pid`` (every launch is ``setsid``);
    ``start`` = the leader's start time (``/proc/PID/stat``): with the run id, the
    process's identity (:class:`cluster.detach.Identity`). ``on_host``: where a record
    read from a host came from and its state there (``running``, ``exited``...).
    """

    spec: ProcessSpec
    pid: int | None = None
    pgid: int | None = None
    start: int | None = None
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
    on_host: str | None = None                     # a record read from its host: its state there

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
    def uid(self) -> str:
        """Deployment, engine, run id and key: never the same for two processes."""
        return self.spec.uid

    @property
    def deployment(self) -> str:
        return self.spec.deployment

    @property
    def identity(self) -> detach.Identity | None:
        """Who its process is (None: it never got a pid)."""
        if not self.pid or self.pid <= 1 or not _WORD.match(self.run_id or ""):
            return None
        return detach.Identity(int(self.pgid or self.pid), self.start, self.run_id)

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

    def launched(self, pid: int, start: int | None, at: float) -> None:
        """Record a fresh start (pid = process group, start = its start time)."""
        self.pid = self.pgid = pid
        self.start = start
        self.started_at, self.stopped_at = at, None

    # -- JSON: the row shown by --json, and the record written to disk
    def to_json(self) -> dict[str, Any]:
        """The row of start-pd / pd-status ``--json`` (``address`` = where it answers)."""
        return {
            "role": self.role, "address": self.host, "target": self.target, "port": self.port,
            "key": self.key, "engine": self.engine, "deployment": self.deployment,
            "node_rank": self.node_rank,
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
        return {"spec": spec, "pid": self.pid, "pgid": self.pgid, "start": self.start,
                "started_at": self.started_at, "stopped_at": self.stopped_at, "command": self.command}

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


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("servers must be a list")
    return value


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
            servers = [ServerRecord.from_doc(s) for s in _list(doc.get("servers", []))]
            router = ServerRecord.from_doc(doc["router"]) if doc.get("router") else None
            top = _fields(cls, doc, exclude=("servers", "router"))
            manifest = cls(servers=servers, router=router, **top)
            if not isinstance(manifest.name, str) or not isinstance(manifest.run_id, str):
                raise TypeError("name and run_id must be strings")
            for record in manifest.records:
                # Written before specs named their deployment: they are this manifest's.
                if record.spec.deployment != manifest.name:
                    record.spec = dataclasses.replace(record.spec, deployment=manifest.name)
            return manifest
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise InputError(f"deployment manifest: malformed ({exc})") from None

    @classmethod
    def loads(cls, text: str) -> Manifest:
        try:
            return cls.from_json(json.loads(text))
        except (json.JSONDecodeError, RecursionError) as exc:
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
    """The recorded deployment ``name``, or None when there is none. `InputError` naming
    the file when it cannot be read or is not a manifest (any content: never a traceback)."""
    path = manifest_file(name)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise InputError(f"the deployment manifest {path} is corrupt (not UTF-8 text): "
                         "move it away; stop-pd -H HOSTS still works from the hosts' records") from None
    except OSError as exc:
        raise InputError(f"cannot read the deployment manifest {path}: {exc.strerror}") from None
    try:
        return Manifest.loads(text)
    except InputError as exc:
        raise InputError(f"the deployment manifest {path} is corrupt ({str(exc).split(': ', 1)[-1]}): "
                         "move it away; stop-pd -H HOSTS still works from the hosts' records") from None


def state_dir() -> Path:
    """The controller's directory of manifests and locks (``$CLUSTER_STATE_DIR``, else
    ``~/.cluster/deployments``)."""
    return manifest_file().parent


def ensure_state_dir() -> Path:
    """The state dir, created 0700, proven writable (create + fsync + rename a probe file):
    `InputError` naming it otherwise — checked before anything is launched."""
    base = state_dir()
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = base / f".probe.{os.getpid()}"
        _write_private(probe, "probe\n")
        probe.replace(base / f".probe.{os.getpid()}.done")
        (base / f".probe.{os.getpid()}.done").unlink()
    except OSError as exc:
        raise InputError(f"the state dir {base} is not writable ({exc.strerror or exc}): nothing was "
                         f"started; fix its permissions or set {STATE_DIR_ENV}") from None
    return base


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (0600) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def save_manifest(manifest: Manifest) -> Path:
    """Write the manifest atomically (temp file, fsync, rename; 0600 in a 0700 dir)."""
    path = manifest_file(manifest.name)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(manifest.dumps() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass
class DeploymentLock:
    """The controller-side lock of one deployment name: ``flock`` on
    ``<state dir>/<name>.lock``, held by start-pd / restart-pd from before the first
    launch to the end. ``holder``: who holds it when :meth:`acquire` failed (pid, run id)."""

    name: str
    run_id: str
    holder: str = ""
    _fd: int | None = None

    @property
    def path(self) -> Path:
        return state_dir() / f"{safe_name(self.name)}.lock"

    def acquire(self) -> bool:
        """Take the lock without waiting; False (``holder`` set) when another process has it."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another start-pd"
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"start-pd pid {os.getpid()}, run {self.run_id}, since "
                      f"{time.strftime('%H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (no unlink race)
            self._fd = None


def host_of(target: str) -> Host:
    """The SSH target of a recorded process (its host expression item, or ``local``)."""
    hosts = parse_hosts(target)
    if len(hosts) != 1:
        raise InputError(f"bad recorded target {target!r}")
    return hosts[0]


# --------------------------------------------------------------------------- per-host records


def record_doc(record: ServerRecord) -> str:
    """The JSON kept in the per-host record (no secret values): written by the launch."""
    return json.dumps(record.to_doc(), sort_keys=True)


def records_command(run_dir: str, host: str) -> str:
    """Shell text listing every record of ``host`` in ``run_dir`` with its process's
    verified state (:func:`cluster.detach.status_script`). File names carry the host
    address, so on a shared (NFS) run dir each host only reads its own."""
    # safe_name() leaves only [A-Za-z0-9._-]: the glob needs no quoting (and must not have any).
    return detach.status_script(run_dir, f"*-{safe_name(host)}-[0-9]*", RUN_ID_ENV)


def parse_records(stdout: str) -> list[ServerRecord]:
    """ServerRecords from :func:`records_command` output (unreadable ones skipped): the
    identity from the pid file, ``on_host`` = the state found there."""
    records = []
    for found in detach.parse_status(stdout):
        try:
            doc = json.loads(found.record)
            record = ServerRecord.from_doc(doc["doc"])
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        ident = found.identity
        if ident is not None and ident.run_id == record.run_id:
            record.pid = record.pgid = ident.pgid
            record.start = ident.start
        record.on_host = found.state
        records.append(record)
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
            known = {r.uid: r for r in records}
            for found in outcome.data:
                mine = known.get(found.uid)
                if mine is None:
                    records.append(found)
                elif not mine.pid and found.pid:  # an interrupted start: the host knows the pid
                    mine.launched(int(found.pid), found.start, mine.started_at or 0.0)
    return records, failures


def fill_identities(engine: Engine, records: Sequence[ServerRecord], fanout: int | None = None) -> None:
    """Records without a pid (start-pd interrupted before the launch answered): take pid
    and start time from the host's pid file of that run, when there is one."""
    missing = [r for r in records if not r.pid]
    if not missing:
        return
    by_host: dict[Host, list[ServerRecord]] = {}
    for record in missing:
        by_host.setdefault(record.ssh_host, []).append(record)
    work = {h: [(f"r{i}", detach.status_script(r.spec.run_dir, r.spec.name, RUN_ID_ENV))
                for i, r in enumerate(rs)] for h, rs in by_host.items()}
    for outcome in shell.run_sections(engine, work, shell.STEP_TIMEOUT_S, fanout):
        if outcome.error is not None:
            continue
        for i, record in enumerate(by_host[outcome.host]):
            section = outcome.data.get(f"r{i}")
            found = {r.uid: r for r in parse_records(section.output)} if section else {}
            twin = found.get(record.uid)
            if twin is not None and twin.pid:
                record.launched(int(twin.pid), twin.start, record.started_at or time.time())


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

