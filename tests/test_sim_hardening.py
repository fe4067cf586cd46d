"""The rehearsal cluster's own safety (issue 14, item 15): sim-up refuses addresses that are
already in use, prints the exact stop command, and takes --count (--hosts: deprecated alias)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.testing import sim
from cluster_cli.sim_tasks import stop_command

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster_cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture
def listener():
    """Something listening on base+1 (as another rehearsal cluster's sshd would)."""
    base = f"127.0.{random.randint(200, 250)}."
    server = socket.socket()
    server.bind((f"{base}1", 0))
    server.listen()
    yield base, server.getsockname()[1]
    server.close()


def test_listening_ports_sees_exactly_those_addresses(listener):
    base, port = listener
    assert sim.listening_ports([f"{base}1", f"{base}2"]) == {f"{base}1": [port]}


def test_sim_up_refuses_addresses_in_use(listener, tmp_path):
    base, port = listener
    proc = cli("sim-up", "--count", "2", "--base", base, "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{base}1 is in use (listening on port {port})" in proc.stderr
    assert "sim-down --state-dir" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert sim.status(tmp_path / "s") is None


def test_count_and_its_deprecated_alias(tmp_path):
    both = cli("sim-up", "--count", "2", "--hosts", "2", "--state-dir", str(tmp_path / "s"))
    assert both.returncode == 2 and "deprecated alias" in both.stderr
    alias = cli("sim-up", "--hosts", "0", "--state-dir", str(tmp_path / "s"))
    assert alias.returncode == 2 and "--hosts must be a whole number" in alias.stderr
    count = cli("sim-up", "--count", "x", "--state-dir", str(tmp_path / "s"))
    assert count.returncode == 2 and "--count must be a whole number" in count.stderr


def test_stop_command_names_the_state_dir_unless_default(tmp_path):
    state = sim.SimState(str(tmp_path / "my dir"), 1, [], ["127.0.5.1"], 2222, "u", 8, {}, "", "", "", 0.0)
    assert stop_command(state) == f"inv sim-down --state-dir '{tmp_path}/my dir'"
    default = sim.SimState(str(Path(sim.DEFAULT_STATE_DIR).resolve()), 1, [], [], 2222, "u", 8, {}, "", "", "", 0.0)
    assert stop_command(default) == "inv sim-down"
