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

Scale (docs/performance.md): paramiko's ``HostKeys.lookup`` scans every line
for every connection, and a naive locked append would re-read the whole file
for every new host, so 1,000 hosts cost O(N^2). `IndexedHostKeys` looks
plain names up in a dict, and the store re-reads only what other processes
appended since it last looked.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator, MutableMapping
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry


class HostKeyRejected(paramiko.SSHException):
    """An unknown host key under the strict policy."""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style fingerprint: ``SHA256:<base64 without padding>``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class IndexedHostKeys(paramiko.HostKeys):
    """``paramiko.HostKeys`` whose ``lookup`` finds plain host names through a dict.

    paramiko compares the name with every entry (and computes an HMAC for
    each hashed one) on every lookup: O(lines) per connection. Here plain
    names come from an index; hashed entries (``|1|salt|hash``) can only be
    tested one by one, so they are kept apart and scanned as before. Results
    are the same entries, in file order, as paramiko's.

    The index follows ``_entries`` lazily: appended entries (``add``, our
    loader, paramiko's own ``SubDict``) are indexed on the next lookup; a
    replaced or shrunk list is re-indexed from scratch.
    """

    def __init__(self, filename: str | None = None) -> None:
        self._index: dict[str, list[tuple[int, HostKeyEntry]]] = {}
        self._hashed: list[tuple[int, HostKeyEntry]] = []
        # Which list was indexed and how far (a reference, so its id cannot be reused).
        self._indexed: tuple[list | None, int] = (None, 0)
        self._index_lock = threading.Lock()
        super().__init__(filename)

    def lookup(self, hostname: str) -> _HostMatches | None:  # type: ignore[override]
        """Key type -> key for ``hostname`` (or None), like ``paramiko.HostKeys.lookup``."""
        self._refresh_index()
        found = list(self._index.get(hostname, ()))
        if self._hashed and not hostname.startswith("|1|"):
            found += [(i, e) for i, e in self._hashed if self._hashed_match(hostname, e)]
        found = [(i, e) for i, e in found if e.key is not None]  # builds lazy keys
        if not found:
            return None
        found.sort(key=lambda item: item[0])
        return _HostMatches(hostname, [e for _, e in found], self)

    def _hashed_match(self, hostname: str, entry: HostKeyEntry) -> bool:
        # paramiko asserts on a malformed |1|salt|hash name; OpenSSH skips the line.
        try:
            return self._hostname_matches(hostname, entry)
        except (AssertionError, ValueError, TypeError):
            return False

    def _refresh_index(self) -> None:
        entries = self._entries
        if self._indexed[0] is entries and self._indexed[1] == len(entries):
            return
        with self._index_lock:
            indexed, done = self._indexed
            if indexed is not entries or done > len(entries):
                self._index, self._hashed, done = {}, [], 0
            end = len(entries)  # another thread may append meanwhile: index up to here
            for position in range(done, end):
                entry = entries[position]
                for name in set(entry.hostnames):
                    if name.startswith("|1|"):
                        self._hashed.append((position, entry))
                    else:
                        self._index.setdefault(name, []).append((position, entry))
            self._indexed = (entries, end)

    def add(self, hostname: str, keytype: str, key: paramiko.PKey) -> None:
        """Add or replace the ``(hostname, keytype)`` key (paramiko scans every line)."""
        if hostname.startswith("|1|"):
            super().add(hostname, keytype, key)
            return
        self._refresh_index()
        for _, entry in self._index.get(hostname, ()):
            if entry.key is not None and entry.key.get_name() == keytype:
                entry.key = key
                return
        self._entries.append(HostKeyEntry([hostname], key))


class _HostMatches(MutableMapping):
    """The entries of one host, as key type -> key (paramiko's ``SubDict`` contract).

    ``keys()`` returns a list because ``SSHClient.connect`` indexes it.
    """

    def __init__(self, hostname: str, entries: list[HostKeyEntry], owner: IndexedHostKeys):
        self._hostname, self._entries, self._owner = hostname, entries, owner

    def keys(self) -> list[str]:  # type: ignore[override]
        return [e.key.get_name() for e in self._entries if e.key is not None]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __getitem__(self, key_type: str) -> paramiko.PKey:
        for entry in self._entries:
            if entry.key is not None and entry.key.get_name() == key_type:
                return entry.key
        raise KeyError(key_type)

    def __setitem__(self, key_type: str, key: paramiko.PKey) -> None:
        for entry in self._entries:
            if entry.key is not None and entry.key.get_name() == key_type:
                entry.key = key
                return
        entry = HostKeyEntry([self._hostname], key)
        self._entries.append(entry)
        self._owner._entries.append(entry)

    def __delitem__(self, key_type: str) -> None:
        for entry in self._entries:
            if entry.key is not None and entry.key.get_name() == key_type:
                self._entries.remove(entry)
                return
        raise KeyError(key_type)


class HostKeyStore:
    """One known_hosts file, loaded once, shared by all connections of an engine."""

    def __init__(self, path: str | os.PathLike, policy: str = "accept-new") -> None:
        self.path = Path(path).expanduser()
        self.policy = policy
        self.host_keys: paramiko.HostKeys = IndexedHostKeys()
        self._lock = threading.Lock()
        self.added: list[tuple[str, paramiko.PKey]] = []
        # How much of which file is in host_keys: (st_dev, st_ino, bytes read).
        self._seen: tuple[int, int, int] | None = None
        if self.path.exists():
            self._read_new_lines()

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
        # Only lines written since we last read the file can hold it.
        if self.path.exists():
            fresh = _indexed(self._read_new_lines()).lookup(entry)
            if fresh:
                recorded = fresh.get(key.get_name()) or next(iter(fresh.values()))
                if recorded != key:
                    raise paramiko.BadHostKeyException(entry, key, recorded)
                return
        line = f"{entry} {key.get_name()} {key.get_base64()}\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            before = os.fstat(fd)
            if before.st_size and not _ends_with_newline(self.path):
                line = "\n" + line
            written = os.write(fd, line.encode())
            after = os.fstat(fd)
        finally:
            os.close(fd)
        seen = self._seen
        if (seen is not None and seen[:2] == (after.st_dev, after.st_ino)
                and seen[2] == before.st_size and after.st_size == before.st_size + written):
            # Nobody else wrote in between: our own line needs no re-reading.
            self._seen = (after.st_dev, after.st_ino, after.st_size)

    def _read_new_lines(self) -> list[HostKeyEntry]:
        """Add the entries written to the file since we last read it, and return them.

        The whole file is read when it is new to us, was replaced or shrank
        (``ssh-keygen -R`` rewrites it); then the loaded entries are replaced
        in place, so connections sharing ``host_keys`` see the change.
        """
        with open(self.path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            seen = self._seen
            same_file = seen is not None and seen[:2] == (stat.st_dev, stat.st_ino)
            start = seen[2] if same_file and seen[2] <= stat.st_size else 0
            handle.seek(start)
            data = handle.read()
        # A torn last line (another writer mid-append) is read again next time.
        complete = data[:data.rfind(b"\n") + 1] if start else data
        new = parse_known_hosts(complete.decode("utf-8", "replace").splitlines())
        if start == 0:
            self.host_keys._entries = list(new)
        else:
            self.host_keys._entries.extend(new)
        self._seen = (stat.st_dev, stat.st_ino, start + len(complete))
        return new


def load_tolerant(path: Path) -> paramiko.HostKeys:
    """Load known_hosts, skipping lines paramiko cannot read (markers, bad base64).

    ``HostKeys.load`` raises on one malformed line; OpenSSH ignores it, so do we.
    """
    with open(path, encoding="utf-8", errors="replace") as handle:
        return _indexed(parse_known_hosts(handle))


def parse_known_hosts(lines: Iterable[str]) -> list[HostKeyEntry]:
    """The entries of known_hosts lines paramiko can read, in order.

    Same rules as ``HostKeyEntry.from_line`` (markers and unknown key types
    are skipped), but each key object is built on first use (`_LazyEntry`).
    """
    entries: list[HostKeyEntry] = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f for f in line.strip().replace("\t", " ").split(" ") if f][:3]
        if len(fields) < 3 or fields[1] not in _KEY_TYPES:
            continue
        try:
            key_bytes = base64.b64decode(fields[2], validate=True)
        except ValueError:
            continue
        entries.append(_LazyEntry(fields[0].split(","), fields[1], key_bytes))
    return entries


class _LazyEntry(HostKeyEntry):
    """A known_hosts entry whose key object is built on first use.

    Building the key (a ``cryptography`` key load) is most of the cost of
    reading a line; a lookup needs only the entries of the host it asks for.
    A 1,000-line file loads in about 2 ms instead of 25 ms. An entry whose
    key material turns out unreadable gets ``key = None`` / ``valid = False``
    and lookups skip it, as the eager loader skipped the line.
    """

    def __init__(self, hostnames: list[str], key_type: str, key_bytes: bytes) -> None:
        self.hostnames = hostnames
        self._key_type, self._key_bytes = key_type, key_bytes
        self._key: paramiko.PKey | None | object = _UNPARSED

    @property  # type: ignore[override]
    def key(self) -> paramiko.PKey | None:
        if self._key is _UNPARSED:
            try:
                self._key = paramiko.PKey.from_type_string(self._key_type, self._key_bytes)
            except Exception:  # bad key material: unusable, like an unreadable line
                self._key = None
        return self._key  # type: ignore[return-value]

    @key.setter
    def key(self, value: paramiko.PKey | None) -> None:
        self._key = value

    @property  # type: ignore[override]
    def valid(self) -> bool:
        return self.key is not None


_UNPARSED = object()
_KEY_TYPES = frozenset(name for cls in paramiko.key_classes for name in cls.identifiers())


def _indexed(entries: list[HostKeyEntry]) -> IndexedHostKeys:
    keys = IndexedHostKeys()
    keys._entries.extend(entries)
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
