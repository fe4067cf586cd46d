"""Host keys against real sshd on loopback, with the OpenSSH client as the oracle.

For each case ``ssh -F CONFIG -o BatchMode=yes -o StrictHostKeyChecking=...``
and the library (``check`` / ``keyscan`` through the engine) run on copies of
the same known_hosts files, with the same UserKnownHostsFile,
GlobalKnownHostsFile, HostKeyAlias and HashKnownHosts; they must take the same
decision. After an accept-new the library's file must satisfy ``ssh -o
StrictHostKeyChecking=yes`` and ``ssh-keygen -F NAME -f FILE``.

Until per-host ssh_config resolution fills `HostKeyTarget` (the ssh_config
issue), the engine's ``host_key_target`` is replaced here by one built from
the case, exactly as that resolution will build it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from cluster.checks import check, keyscan
from cluster.hostkeys import HostKeyTarget
from cluster.hosts import Host
from cluster.inventory import SSHSettings
from cluster.result import Outcome
from cluster.ssh import Engine
from cluster.testing import Fleet
from cluster.testing.fleet import SSHD, pick_port, sshd_config, sshd_version, with_death_signal

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------
# Servers: the session-style fleet (one ed25519 key per host) plus sshd
# processes with the host keys and certificates a case needs.
# ---------------------------------------------------------------------------


def keygen(path: Path, kind: str = "ed25519") -> tuple[str, str]:
    """A new key pair at ``path``; returns the public (type, base64)."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    key_type, text = Path(f"{path}.pub").read_text().split()[:2]
    return key_type, text


def certify(ca: Path, host_public: Path, identity: str, *args: str) -> Path:
    """``ssh-keygen -s``: a host certificate for ``host_public``, saved under its own name."""
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", identity, "-h", *args, str(host_public)],
                   check=True, capture_output=True)
    made = Path(str(host_public)[:-len(".pub")] + "-cert.pub")
    target = host_public.with_name(f"{identity}-cert.pub")
    made.replace(target)
    return target


class Sshd:
    """One sshd on loopback addresses with chosen host keys and host certificates."""

    def __init__(self, fleet: Fleet, directory: Path, addresses: list[str], port: int,
                 host_keys: list[Path], certificates: list[Path] = ()) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        config = sshd_config(addresses, port, host_keys[0], fleet.workdir / "keys" / "authorized_keys",
                             {a: {"CLUSTER_SIM_HOST": a} for a in addresses}, sshd_version(SSHD))
        extra = [f"HostKey {k}" for k in host_keys[1:]] + [f"HostCertificate {c}" for c in certificates]
        config = config.replace(f"HostKey {host_keys[0]}\n",
                                "".join(f"{item}\n" for item in [f"HostKey {host_keys[0]}", *extra]))
        (directory / "sshd_config").write_text(config)
        self.log = directory / "log"
        self.log.write_text("")
        self.addresses, self.port = addresses, port
        self.proc = subprocess.Popen(
            with_death_signal([str(SSHD), "-D", "-f", str(directory / "sshd_config"), "-E", str(self.log)]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not all(f"Server listening on {a} port {port}." in self.log.read_text() for a in addresses):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@dataclass
class World:
    fleet: Fleet
    port: int  # of the extra sshd processes
    keys: Path  # host keys, CA and certificates
    multi: list[str]  # two addresses of one sshd with ed25519, ECDSA and RSA host keys
    certified: str  # an sshd presenting a valid host certificate
    expired: str  # an sshd presenting an expired host certificate

    def public(self, name: str) -> str:
        """``type base64`` of a public key file under ``keys``."""
        return " ".join((self.keys / f"{name}.pub").read_text().split()[:2])


@pytest.fixture(scope="module")
def world(fleet_dir):
    base = fleet_dir("hostkeys13")
    with Fleet(base / "fleet", count=3, base="127.0.13.", specials=False) as fleet:
        keys = base / "hostkeys"
        keys.mkdir()
        keygen(keys / "multi_ed25519")
        keygen(keys / "multi_ecdsa", "ecdsa")
        keygen(keys / "multi_rsa", "rsa")
        keygen(keys / "ca")
        keygen(keys / "certified")
        valid = certify(keys / "ca", keys / "certified.pub", "valid", "-n", "127.0.13.30,compute.30")
        expired = certify(keys / "ca", keys / "certified.pub", "expired", "-n", "127.0.13.31",
                          "-V", "20200101:20200102")
        multi, certified, old = ["127.0.13.20", "127.0.13.21"], "127.0.13.30", "127.0.13.31"
        port = pick_port(multi + [certified, old])
        servers = []
        try:
            servers.append(Sshd(fleet, base / "sshd-multi", multi, port,
                                [keys / "multi_ed25519", keys / "multi_ecdsa", keys / "multi_rsa"]))
            servers.append(Sshd(fleet, base / "sshd-cert", [certified], port, [keys / "certified"], [valid]))
            servers.append(Sshd(fleet, base / "sshd-expired", [old], port, [keys / "certified"], [expired]))
            yield World(fleet, port, keys, multi, certified, old)
        finally:
            for server in servers:
                server.stop()


# ---------------------------------------------------------------------------
# One decision by ssh and by the library, on copies of the same files
# ---------------------------------------------------------------------------


@dataclass
class Side:
    """One side's copies of the files."""

    user_files: list[Path]
    global_file: Path

    def text(self) -> str:
        return self.user_files[0].read_text() if self.user_files[0].exists() else ""


@dataclass
class Case:
    """A host as ssh_config and `HostKeyTarget` describe it, and the initial file contents."""

    address: str
    port: int
    alias: str | None = None
    files: tuple[tuple[str, str | None], ...] = (("known_hosts", None),)  # (name, content or absent)
    global_text: str = ""
    hash_new: bool = False

    @property
    def lookup_name(self) -> str:
        return self.alias or f"[{self.address}]:{self.port}"

    def side(self, directory: Path) -> Side:
        directory.mkdir(parents=True)
        paths = []
        for name, text in self.files:
            path = directory / name
            if text is not None:
                path.write_text(text)
            paths.append(path)
        system = directory / "ssh_known_hosts"
        system.write_text(self.global_text)
        return Side(paths, system)

    def ssh_config(self, world: World, side: Side) -> Path:
        fleet = world.fleet
        lines = [
            "Host hk",
            f"  HostName {self.address}",
            f"  Port {self.port}",
            f"  User {fleet.user}",
            f"  IdentityFile {fleet.key_file}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {' '.join(str(p) for p in side.user_files)}",
            f"  GlobalKnownHostsFile {side.global_file}",
            f"  HashKnownHosts {'yes' if self.hash_new else 'no'}",
            "  CheckHostIP no",
            "  UpdateHostKeys no",
            "  BatchMode yes",
            "  ConnectTimeout 10",
        ] + ([f"  HostKeyAlias {self.alias}"] if self.alias else [])
        path = side.global_file.with_name("ssh_config")
        path.write_text("\n".join(lines) + "\n")
        return path

    def target(self, side: Side, policy: str, address: str | None) -> HostKeyTarget:
        return HostKeyTarget(self.address, self.port, alias=self.alias,
                             user_files=tuple(str(p) for p in side.user_files),
                             global_files=(str(side.global_file),), policy=policy,
                             hash_new=self.hash_new, address=address)


def ssh_connects(case: Case, world: World, side: Side, policy: str) -> tuple[bool, str]:
    """The oracle: does ``ssh`` log in (exit 0) under ``policy``? Also its stderr."""
    strict = {"strict": "yes", "accept-new": "accept-new"}[policy]
    proc = subprocess.run(["ssh", "-F", str(case.ssh_config(world, side)), "-o",
                           f"StrictHostKeyChecking={strict}", "hk", "true"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if proc.returncode not in (0, 255):
        raise AssertionError(f"ssh exited {proc.returncode}: {proc.stderr}")
    return proc.returncode == 0, proc.stderr


def engine_for(case: Case, world: World, side: Side, policy: str) -> Engine:
    fleet = world.fleet
    settings = SSHSettings(user=fleet.user, port=case.port, key_filename=str(fleet.key_file),
                           known_hosts=str(side.user_files[0]), host_key_policy=policy, connect_timeout=10)
    engine = Engine(settings)
    # What the ssh_config resolution will build for this hop (HostKeyAlias etc.).
    engine.host_key_target = lambda hostname, port, address=None, config=None: case.target(side, policy, address)
    return engine


def library_check(case: Case, world: World, side: Side, policy: str) -> Outcome:
    """``check`` (connect, host-key check, authenticate, run) through the engine."""
    with engine_for(case, world, side, policy) as engine:
        return check(engine, [Host(case.address)])[0]


def library_keyscan(case: Case, world: World, side: Side, policy: str) -> Outcome:
    with engine_for(case, world, side, policy) as engine:
        return keyscan(engine, [Host(case.address)])[0]


@dataclass
class Decision:
    ssh_ok: bool
    ssh_stderr: str
    outcome: Outcome
    lib: Side
    oracle: Side


def decide(case: Case, world: World, tmp_path: Path, policy: str, how=library_check) -> Decision:
    """ssh and the library on fresh copies of the case's files; both must decide alike."""
    label = f"{policy}-{how.__name__}-{len(list(tmp_path.iterdir()))}"
    oracle, lib = case.side(tmp_path / f"{label}-ssh"), case.side(tmp_path / f"{label}-lib")
    ssh_ok, stderr = ssh_connects(case, world, oracle, policy)
    outcome = how(case, world, lib, policy)
    assert outcome.ok == ssh_ok, (f"ssh {'connects' if ssh_ok else 'refuses'} ({stderr.strip()!r}) "
                                  f"but the library {'connects' if outcome.ok else 'refuses'}: {outcome.error}")
    if not ssh_ok:
        assert "Host key verification failed" in stderr, stderr
        assert outcome.error.kind == "host-key", outcome.error
    return Decision(ssh_ok, stderr, outcome, lib, oracle)


def assert_ssh_accepts_what_we_wrote(case: Case, world: World, decision: Decision) -> None:
    """What the library recorded satisfies strict ssh and ``ssh-keygen -F``."""
    lib = decision.lib
    found = subprocess.run(["ssh-keygen", "-F", case.lookup_name, "-f", str(lib.user_files[0])],
                           capture_output=True, text=True)
    assert found.returncode == 0 and "found: line" in found.stdout, found.stdout
    ok, stderr = ssh_connects(case, world, lib, "strict")
    assert ok, stderr


def real(world: World, address: str) -> str:
    """``type base64`` of the fleet host's real key."""
    return world.fleet.host_key_line(address).split(None, 1)[1]


def other_key() -> str:
    key = paramiko.ECDSAKey.generate()
    return f"{key.get_name()} {key.get_base64()}"


POLICIES = ["accept-new", "strict"]


# ---------------------------------------------------------------------------
# gcloud: UserKnownHostsFile=google_compute_known_hosts, HostKeyAlias=compute.N
# ---------------------------------------------------------------------------


def gcloud(world: World, address: str, alias: str, text: str | None) -> Case:
    return Case(address, world.fleet.port, alias=alias, files=(("google_compute_known_hosts", text),))


@pytest.mark.parametrize("policy", POLICIES)
def test_gcloud_alias_fresh(world, tmp_path, policy):
    case = gcloud(world, world.fleet.addresses[0], "compute.101", None)
    decision = decide(case, world, tmp_path, policy)
    if policy == "accept-new":
        assert decision.ssh_ok
        # The same line ssh wrote: under the alias, in the gcloud file.
        assert decision.lib.text() == decision.oracle.text()
        assert decision.lib.text().startswith("compute.101 ssh-ed25519 ")
        assert_ssh_accepts_what_we_wrote(case, world, decision)
    else:
        assert not decision.ssh_ok and "compute.101" in decision.outcome.error.message
        assert not decision.lib.user_files[0].exists()


def test_gcloud_alias_pinned_is_accepted_under_strict(world, tmp_path):
    address = world.fleet.addresses[0]
    case = gcloud(world, address, "compute.101", f"compute.101 {real(world, address)}\n")
    assert decide(case, world, tmp_path, "strict").ssh_ok


@pytest.mark.parametrize("policy", POLICIES)
def test_gcloud_alias_contradicted_is_refused_with_the_exact_entry(world, tmp_path, policy):
    case = gcloud(world, world.fleet.addresses[0], "compute.101", f"compute.101 {other_key()}\n")
    decision = decide(case, world, tmp_path, policy)
    assert not decision.ssh_ok
    gce = decision.lib.user_files[0]
    assert f"`ssh-keygen -R compute.101 -f {gce}`" in decision.outcome.error.hint
    assert f"{gce}:1" in decision.outcome.error.message
    assert decision.lib.text() == case.files[0][1]  # never replaced


@pytest.mark.parametrize("policy", POLICIES)
def test_gcloud_recycled_address_is_a_new_host_not_a_changed_one(world, tmp_path, policy):
    address = world.fleet.addresses[1]
    old_vm = other_key()  # compute.102 used to live at this address (and once was reached by IP)
    text = f"compute.102 {old_vm}\n[{address}]:{world.fleet.port} {old_vm}\n"
    decision = decide(gcloud(world, address, "compute.103", text), world, tmp_path, policy)
    assert decision.ssh_ok == (policy == "accept-new")
    if decision.ssh_ok:
        assert decision.lib.text() == decision.oracle.text()
        assert_ssh_accepts_what_we_wrote(gcloud(world, address, "compute.103", text), world, decision)


# ---------------------------------------------------------------------------
# Markers, patterns, hashes, several files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_revoked_key_is_refused(world, tmp_path, policy):
    address = world.fleet.addresses[0]
    key = real(world, address)
    for text in (f"[{address}]:{world.fleet.port} {key}\n@revoked * {key}\n", f"@revoked * {key}\n"):
        case = Case(address, world.fleet.port, files=(("known_hosts", text),))
        decision = decide(case, world, tmp_path, policy)
        assert not decision.ssh_ok and "REVOKED" in decision.ssh_stderr
        assert "is revoked" in decision.outcome.error.message
        assert decision.lib.text() == text


def test_wildcard_and_negated_entries(world, tmp_path):
    port = world.port
    key = world.public("multi_ed25519")
    pattern = f"[127.0.13.2?]:{port},![127.0.13.21]:{port} {key}\n"
    first, negated = world.multi
    assert decide(Case(first, port, files=(("known_hosts", pattern),)), world, tmp_path, "strict").ssh_ok
    assert not decide(Case(negated, port, files=(("known_hosts", pattern),)), world, tmp_path,
                      "strict").ssh_ok
    changed = f"[127.0.13.2?]:{port} {other_key()}\n"
    decision = decide(Case(first, port, files=(("known_hosts", changed),)), world, tmp_path, "accept-new")
    assert not decision.ssh_ok and f"pattern '[127.0.13.2?]:{port}'" in decision.outcome.error.hint


def test_hashed_file_is_read(world, tmp_path):
    address = world.fleet.addresses[2]
    plain = tmp_path / "plain"
    plain.write_text(f"# hashed by ssh-keygen -H\n[{address}]:{world.fleet.port} {real(world, address)}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(plain)], check=True, capture_output=True)
    hashed = plain.read_text()
    assert address not in hashed
    assert decide(Case(address, world.fleet.port, files=(("known_hosts", hashed),)), world, tmp_path,
                  "strict").ssh_ok


def test_hash_known_hosts_yes_writes_a_hashed_line_ssh_accepts(world, tmp_path):
    address = world.fleet.addresses[2]
    case = Case(address, world.fleet.port, hash_new=True)
    decision = decide(case, world, tmp_path, "accept-new")
    assert decision.ssh_ok
    written = decision.lib.text()
    assert written.startswith("|1|") and address not in written and len(written.splitlines()) == 1
    assert written.split(" ", 1)[1] == decision.oracle.text().split(" ", 1)[1]  # same key text as ssh's
    assert_ssh_accepts_what_we_wrote(case, world, decision)


def test_every_user_and_global_file_is_read_the_first_is_written(world, tmp_path):
    address = world.fleet.addresses[1]
    name = f"[{address}]:{world.fleet.port}"
    second = Case(address, world.fleet.port,
                  files=(("known_hosts", "# empty\n"), ("known_hosts2", f"{name} {real(world, address)}\n")))
    assert decide(second, world, tmp_path, "strict").ssh_ok
    system = Case(address, world.fleet.port, global_text=f"{name} {real(world, address)}\n")
    assert decide(system, world, tmp_path, "strict").ssh_ok
    contradicted = Case(address, world.fleet.port, global_text=f"{name} {other_key()}\n")
    decision = decide(contradicted, world, tmp_path, "accept-new")
    assert not decision.ssh_ok and str(decision.lib.global_file) in decision.outcome.error.hint


def test_key_under_the_bare_name_is_accepted_on_another_port(world, tmp_path):
    address = world.fleet.addresses[1]
    case = Case(address, world.fleet.port, files=(("known_hosts", f"{address} {real(world, address)}\n"),))
    assert decide(case, world, tmp_path, "strict").ssh_ok


def test_non_22_port_hints_name_the_bracketed_entry(world, tmp_path):
    address = world.fleet.addresses[0]
    name = f"[{address}]:{world.fleet.port}"
    case = Case(address, world.fleet.port, files=(("known_hosts", f"{name} {other_key()}\n"),))
    decision = decide(case, world, tmp_path, "accept-new")
    assert f"`ssh-keygen -R '{name}' -f {decision.lib.user_files[0]}`" in decision.outcome.error.hint
    decision = decide(Case(address, world.fleet.port), world, tmp_path, "strict")
    assert name in decision.outcome.error.message
    assert decision.outcome.error.hint.endswith(f"`inv keyscan --policy accept-new -H {address}`")


# ---------------------------------------------------------------------------
# All key types of a host: pinned by ECDSA, the server also has ed25519
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", [library_check, library_keyscan])
@pytest.mark.parametrize("pinned, key_type", [("multi_ecdsa", "ecdsa-sha2-nistp256"), ("multi_rsa", "ssh-rsa")])
def test_pin_of_another_type_on_an_ed25519_capable_server_is_not_changed(world, tmp_path, how, pinned,
                                                                         key_type):
    address = world.multi[0]
    name = f"[{address}]:{world.port}"
    case = Case(address, world.port, files=(("known_hosts", f"{name} {world.public(pinned)}\n"),))
    decision = decide(case, world, tmp_path, "strict", how)
    assert decision.ssh_ok
    if how is library_keyscan:
        info = decision.outcome.data
        assert (info.status, info.key_type, info.entry) == ("known", key_type, name)
    contradicted = Case(address, world.port, files=(("known_hosts", f"{name} {other_key()}\n"),))
    assert not decide(contradicted, world, tmp_path, "accept-new", how).ssh_ok


# ---------------------------------------------------------------------------
# @cert-authority and host certificates (ssh-keygen -s, sshd HostCertificate)
# ---------------------------------------------------------------------------


def ca_case(world: World, address: str, alias: str | None = None, names: str = "*") -> Case:
    return Case(address, world.port, alias=alias,
                files=(("known_hosts", f"@cert-authority {names} {world.public('ca')}\n"),))


@pytest.mark.parametrize("how", [library_check, library_keyscan])
def test_valid_host_certificate_is_trusted_under_strict(world, tmp_path, how):
    for alias in (None, "compute.30"):
        decision = decide(ca_case(world, world.certified, alias), world, tmp_path, "strict", how)
        assert decision.ssh_ok
        assert decision.lib.text() == decision.oracle.text()  # nothing recorded
        if how is library_keyscan:
            info = decision.outcome.data
            assert (info.status, info.key_type) == ("certified", "ssh-ed25519-cert-v01@openssh.com")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("which", ["wrong-principal", "expired", "ca-for-other-names"])
def test_untrusted_host_certificate_decides_like_ssh(world, tmp_path, policy, which):
    case = {
        "wrong-principal": ca_case(world, world.certified, alias="compute.31"),
        "expired": ca_case(world, world.expired),
        "ca-for-other-names": ca_case(world, world.certified, names="*.example.com"),
    }[which]
    decision = decide(case, world, tmp_path, policy)
    if policy == "strict":
        assert not decision.ssh_ok
        if which != "ca-for-other-names":
            reason = {"wrong-principal": "not a listed principal", "expired": "expired"}[which]
            assert reason in decision.ssh_stderr and reason in decision.outcome.error.message
    elif decision.ssh_ok:  # ssh trusts the plain key on first use: so do we, with the same line
        assert decision.lib.text() == decision.oracle.text()
        assert_ssh_accepts_what_we_wrote(case, world, decision)


def test_revoked_ca_refuses_its_certificates(world, tmp_path):
    case = Case(world.certified, world.port, files=(("known_hosts", (
        f"@cert-authority * {world.public('ca')}\n@revoked * {world.public('ca')}\n")),))
    decision = decide(case, world, tmp_path, "accept-new")
    assert not decision.ssh_ok and "CA key of its certificate" in decision.outcome.error.message


# ---------------------------------------------------------------------------
# Concurrent accept-new from three processes on 50 new hosts
# ---------------------------------------------------------------------------


def test_three_processes_record_fifty_new_hosts_once_each(fleet_dir, tmp_path):
    with Fleet(fleet_dir("hk13-50"), count=50, base="127.0.113.", specials=False,
               hosts_per_sshd=16) as fleet:
        known = tmp_path / "known_hosts"
        known.write_text("# mine\n")
        roles = fleet.write_roles(tmp_path / "roles.yaml", {"all": fleet.addresses},
                                  extra={"ssh": {"known_hosts": str(known), "connect_timeout": 30}})
        commands = [["keyscan"], ["keyscan"], ["run", "true"]]
        procs = [subprocess.Popen([sys.executable, "-m", "cluster_cli", *argv, "--roles-file", str(roles),
                                   "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=REPO, env={**os.environ}) for argv in commands]
        results = [proc.communicate(timeout=300) for proc in procs]
        docs = [json.loads(out) for out, _ in results]
        assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in results]
        lines = known.read_text().splitlines()
        assert lines[0] == "# mine" and len(lines) == 51
        names = [line.split()[0] for line in lines[1:]]
        expected = {f"[{a}]:{fleet.port}" for a in fleet.addresses}
        assert len(set(names)) == 50 and set(names) == expected
        added = [h["host"] for doc in docs[:2] for h in doc["hosts"] if h["status"] == "added"]
        assert len(added) <= 50 and len(added) == len(set(added))
        for address in (fleet.addresses[0], fleet.addresses[-1]):
            name = f"[{address}]:{fleet.port}"
            found = subprocess.run(["ssh-keygen", "-F", name, "-f", str(known)], capture_output=True, text=True)
            assert found.stdout.count("found: line") == 1
            recorded = [line for line in lines if line.startswith(name + " ")][0].split()[2]
            assert base64.b64decode(recorded) == base64.b64decode(fleet.host_key_line(address).split()[2])
            proc = subprocess.run([
                "ssh", "-F", "/dev/null", "-i", str(fleet.key_file), "-p", str(fleet.port), "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes", "-o",
                "GlobalKnownHostsFile=/dev/null", f"{fleet.user}@{address}", "true"],
                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------
# Jump hosts: the store on each hop of `ssh -J bastion target`
# ---------------------------------------------------------------------------


def through_bastion(world: World, known: Path, policy: str) -> str:
    """Both hops as the engine's per-hop path runs them: the bastion over TCP, the target
    over a direct-tcpip channel, each with prepare -> key exchange -> verify -> auth.

    Returns "ok" or the refused hop's message (a `HostKeyError` from the store).
    """
    from cluster.hostkeys import HostKeyError, HostKeyStore, peer_address
    from cluster.ssh import make_transport

    fleet = world.fleet
    store, user_key = HostKeyStore(), paramiko.PKey.from_path(fleet.key_file)
    bastion, target = fleet.addresses[0], fleet.addresses[1]
    transports = []
    try:
        sock = socket.create_connection((bastion, fleet.port), timeout=10)
        hops = [(HostKeyTarget(bastion, fleet.port, user_files=(str(known),), global_files=(), policy=policy,
                               address=peer_address(sock)), sock)]
        for number in range(2):
            hop, carrier = hops[number]
            transport = make_transport(carrier)
            transports.append(transport)
            store.prepare(transport, hop)
            transport.start_client(timeout=10)
            store.verify(transport, hop)
            transport.auth_publickey(fleet.user, user_key)
            if number == 0:
                channel = transport.open_channel("direct-tcpip", (target, fleet.port), ("127.0.0.1", 0))
                hops.append((HostKeyTarget(target, fleet.port, user_files=(str(known),), global_files=(),
                                           policy=policy), channel))
        return "ok"
    except HostKeyError as exc:
        return exc.message
    finally:
        for transport in reversed(transports):
            transport.close()


def ssh_through_bastion(world: World, known: Path, policy: str) -> tuple[bool, str]:
    fleet = world.fleet
    config = known.with_name("ssh_config")
    config.write_text(
        f"Host bastion\n  HostName {fleet.addresses[0]}\nHost target\n  HostName {fleet.addresses[1]}\n"
        f"  ProxyJump bastion\nHost *\n  Port {fleet.port}\n  User {fleet.user}\n"
        f"  IdentityFile {fleet.key_file}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n"
        f"  GlobalKnownHostsFile /dev/null\n  CheckHostIP no\n  UpdateHostKeys no\n  BatchMode yes\n"
        f"  StrictHostKeyChecking {'yes' if policy == 'strict' else 'accept-new'}\n")
    proc = subprocess.run(["ssh", "-F", str(config), "target", "true"], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    return proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("case, policy", [
    ("bastion-changed", "accept-new"), ("bastion-unknown", "strict"), ("both-recorded", "strict"),
    ("nothing-recorded", "accept-new"), ("target-changed", "accept-new"),
])
def test_each_hop_through_a_bastion_is_checked_like_ssh(world, tmp_path, case, policy):
    fleet = world.fleet
    bastion, target = (f"[{a}]:{fleet.port} {real(world, a)}\n" for a in fleet.addresses[:2])
    text = {"bastion-changed": f"[{fleet.addresses[0]}]:{fleet.port} {other_key()}\n" + target,
            "bastion-unknown": target, "both-recorded": bastion + target, "nothing-recorded": "",
            "target-changed": bastion + f"[{fleet.addresses[1]}]:{fleet.port} {other_key()}\n"}[case]
    sides = {}
    for side in ("ssh", "lib"):
        (tmp_path / side).mkdir()
        sides[side] = tmp_path / side / "known_hosts"
        sides[side].write_text(text)
    ssh_ok, stderr = ssh_through_bastion(world, sides["ssh"], policy)
    result = through_bastion(world, sides["lib"], policy)
    assert (result == "ok") == ssh_ok, (stderr, result)
    refused_hop = {"bastion-changed": fleet.addresses[0], "bastion-unknown": fleet.addresses[0],
                   "target-changed": fleet.addresses[1]}.get(case)
    if refused_hop:
        assert "Host key verification failed" in stderr and f"[{refused_hop}]:{fleet.port}" in result
    if case == "nothing-recorded":  # both hops recorded, as ssh records them
        assert sorted(sides["lib"].read_text().splitlines()) == sorted(sides["ssh"].read_text().splitlines())
        assert len(sides["lib"].read_text().splitlines()) == 2


def test_unwritable_known_hosts_connects_with_a_warning_like_ssh(world, tmp_path, caplog):
    """accept-new with a first user file that cannot be written: ssh warns "Failed to add
    the host to the list of known hosts" and logs in; the library does the same (it used to
    fail the host as a broken connection)."""
    case = Case(world.fleet.addresses[1], world.fleet.port)
    unwritable = Path(f"/proc/cluster-known-hosts-{os.getpid()}")  # /proc takes no new files
    side = Side([unwritable], tmp_path / "ssh_known_hosts")
    side.global_file.write_text("")
    ssh_ok, stderr = ssh_connects(case, world, side, "accept-new")
    assert ssh_ok and "Failed to add the host" in stderr, stderr
    with caplog.at_level("WARNING", logger="cluster.hostkeys"):
        outcome = library_check(case, world, side, "accept-new")
    assert outcome.ok, outcome.error
    assert f"could not add host keys to {unwritable}" in caplog.text
    assert not unwritable.exists()
