"""Host-key checking shared by every connection of an engine.

Fabric installs paramiko's ``AutoAddPolicy`` and loads no known_hosts at all,
so it accepts any key and can never notice a changed one (fabric#1804). We
instead give every ``SSHClient`` one shared, loaded `paramiko.HostKeys` and a
policy of our own:

* ``accept-new``: an unknown host's key is *appended* to known_hosts under a
  thread lock plus an ``fcntl`` lock on a side file, so concurrent new hosts
  (threads or processes) lose no entry and existing lines stay byte-identical.
  (paramiko's ``save_host_keys`` rewrites the whole file and drops markers,
  comments and hashed duplicates.)
* ``strict``: an unknown key is refused.
* a changed key is always refused: paramiko raises ``BadHostKeyException``
  because the known key is loaded.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import threading
from pathlib import Path

import paramiko


class HostKeyRejected(paramiko.SSHException):
    """An unknown host key under the strict policy."""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style fingerprint: ``SHA256:<base64 without padding>``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class HostKeyStore:
    """One known_hosts file, loaded once, shared by all connections of an engine."""

    def __init__(self, path: str | os.PathLike, policy: str = "accept-new") -> None:
        self.path = Path(path).expanduser()
        self.policy = policy
        self.host_keys = paramiko.HostKeys()
        self._lock = threading.Lock()
        self.added: list[tuple[str, paramiko.PKey]] = []
        if self.path.exists():
            self.host_keys = load_tolerant(self.path)

    def missing_host_key_policy(self) -> paramiko.MissingHostKeyPolicy:
        return _StorePolicy(self)

    def lookup(self, entry: str) -> paramiko.PKey | None:
        """The recorded key of ``entry`` (``host`` or ``[host]:port``), any type."""
        keys = self.host_keys.lookup(entry)
        if not keys:
            return None
        return next(iter(keys.values()))

    def check(self, entry: str, key: paramiko.PKey) -> str:
        """Classify a key seen for ``entry``: 'known', 'changed' or 'unknown'."""
        keys = self.host_keys.lookup(entry)
        if not keys:
            return "unknown"
        recorded = keys.get(key.get_name())
        if recorded is None:
            # Known host, other key type: same rule as paramiko (compare to the first).
            recorded = next(iter(keys.values()))
        return "known" if recorded == key else "changed"

    def accept(self, entry: str, key: paramiko.PKey) -> None:
        """Record a new host key per the policy, or raise."""
        if self.policy == "strict":
            raise HostKeyRejected(
                f"unknown host key for {entry} ({key.get_name()} {fingerprint(key)}) "
                f"and host_key_policy is strict"
            )
        with self._lock:
            status = self.check(entry, key)
            if status == "known":
                return
            if status == "changed":
                raise paramiko.BadHostKeyException(entry, key, self.lookup(entry))
            self._append(entry, key)
            self.host_keys.add(entry, key.get_name(), key)
            self.added.append((entry, key))

    def _append(self, entry: str, key: paramiko.PKey) -> None:
        """Append one line under an inter-process lock; never rewrite other lines."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._append_locked(entry, key)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _append_locked(self, entry: str, key: paramiko.PKey) -> None:
        # Another process may have recorded this host meanwhile: honour its entry.
        if self.path.exists():
            fresh = load_tolerant(self.path).lookup(entry)
            if fresh:
                recorded = fresh.get(key.get_name()) or next(iter(fresh.values()))
                if recorded != key:
                    raise paramiko.BadHostKeyException(entry, key, recorded)
                return
        line = f"{entry} {key.get_name()} {key.get_base64()}\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size and not _ends_with_newline(self.path):
                line = "\n" + line
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def load_tolerant(path: Path) -> paramiko.HostKeys:
    """Load known_hosts, skipping lines paramiko cannot read (markers, bad base64).

    ``HostKeys.load`` raises on one malformed line; OpenSSH ignores it, so do we.
    """
    keys = paramiko.HostKeys()
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
            except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, ValueError, TypeError):
                continue
            if entry is not None:
                keys._entries.append(entry)
    return keys


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


class _StorePolicy(paramiko.MissingHostKeyPolicy):
    def __init__(self, store: HostKeyStore) -> None:
        self.store = store

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.store.accept(hostname, key)
