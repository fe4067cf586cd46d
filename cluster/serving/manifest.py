"""What was started (pure): per-server and router records, the deployment
:class:`Manifest` (JSON) that lets stop/status/logs work without a host list, where it is
kept on the controller, and the per-host record files in each run dir."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from ..errors import InputError
from ..hosts import LOCAL
from . import shellcmd
from .argv import display_command
from .plan import RouterSpec, ServerSpec
from .text import safe_name, trim_dir


@dataclass
class ServerRecord:
    """What was started for one ServerSpec (and what stop/status/logs need)."""

    engine: str
    role: str
    host: str
    target: str
    port: int
    server_index: int
    node_rank: int
    nnodes: int
    is_api: bool
    run_id: str
    log_path: str
    pid_path: str
    record_path: str
    ports: list[int] = field(default_factory=list)
    pid: int | None = None
    pgid: int | None = None
    started_at: float | None = None
    command: str = ""  # display form, secrets masked
    stopped_at: float | None = None  # set by stop-pd

    @classmethod
    def from_spec(cls, spec: ServerSpec, pid: int | None = None,
                  started_at: float | None = None) -> "ServerRecord":
        """Record for ``spec``; pid = pgid because servers are started with setsid."""
        return cls(
            engine=spec.engine, role=spec.role, host=spec.host, target=spec.target,
            port=spec.port, server_index=spec.server_index, node_rank=spec.node_rank,
            nnodes=spec.nnodes, is_api=spec.is_api, run_id=spec.run_id,
            log_path=spec.log_path, pid_path=spec.pid_path, record_path=spec.record_path,
            ports=list(spec.ports), pid=pid, pgid=pid, started_at=started_at,
            command=display_command(spec),
        )


@dataclass
class RouterRecord:
    """What was started for the router."""

    engine: str
    host: str
    target: str
    bind: str
    port: int
    url: str
    run_id: str
    log_path: str
    pid_path: str
    pid: int | None = None
    pgid: int | None = None
    started_at: float | None = None
    command: str = ""
    stopped_at: float | None = None  # set by stop-pd

    @property
    def is_local(self) -> bool:
        return self.host == LOCAL

    @classmethod
    def from_spec(cls, spec: RouterSpec, pid: int | None = None,
                  started_at: float | None = None) -> "RouterRecord":
        return cls(
            engine=spec.engine, host=spec.host, target=spec.target, bind=spec.bind,
            port=spec.port, url=spec.url, run_id=spec.run_id, log_path=spec.log_path,
            pid_path=spec.pid_path, pid=pid, pgid=pid, started_at=started_at,
            command=display_command(spec),
        )


MANIFEST_VERSION = 1


@dataclass
class Manifest:
    """A deployment: every server and the router, as started. Plain JSON on disk.

    Kept on the controller (e.g. ``~/.cluster/deployments/<name>.json``) and, per
    server, in its run dir (:attr:`ServerSpec.record_path`).
    """

    name: str
    engine: str
    run_id: str
    model_path: str
    created_at: float
    servers: list[ServerRecord] = field(default_factory=list)
    router: RouterRecord | None = None
    version: int = MANIFEST_VERSION
    stopped_at: float | None = None  # set when stop-pd stopped the whole deployment

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``json.dumps`` it)."""
        return asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Manifest":
        """Inverse of :meth:`to_json`; unknown keys are ignored (newer writers)."""
        if not isinstance(doc, Mapping):
            raise InputError("deployment manifest: expected a JSON object")
        try:
            servers = [_record(ServerRecord, s) for s in doc.get("servers", [])]
            router = _record(RouterRecord, doc["router"]) if doc.get("router") else None
            top = _pick(cls, doc, exclude=("servers", "router"))
            return cls(servers=servers, router=router, **top)
        except (TypeError, KeyError) as exc:
            raise InputError(f"deployment manifest: malformed ({exc})") from None

    @classmethod
    def loads(cls, text: str) -> "Manifest":
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InputError(f"deployment manifest: not JSON ({exc})") from None

    def api_servers(self, role: str | None = None) -> list[ServerRecord]:
        """Rank-0 servers (the ones with an API), optionally of one role."""
        return [s for s in self.servers if s.is_api and (role is None or s.role == role)]


DEFAULT_STATE_DIR = "~/.cluster/deployments"
STATE_DIR_ENV = "CLUSTER_STATE_DIR"
DEFAULT_DEPLOYMENT = "default"


def manifest_path(name: str = DEFAULT_DEPLOYMENT, base: str | None = None) -> str:
    """Controller-side manifest location for deployment ``name``.

    ``base`` defaults to ``$CLUSTER_STATE_DIR``, else ``~/.cluster/deployments`` (not
    expanded here: callers ``expanduser`` it on the controller).
    """
    if base is None:
        base = os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    return f"{trim_dir(base)}/{safe_name(name)}.json"


def record_write_command(record: "ServerRecord") -> str:
    """Shell text that writes ``record`` as JSON to its ``record_path`` on its host."""
    return shellcmd.write_file(record.record_path, json.dumps(asdict(record), sort_keys=True))


def records_command(run_dir: str, host: str) -> str:
    """Shell text printing every server record of ``host`` in ``run_dir`` (one JSON per
    line). File names carry the host address, so on a shared (NFS) run dir each host
    only reads its own."""
    # safe_name() leaves only [A-Za-z0-9._-]: the glob needs no quoting (and must not have any).
    pattern = f"*-{safe_name(host)}-[0-9]*.json"
    return (f"for f in {shellcmd.path(run_dir)}/{pattern}; do "
            '[ -f "$f" ] && { tr -d "\\n" < "$f"; echo; }; done; true')


def parse_records(stdout: str) -> list["ServerRecord"]:
    """ServerRecords from :func:`records_command` output (unreadable lines skipped)."""
    records = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            records.append(_record(ServerRecord, json.loads(line)))
        except (ValueError, TypeError):
            continue
    return records


def _pick(cls: type, doc: Mapping[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    names = {f.name for f in fields(cls)} - set(exclude)
    return {k: v for k, v in doc.items() if k in names}


def _record(cls: type, doc: Mapping[str, Any]) -> Any:
    if not isinstance(doc, Mapping):
        raise TypeError(f"expected an object for {cls.__name__}")
    return cls(**_pick(cls, doc))
