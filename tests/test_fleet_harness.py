"""The loopback fleet harness itself: real sshd on 127.x, special hosts, bookkeeping."""

from __future__ import annotations

import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
import pytest
import yaml

from cluster.hosts import parse_hosts
from cluster.testing import Fleet, FleetError, address_range
from cluster.testing.fleet import count_accepted, known_hosts_name


def connect(fleet: Fleet, address: str) -> paramiko.SSHClient:
    """A paramiko client logged in with the fleet's key (AutoAddPolicy: this file only)."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(address, port=fleet.port, username=fleet.user, key_filename=str(fleet.key_file),
                   look_for_keys=False, allow_agent=False, timeout=15, banner_timeout=15,
                   auth_timeout=15)  # generous: CI machines are shared and loaded
    return client


def run(fleet: Fleet, address: str, command: str) -> tuple[int, str]:
    client = connect(fleet, address)
    try:
        _, stdout, _ = client.exec_command(command, timeout=30)
        out = stdout.read().decode()
        return stdout.channel.recv_exit_status(), out
    finally:
        client.close()


def server_key(address: str, port: int) -> paramiko.PKey:
    with socket.create_connection((address, port), timeout=5) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=15)
            return transport.get_remote_server_key()
        finally:
            transport.close()


def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# ------------------------------------------------------------------ good hosts
def test_every_good_host_logs_in_and_knows_its_address(fleet: Fleet) -> None:
    assert fleet.addresses == [f"127.0.1.{i}" for i in range(1, 9)]
    for address in fleet.addresses:
        code, out = run(fleet, address, "echo $CLUSTER_SIM_HOST; id -un; echo $CLUSTER_SIM_ROOT")
        assert code == 0
        assert out.split() == [address, fleet.user, str(fleet.host_dir(address))]


def test_host_bin_is_first_on_path_for_that_host_only(fleet: Fleet) -> None:
    name = f"probe-{uuid.uuid4().hex[:8]}"
    first, second = fleet.addresses[:2]
    [path] = fleet.install(first, name, "#!/bin/sh\necho stand-in on $CLUSTER_SIM_HOST\n")
    assert run(fleet, first, f"command -v {name}") == (0, f"{path}\n")
    assert run(fleet, first, name) == (0, f"stand-in on {first}\n")
    assert run(fleet, second, f"command -v {name}")[0] == 1


def test_host_bin_shadows_system_tools(fleet: Fleet) -> None:
    address = fleet.addresses[2]
    fleet.install(address, "uname", "#!/bin/sh\necho fake-uname\n")
    assert run(fleet, address, "uname") == (0, "fake-uname\n")
    assert run(fleet, fleet.addresses[3], "uname")[1].strip() == "Linux"


@pytest.mark.skipif(os.geteuid() != 0, reason="the ~/.profile hook is only for clustertest")
def test_login_shell_keeps_host_bin_first(fleet: Fleet) -> None:
    name = f"probe-{uuid.uuid4().hex[:8]}"
    [path] = fleet.install(fleet.addresses[1], name, "#!/bin/sh\necho hi\n")
    assert run(fleet, fleet.addresses[1], f"bash -lc 'command -v {name}'") == (0, f"{path}\n")


def test_each_sshd_has_its_own_host_key(fleet: Fleet) -> None:
    keys = [server_key(a, fleet.port).get_base64() for a in fleet.addresses]
    assert len(set(keys)) == len(keys)
    line = fleet.host_key_line(fleet.addresses[0])
    assert line == f"{known_hosts_name(fleet.addresses[0], fleet.port)} ssh-ed25519 {keys[0]}"


def test_connection_count_increments_once_per_connection(fleet: Fleet) -> None:
    address = fleet.addresses[4]
    before = fleet.connection_count(address)
    client = connect(fleet, address)
    for _ in range(3):  # several sessions on one connection still count once
        client.exec_command("true")[1].channel.recv_exit_status()
    client.close()
    assert wait_for(lambda: fleet.connection_count(address) == before + 1)
    run(fleet, address, "true")
    assert wait_for(lambda: fleet.connection_count(address) == before + 2)
    assert fleet.connection_count(fleet.special["denied"]) == 0


def test_roles_file_lists_the_good_hosts_and_ssh_settings(fleet: Fleet) -> None:
    doc = yaml.safe_load(fleet.roles_file.read_text())
    assert doc["ssh"] == {"user": fleet.user, "port": fleet.port,
                          "key_filename": str(fleet.key_file),
                          "known_hosts": str(fleet.known_hosts),
                          "host_key_policy": "accept-new", "connect_timeout": 5,
                          "ssh_config": str(fleet.ssh_config)}
    assert fleet.ssh_config.read_text() == ""  # the machine's ssh_config stays out of tests
    assert [h.hostname for h in parse_hosts(doc["roles"]["all"])] == fleet.addresses


def test_write_roles_merges_extra_sections(fleet: Fleet, tmp_path: Path) -> None:
    path = fleet.write_roles(tmp_path / "r.yaml",
                             {"prefill": fleet.addresses[0], "decode": fleet.addresses[1:3]},
                             extra={"serving": {"model": "m"}, "ssh": {"connect_timeout": 2}})
    doc = yaml.safe_load(path.read_text())
    assert doc["roles"] == {"prefill": "127.0.1.1", "decode": ["127.0.1.2", "127.0.1.3"]}
    assert doc["serving"] == {"model": "m"}
    assert doc["ssh"]["connect_timeout"] == 2 and doc["ssh"]["user"] == fleet.user


# --------------------------------------------------------------- special hosts
def test_refused_host_refuses(fleet: Fleet) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((fleet.special["refused"], fleet.port), timeout=2).close()


def test_tarpit_accepts_but_sends_no_banner(fleet: Fleet) -> None:
    with socket.create_connection((fleet.special["tarpit"], fleet.port), timeout=2) as sock:
        sock.settimeout(1.0)
        with pytest.raises(socket.timeout):
            sock.recv(1)


def test_denied_host_rejects_our_key(fleet: Fleet) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        connect(fleet, fleet.special["denied"])


def test_badkey_host_key_differs_from_known_hosts(fleet: Fleet) -> None:
    address = fleet.special["badkey"]
    recorded = paramiko.HostKeys(str(fleet.known_hosts)).lookup(
        known_hosts_name(address, fleet.port))
    assert recorded is not None, "known_hosts should be pre-seeded for the badkey host"
    real = server_key(address, fleet.port)
    assert recorded["ssh-ed25519"].get_base64() != real.get_base64()
    # ... and the real key is what host_key_line reports, so tests can fix it up.
    assert fleet.host_key_line(address).endswith(real.get_base64())


def test_write_known_hosts_gives_a_pristine_or_fully_known_file(fleet: Fleet,
                                                                 tmp_path: Path) -> None:
    good = fleet.addresses[:2]
    path = fleet.write_known_hosts(tmp_path / "kh", good)
    keys = paramiko.HostKeys(str(path))
    badkey = known_hosts_name(fleet.special["badkey"], fleet.port)
    assert set(keys.keys()) == {badkey} | {known_hosts_name(a, fleet.port) for a in good}
    for address in good:
        recorded = keys.lookup(known_hosts_name(address, fleet.port))["ssh-ed25519"]
        assert recorded.get_base64() == server_key(address, fleet.port).get_base64()
    pristine = paramiko.HostKeys(str(fleet.write_known_hosts(tmp_path / "kh0")))
    assert set(pristine.keys()) == {badkey}


# ------------------------------------------------------------ other fleets
@pytest.mark.fleet
def test_shared_sshd_serves_forty_hosts(tmp_path: Path) -> None:
    with Fleet(tmp_path / "f40", count=40, base="127.1.0.", specials=False,
               hosts_per_sshd=16) as big:
        assert big.addresses == address_range("127.1.0.", 1, 40)
        assert len(big.sshd_pids) == 3  # 16 + 16 + 8
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(lambda a: run(big, a, "echo $CLUSTER_SIM_HOST"),
                                    big.addresses))
        assert answers == [(0, f"{a}\n") for a in big.addresses]
        # Counting works even though one sshd log holds 16 hosts. sshd may write
        # the "Accepted" line after the session's output reached us: wait for it.
        assert wait_for(lambda: all(big.connection_count(a) == 1 for a in big.addresses))


@pytest.mark.fleet
def test_stop_kills_everything_and_is_idempotent(tmp_path: Path) -> None:
    small = Fleet(tmp_path / "small", count=2, base="127.0.3.", special_base="127.0.4.")
    small.start()
    pids, port = small.sshd_pids, small.port
    # Fresh known_hosts: only the deliberately wrong key of the badkey host.
    assert list(paramiko.HostKeys(str(small.known_hosts)).keys()) == [
        known_hosts_name(small.special["badkey"], port)]
    client = connect(small, small.addresses[0])  # an open connection must not survive
    leftovers = ("sleep 300 >/dev/null 2>&1 & echo $!; "
                 "setsid sleep 301 </dev/null >/dev/null 2>&1 & echo $!")
    session_pids = [int(p) for p in client.exec_command(leftovers, timeout=10)[1].read().split()]
    assert all(_alive(pid) for pid in session_pids)
    small.stop()
    small.stop()
    assert small.sshd_pids == []
    assert all(not _alive(pid) for pid in pids)
    # Background and setsid'd leftovers of the fleet's sessions are swept (dedicated user only).
    if small.user == "clustertest":
        assert wait_for(lambda: not any(_alive(pid) for pid in session_pids))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((small.addresses[0], port), timeout=2).close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((small.special["tarpit"], port), timeout=2).close()
    client.close()


@pytest.mark.fleet
def test_port_taken_by_another_process_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.3.9", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        busy = Fleet(tmp_path / "busy", count=1, base="127.0.3.", start=9, port=port,
                     specials=False)
        with pytest.raises(FleetError, match="already in use"):
            busy.start()
        busy.stop()  # after a failed start: still fine
        assert busy.sshd_pids == []


def test_missing_sshd_says_how_to_install(tmp_path: Path) -> None:
    install = "OpenSSH server not found: apt-get install openssh-server"
    with pytest.raises(FleetError, match=install):
        Fleet(tmp_path, sshd_path=tmp_path / "no-sshd").start()


@pytest.mark.skipif(os.geteuid() != 0, reason="only the dedicated clustertest user is swept")
def test_kill_user_processes_sweeps_leftover_servers(fleet: Fleet) -> None:
    address = fleet.addresses[5]
    code, out = run(fleet, address,
                    "setsid nohup sleep 300 >/dev/null 2>&1 < /dev/null & echo $!")
    pid = int(out)
    assert code == 0 and _alive(pid)
    killed = fleet.kill_user_processes()
    assert pid in killed
    assert wait_for(lambda: not _alive(pid))


def test_the_sweep_looks_again_at_a_process_caught_mid_exec(monkeypatch) -> None:
    # `setsid nohup sleep 300 &` execs three times; a sweep at that moment read an empty
    # environment, found "no victim" and stopped (CI: the sleep survived the sweep).
    from cluster.testing import fleet as fleet_module

    answers = iter([None, True])
    signalled: list[int] = []
    monkeypatch.setattr(fleet_module, "_pids_of", lambda uid: [4242])
    monkeypatch.setattr(fleet_module, "_has_sim_root", lambda pid, marker: next(answers, False))
    monkeypatch.setattr(fleet_module, "_signal", lambda pid, sig: signalled.append(pid))
    assert fleet_module.kill_processes_of(1001, "/fleet/hosts/") == [4242]
    assert signalled == [4242]


def test_a_zombie_or_a_live_process_is_told_apart_from_one_mid_exec() -> None:
    from cluster.testing.fleet import _has_sim_root

    marker = "/nonexistent-fleet/hosts/"
    assert _has_sim_root(os.getpid(), marker) is False  # readable, not under the marker
    assert _has_sim_root(2 ** 22 + 1, marker) is False  # no such process
    import subprocess

    child = subprocess.Popen(["true"])  # not reaped yet: a zombie once it exits
    try:
        stat = Path(f"/proc/{child.pid}/stat")
        assert wait_for(lambda: stat.read_text().rpartition(")")[2].split()[0] == "Z")
        assert _has_sim_root(child.pid, marker) is False  # empty environment, but nothing to wait for
    finally:
        child.wait()


# ------------------------------------------------------------------ pure parts
def test_address_range_skips_network_and_broadcast_octets() -> None:
    assert address_range("127.1.0.", 253, 4) == ["127.1.0.253", "127.1.0.254",
                                                 "127.1.1.1", "127.1.1.2"]
    with pytest.raises(FleetError, match="not loopback"):
        address_range("10.8.0.", 81, 1)


def test_count_accepted_ties_accepts_to_local_addresses() -> None:
    log = "\n".join([
        'Connection from 127.0.0.1 port 5000 on 127.1.0.1 port 22 rdomain ""',
        'Connection from 127.0.0.1 port 5001 on 127.1.0.2 port 22 rdomain ""',
        "Accepted publickey for u from 127.0.0.1 port 5001 ssh2: ED25519 SHA256:x",
        "Accepted publickey for u from 127.0.0.1 port 5000 ssh2: ED25519 SHA256:x",
        'Connection from 127.0.0.1 port 5000 on 127.1.0.2 port 22 rdomain ""',
        "Accepted publickey for u from 127.0.0.1 port 5000 ssh2: ED25519 SHA256:x",
        'Connection from 127.0.0.1 port 5002 on 127.1.0.3 port 22 rdomain ""',
        "Connection closed by authenticating user u 127.0.0.1 port 5002 [preauth]",
    ])
    assert count_accepted(log) == {"127.1.0.1": 1, "127.1.0.2": 2}


def test_count_accepted_when_two_live_connections_share_a_source_port() -> None:
    # Linux picks source ports per destination: two live connections from
    # 127.0.0.1 to different local addresses can both use port 5000.
    log = "\n".join([
        'Connection from 127.0.0.1 port 5000 on 127.1.0.5 port 22 rdomain ""',
        'Connection from 127.0.0.1 port 5000 on 127.1.0.7 port 22 rdomain ""',
        "Accepted publickey for u from 127.0.0.1 port 5000 ssh2: ED25519 SHA256:x",
        "Accepted publickey for u from 127.0.0.1 port 5000 ssh2: ED25519 SHA256:x",
        'Connection from 127.0.0.1 port 5000 on 127.1.0.9 port 22 rdomain ""',
        "Accepted publickey for u from 127.0.0.1 port 5000 ssh2: ED25519 SHA256:x",
    ])
    assert count_accepted(log) == {"127.1.0.5": 1, "127.1.0.7": 1, "127.1.0.9": 1}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
