"""Ctrl-C and timeouts stop the command on every host (real sshd on loopback).

Each test gives its command a unique argument (``sleep 300.<random>``) and looks for
survivors by that argument in /proc, on the loopback hosts (the fleet's login
user) and on the controller (``local``).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, set_gpu_state

from cluster.testing import Fleet

ADDRESSES = [f"127.0.38.{i}" for i in range(1, 17)]


@pytest.fixture(scope="module")
def fleet16(fleet_dir):
    """16 hosts on one sshd."""
    with Fleet(fleet_dir("fleet-interrupt"), count=16, base="127.0.38.", specials=False,
               hosts_per_sshd=16) as running:
        yield running


def marker() -> str:
    return f"300.{secrets.randbelow(10**6):06d}"


def survivors(text: str) -> list[int]:
    """Pids of processes whose command line holds ``text``, other than this test's."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and b"pytest" not in cmdline:
            found.append(int(pid))
    return found


def wait_for(predicate, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cluster_cli", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def interrupt(proc: subprocess.Popen) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def kill_all(text: str) -> None:
    for pid in survivors(text):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("command, hosts, sleeps, stopped", [
    ("sleep {token}", "127.0.38.[1-16] local", 17, "stopped on 17 hosts"),
    # `trap '' INT TERM` is inherited by the sleeps: only the group kill from a second
    # channel ends them. The background sleep also outlives its shell.
    ("trap '' INT TERM; sleep {token} & sleep {token}; wait", "127.0.38.[1-2]", 4, "stopped on 2 hosts"),
], ids=["sixteen-hosts-and-local", "signals-ignored"])
def test_ctrl_c_stops_the_command_everywhere(fleet16, tmp_path, command, hosts, sleeps, stopped):
    roles = fleet16.write_roles(tmp_path / "roles.yaml", {"all": ADDRESSES})
    token = marker()
    proc = start_cli("run", command.format(token=token), "-H", hosts, "--roles-file", str(roles))
    try:
        assert wait_for(lambda: len(survivors(f"sleep\x00{token}")) >= sleeps), "the sleeps never all started"
        code, out, err = interrupt(proc)
        assert code == 130, (out, err)
        assert stopped in err and "Traceback" not in err, err
        assert wait_for(lambda: not survivors(token), within=15), survivors(token)
    finally:
        proc.kill()
        kill_all(token)


def test_command_timeout_stops_the_command_on_the_host(fleet16, tmp_path):
    roles = fleet16.write_roles(tmp_path / "roles.yaml", {"all": ADDRESSES})
    token = marker()
    proc = start_cli("run", f"sleep {token} & sleep {token}", "-H", "127.0.38.3 local",
                     "--roles-file", str(roles), "--timeout", "1", "--json")
    try:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        doc = json.loads(out)
        assert [h["error"]["kind"] for h in doc["hosts"]] == ["command-timeout"] * 2
        assert wait_for(lambda: not survivors(token), within=10), survivors(token)
    finally:
        proc.kill()
        kill_all(token)


def test_ctrl_c_during_gpu_status_on_a_wedged_gpu(fleet16, tmp_path):
    address = "127.0.38.4"
    set_gpu_state(fleet16, address, "hang")
    roles = fleet16.write_roles(tmp_path / "roles.yaml", {"all": ADDRESSES})
    proc = start_cli("gpu-status", "-H", address, "--roles-file", str(roles))
    try:
        # The stand-in's wedge is `sleep 86400`, found by its host's session env.
        assert wait_for(lambda: bool(_wedged(address, fleet16))), "the stand-in never wedged"
        code, out, err = interrupt(proc)
        assert code == 130 and "Traceback" not in err and "stopped on 1 host" in err, err
        assert wait_for(lambda: not _wedged(address, fleet16), within=10)
    finally:
        proc.kill()
        set_gpu_state(fleet16, address, None)
        for pid in _wedged(address, fleet16):
            os.kill(pid, signal.SIGKILL)


def _wedged(address: str, fleet: Fleet) -> list[int]:
    """The stand-in's `sleep 86400` processes in ``address``'s sessions."""
    found = []
    for pid in survivors("sleep\x0086400"):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if f"CLUSTER_SIM_HOST={address}\x00".encode() in environ:
            found.append(pid)
    return found
