"""gpu-status, sys-status and service-status against real sshd processes on loopback.

Every host of the session fleet gets its own stand-in GPU state (the stand-in
``nvidia-smi`` is symlinked into the host's ``bin/`` and reads
``host_dir/gpu-state``); one host has no nvidia-smi at all and one hangs.
All per-host state set here is restored when the module ends, since the fleet
is shared with other test modules.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import restore_path, run_cli, save_path, set_gpu_state

import cluster.gpu as gpu
from cluster import status, system
from cluster.api import Cluster
from cluster.testing import Fleet

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "cluster" / "testing" / "fixtures" / "gpu"
CLI = [sys.executable, "-c", "from cluster_cli.main import main; main()"]

# address -> stand-in GPU state (None: no nvidia-smi on that host)
STATES = {
    "127.0.1.1": "h100-busy",
    "127.0.1.2": "h100-idle",
    "127.0.1.3": "h100-mig",
    "127.0.1.4": "lost-gpu",
    "127.0.1.5": "driver-mismatch",
    "127.0.1.6": None,
    "127.0.1.7": "hang",
    "127.0.1.8": "h100-reset-required",
}
# address -> expected failure kind (None: ok)
KINDS = {
    "127.0.1.1": None, "127.0.1.2": None, "127.0.1.3": None, "127.0.1.4": "degraded",
    "127.0.1.5": "driver", "127.0.1.6": "no-gpu-tool", "127.0.1.7": "command-timeout",
    "127.0.1.8": "degraded",
}
HEALTHY = [a for a, kind in KINDS.items() if kind is None]
CONTRACT_GPU = ("index", "uuid", "name", "memory_used_mib", "memory_total_mib",
                "utilization_pct", "temperature_c", "power_w", "power_limit_w")
CONTRACT_PROCESS = ("pid", "name", "gpu_uuid", "used_memory_mib")
# Short enough for the hanging host, long enough for a loaded CI machine.
TIMEOUT_S = 4


def cli(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    """Run the task CLI in a subprocess; (exit code, stdout, stderr)."""
    return run_cli(*args, timeout=timeout)


def fixture_text(case: str) -> str:
    return (FIXTURES / f"{case}.txt").read_text()


def raw_gpu_rows(case: str) -> list[dict]:
    """The contract GPU fields read straight from the fixture's CSV (not through the parser)."""
    position = {attr: i for i, (_, attr, _) in enumerate(gpu.GPU_FIELDS)}
    rows = []
    for line in fixture_text(case).split("@@compute-apps")[0].splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(gpu.GPU_FIELDS) or not cells[0].isdigit():
            continue  # the "Unable to determine..." line of a lost GPU
        row = {}
        for name in CONTRACT_GPU:
            cell = cells[position[name]]
            if cell.startswith("["):
                row[name] = None
            elif name in ("uuid", "name"):
                row[name] = cell
            elif name in ("power_w", "power_limit_w"):
                row[name] = float(cell)
            else:
                row[name] = int(cell)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# Per-host GPU states (restored afterwards: the fleet is shared)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_fleet(fleet: Fleet, tmp_path_factory):
    """The session fleet with STATES applied; a roles file with role gpu (+ role down)."""
    paths = [p for a in STATES for p in (fleet.host_dir(a) / "bin" / "nvidia-smi",
                                         fleet.host_dir(a) / "gpu-state",
                                         fleet.host_dir(a) / "bin" / "pgrep")]
    saved = {p: save_path(p) for p in paths}
    for address, state in STATES.items():
        set_gpu_state(fleet, address, state)
    tmp = tmp_path_factory.mktemp("status")
    roles = fleet.write_roles(tmp / "roles.yaml",
                              {"gpu": list(STATES), "down": [fleet.special["refused"]]},
                              extra={"ssh": {"known_hosts": str(tmp / "known_hosts"),
                                             "connect_timeout": 10}})
    try:
        yield roles
    finally:
        fleet.kill_user_processes()  # hanging stand-ins, dummy services, killed sessions
        for path, state in saved.items():
            restore_path(path, state)


# ---------------------------------------------------------------------------
# gpu-status --json
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_json(gpu_fleet):
    """One `inv gpu-status --json` over the 8 GPU hosts and the refused host."""
    code, out, err = cli("gpu-status", "--roles-file", str(gpu_fleet), "--json",
                         "--timeout", str(TIMEOUT_S))
    try:
        doc = json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON (exit {code}):\n{out}\n{err}") from None
    return code, doc, {h["host"]: h for h in doc["hosts"]}


def test_gpu_status_json_exit_code_order_and_kinds(fleet, gpu_json):
    code, doc, by_host = gpu_json
    refused = fleet.special["refused"]
    assert code == 1
    assert doc["task"] == "gpu-status"
    assert [h["host"] for h in doc["hosts"]] == [*STATES, refused]  # role order: gpu, down
    for address, kind in {**KINDS, refused: "unreachable"}.items():
        host = by_host[address]
        assert host["ok"] is (kind is None), (address, host["error"])
        assert (host["error"] or {}).get("kind") == kind, (address, host["error"])
        if kind is not None:
            assert host["error"]["message"] and host["error"]["hint"]
    assert doc["summary"]["ok"] == len(HEALTHY)
    assert doc["summary"]["failed"] == len(KINDS) + 1 - len(HEALTHY)


@pytest.mark.parametrize("address", HEALTHY + ["127.0.1.4", "127.0.1.8"])
def test_gpu_status_json_reports_every_gpu_field(gpu_json, address):
    """Healthy and degraded hosts: every GPU and process field as nvidia-smi printed it."""
    _, _, by_host = gpu_json
    host = by_host[address]
    case = STATES[address]
    parsed = gpu.parse(fixture_text(case))
    # Contract fields against the raw CSV, then every field against the parser.
    assert [{k: g[k] for k in CONTRACT_GPU} for g in host["gpus"]] == raw_gpu_rows(case)
    assert host["gpus"] == [g.to_json() for g in parsed.gpus]
    assert host["processes"] == [p.to_json() for p in parsed.processes]
    for proc in host["processes"]:
        assert set(CONTRACT_PROCESS) <= set(proc)
    assert host["summary"] == gpu.summarize(parsed).to_json()


def test_gpu_status_json_mig_lost_and_reset_details(gpu_json):
    _, doc, by_host = gpu_json
    mig = by_host["127.0.1.3"]
    mig_gpus = [g for g in mig["gpus"] if "mig" in g["flags"]]
    assert mig_gpus and all(g["utilization_pct"] is None for g in mig_gpus)
    assert mig["summary"]["mig_gpus"] == len(mig_gpus)

    lost = by_host["127.0.1.4"]
    assert lost["lost"] == ["00000000:5D:00.0"]
    assert "00000000:5D:00.0" in lost["error"]["message"]
    assert "00000000:5D:00.0" not in [g["pci_bus_id"] for g in lost["gpus"]]

    reset = by_host["127.0.1.8"]
    faulted = [g for g in reset["gpus"] if "reset-required" in g["flags"]]
    assert len(faulted) == 1
    assert f"GPU {faulted[0]['index']}" in reset["error"]["message"]

    driver = by_host["127.0.1.5"]
    assert driver["error"]["exit_code"] == 18
    assert "reboot" in driver["error"]["hint"]
    assert driver["gpus"] is None and driver["processes"] is None

    hung = by_host["127.0.1.7"]
    assert f"{TIMEOUT_S} s" in hung["error"]["message"]

    healthy_gpus = sum(len(by_host[a]["gpus"]) for a in STATES if by_host[a]["gpus"])
    assert doc["summary"]["gpus"] == healthy_gpus
    assert doc["summary"]["gpus_lost"] == 1 and doc["summary"]["gpus_faulted"] == 1


def test_gpu_status_table_shows_hosts_mig_failures_gpus_and_processes(fleet, gpu_fleet):
    code, out, err = cli("gpu-status", "--roles-file", str(gpu_fleet), "-H", "127.0.1.[1-6]",
                         "-r", "down", "--gpus", "--procs", "--timeout", str(TIMEOUT_S))
    assert code == 1, err
    lines = out.splitlines()

    def row(address: str) -> str:
        found = [line for line in lines if line.startswith(f"│{address} ")]
        assert found, f"no row for {address}:\n{out}"
        return found[0]

    assert "MIG" in row("127.0.1.3")
    assert "degraded" in row("127.0.1.4") and "(+1 lost)" in row("127.0.1.4")
    assert "driver" in row("127.0.1.5")
    assert "no-gpu-tool" in row("127.0.1.6")
    assert "unreachable" in row(fleet.special["refused"])
    busy = gpu.parse(fixture_text("h100-busy"))
    # --gpus: one row per GPU, lost GPU named; --procs: every process of the busy host.
    assert sum(1 for line in lines if line.startswith("│  [")) == sum(
        len(gpu.parse(fixture_text(STATES[a])).gpus) + len(gpu.parse(fixture_text(STATES[a])).lost)
        for a in ("127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.1.4"))
    assert any("lost" in line and "00000000:5D:00.0" in line for line in lines)
    for proc in busy.processes:
        assert any(line.startswith("│127.0.1.1 ") and proc.name in line and str(proc.pid) in line
                   for line in lines), proc
    shown = [a for a in STATES if a <= "127.0.1.6"]
    ok = sum(1 for a in shown if KINDS[a] is None)
    assert lines[-1].startswith(f"{len(shown) + 1} hosts: {ok} ok, {len(shown) + 1 - ok} failed")


def test_gpu_status_bad_input_exits_2_before_connecting(fleet, gpu_fleet):
    before = fleet.connection_count("127.0.1.2")
    for args in (["--watch", "0"], ["--watch", "soon"], ["--timeout", "-1"], ["--count", "2"],
                 ["--watch", "1", "--count", "0"]):
        code, out, err = cli("gpu-status", "--roles-file", str(gpu_fleet), "-H", "127.0.1.2",
                             *args)
        assert code == 2, (args, out, err)
        assert "error:" in err
    assert fleet.connection_count("127.0.1.2") == before


# ---------------------------------------------------------------------------
# --watch: the same connections, refresh after refresh
# ---------------------------------------------------------------------------


def test_watch_reuses_connections_one_handshake_per_host(fleet, gpu_fleet):
    hosts = ["127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.1.5"]
    before = {a: fleet.connection_count(a) for a in hosts}
    ticks: list[status.Tick] = []
    with Cluster.from_roles(gpu_fleet) as cluster:
        last = status.watch(cluster.engine, cluster.hosts(",".join(hosts)),
                            gpu.probe(TIMEOUT_S), 0.2, ticks.append, max_ticks=3)
        counts_while_open = {a: fleet.connection_count(a) for a in hosts}
    assert [t.number for t in ticks] == [1, 2, 3] and last is ticks[-1]
    assert {a: counts_while_open[a] - before[a] for a in hosts} == {a: 1 for a in hosts}
    for tick in ticks:
        assert [o.ok for o in tick.report] == [True, True, True, False]
        assert tick.report[3].error.kind == "driver"
        assert len(tick.report[0].data.gpus) == len(gpu.parse(fixture_text("h100-busy")).gpus)
    # Rounds start at least the interval apart.
    starts = [t.started_at for t in ticks]
    assert all(b - a >= 0.19 for a, b in zip(starts, starts[1:], strict=False))


def test_watch_cli_json_lines_and_flat_connection_count(fleet, gpu_fleet):
    hosts = ["127.0.1.1", "127.0.1.4"]
    before = {a: fleet.connection_count(a) for a in hosts}
    code, out, err = cli("gpu-status", "--roles-file", str(gpu_fleet), "-H", ",".join(hosts),
                         "--watch", "0.2", "--count", "3", "--json")
    docs = [json.loads(line) for line in out.splitlines()]
    assert code == 1, err  # 127.0.1.4 is degraded in every round
    assert [d["tick"] for d in docs] == [1, 2, 3]
    for doc in docs:
        assert [h["host"] for h in doc["hosts"]] == hosts
        assert doc["hosts"][0]["gpus"] == [g.to_json() for g in
                                           gpu.parse(fixture_text("h100-busy")).gpus]
        assert doc["hosts"][1]["error"]["kind"] == "degraded"
    assert {a: fleet.connection_count(a) - before[a] for a in hosts} == {a: 1 for a in hosts}


def test_watch_cli_ctrl_c_exits_with_last_round_code(fleet, gpu_fleet):
    proc = subprocess.Popen([*CLI, "gpu-status", "--roles-file", str(gpu_fleet),
                             "-H", "127.0.1.2", "--watch", "0.3", "--json"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stdout.readline())
        assert first["tick"] == 1 and first["summary"]["ok"] == 1
        proc.send_signal(2)  # SIGINT, as Ctrl-C
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert all(json.loads(line)["summary"]["ok"] == 1 for line in out.splitlines())


def _killer_nvidia_smi() -> str:
    # Kills the sshd session process serving this command: the connection drops mid-round.
    # (Its nearest sshd ancestor: probes run inside a framing subshell, one level deeper.)
    return ("#!/bin/sh\np=$PPID\nwhile [ \"$(ps -o comm= -p $p)\" != sshd ]; do p=$(ps -o ppid= -p $p | tr -d ' '); "
            "[ \"$p\" -gt 1 ] || exit 1; done\nkill -9 $p\nsleep 30\n")


def test_watch_host_that_drops_is_shown_failed_then_reconnected(fleet, gpu_fleet):
    dropper, steady = "127.0.1.2", "127.0.1.1"
    before = {a: fleet.connection_count(a) for a in (dropper, steady)}
    ticks: list[status.Tick] = []

    def on_tick(tick: status.Tick) -> None:
        ticks.append(tick)
        if tick.number == 1:
            set_gpu_state(fleet, dropper, None)
            fleet.install(dropper, "nvidia-smi", _killer_nvidia_smi())
        elif tick.number == 2:
            set_gpu_state(fleet, dropper, STATES[dropper])

    try:
        with Cluster.from_roles(gpu_fleet) as cluster:
            status.watch(cluster.engine, cluster.hosts(f"{dropper},{steady}"),
                         gpu.probe(3), 0.1, on_tick, max_ticks=3)
    finally:
        set_gpu_state(fleet, dropper, STATES[dropper])
    assert [t.report[0].ok for t in ticks] == [True, False, True]
    # Whatever the transport layer calls it, the drop is a transport-level failure.
    assert ticks[1].report[0].error.kind in ("ssh", "command-timeout", "unreachable")
    assert [t.report[1].ok for t in ticks] == [True, True, True]  # the other host is unaffected
    assert fleet.connection_count(dropper) - before[dropper] == 2  # first round + reconnect
    assert fleet.connection_count(steady) - before[steady] == 1


def test_watch_reconnects_after_transport_closed_between_rounds(fleet, gpu_fleet):
    address = "127.0.1.3"
    before = fleet.connection_count(address)
    ticks: list[status.Tick] = []
    with Cluster.from_roles(gpu_fleet) as cluster:
        def on_tick(tick: status.Tick) -> None:
            ticks.append(tick)
            if tick.number == 1:
                session = cluster.engine.session(cluster.hosts(address)[0])
                session.connection.client.get_transport().close()

        status.watch(cluster.engine, cluster.hosts(address), gpu.probe(TIMEOUT_S), 0.1,
                     on_tick, max_ticks=3)
    assert all(t.report[0].ok for t in ticks)
    assert fleet.connection_count(address) - before == 2


# ---------------------------------------------------------------------------
# sys-status (the hosts' real vmstat)
# ---------------------------------------------------------------------------


def test_sys_status_json_on_fleet(fleet, gpu_fleet):
    hosts = "127.0.1.1,127.0.1.2"
    code, out, err = cli("sys-status", "--roles-file", str(gpu_fleet), "-H", hosts, "-r", "down",
                         "--samples", "2", "--interval", "1", "--json")
    doc = json.loads(out)
    assert code == 1, err
    by_host = {h["host"]: h for h in doc["hosts"]}
    assert by_host[fleet.special["refused"]]["error"]["kind"] == "unreachable"
    assert by_host[fleet.special["refused"]]["samples"] is None
    for address in hosts.split(","):
        host = by_host[address]
        assert host["ok"], host["error"]
        assert len(host["samples"]) == 2  # since-boot row dropped
        for sample in host["samples"]:
            assert sum(sample[c] for c in ("us", "sy", "id", "wa", "st")) in range(97, 104)
        assert host["summary"]["samples"] == 2
        assert 0 < host["mem_used_kib"] < host["mem_total_kib"]
        assert host["load"] is not None and len(host["load"]) == 3
        assert host["cpus"] == os.cpu_count()
    assert doc["samples"] == 2 and doc["interval_s"] == 1


def test_sys_status_table_and_timeout_sized_from_samples(fleet, gpu_fleet):
    started = time.monotonic()
    code, out, err = cli("sys-status", "--roles-file", str(gpu_fleet), "-H", "127.0.1.1",
                         "--samples", "3", "--interval", "1")
    assert code == 0, err
    assert time.monotonic() - started >= 3  # three 1 s intervals really ran
    header = next(line for line in out.splitlines() if "load 1/5/15" in line)
    for column in ("r", "b", "free", "si", "so", "us", "sy", "id", "wa", "st"):
        assert f" {column} " in header
    # ok, or warn when this shared machine's load per CPU is in the red band right now.
    assert any(line.startswith("│127.0.1.1 ") and (" ok " in line or " warn " in line)
               for line in out.splitlines())
    # A timeout shorter than the sampling itself ends as command-timeout.
    code, out, err = cli("sys-status", "--roles-file", str(gpu_fleet), "-H", "127.0.1.1",
                         "--samples", "3", "--interval", "1", "--timeout", "1", "--json")
    assert code == 1
    assert json.loads(out)["hosts"][0]["error"]["kind"] == "command-timeout"
    assert system.probe(15, 2).timeout == 30 + system.TIMEOUT_MARGIN_S


def test_sys_status_bad_samples_exit_2(gpu_fleet):
    for args in (["--samples", "0"], ["--interval", "x"], ["--samples", "1.5"]):
        code, _, err = cli("sys-status", "--roles-file", str(gpu_fleet), "-H", "127.0.1.1", *args)
        assert code == 2 and "error:" in err, (args, err)


# ---------------------------------------------------------------------------
# service-status
# ---------------------------------------------------------------------------

# On a loopback fleet every "host" shares one process table. This pgrep keeps
# only the processes started through that host's sshd (their environment holds
# the host's CLUSTER_SIM_ROOT), so each host sees only its own processes.
HOST_PGREP = """#!/bin/sh
# Real pgrep, minus this wrapper itself (its command line holds the pattern
# too), minus processes of other simulated hosts.
out=$(/usr/bin/pgrep "$@" | grep -vF -- "$0") || exit 1
found=1
for pid in $(printf '%s\\n' "$out" | awk '{print $1}'); do
    if tr '\\0' '\\n' 2>/dev/null </proc/$pid/environ | grep -qx "CLUSTER_SIM_ROOT=$CLUSTER_SIM_ROOT"; then
        printf '%s\\n' "$out" | awk -v p="$pid" '$1 == p'
        found=0
    fi
done
exit $found
"""


def test_service_status_finds_process_on_its_host_only(fleet, gpu_fleet):
    hosts = ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
    fleet.install(hosts, "pgrep", HOST_PGREP)
    marker = f"svc-dummy-{os.getpid()}-{time.monotonic_ns()}"
    with Cluster.from_roles(gpu_fleet) as cluster:
        started = cluster.run(f"setsid sh -c 'sleep 300; :' {shlex.quote(marker)} "
                              "</dev/null >/dev/null 2>&1 & echo $!", hosts="127.0.1.2")
    assert started[0].ok, started[0].error
    pid = int(started[0].stdout.strip())
    try:
        code, out, err = cli("service-status", f"{marker},no-such-service-{marker}",
                             "--roles-file", str(gpu_fleet), "-H", ",".join(hosts), "--json")
        doc = json.loads(out)
        assert code == 1, err  # the second name runs nowhere
        by_host = {h["host"]: h for h in doc["hosts"]}
        for address in hosts:
            assert by_host[address]["services"], by_host[address]
            ours, missing = by_host[address]["services"]
            assert ours["name"] == marker and missing["name"] == f"no-such-service-{marker}"
            assert ours["manager"] == missing["manager"] == "process"  # no systemd here
            assert not missing["active"] and missing["processes"] == []
            assert by_host[address]["error"]["kind"] == "inactive"
            if address == "127.0.1.2":
                assert ours["active"] and [p["pid"] for p in ours["processes"]] == [pid]
                assert ours["processes"][0]["cmdline"].endswith(marker)
            else:
                assert not ours["active"] and ours["processes"] == []
        # Table: one row per host and service.
        code, out, err = cli("service-status", marker, "--roles-file", str(gpu_fleet),
                             "-H", ",".join(hosts))
        assert code == 1, err
        rows = {line.split("│")[1].strip(): line for line in out.splitlines()
                if line.startswith("│127.0.1.")}
        assert "active (1 process)" in rows["127.0.1.2"] and str(pid) in rows["127.0.1.2"]
        assert "inactive (no matching process)" in rows["127.0.1.1"]
    finally:
        os.killpg(pid, 9)  # setsid made it a group leader: the sleep child goes too


def test_service_status_local_does_not_count_the_controller_itself():
    """`-H local`: the inv process (and a wrapper around it) holds the name on its command line."""
    name = f"svc-nowhere-{os.getpid()}-{time.monotonic_ns()}"
    proc = subprocess.run(["timeout", "60", *CLI, "service-status", name, "-H", "local", "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=90)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1, proc.stderr
    (state,) = doc["hosts"][0]["services"]
    assert state["processes"] == [] and not state["active"]
    assert doc["hosts"][0]["error"]["kind"] == "inactive"
