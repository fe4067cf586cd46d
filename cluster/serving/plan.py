"""Planning a PD deployment (pure): the engine-neutral :class:`ServerSpec` of every
server process, the :class:`RouterSpec`, and the :class:`StartPlan` that start-pd shows
(``--dry-run``) and runs — built once, with one run id.

:func:`plan_start` turns a :class:`~cluster.serving.config.ServingConfig` and the
prefill/decode host lists into one spec per host (multi-node servers span ``nnodes``
consecutive hosts; only node-rank 0 serves the API) and the router fronting their API
nodes, refusing bad input (`InputError`, exit 2) before anything runs. What varies by
engine (argv, env, ports) is asked of the spec's engine (:mod:`.engines`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from .. import detach
from ..errors import InputError
from ..hosts import LOCAL, Host, parse_hosts
from . import engines
from .config import DECODE, DEFAULT_RUN_DIR, PREFILL, ServingConfig

# Exported into every server's and router's environment (children inherit it, even those
# that leave the process group), so a sweep can be limited to one deployment's processes.
RUN_ID_ENV = "CLUSTER_PD_RUN_ID"
ROUTER = "router"
DEFAULT_DEPLOYMENT = "default"

Env = tuple[tuple[str, str | None], ...]  # None: a secret whose value was not recorded
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """``text`` reduced to ``[A-Za-z0-9._-]`` (for file names and unquoted globs)."""
    return _UNSAFE.sub("_", text).strip("_") or "_"


def trim_dir(run_dir: str) -> str:
    """A directory without its trailing slash (``/`` stays ``/``)."""
    return run_dir.rstrip("/") or "/"


def http_url(host: str, port: int, path: str = "") -> str:
    """``http://host:port/path`` with IPv6 literals bracketed."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}{path}"


class RunFiles:
    """Per-process files in the run dir (:mod:`cluster.detach`): ``<name>@<run_id>.json``
    (the record), ``.pid``, ``.exit``, ``.log``; ``<name>`` carries engine, role, host and
    port (NFS homes: two hosts never write one file), the run id keeps runs apart."""

    run_dir: str
    run_id: str
    deployment: str

    @property
    def base_path(self) -> str:
        return detach.base_path(self.run_dir, self.name, self.run_id)

    @property
    def name(self) -> str:
        """``<engine>-<role>-<host>-<port>`` (each spec says how)."""
        raise NotImplementedError

    @property
    def log_path(self) -> str:
        """Per-launch log (run id in the name: an old "ready" line never matches)."""
        return self.base_path + ".log"

    @property
    def pid_path(self) -> str:
        return self.base_path + ".pid"

    @property
    def record_path(self) -> str:
        """The per-host record of this process (JSON, see :mod:`.records`)."""
        return self.base_path + ".json"

    @property
    def uid(self) -> str:
        """Unique across deployments, engines and runs (probe keys): never mixes two
        processes that share a host."""
        return f"{safe_name(self.deployment)}.{self.engine}.{self.run_id}.{self.key}"  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ServerSpec(RunFiles):
    """One server process on one host (one node-rank of one PD server).

    ``host`` is the node's own address (``--host``, URLs, file names); ``target`` is
    how to reach the host over SSH (the host expression item, e.g. ``user@10.8.0.81``).
    ``env`` is everything exported before the start (config, role, forwarded values);
    ``secret_env`` names the variables whose values are never shown or recorded.
    """

    engine: str
    role: str
    host: str
    target: str
    port: int
    server_index: int = 0
    node_rank: int = 0
    nnodes: int = 1
    tp_size: int = 1
    dist_init_addr: str | None = None
    dist_init_port: int = 5000
    bootstrap_port: int = 8998
    model_path: str = ""
    python: str = "python3"
    extra_args: tuple[str, ...] = ()
    env: Env = ()
    env_file: str | None = None
    run_dir: str = DEFAULT_RUN_DIR
    run_id: str = ""
    side_channel_port: int | None = None
    secret_env: tuple[str, ...] = ()
    deployment: str = DEFAULT_DEPLOYMENT

    @property
    def is_api(self) -> bool:
        """Only node-rank 0 serves the HTTP API (health polls, router targets)."""
        return self.node_rank == 0

    @property
    def key(self) -> str:
        """Stable key of one server node-rank: ``prefill-0-0`` (role, server, rank)."""
        return f"{self.role}-{self.server_index}-{self.node_rank}"

    @property
    def address(self) -> str:
        """Where the process answers on its host."""
        return self.host

    @property
    def name(self) -> str:
        """``<engine>-<role>-<host>-<port>``: unique per host:port, used in file names."""
        return f"{self.engine}-{self.role}-{safe_name(self.host)}-{self.port}"

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    @property
    def local_tp(self) -> int:
        """GPUs (TP ranks) of this server on this node."""
        return max(1, self.tp_size // self.nnodes)

    @property
    def ports(self) -> tuple[int, ...]:
        """TCP ports this process listens on, on its host (the engine says which)."""
        return engines.get(self.engine).server_ports(self)

    @property
    def label(self) -> str:
        return f"{self.role} {self.host}:{self.port}"


@dataclass(frozen=True)
class RouterSpec(RunFiles):
    """The PD router: where it runs, what it listens on, which workers it fronts.

    ``prefill`` holds ``(url, bootstrap port)`` per prefill API node (the engine decides
    whether the router is told the port), ``decode`` the decode URLs.
    """

    engine: str
    host: str
    target: str
    bind: str
    port: int
    metrics_port: int
    policy: str | None = None
    launcher: tuple[str, ...] = ()
    prefill: tuple[tuple[str, int | None], ...] = ()
    decode: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    env_file: str | None = None
    run_dir: str = DEFAULT_RUN_DIR
    run_id: str = ""
    deployment: str = DEFAULT_DEPLOYMENT

    # What every process of a deployment has (see ServerSpec), constant for the router.
    role: ClassVar[str] = ROUTER
    key: ClassVar[str] = ROUTER
    server_index: ClassVar[int] = 0
    node_rank: ClassVar[int] = 0
    nnodes: ClassVar[int] = 1
    is_api: ClassVar[bool] = True
    env: ClassVar[Env] = ()
    secret_env: ClassVar[tuple[str, ...]] = ()

    @property
    def is_local(self) -> bool:
        return self.host == LOCAL

    @property
    def name(self) -> str:
        return f"{self.engine}-router-{safe_name(self.host)}-{self.port}"

    @property
    def address(self) -> str:
        """Where the router answers on its own host (a wildcard bind: loopback)."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.bind, self.bind)

    @property
    def url(self) -> str:
        """Where clients (and readiness polls) reach the router."""
        return http_url(self.address, self.port)

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, self.metrics_port)

    @property
    def label(self) -> str:
        return f"router {self.address}:{self.port}"


ProcessSpec = ServerSpec | RouterSpec


@dataclass(frozen=True)
class StartPlan:
    """What start-pd will do: the servers, the router, and where it is recorded.

    Built once (:func:`plan_start`); ``--dry-run`` shows it and start-pd runs it, so
    both see the same run id, files and commands.
    """

    config: ServingConfig
    servers: tuple[ServerSpec, ...]
    router: RouterSpec | None
    run_id: str
    deployment: str

    @property
    def processes(self) -> tuple[ProcessSpec, ...]:
        """Every process to start: the servers, then the router."""
        return self.servers + ((self.router,) if self.router else ())


def new_run_id(now: float | None = None, token: str | None = None) -> str:
    """A run id such as ``20250101-120000-a1b2``: sortable time plus 4 random hex digits."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    return f"{stamp}-{token if token is not None else secrets.token_hex(2)}"


def plan_start(config: ServingConfig, prefill: Sequence[str | Host], decode: Sequence[str | Host], *,
               router: str | Host | None = None, deployment: str | None = None,
               run_id: str | None = None, environ: Mapping[str, str] | None = None) -> StartPlan:
    """Plan a deployment (pure; raises `InputError` on bad input before any connection).

    ``environ`` supplies the values of ``serving.forward_env`` (default: this process's
    environment).
    """
    name = deployment or DEFAULT_DEPLOYMENT
    if safe_name(name) != name:
        raise InputError(f"deployment name {name!r}: use letters, digits, '.', '_' and '-'")
    servers = [dataclasses.replace(s, deployment=name) for s in plan_deployment(
        config, prefill, decode, run_id=run_id, environ=os.environ if environ is None else environ)]
    router_spec = plan_router(config, servers, host=router)
    if router_spec is not None:
        router_spec = dataclasses.replace(router_spec, deployment=name)
    return StartPlan(config, tuple(servers), router_spec, servers[0].run_id, name)


def plan_deployment(
    config: ServingConfig,
    prefill_hosts: Sequence[str | Host],
    decode_hosts: Sequence[str | Host],
    *,
    run_id: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[ServerSpec]:
    """One ServerSpec per host: prefill servers first, then decode, in the given order.

    Hosts are grouped into servers of ``nnodes`` consecutive hosts per role; node-rank 0
    of each group is its API node and its address is the group's ``--dist-init-addr``.
    ``environ`` supplies the values of ``serving.forward_env`` (default: empty).
    Raises InputError (exit 2) for: no hosts in a role, a host count that is not a
    multiple of ``nnodes``, ``tp_size`` not divisible by ``nnodes``, no model path, a
    wildcard ``--host``, a forwarded variable that is not set, or a port claimed twice
    on one host.
    """
    if not config.model_path:
        raise InputError("no model path: set serving.model_path in the roles file or pass --model-path")
    run_id = run_id or new_run_id()
    forwarded = _forwarded_env(config, environ or {})
    specs: list[ServerSpec] = []
    for role, hosts in ((PREFILL, prefill_hosts), (DECODE, decode_hosts)):
        specs.extend(_plan_role(config, role, _as_hosts(hosts, role), run_id, forwarded))
    specs = engines.get(config.engine).assign_ports(specs, config.side_channel_port)
    _check_port_clashes(specs)
    return specs


def plan_router(
    config: ServingConfig,
    servers: Sequence[ServerSpec],
    *,
    host: str | Host | None = None,
) -> RouterSpec | None:
    """The router fronting the API nodes of ``servers``, or None when no router is asked.

    ``host`` (e.g. from ``--router``) overrides ``serving.router.host``; ``local`` runs
    it on the controller, listening on 127.0.0.1 unless ``router.bind`` says otherwise.
    """
    router = config.router
    chosen = host if host is not None else router.host
    if chosen is None:
        return None
    target_host = chosen if isinstance(chosen, Host) else _parse_one(str(chosen), "router")
    address = target_host.hostname
    bind = router.bind or ("127.0.0.1" if address == LOCAL else address)
    api = [s for s in servers if s.is_api]
    prefill = tuple((s.url, s.bootstrap_port) for s in api if s.role == PREFILL)
    decode = tuple(s.url for s in api if s.role == DECODE)
    if not prefill or not decode:
        raise InputError("the router needs at least one prefill and one decode server")
    engine = engines.get(config.engine)
    spec = RouterSpec(
        engine=config.engine, host=address, target=str(target_host), bind=bind,
        port=router.port, metrics_port=router.metrics_port, policy=router.policy,
        launcher=router.launcher or engine.router_launcher(config.python),
        prefill=prefill, decode=decode, extra_args=router.extra_args,
        env_file=router.env_file, run_dir=config.run_dir, run_id=servers[0].run_id,
    )
    _check_router_ports(spec, servers, address)
    return spec


def _check_router_ports(spec: RouterSpec, servers: Sequence[ServerSpec], address: str) -> None:
    if spec.metrics_port == spec.port:
        raise InputError(f"router port and router metrics port are both {spec.port}")
    # A wildcard bind takes the port on every address of the router's host.
    router_addresses = {spec.bind, "127.0.0.1" if address == LOCAL else address}
    for server in servers:
        for port in spec.ports:
            if server.host in router_addresses and port in server.ports:
                raise InputError(
                    f"router port {port} on {spec.bind} is also used by {server.role} server "
                    f"{server.server_index} (node-rank {server.node_rank})"
                )


def _parse_one(item: str, role: str) -> Host:
    hosts = parse_hosts(item)
    if len(hosts) != 1:
        raise InputError(f"{role}: expected one host, got {item!r}")
    return hosts[0]


def _as_hosts(items: Sequence[str | Host], role: str) -> list[Host]:
    hosts: list[Host] = []
    for item in items:
        hosts.extend([item] if isinstance(item, Host) else parse_hosts(item))
    if not hosts:
        raise InputError(f"no {role} hosts given")
    return hosts


def _address(host: Host, role: str) -> str:
    """The address a server on ``host`` binds and advertises (never a wildcard)."""
    if host.is_local:
        return "127.0.0.1"
    address = host.hostname
    try:
        if ipaddress.ip_address(address).is_unspecified:
            raise InputError(
                f"{role} host {address}: a server needs its own routable address, not a "
                "wildcard (--host 0.0.0.0 breaks prefill bootstrap registration)"
            )
    except ValueError:
        pass  # a host name: resolved on the host itself
    return address


def _forwarded_env(config: ServingConfig, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    values = []
    for name in config.forward_env:
        if name not in environ:
            raise InputError(f"serving.forward_env: {name} is not set in the controller's environment")
        values.append((name, environ[name]))
    return values


def _plan_role(config: ServingConfig, role: str, hosts: list[Host], run_id: str,
               forwarded: list[tuple[str, str]]) -> list[ServerSpec]:
    settings = config.role(role)
    nnodes = settings.nnodes
    if len(hosts) % nnodes:
        raise InputError(
            f"{role}: {len(hosts)} host(s) cannot be split into servers of nnodes={nnodes} "
            f"(need a multiple of {nnodes})"
        )
    if settings.tp_size % nnodes:
        raise InputError(f"{role}: tp_size={settings.tp_size} is not divisible by nnodes={nnodes}")
    env = dict(config.env)
    env.update(settings.env)
    env.update(forwarded)
    port = config.port(role)
    specs = []
    for index in range(len(hosts) // nnodes):
        group = hosts[index * nnodes:(index + 1) * nnodes]
        addresses = [_address(h, role) for h in group]
        dist = f"{_url_host(addresses[0])}:{settings.dist_init_port}" if nnodes > 1 else None
        for rank, (host, address) in enumerate(zip(group, addresses, strict=True)):
            specs.append(ServerSpec(
                engine=config.engine, role=role, host=address, target=str(host), port=port,
                server_index=index, node_rank=rank, nnodes=nnodes, tp_size=settings.tp_size,
                dist_init_addr=dist, dist_init_port=settings.dist_init_port,
                bootstrap_port=config.bootstrap_port, model_path=config.model_path or "",
                python=config.python, extra_args=settings.extra_args,
                env=tuple(env.items()), env_file=config.env_file, run_dir=config.run_dir,
                run_id=run_id, secret_env=tuple(dict.fromkeys(config.forward_env + config.given_env)),
            ))
    return specs


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _check_port_clashes(specs: list[ServerSpec]) -> None:
    owner: dict[tuple[str, int], ServerSpec] = {}
    for spec in specs:
        for port in dict.fromkeys((spec.port,) + spec.ports):
            key = (spec.host, port)
            if key in owner:
                first = owner[key]
                raise InputError(
                    f"{spec.host}:{port} is used twice: {_describe(first)} and {_describe(spec)}"
                    " (give the roles different ports or hosts)"
                )
            owner[key] = spec


def _describe(spec: ServerSpec) -> str:
    return f"{spec.role} server {spec.server_index} (node-rank {spec.node_rank})"

