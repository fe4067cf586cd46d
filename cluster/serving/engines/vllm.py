"""vLLM: ``vllm serve`` with the NIXL connector, and ``vllm-router``. Facts:
shared/reference/pd-launch.md §4."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import ServingEngine
from .sglang import router_common_args

if TYPE_CHECKING:
    from ..plan import RouterSpec, ServerSpec


class VLLM(ServingEngine):
    name = "vllm"
    package = "vllm"
    # vLLM's NIXL docs use 8100 (prefill) / 8200 (decode).
    default_ports = {"prefill": 8100, "decode": 8200}
    # A launcher-only kill leaves VLLM::Worker_TP* holding GPU memory.
    sweep_patterns = (r"[V]LLM::EngineCore", r"[V]LLM::Worker", r"[v]llm serve")
    router_sweep_patterns = (r"[v]llm-router", r"[v]llm_router")

    def server_argv(self, spec: ServerSpec) -> list[str]:
        kv_role = "kv_producer" if spec.role == "prefill" else "kv_consumer"
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

    def server_env(self, spec: ServerSpec) -> list[tuple[str, str]]:
        if spec.side_channel_port is None:
            return []
        # NIXL's side channel defaults to localhost:5600: set a reachable address and a
        # per-host-unique port so several servers can share a host.
        return [("VLLM_NIXL_SIDE_CHANNEL_HOST", spec.host),
                ("VLLM_NIXL_SIDE_CHANNEL_PORT", str(spec.side_channel_port))]

    def server_ports(self, spec: ServerSpec) -> tuple[int, ...]:
        ports: list[int] = []
        if spec.is_api:  # headless ranks serve no HTTP
            ports.append(spec.port)
        if spec.nnodes > 1 and spec.is_api:
            ports.append(spec.dist_init_port)
        if spec.side_channel_port is not None:
            ports.extend(range(spec.side_channel_port, spec.side_channel_port + spec.local_tp))
        return tuple(dict.fromkeys(ports))

    def assign_ports(self, specs: Sequence[ServerSpec], base: int) -> list[ServerSpec]:
        # NIXL listens on base + local rank, so servers sharing a host are spaced by
        # their local TP size.
        used: dict[str, int] = {}
        out = []
        for spec in specs:
            offset = used.get(spec.host, 0)
            out.append(dataclasses.replace(spec, side_channel_port=base + offset))
            used[spec.host] = offset + spec.local_tp
        return out

    def rdma_devices(self, spec: ServerSpec) -> tuple[str, ...]:
        # NIXL over UCX: UCX_NET_DEVICES=mlx5_0:1,mlx5_1:1 ("all" = let UCX choose).
        value = dict(spec.env).get("UCX_NET_DEVICES") or ""
        names = (item.split(":")[0].strip() for item in value.split(","))
        return tuple(dict.fromkeys(n for n in names if n and n != "all"))

    def router_launcher(self, python: str) -> tuple[str, ...]:
        return ("vllm-router",)

    def router_argv(self, spec: RouterSpec) -> list[str]:
        argv = list(spec.launcher) + ["--vllm-pd-disaggregation"]
        for url, _bootstrap in spec.prefill:
            argv += ["--prefill", url]
        for url in spec.decode:
            argv += ["--decode", url]
        return argv + ["--kv-connector", "nixl"] + router_common_args(spec)

    def router_add_worker(self, url: str, role: str, bootstrap_port: int | None) -> None:
        # vllm-router 0.1.17 answers 400 "PD router requires specific add_prefill_server
        # or add_decode_server methods" to every HTTP add in PD mode.
        return None


ENGINE = VLLM()
