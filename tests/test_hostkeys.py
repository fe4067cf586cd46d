"""The host-key store without a network: files, names, markers, certificates, writes, policies.

OpenSSH's own tools are the oracle where they answer without a connection:
``ssh-keygen -F NAME -f FILE`` for which lines match a name (plain, hashed,
pattern, negated) and for what we write; ``ssh-keygen -s`` makes the
certificates. The same decisions against real servers and the ``ssh``
client are in test_hostkeys_openssh.py.
"""

from __future__ import annotations

import base64
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cluster.hostcert import match_pattern, parse_certificate
from cluster.hostkeys import (
    HostKeyChanged,
    HostKeyError,
    HostKeyRevoked,
    HostKeyStore,
    HostKeyTarget,
    HostKeyUnknown,
    fingerprint,
    hash_name,
    load_tolerant,
    policy_from_ssh_config,
)

_CA = paramiko.ECDSAKey.generate().get_base64()
_HASHED = paramiko.ECDSAKey.generate().get_base64()
EXISTING = (
    "# managed by ops - do not edit\n"
    f"@cert-authority *.example.com ecdsa-sha2-nistp256 {_CA}\n"
    f"|1|F1E1KeoE/eEWhi10WpGv4OdiO6Y=|3988QV0VE8wmZL7suNrYQLITLCg= ecdsa-sha2-nistp256 {_HASHED}\n"
    "10.8.0.81 ssh-ed25519 this-is-not-base64\n"
    "\n"
)


def new_key() -> paramiko.PKey:
    return paramiko.ECDSAKey.generate()


def ed25519() -> paramiko.PKey:
    public = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return paramiko.Ed25519Key(data=base64.b64decode(public.split()[1]))


def line(names: str, key: paramiko.PKey, marker: str = "") -> str:
    return f"{marker + ' ' if marker else ''}{names} {key.get_name()} {key.get_base64()}\n"


def target(path: Path, name: str = "h1", port: int = 22, **fields) -> HostKeyTarget:
    """A hop whose only known_hosts file is ``path`` (no global files)."""
    fields.setdefault("global_files", ())
    return HostKeyTarget(name, port, user_files=(str(path),), **fields)


def keygen_find(name: str, path: Path) -> list[int]:
    """Line numbers ``ssh-keygen -F NAME -f FILE`` reports (OpenSSH's own matching)."""
    out = subprocess.run(["ssh-keygen", "-F", name, "-f", str(path)], capture_output=True, text=True).stdout
    return [int(text.split(" found: line ")[1].split()[0]) for text in out.splitlines()
            if text.startswith("# Host ") and " found: line " in text]


# -- writes: locked appends, untouched lines ---------------------------------------


def test_concurrent_new_hosts_lose_no_entry_and_keep_other_lines(tmp_path: Path):
    path = tmp_path / "known_hosts"
    path.write_text(EXISTING)
    store = HostKeyStore()
    keys = {f"127.0.9.{i}": new_key() for i in range(1, 65)}
    threads = [threading.Thread(target=store.check, args=(target(path, host, 2222), key))
               for host, key in keys.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    text = path.read_text()
    assert text.startswith(EXISTING)
    added = text[len(EXISTING):].splitlines()
    assert len(added) == 64
    reread = load_tolerant(path)
    for host, key in keys.items():
        assert reread.lookup(f"[{host}]:2222")[key.get_name()] == key


def test_two_stores_like_two_processes_do_not_duplicate(tmp_path: Path):
    path = tmp_path / "known_hosts"
    key = new_key()
    HostKeyStore().check(target(path), key)
    HostKeyStore().check(target(path), key)  # a fresh store sees the file
    assert path.read_text().count("h1 ") == 1
    # A store that decided "new" just before another process recorded the host:
    # it re-checks under the lock and honours that entry.
    late = HostKeyStore()
    file = late.file(path)
    enter = file.locked
    other_key = new_key()
    file.locked = _racing(enter, path, "h2", other_key)
    assert late.check(target(path, "h2"), other_key).status == "known"
    assert path.read_text().count("h2 ") == 1
    # ... and when the other process recorded another key for it: refused, nothing written.
    file.locked = _racing(enter, path, "h3", new_key())
    with pytest.raises(HostKeyChanged):
        late.check(target(path, "h3"), new_key())
    assert path.read_text().count("h3 ") == 1


def _racing(enter, path: Path, name: str, key: paramiko.PKey):
    """A ``locked`` that lets another store record ``name`` first (the other process wins)."""
    @contextmanager
    def racing():
        HostKeyStore().check(target(path, name), key)
        with enter() as locked:
            yield locked
    return racing


def test_changed_key_is_refused_even_under_accept_new(tmp_path: Path):
    path = tmp_path / "known_hosts"
    store = HostKeyStore()
    store.check(target(path), new_key())
    with pytest.raises(HostKeyChanged):
        store.check(target(path), new_key())
    with pytest.raises(HostKeyChanged):  # and again: a refusal records nothing
        store.check(target(path), new_key())
    assert len(path.read_text().splitlines()) == 1


def test_strict_refuses_unknown_and_writes_nothing(tmp_path: Path):
    path = tmp_path / "known_hosts"
    store = HostKeyStore()
    with pytest.raises(HostKeyUnknown, match="strict"):
        store.check(target(path, policy="strict"), new_key())
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_missing_trailing_newline_is_repaired_not_glued(tmp_path: Path):
    path = tmp_path / "known_hosts"
    path.write_text("# no newline at end")
    HostKeyStore().check(target(path, "h2"), new_key())
    lines = path.read_text().splitlines()
    assert lines[0] == "# no newline at end" and lines[1].startswith("h2 ecdsa-sha2-nistp256 ")


def test_fingerprint_matches_openssh_format(tmp_path: Path):
    key = ed25519()
    public = tmp_path / "k.pub"
    public.write_text(f"{key.get_name()} {key.get_base64()}\n")
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(public)], capture_output=True, text=True).stdout
    assert out.split()[1] == fingerprint(key)


# -- names: plain, hashed, patterns, negation, case --------------------------------


def test_names_match_exactly_like_ssh_keygen(tmp_path: Path):
    path = tmp_path / "known_hosts"
    key = new_key()
    path.write_text("".join([
        line("gpu01,10.8.0.81", key),
        line("[10.8.0.*]:2222", key),
        line("10.8.1.*,!10.8.1.5", key),
        line(hash_name("compute.7"), key),
        line("GPU02", key),
        line("gpu0?", key, "@revoked"),
        line("*.example.com,!bad.example.com", key, "@cert-authority"),
        "|1|not-base64|x ecdsa-sha2-nistp256 " + key.get_base64() + "\n",
        line("[10.8.0.81]:2222", key),
    ]))
    names = ["gpu01", "10.8.0.81", "[10.8.0.81]:2222", "[10.8.0.81]:22", "10.8.1.4", "10.8.1.5",
             "compute.7", "compute.8", "gpu02", "GPU02", "gpu03", "a.example.com", "bad.example.com",
             "[10.8.0.81]:22222"]
    keys = HostKeyStore().file(path).refresh()
    for name in names:
        assert [e.line for e in keys.matching(name)] == keygen_find(name, path), name
    assert len(keys.matching("[10.8.0.81]:2222")) == 2  # pattern and plain line


def test_match_pattern_is_openssh_glob():
    assert match_pattern("10.8.0.81", "10.8.0.*") and match_pattern("a", "*") and match_pattern("", "*")
    assert match_pattern("gpu01", "gpu0?") and not match_pattern("gpu011", "gpu0?")
    assert match_pattern("[10.8.0.81]:2222", "[10.8.*]:2222") and not match_pattern("x", "")
    assert match_pattern("aXbXc", "a*b*c") and not match_pattern("ab", "a*b*c")


# -- decisions -----------------------------------------------------------------------


def test_a_host_with_several_recorded_keys_matches_any_of_them(tmp_path: Path):
    path = tmp_path / "known_hosts"
    pinned_ecdsa, pinned_ed25519 = new_key(), ed25519()
    path.write_text(line("h1", pinned_ecdsa) + line("h1", pinned_ed25519))
    store = HostKeyStore()
    assert store.check(target(path, policy="strict"), pinned_ecdsa).where.endswith("known_hosts:1")
    assert store.check(target(path, policy="strict"), pinned_ed25519).where.endswith("known_hosts:2")
    with pytest.raises(HostKeyChanged):  # a key of a recorded host that equals none of its keys
        store.check(target(path), ed25519())


def test_revoked_key_is_refused_and_says_revoked(tmp_path: Path):
    path = tmp_path / "known_hosts"
    key = ed25519()
    path.write_text(line("h1", key) + line("*", key, "@revoked"))
    with pytest.raises(HostKeyRevoked, match=r"revoked: ssh-ed25519 SHA256:\S+ is marked @revoked in .*:2"):
        HostKeyStore().check(target(path), key)
    path.write_text(line("*", key, "@revoked"))  # unknown and revoked: not recorded either
    with pytest.raises(HostKeyRevoked):
        HostKeyStore().check(target(path), key)
    assert path.read_text() == line("*", key, "@revoked")


def test_changed_hint_names_the_file_and_the_exact_entry(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    gce = tmp_path / ".ssh" / "google_compute_known_hosts"
    gce.parent.mkdir()
    gce.write_text(line("[10.8.0.81]:2222", ed25519()))
    with pytest.raises(HostKeyChanged) as raised:
        HostKeyStore().check(target(gce, "10.8.0.81", 2222), ed25519())
    assert "~/.ssh/google_compute_known_hosts:1" in raised.value.message
    assert "`ssh-keygen -R '[10.8.0.81]:2222' -f ~/.ssh/google_compute_known_hosts`" in raised.value.hint
    gce.write_text(line("compute.7", ed25519()))
    with pytest.raises(HostKeyChanged) as raised:
        HostKeyStore().check(target(gce, "10.8.0.81", 2222, alias="compute.7"), ed25519())
    assert "`ssh-keygen -R compute.7 -f ~/.ssh/google_compute_known_hosts`" in raised.value.hint
    gce.write_text(line("[10.8.0.*]:2222", ed25519()))
    with pytest.raises(HostKeyChanged) as raised:
        HostKeyStore().check(target(gce, "10.8.0.81", 2222), ed25519())
    assert "pattern '[10.8.0.*]:2222' at ~/.ssh/google_compute_known_hosts:1" in raised.value.hint


def test_alias_is_the_lookup_and_record_name(tmp_path: Path):
    path = tmp_path / "google_compute_known_hosts"
    old, new = ed25519(), ed25519()
    path.write_text(line("compute.1", old) + line("[10.8.0.81]:2222", old))
    store = HostKeyStore()
    # The address was recycled: a new VM, compute.2, has another key. Not "changed".
    verdict = store.check(target(path, "10.8.0.81", 2222, alias="compute.2"), new)
    assert (verdict.status, verdict.name) == ("added", "compute.2")
    assert path.read_text().splitlines()[-1] == f"compute.2 ssh-ed25519 {new.get_base64()}"
    assert keygen_find("compute.2", path) == [3]
    with pytest.raises(HostKeyChanged):  # compute.1 contradicted
        store.check(target(path, "10.8.0.81", 2222, alias="compute.1"), new)


def test_port_less_entry_is_accepted_never_refused(tmp_path: Path):
    path = tmp_path / "known_hosts"
    key = ed25519()
    path.write_text(line("10.8.0.81", key))
    store = HostKeyStore()
    verdict = store.check(target(path, "10.8.0.81", 2222, policy="strict"), key)
    assert (verdict.status, verdict.name) == ("known", "10.8.0.81")
    other = ed25519()  # a different key under the bare name: ssh treats [host]:port as new
    assert store.check(target(path, "10.8.0.81", 2222), other).status == "added"
    assert keygen_find("[10.8.0.81]:2222", path) == [2]


def test_first_user_file_is_written_every_file_is_read(tmp_path: Path):
    first, second, system = tmp_path / "known_hosts", tmp_path / "known_hosts2", tmp_path / "ssh_known_hosts"
    in_second, in_system, new = ed25519(), ed25519(), ed25519()
    second.write_text(line("h2", in_second))
    system.write_text(line("h3", in_system))

    def hop(name: str, policy: str = "strict") -> HostKeyTarget:
        return HostKeyTarget(name, 22, user_files=(str(first), str(second)), global_files=(str(system),),
                             policy=policy)

    store = HostKeyStore()
    assert store.check(hop("h2"), in_second).where.endswith("known_hosts2:1")
    assert store.check(hop("h3"), in_system).where.endswith("ssh_known_hosts:1")
    assert store.check(hop("h4", "accept-new"), new).where == str(first)
    assert first.read_text() == line("h4", new)
    with pytest.raises(HostKeyChanged):
        store.check(hop("h3", "accept-new"), new)


def test_hash_known_hosts_writes_hashed_names_ssh_keygen_finds(tmp_path: Path):
    path = tmp_path / "known_hosts"
    key = ed25519()
    HostKeyStore().check(target(path, "10.8.0.81", 2222, hash_new=True), key)
    text = path.read_text()
    assert text.startswith("|1|") and "10.8.0.81" not in text
    assert keygen_find("[10.8.0.81]:2222", path) == [1]
    assert HostKeyStore().check(target(path, "10.8.0.81", 2222, policy="strict"), key).status == "known"


def test_unrecordable_names_and_no_user_file_refuse_unknown_keys(tmp_path: Path):
    path = tmp_path / "known_hosts"
    with pytest.raises(HostKeyUnknown, match="does not record"):
        HostKeyStore().check(target(path, "gpu*"), ed25519())
    with pytest.raises(HostKeyUnknown, match="no UserKnownHostsFile"):
        HostKeyStore().check(HostKeyTarget("h1", 22, user_files=(), global_files=()), ed25519())
    assert not path.exists()


def test_check_host_ip_records_and_checks_the_address(tmp_path: Path):
    path = tmp_path / "known_hosts"
    key, other = ed25519(), ed25519()
    store = HostKeyStore()
    hop = target(path, "gpu1.internal", check_host_ip=True, address="10.8.0.81")
    store.check(hop, key)
    assert path.read_text() == line("gpu1.internal,10.8.0.81", key)
    # Another name at that address with another key: refused (ssh: possible DNS spoofing).
    with pytest.raises(HostKeyChanged, match="address 10.8.0.81"):
        store.check(target(path, "gpu2.internal", check_host_ip=True, address="10.8.0.81"), other)
    # Known name, unknown address: the address is recorded, even under strict (as ssh does).
    moved = target(path, "gpu1.internal", check_host_ip=True, address="10.8.0.99", policy="strict")
    assert store.check(moved, key).status == "known"
    assert path.read_text().splitlines()[-1] == line("10.8.0.99", key).strip()
    # Skipped where ssh skips it: loopback, through a proxy (no address).
    for skipped in ("127.0.0.1", None):
        store.check(target(path, "gpu3.internal", check_host_ip=True, address=skipped), other)
    assert path.read_text().splitlines()[-1] == line("gpu3.internal", other).strip()


def test_store_follows_edits_appends_and_torn_lines(tmp_path: Path):
    path = tmp_path / "known_hosts"
    first, second = ed25519(), ed25519()
    path.write_text(line("h1", first))
    store = HostKeyStore()
    assert store.check(target(path, policy="strict"), first).status == "known"
    with open(path, "a") as handle:  # another writer, mid-line
        handle.write(line("h2", second)[:30])
    with pytest.raises(HostKeyUnknown):
        store.check(target(path, "h2", policy="strict"), second)
    with open(path, "a") as handle:
        handle.write(line("h2", second)[30:])
    assert store.check(target(path, "h2", policy="strict"), second).where.endswith(":2")
    path.write_text(line("h2", first))  # rewritten in place (same inode, shorter)
    with pytest.raises(HostKeyUnknown):
        store.check(target(path, policy="strict"), first)
    with pytest.raises(HostKeyChanged):
        store.check(target(path, "h2"), second)


def test_policy_from_ssh_config_never_means_accept_changed():
    assert policy_from_ssh_config("yes") == "strict" and policy_from_ssh_config("ask") == "strict"
    assert policy_from_ssh_config("accept-new") == "accept-new"
    assert policy_from_ssh_config("no") == "accept-new" and policy_from_ssh_config("Off") == "accept-new"
    with pytest.raises(ValueError):
        policy_from_ssh_config("maybe")
    with pytest.raises(ValueError):
        HostKeyTarget("h", 22, policy="no")


# -- host-key algorithm order (prepare) ----------------------------------------------

OFFERED = paramiko.Transport._preferred_keys + tuple(
    f"{a}-cert-v01@openssh.com" for a in paramiko.Transport._preferred_keys)


def test_recorded_key_types_are_asked_for_first(tmp_path: Path):
    path = tmp_path / "known_hosts"
    store = HostKeyStore()
    assert store.host_key_algorithms(target(path), OFFERED) == (
        "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
        "rsa-sha2-512", "rsa-sha2-256")
    path.write_text(line("h1", new_key()) + line("h1", paramiko.RSAKey.generate(1024)))
    assert store.host_key_algorithms(target(path), OFFERED)[:4] == (
        "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256", "ssh-ed25519")
    path.write_text(line("*", ed25519(), "@cert-authority"))
    order = store.host_key_algorithms(target(path), OFFERED)
    assert order[0] == "ssh-ed25519-cert-v01@openssh.com" and order[6] == "ssh-ed25519"
    assert all(a.endswith("-cert-v01@openssh.com") for a in order[:6])


# -- host certificates ---------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, a host key, and certificates from ``ssh-keygen -s`` (blobs by name)."""
    root = tmp_path_factory.mktemp("certs")
    for name in ("ca", "host", "other_ca"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    made = {}
    for name, ca, args in [
        ("valid", "ca", ["-h", "-n", "10.8.0.81,compute.7,*.gpu.example"]),
        ("expired", "ca", ["-h", "-n", "10.8.0.81", "-V", "20200101:20200102"]),
        ("future", "ca", ["-h", "-n", "10.8.0.81", "-V", "+3650d:+3651d"]),
        ("user", "ca", ["-n", "10.8.0.81"]),
        ("no_principals", "ca", ["-h"]),
        ("other_ca", "other_ca", ["-h", "-n", "10.8.0.81"]),
    ]:
        subprocess.run(["ssh-keygen", "-q", "-s", str(root / ca), "-I", name, *args,
                        str(root / "host.pub")], check=True, capture_output=True)
        made[name] = base64.b64decode((root / "host-cert.pub").read_text().split()[1])
    made["ca_line"] = (root / "ca.pub").read_text().split(None, 2)[:2]
    key_type, key_text = (root / "host.pub").read_text().split()[:2]
    made["key"] = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_text))
    return made


def ca_file(tmp_path: Path, certs, names: str = "*", marker: str = "@cert-authority") -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(f"{marker} {names} {certs['ca_line'][0]} {certs['ca_line'][1]}\n")
    return path


def test_certificate_fields_are_read(certs):
    cert = parse_certificate(certs["valid"])
    assert cert.principals == ("10.8.0.81", "compute.7", "*.gpu.example") and cert.key_id == "valid"
    assert cert.key_blob == certs["key"].asbytes() and cert.signature_problem() is None
    assert cert.host_problem("10.8.0.81") is None and cert.host_problem("n1.gpu.example") is None


def test_valid_certificate_is_certified_under_strict(tmp_path: Path, certs):
    path = ca_file(tmp_path, certs)
    verdict = HostKeyStore().check(target(path, "10.8.0.81", 2222, policy="strict"), certs["key"], certs["valid"])
    assert verdict.status == "certified" and verdict.key_type == "ssh-ed25519-cert-v01@openssh.com"
    assert verdict.fingerprint == fingerprint(certs["key"]) and verdict.where.endswith("known_hosts:1")
    alias = target(path, "10.8.0.81", 2222, alias="compute.7", policy="strict")
    assert HostKeyStore().check(alias, certs["key"], certs["valid"]).status == "certified"


@pytest.mark.parametrize("name, host, reason", [
    ("valid", "10.8.0.82", "name is not a listed principal"),
    ("expired", "10.8.0.81", "expired"),
    ("future", "10.8.0.81", "not yet valid"),
    ("user", "10.8.0.81", "not a host certificate"),
    ("no_principals", "10.8.0.81", "lacks principal list"),
    ("other_ca", "10.8.0.81", ""),
])
def test_untrusted_certificate_is_checked_as_its_plain_key(tmp_path: Path, certs, name, host, reason):
    path = ca_file(tmp_path, certs)
    with pytest.raises(HostKeyUnknown) as raised:
        HostKeyStore().check(target(path, host, policy="strict"), certs["key"], certs[name])
    assert "policy is strict" in raised.value.message and reason in raised.value.message
    # accept-new: ssh falls back to the certified key and records it (trust on first use).
    verdict = HostKeyStore().check(target(path, host), certs["key"], certs[name])
    assert (verdict.status, verdict.key_type) == ("added", "ssh-ed25519")
    assert path.read_text().splitlines()[1] == line(host, certs["key"]).strip()


def test_certificate_with_a_bad_signature_or_revoked_ca_is_refused(tmp_path: Path, certs):
    path = ca_file(tmp_path, certs)
    forged = bytearray(certs["valid"])
    forged[-5] ^= 0xFF
    with pytest.raises(HostKeyError, match="CA signature does not verify"):
        HostKeyStore().check(target(path, "10.8.0.81"), certs["key"], bytes(forged))
    revoked = ca_file(tmp_path, certs, marker="@revoked")
    with pytest.raises(HostKeyRevoked, match="CA key of its certificate"):
        HostKeyStore().check(target(revoked, "10.8.0.81"), certs["key"], certs["valid"])
    assert not (tmp_path / "known_hosts.lock").exists()


def test_ca_line_for_other_names_does_not_certify(tmp_path: Path, certs):
    path = ca_file(tmp_path, certs, names="*.example.com")
    with pytest.raises(HostKeyUnknown):
        HostKeyStore().check(target(path, "10.8.0.81", policy="strict"), certs["key"], certs["valid"])


def test_expiry_is_checked_against_the_clock(certs):
    cert = parse_certificate(certs["valid"])
    assert cert.host_problem("10.8.0.81", now=time.time()) is None
    assert "expired" in parse_certificate(certs["expired"]).host_problem("10.8.0.81")
