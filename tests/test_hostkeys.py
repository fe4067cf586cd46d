"""known_hosts handling: locked appends, untouched lines, changed and strict keys (no network)."""

import threading
from pathlib import Path

import paramiko
import pytest

from cluster.hostkeys import HostKeyRejected, HostKeyStore, fingerprint, load_tolerant

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


def test_concurrent_new_hosts_lose_no_entry_and_keep_other_lines(tmp_path: Path):
    path = tmp_path / "known_hosts"
    path.write_text(EXISTING)
    store = HostKeyStore(path)
    keys = {f"[127.0.9.{i}]:2222": new_key() for i in range(1, 65)}
    threads = [threading.Thread(target=store.accept, args=item) for item in keys.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    text = path.read_text()
    assert text.startswith(EXISTING)
    added = text[len(EXISTING):].splitlines()
    assert len(added) == 64
    reread = load_tolerant(path)
    for entry, key in keys.items():
        assert reread.lookup(entry)[key.get_name()] == key


def test_two_stores_like_two_processes_do_not_duplicate(tmp_path: Path):
    path = tmp_path / "known_hosts"
    key = new_key()
    HostKeyStore(path).accept("h1", key)
    HostKeyStore(path).accept("h1", key)  # loaded before? no: a fresh store sees the file
    late = HostKeyStore(tmp_path / "other")
    late.path = path  # a store that loaded before the first append, then appends
    late.accept("h1", key)
    assert path.read_text().count("h1 ") == 1


def test_changed_key_is_refused_even_under_accept_new(tmp_path: Path):
    path = tmp_path / "known_hosts"
    store = HostKeyStore(path)
    store.accept("h1", new_key())
    with pytest.raises(paramiko.BadHostKeyException):
        store.accept("h1", new_key())
    assert store.check("h1", new_key()) == "changed"


def test_strict_refuses_unknown_and_writes_nothing(tmp_path: Path):
    path = tmp_path / "known_hosts"
    store = HostKeyStore(path, policy="strict")
    with pytest.raises(HostKeyRejected, match="strict"):
        store.accept("h1", new_key())
    assert not path.exists()


def test_missing_trailing_newline_is_repaired_not_glued(tmp_path: Path):
    path = tmp_path / "known_hosts"
    path.write_text("# no newline at end")
    HostKeyStore(path).accept("h2", new_key())
    lines = path.read_text().splitlines()
    assert lines[0] == "# no newline at end" and lines[1].startswith("h2 ecdsa-sha2-nistp256 ")


def test_fingerprint_matches_openssh_format():
    key = new_key()
    assert fingerprint(key).startswith("SHA256:") and not fingerprint(key).endswith("=")
