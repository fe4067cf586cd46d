"""Planning a PD deployment (pure): layouts, addresses, ports, files, run ids, the router,
and the argument vectors the engines give each planned process.

Nothing here opens a connection.
"""

from __future__ import annotations

import json
import shlex

import pytest
from helpers import serving_config as config

from cluster.errors import InputError
from cluster.hosts import Host
from cluster.serving import engines, plan, scripts
from cluster.serving.config import ServingConfig


def argv_of(spec) -> list[str]:
    return engines.get(spec.engine).server_argv(spec)


def router_argv(spec) -> list[str]:
    return engines.get(spec.engine).router_argv(spec)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# --- SGLang single node ---------------------------------------------------------------------


def test_sglang_prefill_and_decode_single_node_exact_argv():
    specs = plan.plan_deployment(config(prefill={"tp_size": 8}, decode={"tp_size": 8}),
                                ["10.8.0.81"], ["10.8.0.82"], run_id="R")
    prefill, decode = specs
    assert argv_of(prefill) == [
        "python3", "-m", "sglang.launch_server", "--model-path", "deepseek-ai/DeepSeek-V3",
        "--disaggregation-mode", "prefill", "--host", "10.8.0.81", "--port", "30000",
        "--tp-size", "8", "--disaggregation-bootstrap-port", "8998",
    ]
    assert argv_of(decode) == [
        "python3", "-m", "sglang.launch_server", "--model-path", "deepseek-ai/DeepSeek-V3",
        "--disaggregation-mode", "decode", "--host", "10.8.0.82", "--port", "30001",
        "--tp-size", "8", "--disaggregation-bootstrap-port", "8998",
    ]
    assert prefill.is_api and decode.is_api
    assert prefill.ports == (30000, 8998)  # bootstrap server lives on the prefill node
    assert decode.ports == (30001,)


def test_host_is_never_a_wildcard():
    with pytest.raises(InputError, match="not a wildcard"):
        plan.plan_deployment(config(), ["0.0.0.0"], ["10.8.0.82"])
    with pytest.raises(InputError, match="not a wildcard"):
        plan.plan_deployment(config(), ["10.8.0.81"], ["::"])


def test_host_expression_items_keep_ssh_target_and_use_address():
    specs = plan.plan_deployment(config(), ["ops@10.8.0.81:2222"], [Host("10.8.0.82", "ops")], run_id="R")
    assert [(s.host, s.target) for s in specs] == [("10.8.0.81", "ops@10.8.0.81:2222"),
                                                    ("10.8.0.82", "ops@10.8.0.82")]
    assert flag(argv_of(specs[0]), "--host") == "10.8.0.81"


def test_ranges_expand_and_local_binds_loopback():
    specs = plan.plan_deployment(config(), ["local"], ["10.8.0.[82-83]"], run_id="R")
    assert [s.host for s in specs] == ["127.0.0.1", "10.8.0.82", "10.8.0.83"]
    assert [s.server_index for s in specs] == [0, 0, 1]


# --- multi-node layout ----------------------------------------------------------------------


def deepseek_specs():
    cfg = config(
        prefill={"tp_size": 16, "nnodes": 2, "extra_args": "--trust-remote-code --mem-fraction-static 0.8"},
        decode={"tp_size": 16, "nnodes": 2, "extra_args": ["--max-running-requests", "128"]},
    )
    return plan.plan_deployment(cfg, ["10.8.0.81", "10.8.0.82"], ["10.8.0.83", "10.8.0.84"], run_id="R")


def test_deepseek_two_nodes_per_server_layout():
    specs = deepseek_specs()
    layout = [(s.role, s.host, s.node_rank, s.is_api, s.dist_init_addr) for s in specs]
    assert layout == [
        ("prefill", "10.8.0.81", 0, True, "10.8.0.81:5000"),
        ("prefill", "10.8.0.82", 1, False, "10.8.0.81:5000"),
        ("decode", "10.8.0.83", 0, True, "10.8.0.83:5000"),
        ("decode", "10.8.0.84", 1, False, "10.8.0.83:5000"),
    ]
    for spec in specs:
        argv = argv_of(spec)
        assert flag(argv, "--tp-size") == "16"
        assert flag(argv, "--nnodes") == "2"
        assert flag(argv, "--node-rank") == str(spec.node_rank)
        assert flag(argv, "--dist-init-addr") == spec.dist_init_addr
        assert flag(argv, "--host") == spec.host  # each node's own address
        assert flag(argv, "--disaggregation-bootstrap-port") == "8998"  # on every rank
    assert argv_of(specs[1])[-3:] == ["--trust-remote-code", "--mem-fraction-static", "0.8"]
    assert argv_of(specs[3])[-2:] == ["--max-running-requests", "128"]


def test_multi_node_rank0_claims_dist_port_only_rank0_serves_router():
    specs = deepseek_specs()
    assert specs[0].ports == (30000, 8998, 5000)
    assert specs[1].ports == (30000,)  # dummy health server on --port only
    router = plan.plan_router(config(router={"host": "10.8.0.90"}), specs)
    assert router.prefill == (("http://10.8.0.81:30000", 8998),)
    assert router.decode == ("http://10.8.0.83:30001",)


def test_two_servers_per_role_each_get_their_own_master():
    cfg = config(prefill={"tp_size": 16, "nnodes": 2}, decode={"nnodes": 1})
    specs = plan.plan_deployment(cfg, [f"10.8.0.{i}" for i in (81, 82, 83, 84)], ["10.8.0.85"], run_id="R")
    assert [s.dist_init_addr for s in specs[:4]] == ["10.8.0.81:5000"] * 2 + ["10.8.0.83:5000"] * 2
    assert [s.server_index for s in specs[:4]] == [0, 0, 1, 1]
    assert "--dist-init-addr" not in argv_of(specs[4])


@pytest.mark.parametrize(
    ("prefill", "decode", "cfg", "message"),
    [
        (["10.8.0.81", "10.8.0.82", "10.8.0.83"], ["10.8.0.84"], {"prefill": {"nnodes": 2, "tp_size": 16}},
         "prefill: 3 host(s) cannot be split into servers of nnodes=2"),
        ([], ["10.8.0.84"], {}, "no prefill hosts given"),
        (["10.8.0.81"], [], {}, "no decode hosts given"),
        (["10.8.0.81"], ["10.8.0.82", "10.8.0.83"], {"decode": {"nnodes": 2, "tp_size": 3}},
         "decode: tp_size=3 is not divisible by nnodes=2"),
        (["10.8.0.81", Host("10.8.0.81")], ["10.8.0.82"], {},
         "10.8.0.81:30000 is used twice: prefill server 0 (node-rank 0) and prefill server 1"),
        (["10.8.0.81"], ["10.8.0.81"], {"decode": {"port": 30000}},
         "10.8.0.81:30000 is used twice: prefill server 0 (node-rank 0) and decode server 0"),
        (["10.8.0.81"], ["10.8.0.81"], {"decode": {"port": 8998}}, "10.8.0.81:8998 is used twice"),
    ],
)
def test_bad_layouts_are_input_errors(prefill, decode, cfg, message):
    with pytest.raises(InputError) as info:
        plan.plan_deployment(config(**cfg), prefill, decode, run_id="R")
    assert message in str(info.value)


def test_single_host_pd_is_allowed_when_ports_differ():
    specs = plan.plan_deployment(config(), ["10.8.0.81"], ["10.8.0.81"], run_id="R")
    assert [(s.role, s.port) for s in specs] == [("prefill", 30000), ("decode", 30001)]


def test_missing_model_path_is_input_error():
    with pytest.raises(InputError, match="no model path"):
        plan.plan_deployment(ServingConfig(), ["10.8.0.81"], ["10.8.0.82"])


# --- files and names --------------------------------------------------------------------------


def test_per_host_files_carry_host_port_and_run_id():
    spec = plan.plan_deployment(config(), ["10.8.0.81"], ["10.8.0.82"], run_id="20250101-000000-ab12")[0]
    assert spec.log_path == "~/.cluster/run/sglang-prefill-10.8.0.81-30000@20250101-000000-ab12.log"
    assert spec.pid_path == "~/.cluster/run/sglang-prefill-10.8.0.81-30000@20250101-000000-ab12.pid"
    assert spec.record_path == "~/.cluster/run/sglang-prefill-10.8.0.81-30000@20250101-000000-ab12.json"
    # keys that cannot collide: deployment, engine, run id, role-server-rank
    assert spec.uid == "default.sglang.20250101-000000-ab12.prefill-0-0"


def test_ipv6_hosts_are_bracketed_in_urls_and_safe_in_file_names():
    specs = plan.plan_deployment(config(), ["fd00::81"], ["fd00::82"], run_id="R")
    assert specs[0].url == "http://[fd00::81]:30000"
    assert "/" not in specs[0].name and ":" not in specs[0].name


def test_new_run_id_is_sortable_time_plus_token():
    assert plan.new_run_id(now=0, token="beef").endswith("-beef")
    assert plan.new_run_id() != plan.new_run_id()


# --- vLLM --------------------------------------------------------------------------------------


def vllm_config(**doc):
    return config(engine="vllm", model_path="Qwen/Qwen3-8B", **doc)


def test_vllm_single_node_argv_and_env():
    specs = plan.plan_deployment(vllm_config(), ["10.8.0.81"], ["10.8.0.82"], run_id="R")
    prefill, decode = specs
    assert argv_of(prefill) == [
        "vllm", "serve", "Qwen/Qwen3-8B", "--host", "10.8.0.81", "--port", "8100",
        "--tensor-parallel-size", "1",
        "--kv-transfer-config", '{"kv_connector":"NixlConnector","kv_role":"kv_producer"}',
    ]
    assert json.loads(flag(argv_of(decode), "--kv-transfer-config"))["kv_role"] == "kv_consumer"
    assert dict(scripts.server_env(prefill)) == {"VLLM_NIXL_SIDE_CHANNEL_HOST": "10.8.0.81",
                                             "VLLM_NIXL_SIDE_CHANNEL_PORT": "5600"}
    # The JSON survives shell quoting.
    script = scripts.launch_script(scripts.launch_of(prefill))
    start = next(line for line in script.splitlines() if line.startswith("setsid"))
    start = start.split(" detached ", 1)[1]
    assert json.loads(flag(shlex.split(start), "--kv-transfer-config"))["kv_connector"] == "NixlConnector"


def test_vllm_servers_sharing_a_host_get_distinct_side_channel_ports():
    cfg = vllm_config(prefill={"tp_size": 4}, decode={"tp_size": 2})
    specs = plan.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.81", "10.8.0.82"], run_id="R")
    ports = [(s.host, s.side_channel_port) for s in specs]
    # prefill uses 5600-5603 (4 local ranks), so the decode on the same host starts at 5604.
    assert ports == [("10.8.0.81", 5600), ("10.8.0.81", 5604), ("10.8.0.82", 5600)]
    assert specs[1].ports == (8200, 5604, 5605)


def test_vllm_multi_node_headless_ranks():
    cfg = vllm_config(prefill={"tp_size": 16, "nnodes": 2})
    specs = plan.plan_deployment(cfg, ["10.8.0.81", "10.8.0.82"], ["10.8.0.83"], run_id="R")
    head, worker = argv_of(specs[0]), argv_of(specs[1])
    for argv, rank in ((head, "0"), (worker, "1")):
        assert flag(argv, "--nnodes") == "2" and flag(argv, "--node-rank") == rank
        assert flag(argv, "--master-addr") == "10.8.0.81" and flag(argv, "--master-port") == "5000"
        assert flag(argv, "--tensor-parallel-size") == "16"
    assert "--headless" not in head and "--headless" in worker
    assert "--port" not in worker  # a headless rank serves no HTTP
    assert specs[1].ports == (5600, 5601, 5602, 5603, 5604, 5605, 5606, 5607)


# --- routers --------------------------------------------------------------------------------------


def test_sglang_router_command():
    cfg = config(router={"host": "10.8.0.90", "port": 8000, "policy": "round_robin"})
    specs = plan.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82", "10.8.0.83"], run_id="R")
    router = plan.plan_router(cfg, specs)
    assert router_argv(router) == [
        "python3", "-m", "sglang_router.launch_router", "--pd-disaggregation",
        "--prefill", "http://10.8.0.81:30000", "8998",
        "--decode", "http://10.8.0.82:30001", "--decode", "http://10.8.0.83:30001",
        "--host", "10.8.0.90", "--port", "8000",
        "--prometheus-host", "10.8.0.90", "--prometheus-port", "29000", "--policy", "round_robin",
        "--worker-startup-timeout-secs", "86400", "--worker-startup-check-interval", "1",
    ]
    assert scripts.launch_of(router).ports == (8000, 29000)
    assert router.url == "http://10.8.0.90:8000"
    assert router.log_path == "~/.cluster/run/sglang-router-10.8.0.90-8000@R.log"


def test_router_local_binds_loopback_and_cli_host_overrides():
    cfg = config(router={"host": "10.8.0.90"})
    specs = plan.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R")
    router = plan.plan_router(cfg, specs, host="local")
    assert router.is_local and router.bind == "127.0.0.1" and router.target == "local"
    assert plan.plan_router(config(), specs) is None  # no router configured, none asked


def test_router_launcher_override_and_port_clash():
    cfg = config(router={"host": "10.8.0.81", "port": 30000, "launcher": "smg"})
    specs = plan.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R")
    with pytest.raises(InputError, match="router port 30000 on 10.8.0.81 is also used by prefill"):
        plan.plan_router(cfg, specs)
    cfg = config(router={"host": "10.8.0.90", "launcher": "smg"})
    assert router_argv(plan.plan_router(cfg, specs))[:2] == ["smg", "--pd-disaggregation"]
    # The metrics port is a port too: it may not collide with a server or the router.
    cfg = config(router={"host": "10.8.0.81", "metrics_port": 8998})
    with pytest.raises(InputError, match="router port 8998 on 10.8.0.81 is also used by prefill"):
        plan.plan_router(cfg, specs)
    with pytest.raises(InputError, match="both 8000"):
        plan.plan_router(config(router={"host": "10.8.0.90", "metrics_port": 8000}), specs)


def test_vllm_router_command():
    cfg = vllm_config(router={"host": "10.8.0.90", "port": 8090})
    specs = plan.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R")
    assert router_argv(plan.plan_router(cfg, specs)) == [
        "vllm-router", "--vllm-pd-disaggregation", "--prefill", "http://10.8.0.81:8100",
        "--decode", "http://10.8.0.82:8200", "--kv-connector", "nixl",
        "--host", "10.8.0.90", "--port", "8090",
        "--prometheus-host", "10.8.0.90", "--prometheus-port", "29000",
        "--worker-startup-timeout-secs", "86400", "--worker-startup-check-interval", "1",
    ]
