"""SGLang: ``python3 -m sglang.launch_server`` servers and the ``sglang_router`` (or
``smg``) PD router. Facts: shared/reference/pd-launch.md §1-3."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import HttpCall, ServingEngine

ROUTER_WORKER_WAIT_S = 86400  # see router_common_args

if TYPE_CHECKING:
    from ..plan import RouterSpec, ServerSpec


class SGLang(ServingEngine):
    name = "sglang"
    package = "sglang"
    # The SGLang docs use 30000 (prefill) / 30001 (decode).
    default_ports = {"prefill": 30000, "decode": 30001}
    sweep_patterns = (r"[s]glang::", r"[s]glang\.launch_server", r"[s]glang serve", r"[s]glang\.srt")
    router_sweep_patterns = (r"[s]glang_router", r"(^|/)[s]mg ")
    # The router retitles itself sglang::router, which the server patterns match.
    router_titles = ("sglang::router",)

    def server_argv(self, spec: ServerSpec) -> list[str]:
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

    def server_env(self, spec: ServerSpec) -> list[tuple[str, str]]:
        return []

    def server_ports(self, spec: ServerSpec) -> tuple[int, ...]:
        # Every rank binds --port (rank >= 1 runs a dummy /health server there); the
        # prefill API rank also serves the bootstrap port.
        ports = [spec.port]
        if spec.role == "prefill" and spec.is_api:
            ports.append(spec.bootstrap_port)
        if spec.nnodes > 1 and spec.is_api:
            ports.append(spec.dist_init_port)
        return tuple(dict.fromkeys(ports))

    def assign_ports(self, specs: Sequence[ServerSpec], base: int) -> list[ServerSpec]:
        return list(specs)

    def rdma_devices(self, spec: ServerSpec) -> tuple[str, ...]:
        # --disaggregation-ib-device mlx5_0,mlx5_1 (or =...): Mooncake's RDMA devices.
        return option_values(spec.extra_args, "--disaggregation-ib-device")

    def router_launcher(self, python: str) -> tuple[str, ...]:
        return (python, "-m", "sglang_router.launch_router")

    def router_argv(self, spec: RouterSpec) -> list[str]:
        argv = list(spec.launcher) + ["--pd-disaggregation"]
        for url, bootstrap in spec.prefill:
            argv += ["--prefill", url] + ([str(bootstrap)] if bootstrap is not None else [])
        for url in spec.decode:
            argv += ["--decode", url]
        return argv + router_common_args(spec)

    def router_add_worker(self, url: str, role: str, bootstrap_port: int | None) -> HttpCall:
        # sglang-router 0.3 / smg: POST /workers (202, added in the background).
        doc: dict[str, object] = {"url": url, "worker_type": role}
        if role == "prefill" and bootstrap_port is not None:
            doc["bootstrap_port"] = bootstrap_port
        return HttpCall("POST", "/workers", json.dumps(doc, separators=(",", ":")))


def option_values(argv: Sequence[str], option: str) -> tuple[str, ...]:
    """The comma-separated values of every ``option VALUE`` / ``option=VALUE`` in argv."""
    found: list[str] = []
    for index, arg in enumerate(argv):
        if arg == option and index + 1 < len(argv):
            found.extend(argv[index + 1].split(","))
        elif arg.startswith(option + "="):
            found.extend(arg[len(option) + 1:].split(","))
    return tuple(dict.fromkeys(v.strip() for v in found if v.strip()))


def router_common_args(spec: RouterSpec) -> list[str]:
    """Listen address, metrics, policy and extra args: the same flags for both routers."""
    # Both routers export Prometheus metrics on 29000 unless told otherwise, and
    # sglang-router panics when that port is taken: keep it explicit and checkable.
    argv = ["--host", spec.bind, "--port", str(spec.port),
            "--prometheus-host", spec.bind, "--prometheus-port", str(spec.metrics_port)]
    if spec.policy:
        argv += ["--policy", spec.policy]
    # start-pd launches the router together with the servers, so it waits for them while
    # they load: as long as start-pd does (start-pd's --timeout decides, not the router's
    # default 600/1800 s), looking every second (default 30 s: up to 30 s of idle router).
    # The user's extra args come last and win.
    argv += ["--worker-startup-timeout-secs", str(ROUTER_WORKER_WAIT_S),
             "--worker-startup-check-interval", "1"]
    return argv + list(spec.extra_args)


ENGINE = SGLang()
