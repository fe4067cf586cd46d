"""Stand-in SGLang/vLLM servers, driven locally (no SSH) through the real command builders.

Everything binds and connects to 127.0.0.1 only. The real routers (pip ``sglang-router``,
``vllm-router``) are exercised when installed: the stand-ins do not advertise a model or
tokenizer path, so the router never tries to fetch a tokenizer from the internet.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import http

from cluster import detach
from cluster.serving import plan, scripts
from cluster.serving.config import parse_serving
from cluster.testing import standin_server as standin

REPO = Path(__file__).resolve().parents[1]
STANDINS = REPO / "cluster" / "testing" / "standins"
BIN = REPO / "cluster" / "testing" / "bin"
HOST = "127.0.0.1"


# --- helpers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def group_members(pgid: int) -> dict[int, str]:
    """Live (non-zombie) processes of a process group: pid -> command line."""
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return members


def interpreters() -> list[str]:
    """This python (setproctitle likely present) and the system one (title via argv[0])."""
    found = [sys.executable]
    system = "/usr/bin/python3"
    if os.path.exists(system) and os.path.realpath(system) != os.path.realpath(sys.executable):
        found.append(system)
    return found


def standin_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STANDIN_")}
    env.update(PYTHONPATH=str(STANDINS), STANDIN_LOAD_SECONDS="0.6", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


class Groups:
    """Process groups started by a test; all SIGKILLed at teardown."""

    def __init__(self) -> None:
        self.pgids: list[int] = []

    def add(self, pgid: int) -> int:
        self.pgids.append(pgid)
        return pgid

    def kill_all(self) -> None:
        for pgid in self.pgids:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def groups():
    tracker = Groups()
    yield tracker
    tracker.kill_all()


def start_sglang(groups: Groups, tmp_path: Path, *args: str, python: str = sys.executable,
                 port: int | None = None, **env: str) -> tuple[subprocess.Popen, int, Path]:
    port = port or free_port()
    log = tmp_path / f"sglang-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [python, "-m", "sglang.launch_server", "--model-path", "test/model", "--host", HOST,
             "--port", str(port), *args],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=standin_env(**env), start_new_session=True,
        )
    groups.add(proc.pid)
    return proc, port, log


def run_sh(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-s"], input=script, text=True, capture_output=True,
                          env=env or standin_env(), timeout=60)


# --- SGLang stand-in ---------------------------------------------------------------------------


@pytest.mark.parametrize("python", interpreters())
def test_health_goes_503_then_200_and_children_carry_titles(groups, tmp_path, python):
    proc, port, log = start_sglang(groups, tmp_path, "--tp-size", "4", "--disaggregation-mode",
                                   "decode", "--trust-remote-code", python=python,
                                   STANDIN_LOAD_SECONDS="2.5")
    url = f"http://{HOST}:{port}/health"
    assert wait_for(lambda: http("GET", url)[0] == 503, what="503 while loading")
    assert wait_for(lambda: http("GET", url)[0] == 200, what="200 when ready")
    text = log.read_text()
    for line in ("Load weight begin", f"Uvicorn running on http://{HOST}:{port}",
                 "The server is fired up and ready to roll!", "stand-in ignores: --trust-remote-code"):
        assert line in text
    assert text.index("Load weight begin") < text.index("Uvicorn running") < text.index("ready to roll")
    titles = sorted(c.split()[0] for pid, c in group_members(proc.pid).items() if pid != proc.pid)
    assert titles == ["sglang::detokenizer"] + [f"sglang::scheduler_TP{i}" for i in range(4)]


def test_sigterm_to_group_leaves_stubborn_child_until_sigkill(groups, tmp_path):
    proc, port, _ = start_sglang(groups, tmp_path, "--tp-size", "2")
    wait_for(lambda: http("GET", f"http://{HOST}:{port}/health")[0] == 200, what="ready")
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    survivors = wait_for(lambda: (m := group_members(proc.pid)) and len(m) == 1 and m,
                         what="only the stubborn child left")
    (pid, title), = survivors.items()
    assert title.startswith("sglang::scheduler_TP0")
    time.sleep(0.3)
    assert pid in group_members(proc.pid)  # still ignoring SIGTERM
    os.killpg(proc.pid, signal.SIGKILL)
    wait_for(lambda: not group_members(proc.pid), what="group gone after SIGKILL")


def identity_of(pid: int, run_id: str = "T0") -> detach.Identity:
    start = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return detach.Identity(pid, start, run_id)


def stopped_group(ident: detach.Identity, grace_s: float) -> detach.GroupStop:
    """Stop one process group with the stop-pd script; what it did."""
    return detach.parse_stop(run_sh(detach.stop_script([ident], grace_s)).stdout)[ident.pgid]


def test_stop_command_escalates_to_sigkill_and_reports(groups, tmp_path):
    proc, port, _ = start_sglang(groups, tmp_path, "--tp-size", "2", STANDIN_STUBBORN="1")
    wait_for(lambda: http("GET", f"http://{HOST}:{port}/health")[0] == 200, what="ready")
    before = set(group_members(proc.pid))
    ident = identity_of(proc.pid)
    result = run_sh(detach.stop_script([ident], grace_s=0.5))
    stopped = detach.parse_stop(result.stdout)[proc.pid]
    assert result.returncode == 0, result.stderr
    assert stopped.was_running and set(stopped.pids) == before
    assert stopped.how == "kill" and len(stopped.killed) == 3  # 2 schedulers + detokenizer
    assert not group_members(proc.pid)
    free = scripts.parse_ports_free(run_sh(scripts.ports_free_command([port], HOST)).stdout)
    assert free == {port: True}
    assert stopped_group(ident, 0.5).was_running is False


def test_stop_command_graceful_when_nothing_is_stubborn(groups, tmp_path):
    proc, port, _ = start_sglang(groups, tmp_path, STANDIN_STUBBORN="0")
    wait_for(lambda: http("GET", f"http://{HOST}:{port}/health")[0] == 200, what="ready")
    stopped = stopped_group(identity_of(proc.pid), 10)
    assert stopped.how == "term" and stopped.killed == () and stopped.seconds is not None
    assert stopped.seconds < 10


def test_generate_is_recorded_and_answered_like_sglang(groups, tmp_path):
    _, port, _ = start_sglang(groups, tmp_path, "--disaggregation-mode", "decode")
    base = f"http://{HOST}:{port}"
    wait_for(lambda: http("GET", base + "/health")[0] == 200, what="ready")
    code, text = http("POST", base + "/generate", {"text": "hello", "sampling_params": {"max_new_tokens": 5},
                                                   "bootstrap_room": 42})
    assert code == 200
    answer = json.loads(text)
    assert "decode" in answer["text"] and answer["meta_info"]["completion_tokens"] == 5
    code, text = http("POST", base + "/v1/chat/completions",
                      {"model": "test/model", "messages": [{"role": "user", "content": "hi"}]})
    assert code == 200 and json.loads(text)["choices"][0]["message"]["role"] == "assistant"
    records = standin.read_requests(standin.request_log_path(tmp_path, HOST, port))
    assert [(r["path"], r.get("bootstrap_room")) for r in records] == [("/generate", 42),
                                                                         ("/v1/chat/completions", None)]
    for path in ("/get_model_info", "/model_info", "/server_info", "/get_server_info", "/v1/models"):
        assert http("GET", base + path)[0] == 200, path
    assert json.loads(http("GET", base + "/v1/models")[1])["data"][0]["id"] == "test/model"
    # Deliberately no model/tokenizer path (see standin_server._model_info).
    assert "model_path" not in json.loads(http("GET", base + "/model_info")[1])


def test_prefill_serves_bootstrap_port(groups, tmp_path):
    bootstrap = free_port()
    start_sglang(groups, tmp_path, "--disaggregation-mode", "prefill",
                                 "--disaggregation-bootstrap-port", str(bootstrap))
    assert wait_for(lambda: http("GET", f"http://{HOST}:{bootstrap}/health")[0] == 200, what="bootstrap")
    info = json.loads(http("GET", f"http://{HOST}:{bootstrap}/route")[1])
    assert info["prefill_dp_size"] == 1


def test_early_death_exits_1_with_traceback(groups, tmp_path):
    proc, port, log = start_sglang(groups, tmp_path, STANDIN_DIE_AFTER="0.3", STANDIN_LOAD_SECONDS="5")
    assert proc.wait(timeout=10) == 1
    tail = log.read_text().splitlines()[-5:]
    assert any("Traceback" in line for line in tail)
    assert any("CUDA error: out of memory" in line for line in tail)
    assert http("GET", f"http://{HOST}:{port}/health")[0] == 0


def test_nonzero_rank_has_only_a_dummy_health_server(groups, tmp_path):
    proc, port, _ = start_sglang(groups, tmp_path, "--tp-size", "4", "--nnodes", "2",
                                   "--node-rank", "1", "--dist-init-addr", f"{HOST}:{free_port()}",
                                   STANDIN_LOAD_SECONDS="2.5")
    base = f"http://{HOST}:{port}"
    assert http("GET", base + "/health")[0] == 0  # nothing bound while loading
    wait_for(lambda: http("GET", base + "/health")[0] == 200, what="dummy health")
    assert http("POST", base + "/generate", {"text": "x"})[0] == 404
    titles = sorted(c.split()[0] for pid, c in group_members(proc.pid).items() if pid != proc.pid)
    assert titles == ["sglang::scheduler_TP2", "sglang::scheduler_TP3"]  # no detokenizer on rank 1


def test_rank0_of_multi_node_holds_the_dist_init_port(groups, tmp_path):
    dist = free_port()
    _, port, _ = start_sglang(groups, tmp_path, "--tp-size", "2", "--nnodes", "2",
                                 "--node-rank", "0", "--dist-init-addr", f"{HOST}:{dist}")
    wait_for(lambda: http("GET", f"http://{HOST}:{port}/health")[0] == 200, what="ready")
    free = scripts.parse_ports_free(run_sh(scripts.ports_free_command([dist], HOST)).stdout)
    assert free == {dist: False}


def test_child_titles_are_capped():
    opts = standin.parse_sglang(["--model-path", "m", "--tp-size", "32"])
    assert len(opts.ignored) == 0
    titles = standin.child_titles(opts)
    assert len([t for t in titles if "scheduler" in t]) == standin.MAX_CHILDREN


# --- sweep (in a private PID namespace, so it can only ever see this test's processes) ---------


def _can_unshare_pid() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare_pid(), reason="needs `unshare --pid` (root): the sweep kills by "
                    "command line for the whole user, so it only runs isolated in a PID namespace")
def test_sweep_finds_escaped_children_and_spares_the_router(tmp_path):
    port = free_port()
    script = f"""
set -e
cd {tmp_path}
setsid {sys.executable} -m sglang.launch_server --model-path m --host {HOST} --port {port} --tp-size 2 \\
    > server.log 2>&1 < /dev/null &
leader=$!
# a look-alike router that must be spared
{sys.executable} -c 'import setproctitle, time; setproctitle.setproctitle("sglang::router"); time.sleep(60)' &
router=$!
i=0; until grep -q "ready to roll" server.log; do sleep 0.1; i=$((i+1)); [ $i -lt 100 ]; done
kill -KILL -$leader          # the group dies; the escaped detokenizer does not
sleep 0.3
echo "LEFT $(pgrep -f '^[s]glang::' | tr '\\n' ' ')"
{scripts.sweep_command("sglang", None, spare_router=True)}
echo "AFTER $(pgrep -f '^[s]glang::' | tr '\\n' ' ')"
echo "ROUTER $router $(ps -o stat= -p $router)"
"""
    if importlib.util.find_spec("setproctitle") is None:
        pytest.skip("setproctitle is needed for the router look-alike")
    env = standin_env(STANDIN_ESCAPE="1", STANDIN_STUBBORN="0")
    result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-s"], input=script,
                            text=True, capture_output=True, env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split(" ", 1)[0]: line for line in result.stdout.splitlines()}
    left = lines["LEFT"].split()[1:]
    swept = scripts.parse_sweep(result.stdout)
    killed = {pid for pid, _ in swept.killed}
    assert len(left) == 2  # the escaped detokenizer and the router look-alike
    assert any("sglang::detokenizer" in c for _, c in swept.killed)
    router_pid = int(lines["ROUTER"].split()[1])
    assert router_pid not in killed and lines["AFTER"].split()[1:] == [str(router_pid)]
    assert swept.survived == ()


# --- the real launch script, run locally -------------------------------------------------------


def local_config(tmp_path: Path, **doc: Any):
    doc.setdefault("model_path", "test/model")
    doc.setdefault("python", sys.executable)
    doc.setdefault("run_dir", str(tmp_path / "run"))
    doc.setdefault("env", {"PYTHONPATH": str(STANDINS), "STANDIN_LOAD_SECONDS": "0.6"})
    return parse_serving(doc, source="test")


def launch(groups: Groups, launch_obj: scripts.Launch, env: dict[str, str] | None = None) -> int:
    result = run_sh(scripts.launch_script(launch_obj), env)
    assert result.returncode == 0, result.stderr
    pid, _ = detach.parse_launch(result.stdout)
    groups.add(pid)
    return pid


def test_launch_script_starts_in_own_session_and_refuses_a_second_start(groups, tmp_path):
    cfg = local_config(tmp_path, prefill={"port": free_port()}, decode={"port": free_port()},
                       bootstrap_port=free_port())
    prefill, _ = plan.plan_deployment(cfg, [HOST], [HOST], run_id="T1")
    launched = scripts.launch_of(prefill)
    pid = launch(groups, launched)
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # setsid: PGID = PID
    ident = detach.parse_pid_file(Path(prefill.pid_path).read_text())
    assert ident == identity_of(pid, "T1")  # pid, start time, run id
    code = wait_for(lambda: scripts.parse_health(run_sh(scripts.health_command(HOST, prefill.port)).stdout) == 200,
                    what="health 200 via health_command")
    assert code
    assert "ready to roll" in Path(prefill.log_path).read_text()
    again = run_sh(scripts.launch_script(launched))
    assert again.returncode == scripts.EXIT_ALREADY_RUNNING and "already running" in again.stderr
    assert run_sh(scripts.preflight_script(launched)).returncode == scripts.EXIT_ALREADY_RUNNING
    # Another run of the same slot: refused, naming the running one.
    rerun = run_sh(scripts.launch_script(scripts.Launch(**{**launched.__dict__, "run_id": "T9"})))
    assert rerun.returncode == scripts.EXIT_ALREADY_RUNNING and "run T1" in rerun.stderr
    # Same ports, another slot (as if launched from elsewhere): the port check catches it.
    other = scripts.Launch(**{**launched.__dict__, "name": "elsewhere"})
    busy = run_sh(scripts.launch_script(other))
    assert busy.returncode == scripts.EXIT_PORT_BUSY and str(prefill.port) in busy.stderr
    stopped = stopped_group(ident, 0.5)
    assert stopped.was_running and not group_members(pid)
    assert run_sh(scripts.preflight_script(launched)).returncode == 0  # stale pid file is not "running"


def test_launch_script_fails_early_on_missing_env_file(groups, tmp_path):
    cfg = local_config(tmp_path, env_file=str(tmp_path / "nope.sh"), prefill={"port": free_port()},
                       decode={"port": free_port()}, bootstrap_port=free_port())
    prefill, _ = plan.plan_deployment(cfg, [HOST], [HOST], run_id="T2")
    result = run_sh(scripts.launch_script(scripts.launch_of(prefill)))
    assert result.returncode == scripts.EXIT_ENV_FILE_MISSING
    assert f"env file not found: {tmp_path / 'nope.sh'}" in result.stderr
    assert not list((tmp_path / "run").glob("*@*"))  # no record, nothing started


def test_launch_script_sources_env_file_and_reports_missing_launcher(groups, tmp_path):
    env_file = tmp_path / "env.sh"
    env_file.write_text('echo "sourcing env file"\nexport STANDIN_FROM_ENV_FILE=yes\n')
    cfg = local_config(tmp_path, env_file=str(env_file), python="no-such-python3",
                       prefill={"port": free_port()}, decode={"port": free_port()},
                       bootstrap_port=free_port())
    prefill, _ = plan.plan_deployment(cfg, [HOST], [HOST], run_id="T3")
    result = run_sh(scripts.launch_script(scripts.launch_of(prefill)))
    assert result.returncode == scripts.EXIT_LAUNCHER_MISSING
    assert "no-such-python3 not found on PATH" in result.stderr
    assert "sourcing env file" in Path(prefill.log_path).read_text()  # its chatter went to the log


# --- vLLM stand-in -------------------------------------------------------------------------------


def test_vllm_standin_binds_late_holds_side_channel_and_answers_prefill(groups, tmp_path):
    cfg = local_config(tmp_path, engine="vllm", prefill={"port": free_port(), "tp_size": 2},
                       decode={"port": free_port()}, side_channel_port=free_port(),
                       env={"PATH": f"{BIN}:{os.environ['PATH']}", "STANDIN_LOAD_SECONDS": "3"})
    prefill, _ = plan.plan_deployment(cfg, [HOST], [HOST], run_id="V1")
    pid = launch(groups, scripts.launch_of(prefill))
    health = scripts.health_command(HOST, prefill.port)
    assert scripts.parse_health(run_sh(health).stdout) == 0  # vLLM binds after loading: 000
    wait_for(lambda: scripts.parse_health(run_sh(health).stdout) == 200, what="vllm ready")
    titles = sorted(c.split()[0] for c in group_members(pid).values() if c.startswith("VLLM::"))
    assert titles == ["VLLM::EngineCore", "VLLM::Worker_TP0", "VLLM::Worker_TP1"]
    side = prefill.side_channel_port
    assert scripts.parse_ports_free(run_sh(scripts.ports_free_command([side], HOST)).stdout) == {side: False}
    code, text = http("POST", f"{prefill.url}/v1/completions", {"model": "test/model", "prompt": "hi",
                                                                 "max_tokens": 1})
    assert code == 200 and json.loads(text)["kv_transfer_params"]["remote_port"] == side
    assert "Application startup complete." in Path(prefill.log_path).read_text()


# --- real routers ----------------------------------------------------------------------------------


def _pd_through_router(groups: Groups, tmp_path: Path, engine: str) -> tuple[list, list, dict]:
    env = {"PYTHONPATH": str(STANDINS), "STANDIN_LOAD_SECONDS": "0.6",
           "PATH": f"{BIN}:{os.environ['PATH']}"}
    cfg = local_config(tmp_path, engine=engine, env=env, prefill={"port": free_port()},
                       decode={"port": free_port()}, bootstrap_port=free_port(),
                       side_channel_port=free_port(),
                       router={"host": "local", "port": free_port(), "metrics_port": free_port(),
                               "extra_args": ["--worker-startup-check-interval", "1"]})
    specs = plan.plan_deployment(cfg, [HOST], [HOST], run_id="R1")
    for spec in specs:
        launch(groups, scripts.launch_of(spec))
    for spec in specs:
        wait_for(lambda s=spec: scripts.parse_health(run_sh(scripts.health_command(HOST, s.port)).stdout) == 200,
                 what=f"{spec.role} ready")
    router = plan.plan_router(cfg, specs)
    launch(groups, scripts.launch_of(router), env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wait_for(lambda: http("GET", router.url + "/readiness")[0] == 200, timeout=60,
             what=f"router readiness ({router.log_path})")
    path = "/generate" if engine == "sglang" else "/v1/completions"
    body = ({"text": "hello through the router", "sampling_params": {"max_new_tokens": 4}}
            if engine == "sglang" else {"model": "test/model", "prompt": "hello", "max_tokens": 4})
    code, text = http("POST", router.url + path, body, timeout=30)
    router_log = Path(router.log_path).read_text()
    assert code == 200, (text, router_log[-2000:])
    # The stand-ins advertise no model/tokenizer path, so the router must not have tried
    # to fetch a tokenizer from the internet (sglang-router does when given one).
    assert "huggingface" not in router_log.lower()
    run_dir = Path(cfg.run_dir)
    prefill_log = standin.read_requests(standin.request_log_path(run_dir, HOST, specs[0].port))
    decode_log = standin.read_requests(standin.request_log_path(run_dir, HOST, specs[1].port))
    return prefill_log, decode_log, json.loads(text)


@pytest.mark.skipif(importlib.util.find_spec("sglang_router") is None,
                    reason="sglang-router is not installed (pip install sglang-router, or the "
                           "project's [router] extra)")
def test_generate_through_real_sglang_router_reaches_prefill_and_decode(groups, tmp_path):
    prefill_log, decode_log, answer = _pd_through_router(groups, tmp_path, "sglang")
    assert len(prefill_log) == 1 and len(decode_log) == 1
    p, d = prefill_log[0], decode_log[0]
    assert p["path"] == d["path"] == "/generate"
    assert p["body"]["text"] == d["body"]["text"] == "hello through the router"
    # The router pairs the two halves with one bootstrap room on the prefill's bootstrap server.
    assert p["bootstrap_room"] == d["bootstrap_room"]
    assert p["bootstrap_host"] == HOST
    assert "decode" in answer["text"]  # the client gets the decode server's answer


@pytest.mark.skipif(shutil.which("vllm-router") is None, reason="vllm-router is not installed")
def test_completion_through_real_vllm_router_reaches_prefill_and_decode(groups, tmp_path):
    prefill_log, decode_log, answer = _pd_through_router(groups, tmp_path, "vllm")
    assert len(prefill_log) == 1 and len(decode_log) == 1
    assert prefill_log[0]["body"]["kv_transfer_params"]["do_remote_decode"] is True
    # Decode gets what the prefill handed back for the KV pull.
    assert decode_log[0]["kv_transfer_params"]["do_remote_prefill"] is True
    assert "decode" in answer["choices"][0]["text"]
