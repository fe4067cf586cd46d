"""What a process is started with (pure): the server and router argument vectors, their
environment, the :class:`Launch` behind a launch script, and the one-line display form
(secrets masked) used in tables and manifests."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import InputError
from . import shellcmd
from .config import PREFILL, SGLANG, VLLM
from .plan import RUN_ID_ENV, RouterSpec, ServerSpec


@dataclass(frozen=True)
class Launch:
    """A process to start in its own session: the data behind :func:`launch_script`."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    env_file: str | None
    run_dir: str
    log_path: str
    pid_path: str
    bind_host: str
    ports: tuple[int, ...]


def server_argv(spec: ServerSpec) -> list[str]:
    """The exact argument vector of one server process (no shell involved)."""
    if spec.engine == SGLANG:
        return _sglang_argv(spec)
    if spec.engine == VLLM:
        return _vllm_argv(spec)
    raise InputError(f"unknown engine {spec.engine!r}")


def server_env(spec: ServerSpec) -> list[tuple[str, str]]:
    """Variables exported before the server starts: config env, role env, engine extras."""
    env = dict(spec.env)
    if spec.engine == VLLM and spec.side_channel_port is not None:
        # NIXL's side channel defaults to localhost:5600: set a reachable address and a
        # per-host-unique port so several servers can share a host.
        env.setdefault("VLLM_NIXL_SIDE_CHANNEL_HOST", spec.host)
        env.setdefault("VLLM_NIXL_SIDE_CHANNEL_PORT", str(spec.side_channel_port))
    return list(env.items())


def router_argv(spec: RouterSpec) -> list[str]:
    """The router's argument vector (sglang_router / smg, or vllm-router)."""
    argv = list(spec.launcher)
    if spec.engine == SGLANG:
        argv.append("--pd-disaggregation")
        for url, bootstrap in spec.prefill:
            argv += ["--prefill", url] + ([str(bootstrap)] if bootstrap is not None else [])
        for url in spec.decode:
            argv += ["--decode", url]
    else:
        argv.append("--vllm-pd-disaggregation")
        for url, _ in spec.prefill:
            argv += ["--prefill", url]
        for url in spec.decode:
            argv += ["--decode", url]
        argv += ["--kv-connector", "nixl"]
    argv += ["--host", spec.bind, "--port", str(spec.port)]
    # Both routers export Prometheus metrics on 29000 unless told otherwise, and
    # sglang-router panics when that port is taken: keep it explicit and checkable.
    argv += ["--prometheus-host", spec.bind, "--prometheus-port", str(spec.metrics_port)]
    if spec.policy:
        argv += ["--policy", spec.policy]
    return argv + list(spec.extra_args)


def server_launch(spec: ServerSpec) -> Launch:
    """The Launch (argv, env, files, ports) of one server."""
    return Launch(
        name=spec.name,
        argv=tuple(server_argv(spec)),
        env=tuple(server_env(spec)) + ((RUN_ID_ENV, spec.run_id),),
        env_file=spec.env_file,
        run_dir=spec.run_dir,
        log_path=spec.log_path,
        pid_path=spec.pid_path,
        bind_host=spec.host,
        ports=spec.ports,
    )


def router_launch(spec: RouterSpec) -> Launch:
    """The Launch of the router."""
    return Launch(
        name=spec.name,
        argv=tuple(router_argv(spec)),
        env=((RUN_ID_ENV, spec.run_id),),
        env_file=spec.env_file,
        run_dir=spec.run_dir,
        log_path=spec.log_path,
        pid_path=spec.pid_path,
        bind_host=spec.bind,
        ports=(spec.port, spec.metrics_port),
    )


def display_command(item: ServerSpec | RouterSpec | Launch) -> str:
    """One line for tables and manifests: ``ENV=… argv…`` with secrets masked."""
    launch = as_launch(item)
    exports = shellcmd.export_line(launch.env, mask=True).removeprefix("export ")
    command = shellcmd.display_argv(launch.argv)
    return f"{exports} {command}".strip()


def as_launch(item: ServerSpec | RouterSpec | Launch) -> Launch:
    if isinstance(item, Launch):
        return item
    if isinstance(item, ServerSpec):
        return server_launch(item)
    return router_launch(item)


def _sglang_argv(spec: ServerSpec) -> list[str]:
    argv = [
        spec.python, "-m", "sglang.launch_server",
        "--model-path", spec.model_path,
        "--disaggregation-mode", spec.role,
        "--host", spec.host,
        "--port", str(spec.port),
        "--tp-size", str(spec.tp_size),
        # Explicit on every prefill and decode launch: ranks and decode must agree on it.
        "--disaggregation-bootstrap-port", str(spec.bootstrap_port),
    ]
    if spec.nnodes > 1:
        argv += ["--dist-init-addr", spec.dist_init_addr or "", "--nnodes", str(spec.nnodes),
                 "--node-rank", str(spec.node_rank)]
    return argv + list(spec.extra_args)


def _vllm_argv(spec: ServerSpec) -> list[str]:
    kv_role = "kv_producer" if spec.role == PREFILL else "kv_consumer"
    kv_config = json.dumps({"kv_connector": "NixlConnector", "kv_role": kv_role},
                           separators=(",", ":"))
    argv = ["vllm", "serve", spec.model_path]
    if spec.is_api:
        argv += ["--host", spec.host, "--port", str(spec.port)]
    argv += ["--tensor-parallel-size", str(spec.tp_size), "--kv-transfer-config", kv_config]
    if spec.nnodes > 1:
        master = (spec.dist_init_addr or "").rpartition(":")[0].strip("[]")
        argv += ["--nnodes", str(spec.nnodes), "--node-rank", str(spec.node_rank),
                 "--master-addr", master, "--master-port", str(spec.dist_init_port)]
        if not spec.is_api:
            argv.append("--headless")
    return argv + list(spec.extra_args)
