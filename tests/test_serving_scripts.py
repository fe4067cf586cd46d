"""The shell text PD serving runs on hosts (launch, preflight, probe, stop, sweep, health,
ports) and its parsers: quoting, masking, exit codes.

Pure: shell snippets are syntax-checked (``sh -n``) or run where they touch nothing but
local process / `/proc` state.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_local
from helpers import serving_config as config

from cluster import detach
from cluster.errors import InputError
from cluster.serving import plan, records, scripts
from cluster.shell import STDIN_RUNNER, sections_script

SHELLS = [s for s in ("sh", "dash", "bash") if shutil.which(s)]


# --- quoting and secrets ------------------------------------------------------------------------

NASTY = ["a b", "it's", 'say "hi"', "$(touch /tmp/pwned)", "`id`", "x;y", "*", "$HOME"]


@pytest.mark.parametrize("value", NASTY)
def test_values_round_trip_literally_through_the_shell(value):
    cfg = config(model_path=value, env={"NCCL_SOCKET_IFNAME": value},
                 prefill={"extra_args": ["--chat-template", value]})
    spec = plan.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R")[0]
    script = scripts.launch_script(scripts.launch_of(spec))
    start = next(line for line in script.splitlines() if line.startswith("setsid nohup"))
    words = shlex.split(start)
    assert words[words.index("--model-path") + 1] == value
    assert words[words.index("--chat-template") + 1] == value
    exports = [line for line in script.splitlines() if line.startswith("export ")]
    # The run id marker comes last: every process of the deployment inherits it.
    assert [shlex.split(e)[1:] for e in exports] == [[f"NCCL_SOCKET_IFNAME={value}"], ["CLUSTER_PD_RUN_ID=R"]]


@pytest.mark.parametrize("shell", SHELLS)
def test_scripts_are_valid_shell(shell):
    cfg = config(env_file="/opt/deepep/unified-env.sh", env={"A": "$(x)"}, router={"host": "local"})
    specs = plan.plan_deployment(cfg, ["10.8.0.81", "10.8.0.82"], ["10.8.0.83"], run_id="R")
    texts = [scripts.launch_script(scripts.launch_of(s)) for s in specs]
    texts += [scripts.render_for_display(s) for s in specs]
    texts += [scripts.preflight_script(scripts.launch_of(specs[0])),
              scripts.launch_script(scripts.launch_of(plan.plan_router(cfg, specs))),
              detach.stop_script([detach.Identity(1234, 5, "R")], 5), scripts.sweep_command("sglang", "ops"),
              scripts.sweep_command("vllm", None, spare_router=False),
              scripts.health_command("10.8.0.81", 30000), scripts.ports_free_command([30000, 8998], "10.8.0.81"),
              STDIN_RUNNER,
              scripts.preflight_script(scripts.launch_of(specs[0]), running_ok=True),
              detach.stop_script([detach.Identity(1234, None, "R"), detach.Identity(5678, 9, "R")], 2),
              scripts.sweep_command("sglang", None, False, servers=False, run_ids=["R", "S"]),
              scripts.probe_command([scripts.ProbeTarget("prefill-0-0", detach.Identity(1234, 5, "R"), "10.8.0.81", 30000,
                                                 "~/.cluster/run/x.log", (30000, 8998),
                                                 fetch_path="/workers")]),
              scripts.tail_command("~/.cluster/run/x.log"), records.records_command("~/run", "10.8.0.81"),
              sections_script([("a", "echo 1"), ("b", detach.stop_script([detach.Identity(99, 1, "R")], 1))])]
    for text in texts:
        result = subprocess.run([shell, "-n"], input=text, text=True, capture_output=True)
        assert result.returncode == 0, (text, result.stderr)


def test_tilde_run_dir_expands_on_the_host_not_quoted_away():
    spec = plan.plan_deployment(config(), ["10.8.0.81"], ["10.8.0.82"], run_id="R")[0]
    script = scripts.launch_script(scripts.launch_of(spec))
    assert 'mkdir -p "$HOME"/.cluster/run ' in script
    assert "'~" not in script


def test_secrets_are_masked_in_display_but_present_in_the_real_script():
    cfg = config(env={"HF_TOKEN": "hf_realsecret", "WANDB_API_KEY": "k3y", "NCCL_SOCKET_IFNAME": "eth0",
                      "DB_PASSWORD": "pw"},
                 prefill={"extra_args": ["--api-key", "sk-123", "--hf-token=hf_x2"]})
    spec = plan.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R")[0]
    shown = scripts.render_for_display(spec) + scripts.display_command(spec)
    for secret in ("hf_realsecret", "k3y", "pw", "sk-123", "hf_x2"):
        assert secret not in shown
    assert "HF_TOKEN=***" in shown and "--api-key ***" in shown and "--hf-token=***" in shown
    assert "NCCL_SOCKET_IFNAME=eth0" in shown  # non-secret values stay visible
    real = scripts.launch_script(scripts.launch_of(spec))
    assert "HF_TOKEN=hf_realsecret" in real and "sk-123" in real


def test_forward_env_takes_values_from_controller_environment():
    cfg = config(forward_env=["HF_TOKEN"])
    spec = plan.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R",
                               environ={"HF_TOKEN": "hf_fw"})[0]
    assert ("HF_TOKEN", "hf_fw") in scripts.server_env(spec)
    assert "hf_fw" not in scripts.render_for_display(spec)
    with pytest.raises(InputError, match="HF_TOKEN is not set"):
        plan.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], environ={})


def test_launch_script_order_and_exit_codes():
    cfg = config(env_file="/opt/deepep/unified-env.sh", env={"NCCL_SOCKET_IFNAME": "eth0"})
    spec = plan.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R")[0]
    lines = scripts.launch_script(scripts.launch_of(spec), doc='{"x": 1}').splitlines()
    first = lambda prefix: next(i for i, line in enumerate(lines) if line.startswith(prefix))  # noqa: E731
    # run dir and slot first, then the env file check, the record, the env file sourced, the start.
    assert first("mkdir -p") < first("exec 9>>") < first("[ -f /opt/deepep/unified-env.sh ]")
    assert first("[ -f /opt/deepep") < first("printf") < first(". /opt/deepep") < first("export ")
    assert first("export ") < first("setsid nohup")
    check = lines[first("[ -f")]
    assert "exit 3" in check and "env file not found: /opt/deepep/unified-env.sh" in check
    start = lines[first("setsid nohup")]
    assert start.endswith(f">> {spec.log_path.replace('~', chr(34) + '$HOME' + chr(34))} 2>&1 < /dev/null 9>&- &")
    assert "starting" in lines[first("printf")] and '{"x": 1}' in lines[first("printf")]
    assert lines[-1] == 'echo "DETACHED $pid $start"'  # pid and start time: the last line of stdout


# --- health / ports / stop / sweep text -------------------------------------------------------


def test_health_command_targets_host_and_bypasses_proxies():
    text = scripts.health_command("10.8.0.81", 30000)
    assert "http://10.8.0.81:30000/health" in text
    assert "--noproxy '*'" in text and "ProxyHandler({})" in text


@pytest.mark.parametrize(("out", "code"), [("200\n", 200), ("503", 503), ("000\n", 0), ("", 0), ("junk", 0)])
def test_parse_health(out, code):
    assert scripts.parse_health(out) == code


def test_ports_free_command_reads_proc_with_host_and_wildcards():
    text = scripts.ports_free_command([30000], "127.0.1.1")
    # 127.0.1.1 in /proc/net/tcp byte order, port 30000 = 0x7530; plus 0.0.0.0 and ::.
    for key in ("0101007F:7530=30000", "00000000:7530=30000", "0" * 32 + ":7530=30000"):
        assert key in text
    assert "*:7530" in scripts.ports_free_command([30000], "gpu01")  # a name: any address counts


def test_ports_free_command_on_this_machine_sees_a_listener(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        out = subprocess.run(["sh", "-c", scripts.ports_free_command([port], "127.0.0.1")],
                             capture_output=True, text=True).stdout
        other = subprocess.run(["sh", "-c", scripts.ports_free_command([port], "127.0.0.2")],
                               capture_output=True, text=True).stdout
    assert scripts.parse_ports_free(out) == {port: False}
    assert scripts.parse_ports_free(other) == {port: True}  # another loopback address: free there


def test_sweep_patterns_spare_the_router_unless_stopping_it():
    spare = scripts.sweep_command("sglang", "ops", spare_router=True)
    assert "[s]glang::|[s]glang\\.launch_server|[s]glang serve|[s]glang\\.srt" in spare
    assert 'case "$cmd" in sglang::router*) continue' in spare and "sglang_router" not in spare
    assert "pgrep -u ops -a -f" in spare
    full = scripts.sweep_command("sglang", None, spare_router=False)
    assert "sglang::router'*" not in full and "[s]glang_router" in full
    assert 'pgrep -u "$(id -un)"' in full
    vllm = scripts.sweep_command("vllm")
    assert "[V]LLM::EngineCore|[V]LLM::Worker|[v]llm serve" in vllm
    with pytest.raises(InputError):
        scripts.sweep_command("tgi")


def test_sweep_pattern_does_not_match_its_own_text():
    import re

    text = scripts.sweep_command("sglang", "ops", spare_router=False)
    pattern = shlex.split(text.split("pgrep -u ops -a -f ", 1)[1].split(" 2>", 1)[0])[0]
    assert not re.search(pattern, text)  # the sweeping shell's cmdline holds this text
    assert re.search(pattern, "sglang::scheduler_TP3")
    assert re.search(pattern, "python3 -m sglang.launch_server --model-path m")


def test_parse_sweep():
    out = "KILLED 10 sglang::scheduler_TP0\nKILLED 11 python3 -m sglang.launch_server --port 1\nSURVIVED 11\n"
    result = scripts.parse_sweep(out)
    assert result.killed == ((10, "sglang::scheduler_TP0"), (11, "python3 -m sglang.launch_server --port 1"))
    assert result.survived == (11,)
    assert scripts.parse_sweep("") == scripts.SweepResult()



# --- preflight, stop of several groups, probes -------------------------------------------------

def test_preflight_restart_mode_reports_the_running_group_and_skips_the_port_check(tmp_path):
    standins = Path(__file__).resolve().parents[1] / "cluster" / "testing" / "standins"
    import socket

    with socket.socket() as a, socket.socket() as b:  # two ports free right now
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        ports = a.getsockname()[1], b.getsockname()[1]
    cfg = config(run_dir=str(tmp_path), python=sys.executable, env={"PYTHONPATH": str(standins)},
                 prefill={"port": ports[0]}, bootstrap_port=ports[1])
    spec = plan.plan_deployment(cfg, ["127.0.0.1"], ["127.0.0.2"], run_id="R")[0]
    launch = scripts.launch_of(spec)
    sleeper = subprocess.Popen(["sh", "-c", "sleep 30"], start_new_session=True,
                               env={**os.environ, "CLUSTER_PD_RUN_ID": "R0"})
    try:
        # A pid file of another run of the same slot, naming a live process of that run.
        other = spec.pid_path.replace("@R.pid", "@R0.pid")
        Path(other).write_text(f"{sleeper.pid} - R0\n")
        refused = run_local(scripts.preflight_script(launch))
        assert refused.returncode == scripts.EXIT_ALREADY_RUNNING
        assert f"already running: run R0, process group {sleeper.pid}" in refused.stderr
        allowed = run_local(scripts.preflight_script(launch, running_ok=True))
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.splitlines() == [f"RUNNING {sleeper.pid} - R0", "ok"]
        assert detach.parse_running(allowed.stdout) == [detach.Identity(sleeper.pid, None, "R0")]
        # The same pid recorded with another start time: pid reused, not "running".
        Path(other).write_text(f"{sleeper.pid} 1 R0\n")
        assert run_local(scripts.preflight_script(launch)).returncode == 0
    finally:
        os.killpg(sleeper.pid, 9)
        sleeper.wait()
    assert run_local(scripts.preflight_script(launch, running_ok=True)).stdout.splitlines() == ["ok"]


def test_preflight_checks_the_launcher_and_its_python_package(tmp_path):
    env_file = tmp_path / "env.sh"
    env_file.write_text("export PATH=/nonexistent-only\n")
    cfg = config(run_dir=str(tmp_path), env_file=str(env_file))
    spec = plan.plan_deployment(cfg, ["127.0.0.1"], ["127.0.0.2"], run_id="R")[0]
    # The env file is sourced first: after it, python3 is no longer on PATH.
    missing = run_local(scripts.preflight_script(scripts.launch_of(spec)))
    assert missing.returncode == scripts.EXIT_LAUNCHER_MISSING
    assert "python3 not found on PATH" in missing.stderr
    env_file.write_text("true\n")
    import importlib.util

    if importlib.util.find_spec("sglang") is not None:
        pytest.skip("sglang is installed here: cannot show the missing-package message")
    # python3 is there, but the sglang package is not.
    no_package = run_local(scripts.preflight_script(scripts.launch_of(spec)))
    assert no_package.returncode == scripts.EXIT_LAUNCHER_MISSING
    assert "python3 cannot import sglang" in no_package.stderr
    assert not list(tmp_path.glob("*.log"))  # a preflight writes nothing


def test_stop_terms_all_then_kills_the_stubborn_ones():
    polite = subprocess.Popen(["sleep", "30"], start_new_session=True)
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 30 & wait; sleep 30"],
                                start_new_session=True)
    try:
        time.sleep(0.2)
        ids = [detach.Identity(p.pid, start_time(p.pid), "R") for p in (polite, stubborn)]
        out = run_local(detach.stop_script(ids + [detach.Identity(999999, 1, "R")], grace_s=0.5))
        results = detach.parse_stop(out.stdout)
        assert results[999999].was_running is False
        assert results[polite.pid].how == "term" and results[polite.pid].killed == ()
        assert results[stubborn.pid].how == "kill" and stubborn.pid in results[stubborn.pid].killed
        assert out.returncode == 0 and results[stubborn.pid].alive == ()
    finally:
        for proc in (polite, stubborn):
            proc.kill()
            proc.wait()
    assert detach.stop_script([]) == "true\n"


def start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


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
            ident = detach.Identity(sleeper.pid, start_time(sleeper.pid), "R")
            targets = [scripts.ProbeTarget("a", ident, "127.0.0.1", port, str(log), (port,),
                                       health_path=None),
                       scripts.ProbeTarget("c", detach.Identity(sleeper.pid, 1, "R"), "127.0.0.1", port,
                                           str(log), (port,), health_path=None),
                       scripts.ProbeTarget("b", None, "127.0.0.1", port, str(tmp_path / "none.log"))]
            probes = scripts.parse_probe(run_local(scripts.probe_command(targets)).stdout)
        finally:
            sleeper.kill()
            sleeper.wait()
    a, b, c = probes["a"], probes["b"], probes["c"]
    assert a.verdict == "ok" and a.alive and a.leader_alive and a.members == 1 and a.uptime_s is not None
    assert c.verdict == "reused" and not c.alive and not c.leader_alive  # same pid, other start time
    assert a.listening == (port,) and a.health is None and a.last_log == "last line"
    assert not b.alive and b.last_log is None
    assert b.health == 0  # something listens but does not speak HTTP: no status code


def test_parse_probe_reads_a_fetched_body():
    out = "@@probe router\nmembers 2\nleader 1\nhealth 200\n@@body-begin\n{\"workers\": []}\n\n@@body-end\n"
    probe = scripts.parse_probe(out)["router"]
    assert probe.alive and probe.health == 200 and probe.body == '{"workers": []}'


def test_run_id_scoped_sweep_spares_processes_of_other_runs(tmp_path):
    if not _can_unshare_pid():
        pytest.skip("needs `unshare --pid` (root): even a scoped sweep only runs isolated here")
    mine, theirs = tmp_path / "s@RUN1.log", tmp_path / "s@RUN2.log"
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
{scripts.sweep_command("sglang", None, True, run_ids=["RUN1"])}
echo "ALIVE $(for p in $by_log $by_env $other; do kill -0 $p 2>/dev/null && echo $p; done | tr '\\n' ' ')"
echo "IDS $by_log $by_env $other"
"""
    result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "bash", "-s"],
                            input=script, text=True, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split(" ", 1)[0]: line.split()[1:] for line in result.stdout.splitlines()}
    a, b, c = lines["IDS"]
    killed = {str(pid) for pid, _ in scripts.parse_sweep(result.stdout).killed}
    assert killed == {a, b}
    assert lines["ALIVE"] == [c]


def _can_unshare_pid() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return probe.returncode == 0


def test_sweep_of_a_router_only_host_matches_router_processes_only():
    text = scripts.sweep_command("sglang", "ops", False, servers=False)
    pattern = shlex.split(text.split("pgrep -u ops -a -f ", 1)[1].split(" 2>", 1)[0])[0]
    import re

    assert re.search(pattern, "sglang::router")
    assert re.search(pattern, "python3 -m sglang_router.launch_router --pd-disaggregation")
    assert not re.search(pattern, "sglang::scheduler_TP0")
    assert not re.search(pattern, "python3 -m sglang.launch_server --port 30000")


def test_preflight_fails_when_the_run_dir_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    spec = plan.plan_deployment(config(run_dir=str(blocker / "run")), ["127.0.0.1"], ["127.0.0.2"], run_id="R")[0]
    result = run_local(scripts.preflight_script(scripts.launch_of(spec)))
    assert result.returncode == scripts.EXIT_RUN_DIR and "cannot create run dir" in result.stderr
