"""Engine behaviour added for speed and scale (docs/performance.md).

Pure parts: the indexed known_hosts lookup agrees with paramiko's, lazy
entries, incremental re-reads of a known_hosts file other processes append
to, the lean Connection never writing the shared config, the transport
factory and the handshake deadline. One fleet test: many hosts in one call
with a small fanout, every host accounted for, threads bounded by the fanout,
no connection kept after a one-shot call. Timings live in benchmarks/fanout.py.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paramiko
import pytest

from cluster.connect import _can_send_now
from cluster.hostkeys import (
    HostKeyChanged,
    HostKeyStore,
    HostKeyTarget,
    IndexedHostKeys,
    load_tolerant,
    parse_known_hosts,
)
from cluster.hosts import Host
from cluster.inventory import SSHSettings
from cluster.result import build_report
from cluster.ssh import (
    IDLE_POLL_S,
    PREFERRED_CIPHERS,
    Engine,
    HopTransport,
    LeanConnection,
    LeanPacketizer,
    make_transport,
)
from cluster.testing import Fleet


def new_key() -> paramiko.PKey:
    return paramiko.ECDSAKey.generate()


def ed25519_line(name: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{name} {public}\n"


def known_hosts_text() -> str:
    """Plain, multi-name, hashed, two key types for one host, and lines paramiko skips."""
    hashed_name = paramiko.HostKeys.hash_host("10.8.0.83")
    lines = [
        "# comment\n",
        ed25519_line("10.8.0.81"),
        f"10.8.0.81 ecdsa-sha2-nistp256 {new_key().get_base64()}\n",
        ed25519_line("[10.8.0.82]:2222,gpu02"),
        ed25519_line(hashed_name),
        "@cert-authority *.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\n",
        "10.8.0.84 ssh-ed25519 not-base64!\n",
        "|1|abc=|def= ssh-ed25519 bm90LWEta2V5\n",  # bad salt and bad key material
        ed25519_line("10.8.0.81"),  # a second entry for the same name and type
    ]
    return "".join(lines)


NAMES = ["10.8.0.81", "[10.8.0.82]:2222", "gpu02", "10.8.0.82", "10.8.0.83", "10.8.0.84",
         "*.example.com", "unknown"]


def as_comparable(found) -> list[tuple[str, str]] | None:
    if found is None:
        return None
    return [(name, found[name].get_base64()) for name in found.keys()]


def test_indexed_lookup_agrees_with_paramiko(tmp_path: Path):
    path = tmp_path / "known_hosts"
    path.write_text(known_hosts_text())
    reference = paramiko.HostKeys()
    for line in path.read_text().splitlines():  # paramiko's own parser, tolerant like ours
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
        except Exception:
            continue
        if entry is not None and not line.startswith("#"):
            reference._entries.append(entry)
    indexed = load_tolerant(path)
    assert isinstance(indexed, IndexedHostKeys)
    for name in NAMES:
        if name == "10.8.0.83":
            # paramiko's scan would also try the bad-salt line and raise; ours skips it.
            good = paramiko.HostKeys()
            good._entries = [e for e in reference._entries if "|1|abc=|def=" not in e.hostnames]
            assert as_comparable(indexed.lookup(name)) == as_comparable(good.lookup(name))
            assert indexed.lookup(name) is not None
            continue
        assert as_comparable(indexed.lookup(name)) == as_comparable(reference.lookup(name)), name
    # SSHClient.connect indexes keys(): it must be a list, in file order.
    assert indexed.lookup("10.8.0.81").keys()[:2] == ["ssh-ed25519", "ecdsa-sha2-nistp256"]


def test_index_follows_added_and_replaced_entries():
    keys = IndexedHostKeys()
    assert keys.lookup("h1") is None
    first, second, third = new_key(), new_key(), new_key()
    keys.add("h1", first.get_name(), first)
    assert keys.lookup("h1")[first.get_name()] == first
    keys.add("h1", second.get_name(), second)  # same host and type: replaced, not appended
    assert len(keys._entries) == 1 and keys.lookup("h1")[second.get_name()] == second
    keys["h2"] = {third.get_name(): third}  # paramiko's HostKeys.__setitem__ appends
    assert keys.lookup("h2")[third.get_name()] == third
    keys.clear()  # a new entries list: the index starts over
    assert keys.lookup("h1") is None and keys.lookup("h2") is None


def test_lazy_entries_build_keys_only_when_looked_up():
    lines = [ed25519_line(f"10.0.0.{i}") for i in range(1, 201)]
    entries = parse_known_hosts(lines)
    assert len(entries) == 200

    def built() -> int:  # entries whose key object exists (read without triggering a build)
        return sum(isinstance(e.__dict__["_key"], paramiko.PKey) for e in entries)

    assert built() == 0
    keys = IndexedHostKeys()
    keys._entries.extend(entries)
    found = keys.lookup("10.0.0.7")
    assert found is not None and isinstance(found["ssh-ed25519"], paramiko.Ed25519Key)
    assert built() == 1


def test_unreadable_key_material_is_skipped_like_the_eager_loader(tmp_path: Path):
    path = tmp_path / "known_hosts"
    path.write_text("h1 ssh-ed25519 bm90LWEta2V5\n" + ed25519_line("h2"))
    keys = load_tolerant(path)
    assert keys.lookup("h1") is None
    assert keys.lookup("h2") is not None


def hop(path: Path, name: str) -> HostKeyTarget:
    return HostKeyTarget(name, 22, user_files=(str(path),), global_files=())


def test_store_reads_only_what_other_writers_appended(tmp_path: Path):
    path = tmp_path / "known_hosts"
    path.write_text(ed25519_line("h0"))
    store = HostKeyStore()
    store.file(path).refresh()
    key = new_key()
    # Another process records h1 after we loaded: we must honour its entry...
    with open(path, "a") as handle:
        handle.write(f"h1 {key.get_name()} {key.get_base64()}\n")
    store.check(hop(path, "h1"), key)
    assert path.read_text().count("h1 ") == 1
    # ...and refuse a different key for a host it recorded.
    other = new_key()
    with open(path, "a") as handle:
        handle.write(f"h2 {other.get_name()} {other.get_base64()}\n")
    with pytest.raises(HostKeyChanged):
        store.check(hop(path, "h2"), new_key())
    # Only appended bytes are parsed: the entries read before are the same objects.
    keys = store.file(path).keys
    before = list(keys._entries)
    store.check(hop(path, "h3"), new_key())
    assert keys._entries[:len(before)] == before and all(a is b for a, b in zip(keys._entries, before))
    for name in ("h0", "h1", "h2", "h3"):
        assert keys.lookup(name) is not None, name


def test_store_reloads_a_rewritten_file(tmp_path: Path):
    path = tmp_path / "known_hosts"
    old = new_key()
    path.write_text(f"h1 {old.get_name()} {old.get_base64()}\n")
    store = HostKeyStore()
    shared = store.file(path).refresh()  # what every check of the engine reads
    new = new_key()
    replacement = tmp_path / "known_hosts.new"  # `ssh-keygen -R` style: a new file
    replacement.write_text(f"h1 {new.get_name()} {new.get_base64()}\n")
    replacement.replace(path)
    store.check(hop(path, "h9"), new_key())
    assert store.file(path).keys is shared
    assert shared.lookup("h1")[new.get_name()] == new


def test_lean_connection_never_writes_the_shared_config():
    engine = Engine(SSHSettings(known_hosts="/nonexistent/known_hosts", user="u", port=2222))
    connections = [engine.make_connection(Host(f"10.8.0.{i}")) for i in range(1, 6)]
    assert all(isinstance(c, LeanConnection) for c in connections)
    # A plain fabric.Connection records {'inline_ssh_env': True} here, from every thread.
    assert engine.config._modifications == {}
    # The root config is still a root (no _root/_keypath) and reads as before.
    assert not hasattr(engine.config, "_root") and not hasattr(engine.config, "_keypath")
    assert engine.config.timeouts.connect == 10.0 and engine.config.run.hide is True
    connection = connections[0]
    assert (connection.host, connection.user, connection.port) == ("10.8.0.1", "u", 2222)
    assert connection.inline_ssh_env is engine.config.inline_ssh_env
    # The transport factory is make_transport plus this hop's host-key preferences.
    factory = connection.connect_kwargs["transport_factory"]
    assert isinstance(factory, HopTransport) and factory.store is engine.host_keys
    assert (factory.target.hostname, factory.target.port) == ("10.8.0.1", 2222)
    assert factory.target.user_files == ("/nonexistent/known_hosts",)


def test_transport_factory_sets_nodelay_and_prefers_aead():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        transport = make_transport(client)
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        ciphers = transport.get_security_options().ciphers
        assert ciphers[:len(PREFERRED_CIPHERS)] == PREFERRED_CIPHERS
        assert set(ciphers) == set(paramiko.Transport._preferred_ciphers)  # nothing dropped
        assert isinstance(transport.packetizer, LeanPacketizer)
        # The algorithm lists read as paramiko's own filter gives them, disabled ones or not.
        for kind in ("ciphers", "macs", "keys", "kex", "compression", "pubkeys"):
            assert transport._filter_algorithm(kind) == paramiko.Transport._filter_algorithm(transport, kind)
        limited = make_transport(client, {"ciphers": ["aes128-gcm@openssh.com"], "kex": ["ecdh-sha2-nistp256"]})
        assert "aes128-gcm@openssh.com" not in limited.preferred_ciphers
        assert "ecdh-sha2-nistp256" not in limited.preferred_kex and limited.preferred_kex
    finally:
        for sock in (client, accepted, server):
            sock.close()


def test_hop_transport_is_make_transport_plus_the_hosts_key_order(tmp_path: Path):
    path = tmp_path / "known_hosts"
    path.write_text(f"[127.0.0.1]:2222 ecdsa-sha2-nistp256 {new_key().get_base64()}\n")
    factory = HopTransport(HostKeyStore(), HostKeyTarget("127.0.0.1", 2222, user_files=(str(path),)))
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        transport = factory(client)
        assert isinstance(transport.packetizer, LeanPacketizer)
        assert transport.get_security_options().ciphers[:len(PREFERRED_CIPHERS)] == PREFERRED_CIPHERS
        assert transport.get_security_options().key_types[0] == "ecdsa-sha2-nistp256"
    finally:
        for sock in (client, accepted, server):
            sock.close()


def test_handshake_deadline_times_out_without_a_timer_thread():
    left, right = socket.socketpair()
    try:
        packetizer = LeanPacketizer(left)
        threads = threading.active_count()
        packetizer.start_handshake(0.05)
        assert threading.active_count() == threads
        assert not packetizer.handshake_timed_out()
        time.sleep(0.08)
        assert packetizer.handshake_timed_out()
        packetizer.complete_handshake()
        assert not packetizer.handshake_timed_out()
    finally:
        left.close()
        right.close()


class CountingSocket(socket.socket):
    """A socket that counts its ``recv`` calls (a packetizer only reads through ``recv``)."""

    recvs = 0

    def recv(self, size: int, *flags: int) -> bytes:
        type(self).recvs += 1
        return super().recv(size, *flags)


def test_packet_reads_take_what_one_recv_brought():
    left, right = socket.socketpair()
    sock = CountingSocket(fileno=left.detach())
    try:
        CountingSocket.recvs = 0
        packetizer = LeanPacketizer(sock)
        packetizer._Packetizer__remainder = b"after-banner"  # what readline() read too far
        right.sendall(b"A" * 16 + b"B" * 100 + b"C" * 16 + b"D" * 40)
        assert packetizer.read_all(4) == b"afte"
        assert packetizer.read_all(20) == b"r-banner" + b"A" * 12
        assert packetizer.read_all(104) == b"A" * 4 + b"B" * 100
        assert packetizer.read_all(56) == b"C" * 16 + b"D" * 40
        assert CountingSocket.recvs == 1  # paramiko: one per read_all, four here
        right.sendall(b"E" * 10)
        right.sendall(b"F" * 10)
        assert packetizer.read_all(20) == b"E" * 10 + b"F" * 10  # however the bytes arrive
    finally:
        sock.close()
        right.close()


class ExactPipe:
    """A ProxyCommand stand-in: like paramiko's, it would wait for every byte asked for."""

    def __init__(self, data: bytes) -> None:
        self.data, self.asked = data, []

    def recv(self, size: int) -> bytes:
        self.asked.append(size)
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk

    def settimeout(self, timeout: float) -> None:
        pass


def test_a_proxy_command_is_read_exactly_what_is_needed():
    pipe = ExactPipe(b"x" * 16 + b"y" * 48)
    packetizer = LeanPacketizer(pipe)
    assert packetizer.read_all(16) == b"x" * 16
    assert packetizer.read_all(48) == b"y" * 48
    assert pipe.asked == [16, 48]


def test_a_silent_read_ends_when_closed_and_signals_a_rekey_only_between_packets():
    left, right = socket.socketpair()
    left.settimeout(0.05)
    try:
        packetizer = LeanPacketizer(left)
        packetizer._Packetizer__need_rekey = True
        with pytest.raises(paramiko.packet.NeedRekeyException):
            packetizer.read_all(16, check_rekey=True)  # nothing read yet: rekey first
        right.sendall(b"z" * 8)
        packetizer.close()  # while half a block is read: EOF, not a rekey
        with pytest.raises(EOFError):
            packetizer.read_all(16, check_rekey=True)
    finally:
        left.close()
        right.close()


def settled(baseline: int, within: float = 10.0) -> bool:
    """True once this process is back to ``baseline`` threads (exiting ones may lag)."""
    deadline = time.monotonic() + within
    while threading.active_count() > baseline:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def wide_fleet(tmp_path_factory):
    """160 hosts on 127.0.6.x served by 10 sshd processes."""
    with Fleet(tmp_path_factory.mktemp("wide"), count=160, base="127.0.6.", specials=False,
               hosts_per_sshd=16) as running:
        yield running


def test_many_hosts_small_fanout_all_accounted_threads_bounded(wide_fleet, tmp_path):
    fanout = 8
    settings = SSHSettings(user=wide_fleet.user, port=wide_fleet.port,
                           key_filename=str(wide_fleet.key_file),
                           known_hosts=str(tmp_path / "known_hosts"), fanout=fanout,
                           connect_timeout=30)
    hosts = [Host(a) for a in wide_fleet.addresses]
    baseline = threading.active_count()
    peak = [baseline]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], threading.active_count())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with Engine(settings) as engine:
            report = build_report(engine.run(hosts, "echo $CLUSTER_SIM_HOST"), engine)
            # One-shot call: no connection object kept per host afterwards.
            kept = [s for s in engine._sessions.values() if s._connection is not None]
    finally:
        done.set()
        watcher.join()
    assert [o.host for o in report] == hosts
    assert report.all_ok, [(str(o.host), o.error) for o in report.failed][:3]
    assert [o.stdout.strip() for o in report] == wide_fleet.addresses
    # Per host in flight: a worker and a paramiko transport thread, plus the watcher;
    # some slack for a transport thread still exiting on a loaded machine. Unbounded
    # would be one thread per host (160+).
    assert peak[0] - baseline <= 3 * fanout, (baseline, peak[0])
    assert kept == []
    assert settled(baseline)
    assert len(load_tolerant(tmp_path / "known_hosts")._entries) == len(hosts)


def test_open_connections_poll_slowly_and_close_promptly(wide_fleet, tmp_path):
    settings = SSHSettings(user=wide_fleet.user, port=wide_fleet.port,
                           key_filename=str(wide_fleet.key_file),
                           known_hosts=str(tmp_path / "known_hosts"), connect_timeout=30)
    hosts = [Host(a) for a in wide_fleet.addresses[:8]]
    baseline = threading.active_count()
    engine = Engine(settings)
    try:
        first = build_report(engine.run(hosts, "true", keep_open=True), engine)
        assert first.all_ok
        transports = [engine.session(h).connection.client.get_transport() for h in hosts]
        assert all(t.is_active() for t in transports)
        # Idle transport threads wake once a second, not ten times.
        assert {t.sock.gettimeout() for t in transports} == {IDLE_POLL_S}
        second = build_report(engine.run(hosts, "echo again", keep_open=True), engine)
        assert [o.stdout for o in second] == ["again\n"] * len(hosts)
        started = time.monotonic()
        engine.close()
        closing = time.monotonic() - started
    finally:
        engine.close()
    # Each close wakes its transport thread at once; waiting out the recv timeout
    # instead would take about IDLE_POLL_S / 2 per host (4 s here).
    assert closing < 0.25 * len(hosts) * IDLE_POLL_S, closing
    assert settled(baseline)
    assert not any(t.is_alive() for t in transports)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_engine_threads_run_batch_and_the_commands_they_start_do_not(fleet, tmp_path):
    # Batch threads do not preempt the thread that wakes them (which holds the GIL);
    # a user's command must not inherit that (a local server would keep it for days).
    settings = SSHSettings(**{**fleet.ssh_settings(), "known_hosts": str(tmp_path / "known_hosts")})
    hosts = [Host(a) for a in fleet.addresses[:2]]
    policy = "import os; print(os.sched_getscheduler(0))"
    runner_policy = []
    engine = Engine(settings)
    try:
        report = build_report(engine.run([*hosts, Host("local")], f"python3 -c '{policy}'",
                                         keep_open=True), engine)
        assert report.all_ok, [o.error for o in report]
        assert {o.stdout for o in report} == {f"{os.SCHED_OTHER}\n"}  # remote and local commands
        transports = [engine.session(h).connection.client.get_transport() for h in hosts]
        assert {os.sched_getscheduler(t.native_id) for t in transports} == {os.SCHED_BATCH}
        engine.call(hosts, lambda session: runner_policy.append(os.sched_getscheduler(0)))
    finally:
        engine.close()
    assert set(runner_policy) == {os.SCHED_BATCH}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's thread is left as it was


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_a_policy_chosen_by_the_user_is_left_alone():
    code = ("import os\nfrom cluster.localrun import batch_this_thread, ordinary_scheduling\n"
            "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
            "batch_this_thread()\nwith ordinary_scheduling():\n    print(os.sched_getscheduler(0))\n"
            "print(os.sched_getscheduler(0))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(os.SCHED_IDLE)] * 2


def test_a_local_command_runs_where_the_policy_cannot_be_read(monkeypatch):
    # A seccomp filter may refuse sched_getscheduler: the command runs all the same.
    from cluster.command import Capture
    from cluster.localrun import run_local

    def refused(pid: int) -> int:
        raise PermissionError("sched_getscheduler: operation not permitted")

    monkeypatch.setattr(os, "sched_getscheduler", refused, raising=False)
    capture = Capture()
    assert run_local("echo ran", Host("local"), capture) == 0
    assert capture.result("echo ran", 0).stdout == "ran\n"


def test_release_lets_the_transport_thread_end_before_its_socket_is_closed(fleet, tmp_path):
    """Closing the socket while the transport thread could still poll it freed a descriptor
    that another host's new connection took at once: that thread then waited IDLE_POLL_S on
    someone else's socket (1 s stalls at 64 hosts) and could have read from it."""
    settings = SSHSettings(**{**fleet.ssh_settings(), "known_hosts": str(tmp_path / "known_hosts")})
    hosts = [Host(a) for a in fleet.addresses[:4]]
    engine = Engine(settings)
    try:
        assert build_report(engine.run(hosts, "true", keep_open=True), engine).all_ok
        seen = []
        for host in hosts:
            connection = engine.session(host).connection
            transport = connection.client.get_transport()
            close = connection.close

            def recording_close(close=close, transport=transport):
                seen.append(transport.is_alive())
                close()

            connection.close = recording_close
            engine.session(host).release()
        assert seen == [False] * len(hosts)
    finally:
        engine.close()


def test_closing_never_waits_on_a_peer_that_stopped_reading(tmp_path):
    """The goodbye (SSH_MSG_DISCONNECT) must not hang a close: here another thread is stuck
    writing to a host whose sshd stopped reading (Ctrl-C during a transfer to a frozen host).
    paramiko's writer holds the connection's write lock and retries until the socket closes."""
    with Fleet(tmp_path / "frozen", count=1, base="127.0.77.", specials=False) as fleet:
        settings = SSHSettings(**{**fleet.ssh_settings(), "known_hosts": str(tmp_path / "known_hosts")})
        engine = Engine(settings)
        frozen: list[int] = []
        try:
            session = engine.session(Host(fleet.addresses[0]))
            session.open()
            transport = session.connection.client.get_transport()
            channel = transport.open_session()
            channel.exec_command("cat >/dev/null")
            transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # full long before the window
            frozen = fleet.session_pids(fleet.addresses[0])
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            writer = threading.Thread(target=_quietly, args=(channel.sendall, b"x" * (8 << 20)), daemon=True)
            writer.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not _send_buffer_full(transport.sock):
                time.sleep(0.05)
            time.sleep(0.5)  # the writer is now retrying inside paramiko, its write lock held
            assert _send_buffer_full(transport.sock) and writer.is_alive()
            closer = threading.Thread(target=session.close, daemon=True)
            started = time.monotonic()
            closer.start()
            closer.join(10)
            assert not closer.is_alive(), "close() hung behind the stuck writer"
            assert time.monotonic() - started < 5
            writer.join(10)
            assert not writer.is_alive()  # the close ended its write too
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
            engine.close()


def test_the_goodbye_check_takes_descriptors_past_fd_setsize():
    # select() refuses descriptors from 1024 up; a run keeping 1,000 connections open has them.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    high = 1500 if hard == resource.RLIM_INFINITY else min(1500, hard - 1)
    if high < 1024:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}: no descriptor past FD_SETSIZE to test with")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, high + 1), hard))
    left, right = socket.socketpair()
    try:
        os.dup2(left.fileno(), high)
        sock = socket.socket(fileno=high)
        try:
            assert _can_send_now(sock)  # room in the buffer: the goodbye may go
        finally:
            sock.close()
        assert not _can_send_now(sock)  # closed: no goodbye, no error
    finally:
        left.close()
        right.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _quietly(call, *args):
    try:
        call(*args)
    except Exception:  # the close ends the write with an error: that is the point
        pass


def _send_buffer_full(sock: socket.socket) -> bool:
    return not _can_send_now(sock)


def test_sshd_debug_messages_are_escaped_only_for_debug_logging(fleet, tmp_path, monkeypatch, caplog):
    import paramiko.util

    escaped = []
    real = paramiko.util.safe_string
    monkeypatch.setattr(paramiko.util, "safe_string", lambda s: escaped.append(s) or real(s))
    settings = SSHSettings(**{**fleet.ssh_settings(), "known_hosts": str(tmp_path / "known_hosts")})
    host = [Host(fleet.addresses[0])]
    engine = Engine(settings)
    try:
        caplog.set_level(logging.WARNING, logger="paramiko")
        assert build_report(engine.run(host, "true"), engine).all_ok
        assert escaped == []
        caplog.set_level(logging.DEBUG, logger="paramiko")
        assert build_report(engine.run(host, "true"), engine).all_ok
    finally:
        engine.close()
    # OpenSSH 8.2+ tells the client the accepted key's authorized_keys options.
    assert any(b"key options" in message for message in escaped)


def test_the_key_offer_is_worked_out_once_for_a_fleet_of_threads(tmp_path, monkeypatch):
    from cluster.keys import KeyRing
    from cluster.testing.fleet import write_keypair

    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    write_keypair(tmp_path / "id_ed25519")
    ring = KeyRing()
    worked = []
    real = ring._candidates
    monkeypatch.setattr(ring, "_candidates", lambda *a: worked.append(1) or real(*a))
    offers = []
    start = threading.Barrier(16)

    def offer():
        start.wait()
        offers.append(ring.candidates([], (str(tmp_path / "id_ed25519"), str(tmp_path / "missing")), (), None, False))

    threads = [threading.Thread(target=offer) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(worked) == 1
    assert len(offers) == 16 and all(o == offers[0] for o in offers)
    assert [c.label for c in offers[0][0]] == [str(tmp_path / "id_ed25519")]
