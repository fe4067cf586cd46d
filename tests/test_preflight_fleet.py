"""inv preflight end to end on the loopback fleet (real sshd), and start-pd's fast subset.

One prefill host (127.0.1.1) and seven decode hosts (127.0.1.[2-8]); each decode host gets
one defect of cluster/testing/defects.py (its stand-in root under $CLUSTER_PREFLIGHT_ROOT,
its sglang version, its GPU state, a listener on its port, the env-file marker). Preflight
must flag exactly those hosts with exactly those checks (exit 1); the clean fleet exits 0.
Everything a test changes on a host is put back (the fleet is shared by the session).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import restore_path, save_path, set_gpu_state
from test_pd_lifecycle import free_ports, processes_of

from cluster.testing import defects
from cluster.testing.fleet import open_path_for_others

REPO = Path(__file__).resolve().parent.parent
STANDINS = REPO / "cluster" / "testing" / "standins"
BIN = REPO / "cluster" / "testing" / "bin"
GPU_IDLE = REPO / "cluster" / "testing" / "fixtures" / "gpu" / "h100-idle.txt"
PREFILL = "127.0.1.1"
DECODES = [f"127.0.1.{n}" for n in range(2, 9)]
HOSTS = [PREFILL, *DECODES]
# Host -> its defect (in the order of defects.DEFECTS).
DEFECT_OF = dict(zip(DECODES, defects.DEFECTS, strict=True))


class Rehearsal:
    """The fleet's hosts prepared for preflight; `break_` adds defects; `restore` undoes all."""

    def __init__(self, fleet, tmp_path: Path) -> None:
        self.fleet, self.tmp = fleet, tmp_path
        self.sockets = []
        self.saved = {}
        for index, address in enumerate(HOSTS):
            host_dir = fleet.host_dir(address)
            for name in ("bin/nvidia-smi", "gpu-state", "sglang-version", defects.ENV_FAILS):
                self.saved[host_dir / name] = save_path(host_dir / name)
            set_gpu_state(fleet, address, "h100-idle")
            shutil.rmtree(host_dir / "root", ignore_errors=True)
            defects.prepare_host(host_dir, index)
        self.run_dir = tmp_path / "run"
        self.run_dir.mkdir()
        self.run_dir.chmod(0o777)
        open_path_for_others(self.run_dir)
        env_file = defects.write_env_file(tmp_path / "env.sh")
        self.prefill_port, self.decode_port, self.bootstrap_port = free_ports(3)
        serving = {"engine": "sglang", "python": "python3", "run_dir": str(self.run_dir),
                   "bootstrap_port": self.bootstrap_port,
                   "env": {"PYTHONPATH": str(STANDINS), "STANDIN_LOAD_SECONDS": "1",
                           "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin"},
                   "prefill": {"port": self.prefill_port, "tp_size": 8},
                   "decode": {"port": self.decode_port, "tp_size": 8}}
        self.roles = tmp_path / "roles.yaml"
        fleet.write_roles(self.roles, {"prefill": PREFILL, "decode": DECODES},
                          extra={"serving": defects.serving_settings(serving, env_file)})

    def break_(self, address: str, defect: str) -> None:
        if defect == "port":
            self.sockets.append(defects.hold_port(address, self.decode_port))
        else:
            defects.apply(self.fleet.host_dir(address), defect, gpu_fixture=GPU_IDLE)

    def restore(self) -> None:
        for sock in self.sockets:
            sock.close()
        for path, saved in self.saved.items():
            restore_path(path, saved)
        for address in HOSTS:
            shutil.rmtree(self.fleet.host_dir(address) / "root", ignore_errors=True)
            (self.fleet.host_dir(address) / "gpus-busy.txt").unlink(missing_ok=True)

    def cli(self, *args: str) -> tuple[int, str, str]:
        env = {**os.environ, "CLUSTER_STATE_DIR": str(self.tmp / "state"), "COLUMNS": "200"}
        env.pop("CLUSTER_ROLES", None)
        proc = subprocess.run([sys.executable, "-m", "cluster_cli", *args, "--roles-file", str(self.roles)],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=180)
        return proc.returncode, proc.stdout, proc.stderr

    def cli_json(self, *args: str) -> tuple[int, dict]:
        code, out, err = self.cli(*args, "--json")
        try:
            return code, json.loads(out)
        except json.JSONDecodeError:
            raise AssertionError(f"not JSON (exit {code}):\n{out}\n{err}") from None


@pytest.fixture
def rehearsal(fleet, tmp_path):
    made = Rehearsal(fleet, tmp_path)
    try:
        yield made
    finally:
        made.restore()


def failing(doc: dict) -> dict[str, list[str]]:
    """host -> names of its failing checks (hosts with none left out)."""
    found = {}
    for entry in doc["hosts"]:
        names = [c["name"] for c in entry["checks"] if c["status"] == "fail"]
        if names or not entry["ok"]:
            found[entry["host"]] = names or [entry["error"]["kind"]]
    return found


def test_a_clean_rehearsal_cluster_passes_and_every_check_ran(rehearsal):
    code, doc = rehearsal.cli_json("preflight")
    assert code == 0, failing(doc)
    assert doc["task"] == "preflight" and [h["host"] for h in doc["hosts"]] == HOSTS
    assert doc["summary"]["failed"] == 0 and failing(doc) == {}
    names = {c["name"] for c in doc["hosts"][1]["checks"]}
    assert {"gpu.count", "gpu.free", "gpu.driver", "env.file", "sw.engine", "model.present", "net.nic",
            "net.ib", "net.ports", "net.peers", "sys.shm", "sys.clock"} <= names
    engine = next(v for v in doc["consistency"] if v["fact"] == "engine")
    assert engine["groups"] == [{"hosts": HOSTS, "value": "sglang 0.0.0-standin", "ok": True}]


def test_one_defect_per_host_flags_exactly_those_hosts_and_checks(rehearsal):
    for address, defect in DEFECT_OF.items():
        rehearsal.break_(address, defect)
    code, doc = rehearsal.cli_json("preflight")
    assert code == 1
    assert failing(doc) == {address: [defects.CHECK_OF[d]] for address, d in DEFECT_OF.items()}
    version = next(v for v in doc["consistency"] if v["fact"] == "engine")
    odd = DECODES[defects.DEFECTS.index("sglang-version")]
    assert {"hosts": [odd], "value": f"sglang {defects.OTHER_SGLANG}", "ok": False} in version["groups"]
    # The table: failed hosts first with the failing check and its value; the folded view.
    code, out, err = rehearsal.cli("preflight")
    assert code == 1, err
    gpu_host = DECODES[defects.DEFECTS.index("gpu-busy")]
    row = next(line for line in out.splitlines() if gpu_host in line)
    assert "gpu.free" in row and "sglang::scheduler_TP3" in row
    assert f"{odd}" in out and f"sglang {defects.OTHER_SGLANG}  ✗" in out
    assert "8 hosts: 0 ok, 1 warn, 7 failed" in out


def test_start_pd_refuses_a_failing_fast_check_and_starts_nothing_anywhere(rehearsal):
    busy = DECODES[defects.DEFECTS.index("gpu-busy")]
    rehearsal.break_(busy, "gpu-busy")
    code, doc = rehearsal.cli_json("start-pd", "--timeout", "60")
    assert code == 1 and doc["stage"] == "preflight"
    kinds = {e["host"]: e["error"]["kind"] for e in doc["hosts"]}
    assert kinds.pop(busy) == "gpu-busy" and set(kinds.values()) == {"not-started"}, kinds
    refused = next(e for e in doc["hosts"] if e["host"] == busy)
    assert "gpu.free" in refused["error"]["message"] and refused["status"] == "failed"
    assert all(e["status"] == "not started" for e in doc["hosts"] if e["host"] != busy)
    run_ids = {doc["run_id"]}
    assert processes_of(run_ids, {rehearsal.prefill_port, rehearsal.decode_port}) == {}
    assert not list(rehearsal.run_dir.glob("*.log")) and not list(rehearsal.run_dir.glob("*.pid"))
    code, out, err = rehearsal.cli("start-pd", "--timeout", "60")
    assert code == 1 and "gpu.free" in out and busy in out


# --------------------------------------------------------------------------- sim-up --defects


@pytest.fixture
def sim_dir(fleet_dir):
    """A state dir outside pytest's temp root (the login user must traverse to it)."""
    from cluster.testing import sim

    directory = fleet_dir("sim-defects") / "state"
    yield directory
    sim.down(directory)


def test_sim_up_defects_rehearses_a_preflight_failure(sim_dir):
    base = f"127.0.{random.randint(100, 199)}."
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("CLUSTER_ROLES", None)
    up = subprocess.run([sys.executable, "-m", "cluster_cli", "sim-up", "--count", "8", "--defects", "all",
                         "--state-dir", str(sim_dir), "--base", base, "--json"],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=180)
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)["state"]
    expected = dict(zip([f"{base}{i}" for i in range(2, 9)], defects.DEFECTS, strict=True))
    assert state["defects"] == expected
    proc = subprocess.run([sys.executable, "-m", "cluster_cli", "preflight", "--json", "--roles-file",
                           state["roles_file"]], capture_output=True, text=True, env=env, cwd=REPO, timeout=180)
    assert proc.returncode == 1, proc.stderr
    assert failing(json.loads(proc.stdout)) == {a: [defects.CHECK_OF[d]] for a, d in expected.items()}


def test_bad_defects_exit_2_before_anything_starts(sim_dir):
    for value, says in (("nic,bogus", "unknown defect 'bogus'"), ("127.0.99.1=nic", "not a host"),
                        ("all", "7 defects need 8 hosts")):
        proc = subprocess.run([sys.executable, "-m", "cluster_cli", "sim-up", "--count", "3", "--defects", value,
                               "--state-dir", str(sim_dir)], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr
        assert not (sim_dir / "state.json").exists()
