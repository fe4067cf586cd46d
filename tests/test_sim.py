"""The rehearsal cluster: ``inv sim-up --count 4``, the docs' walk-through against it
(check, gpu-status, start-pd / pd-status / logs / kill --dry-run / stop-pd), then
``inv sim-down`` leaves no process, no listening sshd and no files.

Every command runs through the CLI in a subprocess, as an operator would, with
``CLUSTER_ROLES`` / ``CLUSTER_STATE_DIR`` exported as sim-up says. The cluster uses
a random 127.0.X. prefix and its own state dir, so concurrent test runs do not meet.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import gpu
from cluster.errors import InputError
from cluster.testing import sim

REPO = Path(__file__).resolve().parent.parent
IDLE = (REPO / "cluster" / "testing" / "fixtures" / "gpu" / "h100-idle.txt").read_text()


def cli(*args: str, env: dict | None = None, timeout: float = 180) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "cluster_cli", *args], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200", **(env or {})},
                          cwd=REPO, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def cli_json(*args: str, env: dict | None = None, timeout: float = 180) -> tuple[int, dict]:
    code, out, err = cli(*args, "--json", env=env, timeout=timeout)
    try:
        return code, json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON (exit {code}):\n{out}\n{err}") from None


def sim_processes(state_dir: Path) -> list[int]:
    """Living processes that belong to the rehearsal cluster of ``state_dir``."""
    marker = str(state_dir.resolve()).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X") and (marker in cmdline or marker in environ):
            found.append(int(entry))
    return found


def listening(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((address, port)) == 0


@pytest.fixture
def sim_dir(fleet_dir):
    """A state dir outside pytest's temp root (the login user must traverse to it)."""
    directory = fleet_dir("sim") / "state"
    yield directory
    sim.down(directory)  # whatever the test did, nothing is left running


@pytest.fixture
def base():
    return f"127.0.{random.randint(100, 199)}."


def test_sim_up_walkthrough_sim_down(sim_dir, base, tmp_path):
    code, out, err = cli("sim-up", "--count", "4", "--state-dir", str(sim_dir), "--base", base,
                         "--load-seconds", "1")
    assert code == 0, out + err
    state = sim.SimState.load(sim_dir)
    assert state is not None
    assert state.addresses == [f"{base}{i}" for i in range(1, 5)]
    assert state.roles == {"prefill": [f"{base}1"], "decode": [f"{base}{i}" for i in (2, 3, 4)]}
    # It printed how to use it, and runs on after sim-up's process exited, in its own session.
    assert f"export CLUSTER_ROLES={sim_dir.resolve()}/roles.yaml" in out
    assert f"Stop it: inv sim-down --state-dir {state.state_dir}" in out  # the exact command
    assert os.getsid(state.supervisor_pid) == state.supervisor_pid
    env = {"CLUSTER_ROLES": state.roles_file, "CLUSTER_STATE_DIR": state.deployments_dir,
           "HOME": str(tmp_path)}  # nothing of the rehearsal lands in the real ~/.cluster
    exported = re.search(r"export (\S+) (\S+)", out)
    assert exported and dict(kv.split("=", 1) for kv in exported.groups()) == {
        "CLUSTER_ROLES": state.roles_file, "CLUSTER_STATE_DIR": state.deployments_dir}

    code, again, _ = cli("sim-up", "--state-dir", str(sim_dir))
    assert code == 0 and "already running" in again

    code, doc = cli_json("check", env=env)
    assert code == 0 and doc["summary"] == {"ok": 4, "failed": 0}

    code, doc = cli_json("gpu-status", env=env)
    assert code == 0
    uuids = [g["uuid"] for h in doc["hosts"] for g in h["gpus"]]
    assert [len(h["gpus"]) for h in doc["hosts"]] == [8, 8, 8, 8]
    assert len(set(uuids)) == 32  # each simulated host has its own GPUs

    _, tasks, _ = cli("--list")
    if "start-pd" in tasks:
        _serving_walkthrough(state, env)

    code, out, err = cli("sim-down", "--state-dir", str(sim_dir))
    assert code == 0, out + err
    assert "stopped the rehearsal cluster" in out
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sim_processes(sim_dir):
        time.sleep(0.1)
    assert sim_processes(sim_dir) == []
    for pid in [state.supervisor_pid, *state.sshd_pids]:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert not any(listening(a, state.port) for a in state.addresses)
    assert not sim_dir.exists()

    code, out, _ = cli("sim-down", "--state-dir", str(sim_dir))
    assert code == 0 and "nothing to stop" in out


def _serving_walkthrough(state: sim.SimState, env: dict) -> None:
    """start-pd -> pd-status -> logs -> kill --dry-run -> stop-pd, as in docs/rehearsal.md."""
    decode = state.roles["decode"]
    code, doc = cli_json("start-pd", env=env)
    assert code == 0, doc
    code, doc = cli_json("pd-status", env=env)
    assert code == 0, doc

    code, doc = cli_json("logs", "-r", "decode", "-n", "20", env=env)
    assert code == 0, doc
    assert [h["host"] for h in doc["hosts"]] == decode
    for entry in doc["hosts"]:
        assert 0 < len(entry["lines"]) <= 20
        assert any("ready to roll" in line for line in entry["lines"]), entry

    # The server on one decode host, by its command line (--host is that host's address).
    pattern = f"launch_server.*--host {re.escape(decode[1])} "
    code, doc = cli_json("kill", "--pattern", pattern, "--dry-run", "-H", decode[1], env=env)
    assert code == 0 and len(doc["hosts"][0]["processes"]) == 1, doc

    code, doc = cli_json("stop-pd", "--grace", "5", "--sweep", "deployment", env=env)
    assert code == 0, doc
    code, doc = cli_json("logs", "-r", "decode", "--grep", "Shutting down|SIGTERM", env=env)
    assert code == 0
    assert all(h["lines"] for h in doc["hosts"])  # each decode server logged its stop


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_missing_sshd_exits_2_with_the_install_command(tmp_path):
    code, out, err = cli("sim-up", "--state-dir", str(tmp_path / "s"),
                         env={sim.SSHD_ENV: str(tmp_path / "no-sshd")})
    assert code == 2
    assert "apt-get install openssh-server" in err and "sshd" in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args", [["--hosts", "0"], ["--hosts", "x"], ["--gpus", "99"],
                                  ["--base", "10.8.0."]])
def test_bad_arguments_exit_2(tmp_path, args):
    code, _, err = cli("sim-up", *args, "--state-dir", str(tmp_path / "s"))
    assert code == 2, err
    assert not (tmp_path / "s").exists()


def test_gpus_option_sets_the_stand_in_gpu_count(sim_dir, base, tmp_path):
    state = sim.up(sim_dir, hosts=1, gpus=2, base=base)
    try:
        env = {"CLUSTER_ROLES": state.roles_file, "HOME": str(tmp_path)}
        code, doc = cli_json("gpu-status", env=env)
        assert code == 0 and [len(h["gpus"]) for h in doc["hosts"]] == [2]
        assert state.roles == {"prefill": [f"{base}1"], "decode": [f"{base}1"]}
    finally:
        result = sim.down(sim_dir)
    assert result.was_running and state.supervisor_pid in result.stopped


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("count,prefill", [(2, 1), (4, 1), (8, 2), (9, 2)])
def test_plan_roles_splits_a_quarter_prefill(count, prefill):
    addresses = [f"127.0.5.{i}" for i in range(1, count + 1)]
    roles = sim.plan_roles(addresses)
    assert roles["prefill"] == addresses[:prefill] and roles["decode"] == addresses[prefill:]


@pytest.mark.parametrize("count", [1, 8, 12])
def test_gpu_rows_parse_as_count_idle_gpus(count):
    rows = sim.gpu_rows("127.0.5.3", count, IDLE)
    status = gpu.parse(rows)
    assert [g.index for g in status.gpus] == list(range(count))
    assert len({g.uuid for g in status.gpus}) == count
    assert status.processes == []
    assert sim.gpu_rows("127.0.5.3", count, IDLE) == rows  # stable per host
    assert sim.gpu_rows("127.0.5.4", count, IDLE) != rows


@pytest.mark.parametrize("value", ["0", "-1", "abc", "251"])
def test_check_count_rejects(value):
    with pytest.raises(InputError):
        sim.check_count(value, "--hosts", 1, 250)


def test_check_base_is_loopback_only():
    assert sim.check_base("127.0.9") == "127.0.9."
    with pytest.raises(InputError):
        sim.check_base("192.168.1.")
