"""start-pd / pd-status / stop-pd through the CLI on the loopback fleet (real sshd).

Servers are the stand-ins (cluster/testing/standins on PYTHONPATH, cluster/testing/bin on
PATH) run as the fleet's login user on 127.0.1.x; the router is the REAL sglang-router /
vllm-router, run on ``local`` (this machine, as root). Everything binds loopback; the
routers run with HF_HUB_OFFLINE=1 and the stand-ins advertise no tokenizer, so nothing
reaches the internet.

Isolation: every test uses its own run dir, state dir (CLUSTER_STATE_DIR) and random free
ports, and stops with ``--sweep deployment`` (only processes carrying this deployment's
run id), because the fleet's hosts share one kernel and one login user with other tests
and other test runs on this machine. A finalizer SIGKILLs whatever a failed test left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import http, process_alive

from cluster.serving.plan import RUN_ID_ENV
from cluster.serving.records import Manifest
from cluster.testing import standin_server as standin
from cluster.testing.fleet import open_path_for_others

REPO = Path(__file__).resolve().parent.parent
STANDINS = REPO / "cluster" / "testing" / "standins"
BIN = REPO / "cluster" / "testing" / "bin"
PREFILL = "127.0.1.1"
DECODES = ["127.0.1.2", "127.0.1.3"]
ADDRESSES = ["127.0.0.1", PREFILL, *DECODES, "127.0.1.4"]


# --------------------------------------------------------------------------- helpers


def free_ports(count: int) -> list[int]:
    """Ports free on every address used here, below the ephemeral range, all different."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(20000, 32000)
        if port in chosen:
            continue
        if all(_bindable(a, port) for a in ADDRESSES):
            chosen.append(port)
    return chosen


def _bindable(address: str, port: int) -> bool:
    """Could a server listen there? (SO_REUSEADDR, as servers set it: the TIME_WAIT
    connections a stopped server leaves do not count.)"""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
            return True
        except OSError:
            return False


def processes_of(run_ids: set[str], ports: set[int]) -> dict[int, str]:
    """Live processes of a deployment, pid -> cmdline: stdout/stderr on one of its run's
    logs (children inherit it, even those that left the group), the run id marker in the
    environment (unless setproctitle wiped it), or one of its ports on the command line."""
    markers = {f"{RUN_ID_ENV}={r}".encode() for r in run_ids}
    logs = tuple(f"@{r}.log" for r in run_ids)
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = set((entry / "environ").read_bytes().split(b"\0"))
            outputs = [_readlink(entry / "fd" / n) for n in ("1", "2")]
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue
        words = cmdline.split()
        on_port = any(w == str(p) and i and words[i - 1] in ("--port", "--prometheus-port")
                      for i, w in enumerate(words) for p in ports)
        on_log = bool(logs) and any(o.endswith(logs) for o in outputs)
        if environ & markers or on_port or on_log:
            found[int(entry.name)] = cmdline.strip()[:200]
    return found


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


class PD:
    """One test's deployment: roles file, run/state dirs, ports, and the CLI."""

    def __init__(self, fleet, tmp_path: Path, engine: str = "sglang") -> None:
        self.fleet, self.engine = fleet, engine
        self.run_dir = tmp_path / "run"
        self.run_dir.mkdir(parents=True)
        self.run_dir.chmod(0o777)  # the login user writes logs there; root (local router) too
        open_path_for_others(self.run_dir)
        self.state_dir = tmp_path / "state"
        (self.prefill_port, self.decode_port, self.bootstrap_port, self.router_port,
         self.metrics_port, self.side_port) = free_ports(6)
        self.roles = tmp_path / "roles.yaml"
        self.env = {"PYTHONPATH": str(STANDINS), "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
                    "STANDIN_LOAD_SECONDS": "1", "HF_HUB_OFFLINE": "1"}
        self.serving: dict[str, Any] = {
            "engine": engine, "model_path": "test/model", "python": "python3",
            "run_dir": str(self.run_dir), "bootstrap_port": self.bootstrap_port,
            "side_channel_port": self.side_port, "env": self.env,
            "prefill": {"port": self.prefill_port}, "decode": {"port": self.decode_port},
            "router": {"port": self.router_port, "metrics_port": self.metrics_port,
                       "extra_args": ["--worker-startup-check-interval", "1"]},
        }
        self.write_roles()

    def write_roles(self, roles: dict | None = None) -> None:
        roles = roles if roles is not None else {"prefill": PREFILL, "decode": DECODES}
        self.fleet.write_roles(self.roles, roles, extra={"serving": self.serving})

    @property
    def ports(self) -> set[int]:
        return {self.prefill_port, self.decode_port, self.bootstrap_port, self.router_port,
                self.metrics_port}

    def cli(self, *args: str, timeout: float = 150) -> tuple[int, str, str]:
        env = {**os.environ, "CLUSTER_STATE_DIR": str(self.state_dir), "HF_HUB_OFFLINE": "1"}
        env.pop("CLUSTER_ROLES", None)
        proc = subprocess.run([sys.executable, "-m", "cluster_cli", *args, "--roles-file",
                               str(self.roles)], capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=timeout)
        return proc.returncode, proc.stdout, proc.stderr

    def cli_json(self, *args: str, timeout: float = 150) -> tuple[int, dict]:
        code, out, err = self.cli(*args, "--json", timeout=timeout)
        try:
            return code, json.loads(out)
        except json.JSONDecodeError:
            raise AssertionError(f"not JSON (exit {code}):\n{out}\n{err}") from None

    def start(self, *extra: str, router: bool = True) -> tuple[int, dict]:
        args = ["start-pd", "--prefill", PREFILL, "--decode", ",".join(DECODES),
                "--timeout", "90", *extra]
        if router:
            args += ["--router", "local"]
        return self.cli_json(*args)

    def stop(self, *extra: str) -> tuple[int, dict]:
        return self.cli_json("stop-pd", "--grace", "1", "--sweep", "deployment", *extra)

    def manifest(self) -> Manifest | None:
        path = self.state_dir / "default.json"
        return Manifest.loads(path.read_text()) if path.exists() else None

    def run_ids(self) -> set[str]:
        manifest = self.manifest()
        return {manifest.run_id} if manifest else set()

    def processes(self, run_ids: set[str] | None = None) -> dict[int, str]:
        return processes_of(run_ids if run_ids is not None else self.run_ids(), self.ports)

    def requests(self, host: str, port: int) -> list[dict]:
        return standin.read_requests(standin.request_log_path(self.run_dir, host, port))

    def cleanup(self, run_ids: set[str]) -> None:
        """SIGKILL anything of this deployment a failed test left behind."""
        for _ in range(3):
            left = processes_of(run_ids | self.run_ids(), self.ports)
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.2)


@pytest.fixture
def pd_factory(fleet, tmp_path):
    made: list[PD] = []

    def make(engine: str = "sglang") -> PD:
        pd = PD(fleet, tmp_path / f"pd{len(made)}", engine)
        made.append(pd)
        return pd

    yield make
    for pd in made:
        pd.cleanup(set())


def by_role(doc: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for entry in doc["hosts"]:
        out.setdefault(entry["role"], []).append(entry)
    return out


def install_nvidia_smi(fleet, address: str) -> Path | None:
    """Put the stand-in nvidia-smi on one host's PATH unless one is there (returns what to remove)."""
    target = fleet.host_dir(address) / "bin" / "nvidia-smi"
    if target.exists() or target.is_symlink():
        return None
    target.symlink_to(BIN / "nvidia-smi")
    return target


# --------------------------------------------------------------------------- the lifecycle


ENGINES = ["sglang", "vllm"]


@pytest.mark.parametrize("engine", ENGINES)
def test_start_route_status_stop_with_the_real_router(fleet, pd_factory, engine):
    pd = pd_factory(engine)
    # Every child ignores SIGTERM (only SIGKILL of the group gets them) and one per server
    # leaves the process group (only the command-line sweep finds it).
    pd.env.update(STANDIN_ESCAPE="1", STANDIN_STUBBORN="1")
    pd.write_roles()
    added = install_nvidia_smi(fleet, PREFILL)
    try:
        # --engine on the command line wins over serving.engine.
        other = "vllm" if engine == "sglang" else "sglang"
        pd.serving["engine"] = other
        pd.write_roles()
        code, doc = pd.start("--engine", engine)
        assert code == 0, json.dumps(doc, indent=1)
        assert doc["stage"] == "done" and doc["engine"] == engine
        roles = by_role(doc)
        assert [e["address"] for e in roles["prefill"]] == [PREFILL]
        assert [e["address"] for e in roles["decode"]] == DECODES
        assert all(e["status"] == "ready" and e["ok"] and e["pid"] for e in doc["hosts"])
        assert all(e["ready_after_s"] is not None for e in doc["hosts"])
        assert roles["router"][0]["host"] == "local"
        manifest = pd.manifest()
        assert manifest is not None and manifest.engine == engine
        assert {s.pid for s in manifest.servers} == {e["pid"] for e in doc["hosts"]} - {
            roles["router"][0]["pid"]}
        assert manifest.router is not None and manifest.router.pid == roles["router"][0]["pid"]
        # Per-launch log files named with host, port and run id, on each host.
        for record in manifest.servers:
            assert record.run_id in record.log_path and record.host in record.log_path
            assert Path(record.log_path).exists()
        if engine == "sglang":
            assert "ready to roll" in Path(manifest.servers[0].log_path).read_text()

        # A request through the router reaches the prefill and one decode stand-in.
        router_url = doc["router_url"]
        if engine == "sglang":
            code, text = http("POST", router_url + "/generate",
                              {"text": "through the router", "sampling_params": {"max_new_tokens": 4}},
                              timeout=30)
        else:
            code, text = http("POST", router_url + "/v1/completions",
                              {"model": "test/model", "prompt": "through the router", "max_tokens": 4},
                              timeout=30)
        assert code == 200, text
        prefill_seen = pd.requests(PREFILL, pd.prefill_port)
        decode_seen = [r for h in DECODES for r in pd.requests(h, pd.decode_port)]
        assert len(prefill_seen) == 1 and len(decode_seen) == 1
        if engine == "sglang":
            assert prefill_seen[0]["bootstrap_room"] == decode_seen[0]["bootstrap_room"]
            assert prefill_seen[0]["body"]["text"] == "through the router"
        else:
            assert decode_seen[0]["kv_transfer_params"]["do_remote_prefill"] is True

        # pd-status: every server alive, listening, /health 200; router ready, workers healthy.
        code, status = pd.cli_json("pd-status")
        assert code == 0, json.dumps(status, indent=1)
        rows = by_role(status)
        for entry in rows["prefill"] + rows["decode"]:
            assert entry["alive"] and entry["listening"] and entry["health"] == 200
            assert entry["uptime_s"] is not None and entry["last_log"]
        router = rows["router"][0]
        assert router["health"] == 200 and router["alive"]
        assert len(router["workers"]) == 3 and all(w["is_healthy"] for w in router["workers"])

        run_ids = pd.run_ids()
        before = pd.processes(run_ids)
        assert any("::" in c for c in before.values())  # children titled sglang::/VLLM::
        assert roles["router"][0]["pid"] in before
        code, stop = pd.stop()
        assert code == 0, json.dumps(stop, indent=1)
        assert stop["router_stopped"] is True
        hosts = {e["host"]: e for e in stop["hosts"]}
        assert set(hosts) == {PREFILL, *DECODES, "local"}
        for address in (PREFILL, *DECODES):
            assert hosts[address]["stopped_pids"] and hosts[address]["ports_free"]
        # The escaped children were only findable by the sweep.
        swept = [c["command"] for e in stop["hosts"] for c in e["leftovers"]]
        assert swept and all(("sglang::" in c or "VLLM::" in c) for c in swept)
        gpu = hosts[PREFILL]["gpu"]
        if added is not None:
            assert gpu["available"] and gpu["memory_total_mib"] > 0
        assert pd.processes(run_ids) == {}  # servers, children (escaped ones too), router
        for port in (pd.prefill_port, pd.bootstrap_port):
            assert _bindable(PREFILL, port)
        assert all(_bindable(h, pd.decode_port) for h in DECODES)
        assert _bindable("127.0.0.1", pd.router_port)
        assert pd.manifest().stopped_at is not None
        # Status after the stop: every server reported not running (exit 1).
        code, after = pd.cli_json("pd-status")
        odd = [e for e in after["hosts"] if e["ok"] or e["error"]["kind"] != "not-running"]
        assert code == 1 and not odd, odd
    finally:
        if added is not None:
            added.unlink()


# --------------------------------------------------------------------------- failures


def test_early_death_fails_fast_with_the_log_tail(pd_factory):
    pd = pd_factory()
    pd.env["STANDIN_LOAD_SECONDS"] = "300"
    pd.serving["decode"]["env"] = {"STANDIN_DIE_AFTER": "0.5"}
    pd.write_roles()
    started = time.monotonic()
    code, doc = pd.cli_json("start-pd", "--prefill", PREFILL, "--decode", ",".join(DECODES),
                            "--timeout", "600")
    elapsed = time.monotonic() - started
    assert code == 1 and doc["stage"] == "wait"
    assert elapsed < 120  # fails fast: waits for neither the 600 s timeout nor the 300 s load
    roles = by_role(doc)
    died = [e for e in roles["decode"] if not e["ok"]]
    assert died and all(e["error"]["kind"] == "died" for e in died)
    for entry in died:
        assert any("CUDA error: out of memory" in line for line in entry["log_tail"])
        assert 1 < len(entry["log_tail"]) <= 30
        assert entry["address"] in entry["error"]["message"]
    assert roles["prefill"][0]["ok"]  # the prefill did nothing wrong: still loading
    # The deployment is recorded, so stop-pd cleans up what is left.
    run_ids = pd.run_ids()
    assert run_ids
    code, stop = pd.stop()
    assert code == 0, json.dumps(stop, indent=1)
    assert pd.processes(run_ids) == {}


def test_missing_env_file_starts_nothing_anywhere(pd_factory):
    pd = pd_factory()
    missing = pd.run_dir.parent / "no-such-env.sh"
    pd.serving["env_file"] = str(missing)
    pd.write_roles()
    code, doc = pd.start(router=False)
    assert code == 1 and doc["stage"] == "preflight"
    assert len(doc["hosts"]) == 3
    for entry in doc["hosts"]:
        assert entry["error"]["kind"] == "env-file"
        assert f"env file not found: {missing}" in entry["error"]["message"]
    assert not any(pd.run_dir.iterdir())  # no pid file, no log, no record
    assert pd.manifest() is None
    assert processes_of(set(), pd.ports) == {}
    code, out, _ = pd.cli("start-pd", "--prefill", PREFILL, "--decode", DECODES[0])
    assert code == 1 and "env-file" in out and "Nothing was started on any host" in out


def test_port_in_use_on_one_host_starts_nothing_anywhere(pd_factory):
    pd = pd_factory()
    with socket.socket() as squatter:
        squatter.bind((DECODES[1], pd.decode_port))
        squatter.listen()
        code, doc = pd.start(router=False)
    assert code == 1 and doc["stage"] == "preflight"
    kinds = [(e["address"], e["error"]["kind"]) for e in doc["hosts"] if not e["ok"]]
    # the others were never started: counted as such, never ok
    assert kinds == [(PREFILL, "not-started"), (DECODES[0], "not-started"), (DECODES[1], "port-busy")]
    assert str(pd.decode_port) in doc["hosts"][2]["error"]["message"]
    assert doc["summary"] == {"ok": 0, "failed": 3}
    assert [e["status"] for e in doc["hosts"]] == ["not started", "not started", "failed"]
    assert not any(pd.run_dir.iterdir())
    assert processes_of(set(), pd.ports) == {}


def test_second_start_is_refused_then_restart_replaces_it(pd_factory):
    pd = pd_factory()
    code, first = pd.start("--no-wait", router=False)
    assert code == 0 and all(e["status"] == "started" for e in first["hosts"])
    first_ids = pd.run_ids()
    first_pids = {e["pid"] for e in first["hosts"]}
    code, again = pd.start(router=False)
    assert code == 1 and again["stage"] == "preflight"
    refused = [e for e in again["hosts"] if not e["ok"]]
    assert {e["address"] for e in refused} == {PREFILL, *DECODES}
    assert all(e["error"]["kind"] == "already-running" for e in refused), refused
    assert all(f"already running: run {next(iter(first_ids))}, process group" in e["error"]["message"]
               for e in refused)
    assert pd.run_ids() == first_ids  # the manifest still names the running deployment
    # Other hosts, same deployment name: refused too, naming where the recorded one runs.
    code, elsewhere = pd.cli_json("start-pd", "--prefill", "127.0.1.4", "--decode", "127.0.1.5")
    assert code == 1 and elsewhere["stage"] == "preflight"
    running = [e for e in elsewhere["hosts"] if not e["ok"] and e["error"]["kind"] == "already-running"]
    assert {e["address"] for e in running} == {PREFILL, *DECODES}
    assert all("deployment 'default'" in e["error"]["message"] and "still runs here" in e["error"]["message"]
               for e in running)
    assert {e["address"] for e in elsewhere["hosts"] if e["status"] == "not started"} == {"127.0.1.4", "127.0.1.5"}
    assert not list(pd.run_dir.glob("*127.0.1.4*")) and not list(pd.run_dir.glob("*127.0.1.5*"))
    assert first_pids <= set(pd.processes(first_ids))  # untouched
    code, restarted = pd.start("--restart", "--grace", "1", router=False)
    assert code == 0, json.dumps(restarted, indent=1)
    assert all(e["status"] == "ready" for e in restarted["hosts"])
    assert not first_pids & {e["pid"] for e in restarted["hosts"]}
    assert processes_of(first_ids, set()) == {}  # the old deployment is gone, children too
    new_ids = pd.run_ids()
    assert new_ids and new_ids != first_ids
    code, stop = pd.stop()
    assert code == 0 and pd.processes(new_ids) == {}


def test_unknown_role_and_bad_options_are_input_errors_before_connecting(fleet, pd_factory):
    pd = pd_factory()
    pd.write_roles({"all": [PREFILL, *DECODES]})
    before = {a: fleet.connection_count(a) for a in (PREFILL, *DECODES)}
    code, _, err = pd.cli("start-pd")
    assert code == 2 and "unknown role 'prefill'" in err and "known roles: all" in err
    code, _, err = pd.cli("stop-pd", "--role", "nosuch")
    assert code == 2 and "unknown role 'nosuch'" in err
    code, _, err = pd.cli("pd-status")
    assert code == 2 and "no recorded deployment" in err
    code, _, err = pd.cli("start-pd", "--prefill", PREFILL, "--decode", DECODES[0], "--timeout", "0")
    assert code == 2 and "--timeout" in err
    code, _, err = pd.cli("stop-pd", "-H", PREFILL, "--sweep", "everything")
    assert code == 2 and "--sweep" in err
    assert {a: fleet.connection_count(a) for a in before} == before


def test_dry_run_prints_masked_commands_and_connects_nowhere(fleet, pd_factory, monkeypatch):
    pd = pd_factory()
    pd.serving["forward_env"] = ["HF_TOKEN"]
    pd.serving["prefill"]["extra_args"] = ["--api-key", "sk-secret-1"]
    pd.write_roles()
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    before = {a: fleet.connection_count(a) for a in (PREFILL, *DECODES)}
    code, out, err = pd.cli("start-pd", "--prefill", PREFILL, "--decode", ",".join(DECODES),
                            "--router", "local", "--dry-run")
    assert code == 0, err
    assert "hf_secret_value" not in out + err and "sk-secret-1" not in out + err
    assert "HF_TOKEN=***" in out and "--api-key ***" in out
    assert out.count("setsid nohup") == 4  # 3 servers + the router
    assert f"--disaggregation-mode prefill --host {PREFILL} --port {pd.prefill_port}" in out
    for host in DECODES:
        assert f"--disaggregation-mode decode --host {host} --port {pd.decode_port}" in out
    assert f"--prefill http://{PREFILL}:{pd.prefill_port} {pd.bootstrap_port}" in out
    assert "nothing was started, no host was contacted" in out
    assert {a: fleet.connection_count(a) for a in before} == before
    assert not any(pd.run_dir.iterdir())


def test_two_nodes_per_server_env_file_and_per_host_selection(pd_factory):
    """The DeepSeek layout in miniature: each server spans 2 hosts (--nnodes 2), only rank 0
    serves the API; an env file is sourced first; -H selects what runs on one host."""
    pd = pd_factory()
    env_file = pd.run_dir.parent / "unified-env.sh"
    env_file.write_text('echo "env file sourced on $(hostname)"\nexport STANDIN_LOAD_SECONDS=1\n')
    env_file.chmod(0o644)
    prefill_dist, decode_dist = free_ports(2)
    pd.serving["env_file"] = str(env_file)
    pd.serving["prefill"].update(nnodes=2, tp_size=4, dist_init_port=prefill_dist)
    pd.serving["decode"].update(nnodes=2, tp_size=4, dist_init_port=decode_dist)
    pd.write_roles({"prefill": ["127.0.1.1", "127.0.1.2"], "decode": ["127.0.1.3", "127.0.1.4"]})
    code, doc = pd.cli_json("start-pd", "--timeout", "90")  # hosts from the roles
    assert code == 0, json.dumps(doc, indent=1)
    ranks = [(e["role"], e["address"], e["node_rank"], e["is_api"], e["status"]) for e in doc["hosts"]]
    assert ranks == [("prefill", "127.0.1.1", 0, True, "ready"), ("prefill", "127.0.1.2", 1, False, "ready"),
                     ("decode", "127.0.1.3", 0, True, "ready"), ("decode", "127.0.1.4", 1, False, "ready")]
    manifest = pd.manifest()
    for record in manifest.servers:
        log = Path(record.log_path).read_text()
        assert "env file sourced" in log  # its chatter goes to the log, before the server's
        assert f"dist_init_addr='{'127.0.1.1' if record.role == 'prefill' else '127.0.1.3'}:" in log
    # Rank 0 holds the dist-init port; rank 1 has only a dummy /health, and is "running".
    code, status = pd.cli_json("pd-status", "-H", "127.0.1.2")
    assert code == 0 and [(e["role"], e["node_rank"], e["status"]) for e in status["hosts"]] == [
        ("prefill", 1, "running")]
    code, status = pd.cli_json("pd-status", "-H", "127.0.1.2,127.0.1.5")  # .5 runs nothing
    assert code == 1 and [(e["host"], e["ok"]) for e in status["hosts"]] == [
        ("127.0.1.2", True), ("127.0.1.5", False)]
    assert status["hosts"][1]["error"]["message"] == "no server recorded on this host"
    # A partial stop (one host; the sweep off because the loopback hosts share a kernel).
    code, stop = pd.cli_json("stop-pd", "-H", "127.0.1.4", "--grace", "1", "--sweep", "none")
    assert code == 0 and [e["host"] for e in stop["hosts"]] == ["127.0.1.4"]
    assert stop["router_stopped"] is False and stop["hosts"][0]["stopped_pids"]
    code, status = pd.cli_json("pd-status")
    assert code == 1
    down = [(e["address"], e["error"]["kind"]) for e in status["hosts"] if not e["ok"]]
    assert down == [("127.0.1.4", "not-running")]
    run_ids = pd.run_ids()
    code, stop = pd.stop()
    assert code == 0 and pd.processes(run_ids) == {}
    assert all(_bindable("127.0.1.1", p) for p in (prefill_dist, pd.prefill_port, pd.bootstrap_port))


def test_timeout_fails_not_ready_and_leaves_the_servers_running(pd_factory):
    pd = pd_factory()
    pd.env["STANDIN_LOAD_SECONDS"] = "300"
    pd.write_roles()
    started = time.monotonic()
    code, doc = pd.cli_json("start-pd", "--prefill", PREFILL, "--decode", DECODES[0], "--timeout", "3")
    assert code == 1 and doc["stage"] == "wait" and time.monotonic() - started < 120
    assert all(e["error"]["kind"] == "not-ready" and e["status"] == "not-ready" for e in doc["hosts"])
    assert all("Load weight begin" in "\n".join(e["log_tail"]) for e in doc["hosts"])
    run_ids = pd.run_ids()
    assert len(pd.processes(run_ids)) >= 2  # left running for inspection
    code, stop = pd.stop()
    assert code == 0 and pd.processes(run_ids) == {}


def test_the_router_starts_with_the_servers_and_waits_for_them(pd_factory):
    """The router is launched right after the servers, not once they are ready (it would add
    its own start-up to every start-pd --router): while the servers still load, it runs."""
    pd = pd_factory()
    pd.env["STANDIN_LOAD_SECONDS"] = "300"
    pd.write_roles()
    code, doc = pd.cli_json("start-pd", "--prefill", PREFILL, "--decode", DECODES[0], "--timeout", "3",
                            "--router", "local")
    assert code == 1 and doc["stage"] == "wait", json.dumps(doc, indent=1)
    manifest = pd.manifest()
    assert manifest is not None and manifest.router is not None and manifest.router.pid
    assert process_alive(manifest.router.pid)  # launched before any server was ready, waiting
    assert all(e["status"] == "not-ready" for e in doc["hosts"] if e["role"] != "router")
    code, stop = pd.stop()
    assert code == 0 and pd.processes({manifest.run_id}) == {}
    assert not process_alive(manifest.router.pid)


# --------------------------------------------------------------------------- plan once


def test_dry_run_shows_exactly_the_scripts_that_run(pd_factory, monkeypatch, capsys):
    """start-pd builds one plan: --dry-run prints its scripts, and a start of that plan sends
    exactly those scripts (same run id) to the hosts — through the CLI and the API."""
    from cluster.api import Cluster
    from cluster.serving import dry_run_scripts
    from cluster.serving import plan as plan_module
    from cluster.ssh import HostSession
    from cluster_cli.main import program

    pd = pd_factory()
    monkeypatch.setenv("CLUSTER_STATE_DIR", str(pd.state_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sent: list[str] = []
    original = HostSession.run

    def spy(self, command, timeout=None, stdin=None):
        if stdin is not None:
            sent.append(stdin)
        return original(self, command, timeout=timeout, stdin=stdin)

    monkeypatch.setattr(HostSession, "run", spy)
    monkeypatch.setattr(plan_module, "new_run_id", lambda now=None, token=None: "20990101-000000-beef")
    args = ["cluster", "start-pd", "--prefill", PREFILL, "--decode", DECODES[0], "--router", "local",
            "--roles-file", str(pd.roles)]
    program.run(args + ["--dry-run"], exit=False)
    shown = capsys.readouterr().out
    blocks = [block.split("\n", 1)[1].rstrip("\n") for block in shown.split("# ===== ")[1:]]
    blocks[-1] = blocks[-1].rsplit("\n# dry run:", 1)[0]
    assert len(blocks) == 3 and all("CLUSTER_PD_RUN_ID=20990101-000000-beef" in b for b in blocks)
    assert sent == []  # the dry run contacted nobody
    program.run(args + ["--timeout", "90", "--json"], exit=False)
    doc = json.loads(capsys.readouterr().out)
    assert doc["stage"] == "done" and doc["run_id"] == "20990101-000000-beef", doc
    for block in blocks:  # each printed script went to its host verbatim
        assert sum(block in text for text in sent) == 1, block
    assert pd.manifest().run_id == "20990101-000000-beef"
    code, _ = pd.stop()
    assert code == 0

    # The API: the plan handed to start_pd is the one whose scripts were shown.
    sent.clear()
    monkeypatch.undo()
    monkeypatch.setenv("CLUSTER_STATE_DIR", str(pd.state_dir))
    monkeypatch.setattr(HostSession, "run", spy)
    with Cluster.from_roles(pd.roles) as cluster:
        planned = cluster.plan_pd(PREFILL, DECODES[0])
        scripts = [script.rstrip("\n") for _, script in dry_run_scripts(planned)]
        result = cluster.start_pd(planned, timeout=90)
        assert result.ok and result.manifest.run_id == planned.run_id
        assert all(sum(s in text for text in sent) == 1 for s in scripts)
    assert pd.stop()[0] == 0


# --------------------------------------------------------------------------- replacing one server


def test_restart_replaces_the_dead_decode_and_leaves_the_rest_alone(pd_factory):
    """A decode server is killed; `restart-pd` finds it, starts it again from its recorded
    spec and leaves the other servers and the router untouched (same pids); the real
    sglang-router routes to the new one. Then a server the router lost is re-registered."""
    pd = pd_factory()
    pd.serving["router"]["policy"] = "round_robin"  # requests reach every decode in turn
    pd.write_roles()
    code, doc = pd.start()
    assert code == 0, json.dumps(doc, indent=1)
    before = pd.manifest()
    pids = {r.key: r.pid for r in before.servers}
    router_pid = before.router.pid
    victim = next(r for r in before.servers if r.host == DECODES[1])
    os.killpg(victim.pid, signal.SIGKILL)
    _wait(lambda: not _group_alive(victim.pid), "the killed decode's group gone")

    code, status = pd.cli_json("pd-status")
    assert code == 1 and [e["address"] for e in status["hosts"] if not e["ok"]] == [DECODES[1]]
    code, restarted = pd.cli_json("restart-pd", "--grace", "1", "--timeout", "60")
    assert code == 0, json.dumps(restarted, indent=1)
    assert [e["address"] for e in restarted["hosts"]] == [DECODES[1]]
    new = restarted["hosts"][0]
    assert new["status"] == "ready" and new["pid"] != victim.pid and new["run_id"] != victim.run_id
    assert len(restarted["kept"]) == 3 and restarted["router"] == "lists the restarted servers"
    after = pd.manifest()
    assert {r.key: r.pid for r in after.servers} == {**pids, victim.key: new["pid"]}
    assert after.router.pid == router_pid
    for pid in [p for k, p in pids.items() if k != victim.key] + [router_pid]:
        os.kill(pid, 0)  # still the same live processes
    seen = len(pd.requests(DECODES[1], pd.decode_port))
    router_url = doc["router_url"]
    for _ in range(4):
        code, text = http("POST", router_url + "/generate",
                          {"text": "after the restart", "sampling_params": {"max_new_tokens": 2}},
                          timeout=30)
        assert code == 200, text
    assert len(pd.requests(DECODES[1], pd.decode_port)) > seen  # the router reaches the new one

    # The router lost a worker (removed from its list): restart-pd -H adds it back.
    lost = f"http://{DECODES[0]}:{pd.decode_port}"
    code, body = http("GET", router_url + "/workers")
    worker = next(w for w in json.loads(body)["workers"] if w["url"] == lost)
    assert http("DELETE", f"{router_url}/workers/{worker['id']}")[0] in (200, 202)
    _wait(lambda: lost not in http("GET", router_url + "/workers")[1], "worker removed")
    code, again = pd.cli_json("restart-pd", "-H", DECODES[0], "--grace", "1", "--timeout", "60")
    assert code == 0, json.dumps(again, indent=1)
    assert again["router"] == f"re-registered {lost}"
    _wait(lambda: lost in http("GET", router_url + "/workers")[1], "worker registered again")
    assert pd.manifest().router.pid == router_pid
    code, status = pd.cli_json("pd-status")
    assert code == 0, json.dumps(status, indent=1)
    run_ids = {r.run_id for r in pd.manifest().records}
    code, _ = pd.stop()
    assert code == 0 and pd.processes(run_ids) == {}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _wait(condition, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.2)


def test_restart_with_vllm_restarts_a_router_that_cannot_take_a_worker_back(pd_factory):
    """vllm-router refuses PD workers added at run time: restart-pd restarts the router
    from its recorded spec, and it serves through the replaced server again."""
    pd = pd_factory("vllm")
    code, doc = pd.start()
    assert code == 0, json.dumps(doc, indent=1)
    router_url, before = doc["router_url"], pd.manifest()
    lost = f"http://{DECODES[0]}:{pd.decode_port}"
    assert http("POST", f"{router_url}/remove_worker?url={lost}")[0] == 200
    _wait(lambda: lost not in http("GET", router_url + "/list_workers")[1], "worker removed")
    code, again = pd.cli_json("restart-pd", "-H", DECODES[0], "--grace", "1", "--timeout", "60")
    assert code == 0, json.dumps(again, indent=1)
    assert again["router"].startswith("restarted")
    assert [e["role"] for e in again["hosts"]] == ["decode", "router"]
    after = pd.manifest()
    assert after.router.pid != before.router.pid
    # (zombies of the old group count for killpg until init reaps them)
    _wait(lambda: not _group_alive(before.router.pid), "the old router group is gone")
    assert [r.pid for r in after.servers if r.host != DECODES[0]] == [
        r.pid for r in before.servers if r.host != DECODES[0]]
    assert lost in http("GET", router_url + "/list_workers")[1]
    code, text = http("POST", router_url + "/v1/completions",
                      {"model": "test/model", "prompt": "after the restart", "max_tokens": 2}, timeout=30)
    assert code == 200, text
    run_ids = {r.run_id for r in after.records}
    code, _ = pd.stop()
    assert code == 0 and pd.processes(run_ids) == {}
