"""Command building for PD serving: argv, layouts, quoting, masking, stop/sweep text.

Pure tests: nothing here opens a connection. Shell snippets are only syntax-checked
(``sh -n``) or run where they touch nothing but local process/`/proc` state.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.errors import InputError
from cluster.hosts import Host
from cluster.serving import commands as cmd
from cluster.serving.config import ServingConfig, parse_serving

SHELLS = [s for s in ("sh", "dash", "bash") if shutil.which(s)]


def config(**doc) -> ServingConfig:
    doc.setdefault("model_path", "deepseek-ai/DeepSeek-V3")
    return parse_serving(doc, source="roles.yaml")


def argv_of(spec) -> list[str]:
    return cmd.server_argv(spec)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# --- SGLang single node ---------------------------------------------------------------------


def test_sglang_prefill_and_decode_single_node_exact_argv():
    specs = cmd.plan_deployment(config(prefill={"tp_size": 8}, decode={"tp_size": 8}),
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
        cmd.plan_deployment(config(), ["0.0.0.0"], ["10.8.0.82"])
    with pytest.raises(InputError, match="not a wildcard"):
        cmd.plan_deployment(config(), ["10.8.0.81"], ["::"])


def test_host_expression_items_keep_ssh_target_and_use_address():
    specs = cmd.plan_deployment(config(), ["ops@10.8.0.81:2222"], [Host("10.8.0.82", "ops")], run_id="R")
    assert [(s.host, s.target) for s in specs] == [("10.8.0.81", "ops@10.8.0.81:2222"),
                                                    ("10.8.0.82", "ops@10.8.0.82")]
    assert flag(argv_of(specs[0]), "--host") == "10.8.0.81"


def test_ranges_expand_and_local_binds_loopback():
    specs = cmd.plan_deployment(config(), ["local"], ["10.8.0.[82-83]"], run_id="R")
    assert [s.host for s in specs] == ["127.0.0.1", "10.8.0.82", "10.8.0.83"]
    assert [s.server_index for s in specs] == [0, 0, 1]


# --- multi-node layout ----------------------------------------------------------------------


def deepseek_specs():
    cfg = config(
        prefill={"tp_size": 16, "nnodes": 2, "extra_args": "--trust-remote-code --mem-fraction-static 0.8"},
        decode={"tp_size": 16, "nnodes": 2, "extra_args": ["--max-running-requests", "128"]},
    )
    return cmd.plan_deployment(cfg, ["10.8.0.81", "10.8.0.82"], ["10.8.0.83", "10.8.0.84"], run_id="R")


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
    router = cmd.plan_router(config(router={"host": "10.8.0.90"}), specs)
    assert router.prefill == (("http://10.8.0.81:30000", 8998),)
    assert router.decode == ("http://10.8.0.83:30001",)


def test_two_servers_per_role_each_get_their_own_master():
    cfg = config(prefill={"tp_size": 16, "nnodes": 2}, decode={"nnodes": 1})
    specs = cmd.plan_deployment(cfg, [f"10.8.0.{i}" for i in (81, 82, 83, 84)], ["10.8.0.85"], run_id="R")
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
        cmd.plan_deployment(config(**cfg), prefill, decode, run_id="R")
    assert message in str(info.value)


def test_single_host_pd_is_allowed_when_ports_differ():
    specs = cmd.plan_deployment(config(), ["10.8.0.81"], ["10.8.0.81"], run_id="R")
    assert [(s.role, s.port) for s in specs] == [("prefill", 30000), ("decode", 30001)]


def test_missing_model_path_is_input_error():
    with pytest.raises(InputError, match="no model path"):
        cmd.plan_deployment(ServingConfig(), ["10.8.0.81"], ["10.8.0.82"])


# --- files and names --------------------------------------------------------------------------


def test_per_host_files_carry_host_port_and_run_id():
    spec = cmd.plan_deployment(config(), ["10.8.0.81"], ["10.8.0.82"], run_id="20250101-000000-ab12")[0]
    assert spec.log_path == "~/.cluster/run/sglang-prefill-10.8.0.81-30000-20250101-000000-ab12.log"
    assert spec.pid_path == "~/.cluster/run/sglang-prefill-10.8.0.81-30000.pid"
    assert spec.record_path == "~/.cluster/run/sglang-prefill-10.8.0.81-30000.json"


def test_ipv6_hosts_are_bracketed_in_urls_and_safe_in_file_names():
    specs = cmd.plan_deployment(config(), ["fd00::81"], ["fd00::82"], run_id="R")
    assert specs[0].url == "http://[fd00::81]:30000"
    assert "/" not in specs[0].name and ":" not in specs[0].name


def test_new_run_id_is_sortable_time_plus_token():
    assert cmd.new_run_id(now=0, token="beef").endswith("-beef")
    assert cmd.new_run_id() != cmd.new_run_id()


# --- quoting and secrets ------------------------------------------------------------------------

NASTY = ["a b", "it's", 'say "hi"', "$(touch /tmp/pwned)", "`id`", "x;y", "*", "$HOME"]


@pytest.mark.parametrize("value", NASTY)
def test_values_round_trip_literally_through_the_shell(value):
    cfg = config(model_path=value, env={"NCCL_SOCKET_IFNAME": value},
                 prefill={"extra_args": ["--chat-template", value]})
    spec = cmd.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R")[0]
    script = cmd.launch_script(cmd.server_launch(spec))
    start = next(line for line in script.splitlines() if line.startswith("setsid nohup"))
    words = shlex.split(start)
    assert words[words.index("--model-path") + 1] == value
    assert words[words.index("--chat-template") + 1] == value
    export = next(line for line in script.splitlines() if line.startswith("export "))
    # The run id marker comes last: every process of the deployment inherits it.
    assert shlex.split(export)[1:] == [f"NCCL_SOCKET_IFNAME={value}", "CLUSTER_PD_RUN_ID=R"]


@pytest.mark.parametrize("shell", SHELLS)
def test_scripts_are_valid_shell(shell):
    cfg = config(env_file="/opt/deepep/unified-env.sh", env={"A": "$(x)"}, router={"host": "local"})
    specs = cmd.plan_deployment(cfg, ["10.8.0.81", "10.8.0.82"], ["10.8.0.83"], run_id="R")
    texts = [cmd.launch_script(cmd.server_launch(s)) for s in specs]
    texts += [cmd.render_for_display(s) for s in specs]
    texts += [cmd.preflight_script(cmd.server_launch(specs[0])),
              cmd.launch_script(cmd.router_launch(cmd.plan_router(cfg, specs))),
              cmd.stop_command(1234, 5), cmd.sweep_command("sglang", "ops"),
              cmd.sweep_command("vllm", None, spare_router=False),
              cmd.health_command("10.8.0.81", 30000), cmd.ports_free_command([30000, 8998], "10.8.0.81"),
              cmd.STDIN_RUNNER,
              cmd.preflight_script(cmd.server_launch(specs[0]), running_ok=True),
              cmd.stop_groups_command([1234, 5678], 2),
              cmd.sweep_command("sglang", None, False, servers=False, run_ids=["R", "S"]),
              cmd.probe_command([cmd.ProbeTarget("prefill-0-0", 1234, "10.8.0.81", 30000,
                                                 "~/.cluster/run/x.log", (30000, 8998),
                                                 fetch_path="/workers")]),
              cmd.tail_command("~/.cluster/run/x.log"), cmd.records_command("~/run", "10.8.0.81"),
              cmd.sections_script([("a", "echo 1"), ("b", cmd.stop_groups_command([99], 1))])]
    for text in texts:
        result = subprocess.run([shell, "-n"], input=text, text=True, capture_output=True)
        assert result.returncode == 0, (text, result.stderr)


def test_tilde_run_dir_expands_on_the_host_not_quoted_away():
    spec = cmd.plan_deployment(config(), ["10.8.0.81"], ["10.8.0.82"], run_id="R")[0]
    script = cmd.launch_script(cmd.server_launch(spec))
    assert 'mkdir -p "$HOME"/.cluster/run ' in script
    assert "'~" not in script


def test_secrets_are_masked_in_display_but_present_in_the_real_script():
    cfg = config(env={"HF_TOKEN": "hf_realsecret", "WANDB_API_KEY": "k3y", "NCCL_SOCKET_IFNAME": "eth0",
                      "DB_PASSWORD": "pw"},
                 prefill={"extra_args": ["--api-key", "sk-123", "--hf-token=hf_x2"]})
    spec = cmd.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R")[0]
    shown = cmd.render_for_display(spec) + cmd.display_command(spec)
    for secret in ("hf_realsecret", "k3y", "pw", "sk-123", "hf_x2"):
        assert secret not in shown
    assert "HF_TOKEN=***" in shown and "--api-key ***" in shown and "--hf-token=***" in shown
    assert "NCCL_SOCKET_IFNAME=eth0" in shown  # non-secret values stay visible
    real = cmd.launch_script(cmd.server_launch(spec))
    assert "HF_TOKEN=hf_realsecret" in real and "sk-123" in real


def test_forward_env_takes_values_from_controller_environment():
    cfg = config(forward_env=["HF_TOKEN"])
    spec = cmd.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R",
                               environ={"HF_TOKEN": "hf_fw"})[0]
    assert ("HF_TOKEN", "hf_fw") in cmd.server_env(spec)
    assert "hf_fw" not in cmd.render_for_display(spec)
    with pytest.raises(InputError, match="HF_TOKEN is not set"):
        cmd.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], environ={})


def test_launch_script_order_and_exit_codes():
    cfg = config(env_file="/opt/deepep/unified-env.sh", env={"NCCL_SOCKET_IFNAME": "eth0"})
    spec = cmd.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R")[0]
    lines = cmd.launch_script(cmd.server_launch(spec)).splitlines()
    first = lambda prefix: next(i for i, line in enumerate(lines) if line.startswith(prefix))  # noqa: E731
    # env file checked before anything is created; sourced after the checks; start last.
    assert first("[ -f /opt/deepep/unified-env.sh ]") < first("mkdir -p") < first(". /opt/deepep")
    assert first(". /opt/deepep") < first("export ") < first("setsid nohup")
    check = lines[first("[ -f")]
    assert "exit 3" in check and "env file not found: /opt/deepep/unified-env.sh" in check
    start = lines[first("setsid nohup")]
    assert start.endswith(f">> {spec.log_path.replace('~', chr(34) + '$HOME' + chr(34))} 2>&1 < /dev/null &")
    assert lines[-4] == "pid=$!"
    assert lines[-3] == 'echo "$pid" > "$HOME"/.cluster/run/sglang-prefill-10.8.0.81-30000.pid'
    assert lines[-1] == 'echo "$pid"'  # the pid is the last line of stdout


# --- vLLM --------------------------------------------------------------------------------------


def vllm_config(**doc):
    return config(engine="vllm", model_path="Qwen/Qwen3-8B", **doc)


def test_vllm_single_node_argv_and_env():
    specs = cmd.plan_deployment(vllm_config(), ["10.8.0.81"], ["10.8.0.82"], run_id="R")
    prefill, decode = specs
    assert argv_of(prefill) == [
        "vllm", "serve", "Qwen/Qwen3-8B", "--host", "10.8.0.81", "--port", "8100",
        "--tensor-parallel-size", "1",
        "--kv-transfer-config", '{"kv_connector":"NixlConnector","kv_role":"kv_producer"}',
    ]
    assert json.loads(flag(argv_of(decode), "--kv-transfer-config"))["kv_role"] == "kv_consumer"
    assert dict(cmd.server_env(prefill)) == {"VLLM_NIXL_SIDE_CHANNEL_HOST": "10.8.0.81",
                                             "VLLM_NIXL_SIDE_CHANNEL_PORT": "5600"}
    # The JSON survives shell quoting.
    script = cmd.launch_script(cmd.server_launch(prefill))
    start = next(line for line in script.splitlines() if line.startswith("setsid"))
    assert json.loads(flag(shlex.split(start), "--kv-transfer-config"))["kv_connector"] == "NixlConnector"


def test_vllm_servers_sharing_a_host_get_distinct_side_channel_ports():
    cfg = vllm_config(prefill={"tp_size": 4}, decode={"tp_size": 2})
    specs = cmd.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.81", "10.8.0.82"], run_id="R")
    ports = [(s.host, s.side_channel_port) for s in specs]
    # prefill uses 5600-5603 (4 local ranks), so the decode on the same host starts at 5604.
    assert ports == [("10.8.0.81", 5600), ("10.8.0.81", 5604), ("10.8.0.82", 5600)]
    assert specs[1].ports == (8200, 5604, 5605)


def test_vllm_multi_node_headless_ranks():
    cfg = vllm_config(prefill={"tp_size": 16, "nnodes": 2})
    specs = cmd.plan_deployment(cfg, ["10.8.0.81", "10.8.0.82"], ["10.8.0.83"], run_id="R")
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
    specs = cmd.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82", "10.8.0.83"], run_id="R")
    router = cmd.plan_router(cfg, specs)
    assert cmd.router_argv(router) == [
        "python3", "-m", "sglang_router.launch_router", "--pd-disaggregation",
        "--prefill", "http://10.8.0.81:30000", "8998",
        "--decode", "http://10.8.0.82:30001", "--decode", "http://10.8.0.83:30001",
        "--host", "10.8.0.90", "--port", "8000",
        "--prometheus-host", "10.8.0.90", "--prometheus-port", "29000", "--policy", "round_robin",
    ]
    assert cmd.router_launch(router).ports == (8000, 29000)
    assert router.url == "http://10.8.0.90:8000"
    assert router.log_path == "~/.cluster/run/sglang-router-10.8.0.90-8000-R.log"


def test_router_local_binds_loopback_and_cli_host_overrides():
    cfg = config(router={"host": "10.8.0.90"})
    specs = cmd.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R")
    router = cmd.plan_router(cfg, specs, host="local")
    assert router.is_local and router.bind == "127.0.0.1" and router.target == "local"
    assert cmd.plan_router(config(), specs) is None  # no router configured, none asked


def test_router_launcher_override_and_port_clash():
    cfg = config(router={"host": "10.8.0.81", "port": 30000, "launcher": "smg"})
    specs = cmd.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R")
    with pytest.raises(InputError, match="router port 30000 on 10.8.0.81 is also used by prefill"):
        cmd.plan_router(cfg, specs)
    cfg = config(router={"host": "10.8.0.90", "launcher": "smg"})
    assert cmd.router_argv(cmd.plan_router(cfg, specs))[:2] == ["smg", "--pd-disaggregation"]
    # The metrics port is a port too: it may not collide with a server or the router.
    cfg = config(router={"host": "10.8.0.81", "metrics_port": 8998})
    with pytest.raises(InputError, match="router port 8998 on 10.8.0.81 is also used by prefill"):
        cmd.plan_router(cfg, specs)
    with pytest.raises(InputError, match="both 8000"):
        cmd.plan_router(config(router={"host": "10.8.0.90", "metrics_port": 8000}), specs)


def test_vllm_router_command():
    cfg = vllm_config(router={"host": "10.8.0.90", "port": 8090})
    specs = cmd.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R")
    assert cmd.router_argv(cmd.plan_router(cfg, specs)) == [
        "vllm-router", "--vllm-pd-disaggregation", "--prefill", "http://10.8.0.81:8100",
        "--decode", "http://10.8.0.82:8200", "--kv-connector", "nixl",
        "--host", "10.8.0.90", "--port", "8090",
        "--prometheus-host", "10.8.0.90", "--prometheus-port", "29000",
    ]


# --- health / ports / stop / sweep text -------------------------------------------------------


def test_health_command_targets_host_and_bypasses_proxies():
    text = cmd.health_command("10.8.0.81", 30000)
    assert "http://10.8.0.81:30000/health" in text
    assert "--noproxy '*'" in text and "ProxyHandler({})" in text


@pytest.mark.parametrize(("out", "code"), [("200\n", 200), ("503", 503), ("000\n", 0), ("", 0), ("junk", 0)])
def test_parse_health(out, code):
    assert cmd.parse_health(out) == code


def test_ports_free_command_reads_proc_with_host_and_wildcards():
    text = cmd.ports_free_command([30000], "127.0.1.1")
    # 127.0.1.1 in /proc/net/tcp byte order, port 30000 = 0x7530; plus 0.0.0.0 and ::.
    for key in ("0101007F:7530=30000", "00000000:7530=30000", "0" * 32 + ":7530=30000"):
        assert key in text
    assert "*:7530" in cmd.ports_free_command([30000], "gpu01")  # a name: any address counts


def test_ports_free_command_on_this_machine_sees_a_listener(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        out = subprocess.run(["sh", "-c", cmd.ports_free_command([port], "127.0.0.1")],
                             capture_output=True, text=True).stdout
        other = subprocess.run(["sh", "-c", cmd.ports_free_command([port], "127.0.0.2")],
                               capture_output=True, text=True).stdout
    assert cmd.parse_ports_free(out) == {port: False}
    assert cmd.parse_ports_free(other) == {port: True}  # another loopback address: free there


def test_stop_command_refuses_init_and_parses():
    with pytest.raises(InputError):
        cmd.stop_command(1)
    text = cmd.stop_command(4242, grace_s=2.5)
    assert "kill -TERM -$g" in text and "kill -KILL -$g" in text and "-lt 25 ]" in text
    assert cmd.parse_stop("GONE\n") == cmd.StopResult(was_running=False)
    parsed = cmd.parse_stop("PIDS 10 11 12\nKILL 12\nDONE kill 31\n")
    assert parsed.pids == (10, 11, 12) and parsed.killed == (12,) and parsed.how == "kill"
    assert parsed.seconds == 31 and parsed.alive == ()


def test_sweep_patterns_spare_the_router_unless_stopping_it():
    spare = cmd.sweep_command("sglang", "ops", spare_router=True)
    assert "[s]glang::|[s]glang\\.launch_server|[s]glang serve|[s]glang\\.srt" in spare
    assert 'case "$cmd" in sglang::router*) continue' in spare and "sglang_router" not in spare
    assert "pgrep -u ops -a -f" in spare
    full = cmd.sweep_command("sglang", None, spare_router=False)
    assert "sglang::router'*" not in full and "[s]glang_router" in full
    assert 'pgrep -u "$(id -un)"' in full
    vllm = cmd.sweep_command("vllm")
    assert "[V]LLM::EngineCore|[V]LLM::Worker|[v]llm serve" in vllm
    with pytest.raises(InputError):
        cmd.sweep_command("tgi")


def test_sweep_pattern_does_not_match_its_own_text():
    import re

    text = cmd.sweep_command("sglang", "ops", spare_router=False)
    pattern = shlex.split(text.split("pgrep -u ops -a -f ", 1)[1].split(" 2>", 1)[0])[0]
    assert not re.search(pattern, text)  # the sweeping shell's cmdline holds this text
    assert re.search(pattern, "sglang::scheduler_TP3")
    assert re.search(pattern, "python3 -m sglang.launch_server --model-path m")


def test_parse_sweep():
    out = "KILLED 10 sglang::scheduler_TP0\nKILLED 11 python3 -m sglang.launch_server --port 1\nSURVIVED 11\n"
    result = cmd.parse_sweep(out)
    assert result.killed == ((10, "sglang::scheduler_TP0"), (11, "python3 -m sglang.launch_server --port 1"))
    assert result.survived == (11,)
    assert cmd.parse_sweep("") == cmd.SweepResult()


# --- manifest -------------------------------------------------------------------------------------


def test_manifest_round_trips_through_json():
    cfg = config(env={"HF_TOKEN": "hf_secret"}, router={"host": "local"},
                 prefill={"tp_size": 16, "nnodes": 2})
    specs = cmd.plan_deployment(cfg, ["10.8.0.81", "10.8.0.82"], ["10.8.0.83"], run_id="R")
    router = cmd.plan_router(cfg, specs)
    manifest = cmd.Manifest(
        name="prod", engine="sglang", run_id="R", model_path=cfg.model_path, created_at=1.5,
        servers=[cmd.ServerRecord.from_spec(s, pid=100 + i, started_at=2.0) for i, s in enumerate(specs)],
        router=cmd.RouterRecord.from_spec(router, pid=200),
    )
    text = manifest.dumps()
    assert "hf_secret" not in text  # commands in records are display forms
    again = cmd.Manifest.loads(text)
    assert again == manifest
    assert [s.host for s in again.api_servers()] == ["10.8.0.81", "10.8.0.83"]
    assert again.servers[1].pgid == 101 and again.servers[1].is_api is False
    assert again.router.url == "http://127.0.0.1:8000" and again.router.is_local


def test_manifest_rejects_garbage():
    with pytest.raises(InputError, match="not JSON"):
        cmd.Manifest.loads("{nope")
    with pytest.raises(InputError, match="malformed"):
        cmd.Manifest.from_json({"name": "x"})
    doc = {"name": "x", "engine": "sglang", "run_id": "R", "model_path": "m", "created_at": 0,
           "servers": [], "future_field": 1}
    assert cmd.Manifest.from_json(doc).name == "x"  # unknown keys from newer writers ignored


def test_manifest_path_is_per_name():
    assert cmd.manifest_path("prod") == "~/.cluster/deployments/prod.json"
    odd = cmd.manifest_path("../x y")
    assert odd.startswith("~/.cluster/deployments/") and "/" not in odd.split("deployments/")[1]


# --- lifecycle scripts: preflight, stop of several groups, probes, sections, records ----------


def run_local(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-s"], input=script, text=True, capture_output=True, timeout=30)


def test_preflight_restart_mode_reports_the_running_group_and_skips_the_port_check(tmp_path):
    standins = Path(__file__).resolve().parents[1] / "cluster" / "testing" / "standins"
    import socket

    with socket.socket() as a, socket.socket() as b:  # two ports free right now
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        ports = a.getsockname()[1], b.getsockname()[1]
    cfg = config(run_dir=str(tmp_path), python=sys.executable, env={"PYTHONPATH": str(standins)},
                 prefill={"port": ports[0]}, bootstrap_port=ports[1])
    spec = cmd.plan_deployment(cfg, ["127.0.0.1"], ["127.0.0.2"], run_id="R")[0]
    launch = cmd.server_launch(spec)
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        Path(spec.pid_path).write_text(f"{sleeper.pid}\n")
        refused = run_local(cmd.preflight_script(launch))
        assert refused.returncode == cmd.EXIT_ALREADY_RUNNING
        assert f"already running: process group {sleeper.pid}" in refused.stderr
        allowed = run_local(cmd.preflight_script(launch, running_ok=True))
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.splitlines() == [f"RUNNING {sleeper.pid}", "ok"]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert run_local(cmd.preflight_script(launch, running_ok=True)).stdout.splitlines() == ["ok"]


def test_preflight_checks_the_launcher_and_its_python_package(tmp_path):
    env_file = tmp_path / "env.sh"
    env_file.write_text("export PATH=/nonexistent-only\n")
    cfg = config(run_dir=str(tmp_path), env_file=str(env_file))
    spec = cmd.plan_deployment(cfg, ["127.0.0.1"], ["127.0.0.2"], run_id="R")[0]
    # The env file is sourced first: after it, python3 is no longer on PATH.
    missing = run_local(cmd.preflight_script(cmd.server_launch(spec)))
    assert missing.returncode == cmd.EXIT_LAUNCHER_MISSING
    assert "python3 not found on PATH" in missing.stderr
    env_file.write_text("true\n")
    import importlib.util

    if importlib.util.find_spec("sglang") is not None:
        pytest.skip("sglang is installed here: cannot show the missing-package message")
    # python3 is there, but the sglang package is not.
    no_package = run_local(cmd.preflight_script(cmd.server_launch(spec)))
    assert no_package.returncode == cmd.EXIT_LAUNCHER_MISSING
    assert "python3 cannot import sglang" in no_package.stderr
    assert not list(tmp_path.glob("*.log"))  # a preflight writes nothing


def test_stop_groups_terms_all_then_kills_the_stubborn_ones():
    polite = subprocess.Popen(["sleep", "30"], start_new_session=True)
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 30 & wait; sleep 30"],
                                start_new_session=True)
    try:
        time.sleep(0.2)
        out = run_local(cmd.stop_groups_command([polite.pid, stubborn.pid, 999999], grace_s=0.5))
        results = cmd.parse_stop_groups(out.stdout)
        assert results[999999].was_running is False
        assert results[polite.pid].how == "term" and results[polite.pid].killed == ()
        assert results[stubborn.pid].how == "kill" and stubborn.pid in results[stubborn.pid].killed
        assert out.returncode == 0 and results[stubborn.pid].alive == ()
    finally:
        for proc in (polite, stubborn):
            proc.kill()
            proc.wait()
    with pytest.raises(InputError):
        cmd.stop_groups_command([0])
    assert cmd.stop_groups_command([]) == "true\n"


def test_sections_keep_each_scripts_output_and_exit_code():
    out = run_local(cmd.sections_script([("one", "echo a; echo b >&2; exit 3"), ("two", "echo c")]))
    sections = cmd.parse_sections(out.stdout)
    assert sections["one"] == cmd.Section("one", "a\nb", 3)
    assert sections["two"] == cmd.Section("two", "c", 0)
    cut = cmd.parse_sections("@@begin x\npartial")
    assert cut["x"].rc is None and cut["x"].output == "partial"
    with pytest.raises(ValueError):
        cmd.sections_script([("bad key", "true")])


def test_probe_reports_group_health_ports_and_last_log_line(tmp_path):
    import socket

    log = tmp_path / "server.log"
    log.write_text("first\n\x1b[32mlast line\x1b[0m\r\n")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
        try:
            targets = [cmd.ProbeTarget("a", sleeper.pid, "127.0.0.1", port, str(log), (port,),
                                       health_path=None),
                       cmd.ProbeTarget("b", None, "127.0.0.1", port, str(tmp_path / "none.log"))]
            probes = cmd.parse_probe(run_local(cmd.probe_command(targets)).stdout)
        finally:
            sleeper.kill()
            sleeper.wait()
    a, b = probes["a"], probes["b"]
    assert a.alive and a.leader_alive and a.members == 1 and a.uptime_s is not None
    assert a.listening == (port,) and a.health is None and a.last_log == "last line"
    assert not b.alive and b.last_log is None
    assert b.health == 0  # something listens but does not speak HTTP: no status code


def test_parse_probe_reads_a_fetched_body():
    out = "@@probe router\nmembers 2\nleader 1\nhealth 200\n@@body-begin\n{\"workers\": []}\n\n@@body-end\n"
    probe = cmd.parse_probe(out)["router"]
    assert probe.alive and probe.health == 200 and probe.body == '{"workers": []}'


def test_records_round_trip_and_only_this_hosts_files_are_read(tmp_path):
    cfg = config(run_dir=str(tmp_path))
    specs = cmd.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82", "10.8.0.181"], run_id="R")
    for i, spec in enumerate(specs):
        record = cmd.ServerRecord.from_spec(spec, pid=100 + i)
        assert run_local(cmd.record_write_command(record)).returncode == 0
    found = cmd.parse_records(run_local(cmd.records_command(str(tmp_path), "10.8.0.81")).stdout)
    assert [(r.host, r.pid, r.role) for r in found] == [("10.8.0.81", 100, "prefill")]
    assert cmd.parse_records("garbage\n{not json\n") == []


def test_manifest_path_honours_the_state_dir_variable(monkeypatch):
    monkeypatch.setenv("CLUSTER_STATE_DIR", "/srv/state/")
    assert cmd.manifest_path("prod") == "/srv/state/prod.json"
    assert cmd.manifest_path() == "/srv/state/default.json"
    assert cmd.manifest_path("x", base="~/b") == "~/b/x.json"


def test_run_id_scoped_sweep_spares_processes_of_other_runs(tmp_path):
    if not _can_unshare_pid():
        pytest.skip("needs `unshare --pid` (root): even a scoped sweep only runs isolated here")
    mine, theirs = tmp_path / "s-RUN1.log", tmp_path / "s-RUN2.log"
    # (The sweep's own shell variables would clobber short names like $a: use long ones.)
    script = f"""
set -e
# stdout on this run's log (how every child of a launch looks, whatever its title)
( exec -a sglang::scheduler_TP0 sleep 60 ) > {mine} 2>&1 &
by_log=$!
# the run id only in the environment (stdout elsewhere)
( CLUSTER_PD_RUN_ID=RUN1 exec -a sglang::detokenizer sleep 60 ) > /dev/null 2>&1 &
by_env=$!
# another run: must survive
( exec -a sglang::scheduler_TP1 sleep 60 ) > {theirs} 2>&1 &
other=$!
sleep 0.3
{cmd.sweep_command("sglang", None, True, run_ids=["RUN1"])}
echo "ALIVE $(for p in $by_log $by_env $other; do kill -0 $p 2>/dev/null && echo $p; done | tr '\\n' ' ')"
echo "IDS $by_log $by_env $other"
"""
    result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "bash", "-s"],
                            input=script, text=True, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split(" ", 1)[0]: line.split()[1:] for line in result.stdout.splitlines()}
    a, b, c = lines["IDS"]
    killed = {str(pid) for pid, _ in cmd.parse_sweep(result.stdout).killed}
    assert killed == {a, b}
    assert lines["ALIVE"] == [c]


def _can_unshare_pid() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return probe.returncode == 0


def test_sweep_of_a_router_only_host_matches_router_processes_only():
    text = cmd.sweep_command("sglang", "ops", False, servers=False)
    pattern = shlex.split(text.split("pgrep -u ops -a -f ", 1)[1].split(" 2>", 1)[0])[0]
    import re

    assert re.search(pattern, "sglang::router")
    assert re.search(pattern, "python3 -m sglang_router.launch_router --pd-disaggregation")
    assert not re.search(pattern, "sglang::scheduler_TP0")
    assert not re.search(pattern, "python3 -m sglang.launch_server --port 30000")
