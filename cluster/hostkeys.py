"""Host keys checked as OpenSSH checks them, on every hop.

One `HostKeyStore` per engine serves every connection (targets, jump hosts,
keyscan) and every thread. Each hop is described by a `HostKeyTarget`: the
host name and port connected to, its HostKeyAlias, its UserKnownHostsFile
and GlobalKnownHostsFile lists, its policy, HashKnownHosts and CheckHostIP.
The store follows OpenSSH's ``sshconnect.c``/``hostfile.c``:

* lookup name: HostKeyAlias, else ``host`` on port 22 and ``[host]:port``
  otherwise; every user file then every global file is read; a key recorded
  under the bare host name is accepted on another port (never refused there);
* entries: plain, hashed (``|1|salt|hash``) and pattern names (``*``, ``?``,
  ``!`` negation); ``@revoked`` keys are refused, also as a certificate's CA;
  ``@cert-authority`` lines make the host's certificate trusted when the CA
  signed it for this name, now, as a host certificate (`cluster.hostcert`);
  a certificate that is not trusted is checked as its plain key, as ssh does;
* a host may have several recorded keys: the offered key matches if any
  recorded key equals it. `prepare` orders the host-key algorithms like
  ``order_hostkeyalgs`` (recorded key types first; certificate types first
  when a CA line matches), so a host pinned by its ECDSA key is asked for
  that key and is not "changed" because it also has an ed25519 key;
* policy ``accept-new`` appends an unknown key to the first UserKnownHostsFile
  under the lookup name (hashed when HashKnownHosts is on); ``strict``
  refuses it. A changed or revoked key is refused under every policy (ssh's
  ``StrictHostKeyChecking no`` would connect anyway; we never do).

Writing: appends happen under a thread lock plus an ``fcntl`` lock on a side
file, after re-reading what other processes appended, so concurrent new hosts
(threads or processes) lose no line and record none twice, and other lines
stay byte-identical (paramiko's ``save_host_keys`` rewrites the whole file and
drops markers, comments and hashed duplicates).

Scale (docs/performance.md): `IndexedHostKeys` finds plain names through a
dict (hashed and pattern entries are tested one by one, as OpenSSH does),
keys are compared as blobs and key objects are only built on demand, and a
file is re-read only from the bytes appended since it was last read (all of
it when it was replaced, shrank or was edited in place).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import ipaddress
import logging
import os
import shlex
import socket
import struct
import threading
from collections.abc import Iterable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry

from .errors import InputError
from .hostcert import CERT_SUFFIX, CertificateFormatError, HostCertificate, glob_regex, parse_certificate

# Warnings reach stderr through logging's last-resort handler unless the caller configures logging.
log = logging.getLogger(__name__)

ACCEPT_NEW, STRICT = "accept-new", "strict"
POLICIES = (ACCEPT_NEW, STRICT)
CERT_AUTHORITY, REVOKED = "@cert-authority", "@revoked"

# ssh_config StrictHostKeyChecking -> our policy. "no"/"off" would let ssh connect
# to a changed key; we never do, so they mean accept-new. "ask" cannot prompt
# here (like ssh -o BatchMode=yes), so unknown keys are refused.
STRICT_HOST_KEY_CHECKING = {
    "yes": STRICT, "true": STRICT, "ask": STRICT,
    "accept-new": ACCEPT_NEW, "no": ACCEPT_NEW, "false": ACCEPT_NEW, "off": ACCEPT_NEW,
}

# OpenSSH's default HostKeyAlgorithms (myproposal.h KEX_DEFAULT_PK_ALG) that
# paramiko can verify, in OpenSSH's order.
OPENSSH_HOST_KEY_ALGORITHMS = (
    "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-256-cert-v01@openssh.com",
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)

# Characters ssh never writes into a known_hosts name (sshconnect.c check_host_key).
_UNRECORDABLE = set("@?*#[]|'\"\\")
_HASH_MAGIC = "|1|"


def policy_from_ssh_config(value: str) -> str:
    """Our policy for an ssh_config ``StrictHostKeyChecking`` value (see `STRICT_HOST_KEY_CHECKING`).

    Only for a value the user's config sets: ``ssh -G`` prints ``ask`` when
    nothing does, and then the roles-file default (accept-new) applies.
    """
    try:
        return STRICT_HOST_KEY_CHECKING[value.strip().lower()]
    except KeyError:
        raise ValueError(f"StrictHostKeyChecking: unknown value {value!r}") from None


def check_known_hosts_path(path_text: str) -> None:
    """The roles file's ``ssh.known_hosts``, checked before any connection: a directory,
    or a path under a regular file, is one `InputError` (exit 2), not a per-host failure.
    A missing file is fine (it is created when a key is recorded); ``/dev/null`` is fine.
    """
    path = Path(path_text).expanduser()
    problem = None
    if path.is_dir():
        problem = "is a directory"
    else:
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            problem = f"cannot be created: {parent} is not a directory"
    if problem:
        raise InputError(f"ssh.known_hosts {path} {problem} (set ssh.known_hosts in the roles file "
                         "to a file path)")


def known_hosts_name(host: str, port: int) -> str:
    """OpenSSH's ``put_host_port``: ``host`` on port 22 (or 0), else ``[host]:port``."""
    return host if port in (0, 22) else f"[{host}]:{port}"


@dataclass(frozen=True)
class HostKeyTarget:
    """One hop (jump host or target) as OpenSSH's host-key check sees it."""

    hostname: str  # the HostName actually connected to (`ssh -G` "hostname")
    port: int
    alias: str | None = None  # HostKeyAlias
    user_files: tuple[str, ...] = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")  # UserKnownHostsFile
    global_files: tuple[str, ...] = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
    policy: str = ACCEPT_NEW  # "accept-new" | "strict" (per hop, from settings/ssh_config)
    hash_new: bool = False  # HashKnownHosts
    check_host_ip: bool = False  # CheckHostIP
    address: str | None = None  # peer IP actually connected to; None through a proxy/jump

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"host-key policy {self.policy!r} is not one of {', '.join(POLICIES)}")

    @property
    def lookup_name(self) -> str:
        """The known_hosts name checked and recorded: HostKeyAlias, else ``host`` / ``[host]:port``."""
        return self.alias or known_hosts_name(self.hostname.lower(), self.port)

    @property
    def principal(self) -> str:
        """The name a host certificate must list: HostKeyAlias, else the host name (no port)."""
        return self.alias or self.hostname.lower()

    @property
    def ip_name(self) -> str | None:
        """The address name CheckHostIP also checks, or None where ssh skips that check.

        Skipped through a proxy or jump host, for loopback addresses and when
        the host name already is that name.
        """
        if not self.check_host_ip or not self.address:
            return None
        try:
            if ipaddress.ip_address(self.address.split("%")[0]).is_loopback:
                return None
        except ValueError:
            return None
        name = known_hosts_name(self.address, self.port)
        return None if name == self.hostname.lower() else name

    @property
    def files(self) -> tuple[str, ...]:
        return self.user_files + self.global_files

    def unrecordable(self) -> str | None:
        """Why an unknown key of this hop cannot be recorded (then it is refused), or None."""
        if not self.user_files:
            return "no UserKnownHostsFile to record it in"
        if _UNRECORDABLE & set(self.hostname):
            return f"ssh does not record host names like {self.hostname!r}"
        return None


# ---------------------------------------------------------------------------
# Decisions and refusals
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the store decided about an accepted host key."""

    status: str  # "known" | "added" | "certified"
    name: str  # the known_hosts name checked (HostKeyAlias or host / [host]:port)
    key_type: str  # the key's type, or the certificate type for a certified host
    fingerprint: str  # of the key (a certificate's: of its certified key)
    where: str  # FILE:LINE of the matching entry or CA line; the FILE written for "added"


class HostKeyError(paramiko.SSHException):
    """A host key refused (kind ``host-key``): ``message`` says why, ``hint`` what to do."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint

    def hint_for(self, host: str) -> str:
        """The hint for ``host`` as the user named it (some hints name a command to run)."""
        return self.hint


class HostKeyChanged(HostKeyError):
    """The host offered a key other than the one recorded (never accepted)."""


class HostKeyRevoked(HostKeyError):
    """The host's key, or its certificate's CA, is marked ``@revoked``."""


class HostKeyUnknown(HostKeyError):
    """An unknown key that may not be recorded: strict policy, or nowhere to record it."""

    def hint_for(self, host: str) -> str:
        return f"{self.hint}, or record it with `inv keyscan --policy accept-new -H {host}`"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style fingerprint: ``SHA256:<base64 without padding>``."""
    return _fingerprint(key.asbytes())


def _fingerprint(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# ---------------------------------------------------------------------------
# known_hosts entries and their index
# ---------------------------------------------------------------------------


class _LazyEntry(HostKeyEntry):
    """A known_hosts line: marker, names, key blob; the key object is built on first use.

    Host-key checks compare key blobs and never need the object; building it
    (a ``cryptography`` key load) was most of the cost of reading a line. An
    entry whose key paramiko cannot build (unknown type, bad material) gets
    ``key = None`` / ``valid = False`` and paramiko-style lookups skip it; it
    still counts for OpenSSH's checks, as in OpenSSH.
    """

    def __init__(self, names: str, key_type: str, blob: bytes, marker: str | None = None,
                 line: int = 0) -> None:
        self.names, self.hostnames = names, names.split(",")
        self.key_type, self.blob = key_type, blob
        self.marker, self.line = marker, line
        self._key: paramiko.PKey | None | object = _UNPARSED

    @property  # type: ignore[override]
    def key(self) -> paramiko.PKey | None:
        if self._key is _UNPARSED:
            try:
                self._key = paramiko.PKey.from_type_string(self.key_type, self.blob)
            except Exception:  # unknown type or bad key material: unusable for paramiko
                self._key = None
        return self._key  # type: ignore[return-value]

    @key.setter
    def key(self, value: paramiko.PKey | None) -> None:
        self._key = value

    @property
    def valid(self) -> bool:  # type: ignore[override]  # paramiko's stub: an attribute; computed here
        return self.key is not None


_UNPARSED = object()


def parse_known_hosts(lines: Iterable[str], first_line: int = 1) -> list[HostKeyEntry]:
    """The usable entries of known_hosts lines, in order, numbered from ``first_line``.

    OpenSSH's rules (``hostkeys_foreach_file``): comments and blank lines are
    skipped, one marker (``@cert-authority`` / ``@revoked``) may lead, then
    names, key type and base64 key; a line that does not parse (unknown
    marker, bad base64, key type not matching the key) is ignored.
    """
    entries: list[HostKeyEntry] = []
    for number, line in enumerate(lines, first_line):
        entry = _parse_line(line, number)
        if entry is not None:
            entries.append(entry)
    return entries


def _parse_line(line: str, number: int) -> _LazyEntry | None:
    fields = line.replace("\t", " ").split()
    if not fields or fields[0].startswith("#"):
        return None
    marker = None
    if fields[0].startswith("@"):
        if fields[0] not in (CERT_AUTHORITY, REVOKED):
            return None
        marker, fields = fields[0], fields[1:]
    if len(fields) < 3:
        return None
    names, key_type, text = fields[:3]
    try:
        blob = base64.b64decode(text, validate=True)
        if _blob_type(blob) != key_type:
            return None
    except (ValueError, struct.error, UnicodeDecodeError):
        return None
    return _LazyEntry(names, key_type, blob, marker, number)


def _blob_type(blob: bytes) -> str:
    """The key type named inside a public key blob (its first string)."""
    (size,) = struct.unpack(">I", blob[:4])
    if size > len(blob) - 4:
        raise ValueError("truncated key blob")
    return blob[4:4 + size].decode("ascii")


class _Names:
    """How an entry's name field matches lookup names, as OpenSSH matches it.

    Plain fields go to the index. A hashed field (``|1|salt|hash``: the whole
    field is one hash) is matched by its decoded salt and digest; a pattern
    field (``*``, ``?``, ``!``) by one compiled regex for its positive
    patterns and one for its negated ones. Decoding and compiling once per
    line, not per lookup, is what keeps hashed and pattern files cheap.
    """

    PLAIN, HASHED, PATTERN = "plain", "hashed", "pattern"

    def __init__(self, names: str) -> None:
        patterns = names.lower().split(",")
        self._positive = glob_regex(*(p for p in patterns if not p.startswith("!")))
        negated = tuple(p[1:] for p in patterns if p.startswith("!"))
        self._negative = glob_regex(*negated) if negated else None

    @staticmethod
    def kind_of(names: str) -> str:
        if names.startswith("|"):
            return _Names.HASHED  # the whole field is one hash (match_maybe_hashed)
        if any(c in names for c in "*?!"):
            return _Names.PATTERN
        return _Names.PLAIN

    def matches(self, lowered: str) -> bool:
        """``match_hostname``: some positive pattern matches and no negated one does."""
        if self._negative is not None and self._negative.fullmatch(lowered):
            return False
        return self._positive.fullmatch(lowered) is not None


def _parse_hash(names: str) -> tuple[bytes, bytes] | None:
    """Salt and digest of ``|1|salt|hash``; None when malformed."""
    if not names.startswith(_HASH_MAGIC):
        return None
    salt_text, _, digest_text = names[len(_HASH_MAGIC):].partition("|")
    try:
        salt, digest = base64.b64decode(salt_text, validate=True), base64.b64decode(digest_text, validate=True)
    except (ValueError, binascii.Error):
        return None
    size = hashlib.sha1().digest_size
    # ssh compares the re-encoded text: only canonical base64 of 20-byte values matches.
    if len(salt) != size or len(digest) != size or f"{_HASH_MAGIC}{base64.b64encode(salt).decode()}|" \
            f"{base64.b64encode(digest).decode()}" != names:
        return None
    return salt, digest


def hash_name(name: str) -> str:
    """A new hashed known_hosts name for ``name`` (``|1|salt|hash``, HashKnownHosts)."""
    salt = os.urandom(hashlib.sha1().digest_size)
    digest = hmac.digest(salt, name.encode(), "sha1")
    return f"{_HASH_MAGIC}{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


# HMAC-SHA1 = sha1((key ^ opad) + sha1((key ^ ipad) + name)). `hmac.digest` sets up both keyed
# states on every call (1.2 µs); a hashed line keeps its own two, ready to copy (0.5 µs). Every
# host looked up tests every hashed line, as ssh does: 1,000 hosts x 1,000 hashed lines is
# 0.5 s of CPU per command instead of 1.2 s.
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))
_SHA1_BLOCK = 64


def _keyed_sha1(salt: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """The inner and outer SHA-1 states of HMAC with key ``salt`` (20 bytes, `_parse_hash`)."""
    key = salt.ljust(_SHA1_BLOCK, b"\0")
    return hashlib.sha1(key.translate(_IPAD)), hashlib.sha1(key.translate(_OPAD))


_RECENT_LOOKUPS = 1024  # remembered `IndexedHostKeys.matching` answers (cleared when full)

# `IndexedHostKeys` index tables: plain name -> [(position, entry)],
# [(position, entry, inner, outer, digest)] (`_keyed_sha1`), [(position, entry, _Names)].
_Tables = tuple[dict[str, list[tuple[int, HostKeyEntry]]],
                list[tuple[int, HostKeyEntry, "hashlib._Hash", "hashlib._Hash", bytes]],
                list[tuple[int, HostKeyEntry, _Names]]]


class IndexedHostKeys(paramiko.HostKeys):
    """``paramiko.HostKeys`` that finds entries through a dict, with OpenSSH's name matching.

    paramiko compares the name with every entry (and computes an HMAC for
    each hashed one) on every lookup: O(lines) per connection. Here plain
    names come from an index (lower-cased, as ssh compares them); hashed and
    pattern entries can only be tested one by one, so they are kept apart
    and scanned. `matching` returns every entry for a name (markers
    included), `lookup` the plain keys paramiko's contract expects, both in
    file order.

    The index follows ``_entries`` lazily: appended entries (``add``, our
    loader, paramiko's own ``SubDict``) are indexed on the next lookup; a
    replaced or shrunk list is re-indexed from scratch.
    """

    _entries: list[HostKeyEntry]  # paramiko's (set by HostKeys.__init__), not in its stubs

    def __init__(self, filename: str | None = None) -> None:
        # (index, hashed, patterns), published as one object so that readers never
        # see half of a rebuilt index (see `_Tables`).
        self._tables: _Tables = ({}, [], [])
        # Which list was indexed and how far (a reference, so its id cannot be reused).
        self._indexed: tuple[list[HostKeyEntry] | None, int] = (None, 0)
        self._index_lock = threading.Lock()
        # Recent answers of `matching` for the index state they were computed on: a
        # connection asks twice for its host (algorithm order, then the check).
        self._recent: tuple[tuple[list[HostKeyEntry] | None, int], dict[str, list[HostKeyEntry]]] = ((None, 0), {})
        super().__init__(filename)

    def matching(self, name: str) -> list[HostKeyEntry]:
        """Every entry whose names match ``name`` (any marker, any key type), in file order."""
        self._refresh_index()
        (entries, indexed), recent = self._recent
        if entries is not self._indexed[0] or indexed != self._indexed[1]:
            recent = {}
            self._recent = (self._indexed, recent)
        found = recent.get(name)
        if found is None:
            found = self._scan(name)
            if len(recent) >= _RECENT_LOOKUPS:
                recent.clear()
            recent[name] = found
        return found

    def _scan(self, name: str) -> list[HostKeyEntry]:
        lowered = name.lower()
        index, hashed, patterns = self._tables
        found = dict(index.get(lowered, ()))
        if hashed:  # one HMAC per hashed line, as in ssh: keep this loop tight
            encoded = name.encode()
            for position, entry, inner, outer, expected in hashed:
                hashing = inner.copy()
                hashing.update(encoded)
                outside = outer.copy()
                outside.update(hashing.digest())
                if outside.digest() == expected:
                    found[position] = entry
        for position, entry, names in patterns:
            if names.matches(lowered):
                found[position] = entry
        return [found[position] for position in sorted(found)]

    def lookup(self, hostname: str) -> _HostMatches | None:  # type: ignore[override]
        """Key type -> key for ``hostname`` (or None), like ``paramiko.HostKeys.lookup``."""
        found = [e for e in self.matching(hostname)
                 if getattr(e, "marker", None) is None and e.key is not None]  # builds lazy keys
        return _HostMatches(hostname, found, self) if found else None

    def _refresh_index(self) -> None:
        entries = self._entries
        if self._indexed[0] is entries and self._indexed[1] == len(entries):
            return
        with self._index_lock:
            indexed, done = self._indexed
            tables: _Tables
            if indexed is not entries or done > len(entries):
                tables, done = ({}, [], []), 0  # rebuilt aside, then published at once
            else:
                tables = self._tables  # appends only: readers see whole entries
            end = len(entries)  # another thread may append meanwhile: index up to here
            for position in range(done, end):
                _index_entry(tables, position, entries[position])
            self._tables = tables
            self._indexed = (entries, end)

    def add(self, hostname: str, keytype: str, key: paramiko.PKey) -> None:
        """Add or replace the ``(hostname, keytype)`` key (paramiko scans every line)."""
        if hostname.startswith("|1|"):
            super().add(hostname, keytype, key)
            return
        self._refresh_index()
        for _, entry in self._tables[0].get(hostname.lower(), ()):
            if getattr(entry, "marker", None) is None and entry.key is not None \
                    and entry.key.get_name() == keytype:
                entry.key = key
                return
        self._entries.append(HostKeyEntry([hostname], key))


def _index_entry(tables: _Tables, position: int, entry: HostKeyEntry) -> None:
    index, hashed, patterns = tables
    # Our entries keep the name field whole, as ssh matches it; paramiko's own
    # entries (``add``, ``__setitem__``) hold one name per item of ``hostnames``.
    fields = [entry.names] if isinstance(entry, _LazyEntry) else entry.hostnames
    for field in fields:
        kind = _Names.kind_of(field)
        if kind == _Names.PLAIN:
            for name in set(field.lower().split(",")):
                index.setdefault(name, []).append((position, entry))
        elif kind == _Names.PATTERN:
            patterns.append((position, entry, _Names(field)))
        elif parsed := _parse_hash(field):  # a malformed hash never matches: ssh skips the line
            salt, digest = parsed
            hashed.append((position, entry, *_keyed_sha1(salt), digest))


class _HostMatches(MutableMapping[str, paramiko.PKey]):
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


def load_tolerant(path: Path) -> IndexedHostKeys:
    """Load known_hosts, skipping lines that do not parse (as OpenSSH does).

    ``HostKeys.load`` raises on one malformed line and drops marker lines.
    """
    with open(path, encoding="utf-8", errors="replace") as handle:
        return _indexed(parse_known_hosts(handle))


def _indexed(entries: list[HostKeyEntry]) -> IndexedHostKeys:
    keys = IndexedHostKeys()
    keys._entries.extend(entries)
    return keys


# ---------------------------------------------------------------------------
# One known_hosts file: incremental re-reads, locked appends
# ---------------------------------------------------------------------------


class KnownHostsFile:
    """One known_hosts file as last read, re-read when it changes on disk.

    ``keys`` (an `IndexedHostKeys`) keeps its identity; on a full re-read its
    entries list is replaced, so every holder sees the new content.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys = IndexedHostKeys()
        self._lock = threading.Lock()  # one reader at a time in this process
        self._appending = threading.Lock()  # one appender at a time in this process (see `locked`)
        self._signature: tuple[int, int, int, int] | None = None  # (dev, ino, size, mtime_ns) read
        self._offset = 0  # bytes of complete lines in ``keys``
        self._lines = 0  # lines in those bytes (numbering continues from here)
        self._tail = 0  # entries read from an unterminated last line (re-read when it grows)

    @property
    def shown(self) -> str:
        """The path as a user would type it: ``~/...`` under $HOME (ssh's try_tilde_unexpand)."""
        return _tilde(str(self.path))

    def refresh(self) -> IndexedHostKeys:
        """Bring ``keys`` up to date with the file (one ``stat`` when nothing changed)."""
        try:
            # Most hops name global files that do not exist: no exception for those.
            stat = os.stat(self.path) if os.access(self.path, os.F_OK) else None
        except OSError:
            stat = None
        if stat is None:  # absent or unreadable: no entries, as for ssh
            if self._signature is not None or self.keys._entries:
                with self._lock:
                    self.keys._entries, self._signature = [], None
                    self._offset = self._lines = self._tail = 0
            return self.keys
        if _signature(stat) != self._signature:
            with self._lock:
                self._read_changes()
        return self.keys

    def _read_changes(self) -> None:
        """Read what was appended since the last read, or the whole file when it was replaced.

        A file that is new to us, was replaced (``ssh-keygen -R`` writes a new
        one), shrank, or changed without growing is read from the start.
        """
        try:
            handle = open(self.path, "rb")
        except OSError:
            return
        with handle:
            stat = os.fstat(handle.fileno())
            if _signature(stat) == self._signature:
                return
            old = self._signature
            appended = (old is not None and old[:2] == (stat.st_dev, stat.st_ino)
                        and stat.st_size > old[2])
            start = self._offset if appended else 0
            handle.seek(start)
            data = handle.read()
        complete = data[:data.rfind(b"\n") + 1]
        tail = data[len(complete):]
        first = self._lines + 1 if appended else 1
        new = parse_known_hosts(complete.decode("utf-8", "replace").splitlines(), first)
        tail_entries = parse_known_hosts([tail.decode("utf-8", "replace")], first + complete.count(b"\n"))
        if appended and self._tail:  # the unterminated line is read again: one new list
            self.keys._entries = self.keys._entries[:-self._tail] + new + tail_entries
        elif appended:
            self.keys._entries.extend(new + tail_entries)
        else:
            self.keys._entries = new + tail_entries
            self._offset = self._lines = 0
        self._offset += len(complete)
        self._lines += complete.count(b"\n")
        self._tail = len(tail_entries)
        self._signature = _signature(stat)

    @contextmanager
    def locked(self) -> Iterator[KnownHostsFile]:
        """Hold the append lock of this file: this process's threads, then other processes.

        The ``fcntl`` lock is on a side file (``FILE.lock``) because
        ``ssh-keygen -R`` replaces the file itself.
        """
        with self._appending:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    yield self
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, text: str) -> None:
        """Append ``text`` (whole lines) with one write; call inside `locked`.

        A last line without its newline is ended first, never glued to ours.
        """
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size and not _ends_with_newline(self.path):
                text = "\n" + text
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        self.refresh()


def _signature(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _tilde(path: str) -> str:
    home = os.environ.get("HOME", "").rstrip("/")
    if home and path.startswith(home + "/"):
        return "~/" + path[len(home) + 1:]
    return path


def _shell_path(shown: str) -> str:
    """``shown`` quoted for a shell command line, keeping a leading ``~/`` expandable."""
    if shown.startswith("~/"):
        return "~/" + shlex.quote(shown[2:])
    return shlex.quote(shown)


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Offered:
    """The host key a server offered: its plain key blob, and the certificate if it sent one."""

    blob: bytes
    key_type: str  # plain key type ("ssh-ed25519", "ssh-rsa" ...)
    certificate: HostCertificate | None = None

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.blob)

    @property
    def shown(self) -> str:
        return f"{self.key_type} {self.fingerprint}"

    def plain(self) -> _Offered:
        """The certified key alone (ssh's downgrade when no trusted CA matches)."""
        return replace(self, certificate=None)


OK, NEW, CHANGED, REVOKED_KEY = "ok", "new", "changed", "revoked"
_Match = tuple[KnownHostsFile, _LazyEntry]


@dataclass(frozen=True)
class _Record:
    """An accepted key that needs lines appended to the first user file first."""

    text: str
    verdict: Verdict


class HostKeyStore:
    """Every known_hosts file the engine's hops use, shared by all hops and threads."""

    def __init__(self) -> None:
        self._files: dict[str | os.PathLike[str], KnownHostsFile] = {}  # by the path given and the full path
        self._files_lock = threading.Lock()
        self._local = threading.local()
        self._warned: set[str] = set()  # user files that could not be written (warned once)
        self._warned_lock = threading.Lock()

    def file(self, path: str | os.PathLike[str]) -> KnownHostsFile:
        """The (cached) `KnownHostsFile` of ``path`` (``~`` expanded)."""
        known = self._files.get(path)
        if known is None:
            full = os.path.abspath(os.path.expanduser(os.fspath(path)))
            with self._files_lock:
                known = self._files.setdefault(full, KnownHostsFile(Path(full)))
                self._files[path] = known
        return known

    # -- the seam: before and after key exchange ------------------------------
    def prepare(self, transport: paramiko.Transport, target: HostKeyTarget) -> None:
        """Before ``transport.start_client()``: host-key algorithms in the order ssh asks for them."""
        algorithms = self.host_key_algorithms(target, transport.preferred_keys)
        if algorithms:  # paramiko appends a -cert-v01 variant of every name itself
            transport.get_security_options().key_types = algorithms

    def verify(self, transport: paramiko.Transport, target: HostKeyTarget) -> Verdict:
        """After key exchange, before any authentication: accept, record per policy, or raise."""
        key = transport.get_remote_server_key()
        certificate = None
        if (transport.host_key_type or "").endswith(CERT_SUFFIX) and key.public_blob is not None:
            certificate = key.public_blob.key_blob
        return self.check(target, key, certificate)

    def client_policy(self, target: HostKeyTarget) -> paramiko.MissingHostKeyPolicy:
        """A policy that makes ``SSHClient.connect`` run `verify` (its own host keys left empty)."""
        return _VerifyPolicy(self, target)

    def last_verdict(self) -> Verdict | None:
        """The latest verdict of this thread (keyscan reports what the handshake decided)."""
        return getattr(self._local, "verdict", None)

    # -- the checks ------------------------------------------------------------
    def host_key_algorithms(self, target: HostKeyTarget, offered: Sequence[str]) -> tuple[str, ...]:
        """``order_hostkeyalgs``: of ``offered``, the algorithms to ask the server for, best first.

        Algorithms of recorded key types first, certificate types first when a
        ``@cert-authority`` line matches the host, else OpenSSH's order. When
        no CA line matches, only plain types are listed: paramiko appends the
        certificate variants after them, and an untrusted certificate would
        be checked as its plain key anyway (same decision as ssh).
        """
        entries = [e for _, e in self._matching(self._fresh_files(target), target.lookup_name)]
        recorded = {e.key_type for e in entries if e.marker is None}
        has_ca = any(e.marker == CERT_AUTHORITY for e in entries)
        def preferred(algorithm: str) -> bool:
            return (_is_cert(algorithm) and has_ca) or _plain_type(algorithm) in recorded

        available = set(offered)
        usable = [a for a in OPENSSH_HOST_KEY_ALGORITHMS if a in available]
        if not (usable and _plain_type(usable[0]) in recorded):  # else OpenSSH keeps its order
            usable = [a for a in usable if preferred(a)] + [a for a in usable if not preferred(a)]
        return tuple(usable if has_ca else [a for a in usable if not _is_cert(a)])

    def check(self, target: HostKeyTarget, key: paramiko.PKey, certificate: bytes | None = None) -> Verdict:
        """Decide about ``key`` (and the host ``certificate`` blob it came with) for ``target``.

        Returns the `Verdict` of an accepted key, recording a new one first
        under accept-new; raises `HostKeyError` otherwise.
        """
        self._local.verdict = None
        offered = self._offered(target, key, certificate)
        outcome = self._decide(target, offered)
        if isinstance(outcome, _Record):
            outcome = self._record(target, offered, outcome)
        self._local.verdict = outcome
        return outcome

    def _record(self, target: HostKeyTarget, offered: _Offered, record: _Record) -> Verdict:
        """Append the new key to the first user file, then the verdict. A file that cannot
        be written costs the record, not the connection: OpenSSH warns "Failed to add the
        host to the list of known hosts" and connects (the key was accepted under
        accept-new either way); so do we, once per file."""
        path = target.user_files[0]
        try:
            with self.file(path).locked() as file:
                # Another thread or process may have recorded this host meanwhile.
                outcome = self._decide(target, offered)
                if isinstance(outcome, _Record):
                    file.append(outcome.text)
                    outcome = outcome.verdict
                return outcome
        except OSError as exc:
            with self._warned_lock:
                first = path not in self._warned
                self._warned.add(path)
            if first:
                log.warning("warning: could not add host keys to %s (%s); connecting anyway, as ssh does",
                            path, exc.strerror or exc)
            return record.verdict

    def _offered(self, target: HostKeyTarget, key: paramiko.PKey, certificate: bytes | None) -> _Offered:
        if certificate is None:
            blob = key.asbytes()
            return _Offered(blob, _blob_type(blob))
        try:
            cert = parse_certificate(certificate)
        except CertificateFormatError as exc:
            raise HostKeyError(f"host certificate of {target.lookup_name} is unreadable: {exc}",
                               "the server's HostCertificate is damaged; ask the host's owner") from None
        problem = cert.signature_problem()
        if problem:  # ssh fails the key exchange itself on such a certificate
            raise HostKeyError(
                f"host certificate of {target.lookup_name} is invalid: {problem} "
                f"(CA {cert.ca_type} {_fingerprint(cert.ca_blob)})",
                "the certificate is forged or damaged: do not connect; ask the host's owner")
        return _Offered(cert.key_blob, cert.key_type, cert)

    def _fresh_files(self, target: HostKeyTarget) -> list[KnownHostsFile]:
        files = [self.file(path) for path in target.files]
        for file in files:
            file.refresh()
        return files

    @staticmethod
    def _matching(files: list[KnownHostsFile], name: str | None) -> list[_Match]:
        if name is None:
            return []
        # A file's keys are all parsed lines (`_LazyEntry`); the isinstance is for the type checker.
        return [(file, entry) for file in files for entry in file.keys.matching(name)
                if isinstance(entry, _LazyEntry)]

    def _decide(self, target: HostKeyTarget, offered: _Offered) -> Verdict | _Record:
        """OpenSSH's ``check_host_key`` on the files as they are now (no writes here)."""
        files = self._fresh_files(target)
        name = target.lookup_name
        host_entries = self._matching(files, name)
        ip_name = target.ip_name if offered.certificate is None else None
        ip_entries = self._matching(files, ip_name) if ip_name else None
        key, refused_certificate = offered, None
        while True:
            status, found = _status(host_entries, key)
            ip_status, ip_found = _status(ip_entries, key) if ip_entries is not None else (status, found)
            if status == REVOKED_KEY:
                assert found is not None  # every status but NEW comes with its entry (`_status`)
                raise _revoked(name, key, found)
            if key.certificate is not None:
                if status == OK:
                    refused_certificate = key.certificate.host_problem(target.principal)
                    if refused_certificate is None:
                        return _verdict("certified", name, key, found)
                elif status == NEW and (quiet := self._known_without_port(files, target, key)):
                    return quiet
                key = key.plain()  # no trusted CA: check the certified key itself, as ssh does
                continue
            if status == CHANGED:
                assert found is not None
                raise _changed(name, key, found, ip_name, ip_status, ip_found)
            if ip_status == CHANGED:
                assert ip_found is not None
                raise _ip_changed(name, ip_name, key, ip_found)
            if status == OK:
                if ip_status == NEW and ip_name and not target.unrecordable():  # NEW: an address was looked up
                    return _Record(_lines(ip_name, key, target.hash_new), _verdict("known", name, key, found))
                return _verdict("known", name, key, found)
            quiet = self._known_without_port(files, target, key)
            if quiet:
                return quiet
            return self._new_key(target, files, key, ip_status, refused_certificate)

    def _known_without_port(self, files: list[KnownHostsFile], target: HostKeyTarget,
                            key: _Offered) -> Verdict | None:
        """A non-22 port's key recorded under the bare host name is accepted (never refused)."""
        if target.alias or target.port in (0, 22):
            return None
        name = target.hostname.lower()
        entries = self._matching(files, name)
        while True:
            status, found = _status(entries, key)
            if status == OK and (key.certificate is None
                                 or key.certificate.host_problem(target.principal) is None):
                return _verdict("certified" if key.certificate else "known", name, key, found)
            if key.certificate is None or status == REVOKED_KEY:
                return None
            key = key.plain()

    def _new_key(self, target: HostKeyTarget, files: list[KnownHostsFile], key: _Offered,
                 ip_status: str, refused_certificate: str | None) -> _Record:
        name = target.lookup_name
        certificate = f"; its host certificate was not accepted: {refused_certificate}" \
            if refused_certificate else ""
        searched = ", ".join(f.shown for f in files)
        unrecordable = target.unrecordable()
        if unrecordable or target.policy == STRICT:
            why = unrecordable or "the host-key policy is strict"
            raise HostKeyUnknown(
                f"unknown host key for {name}: {key.shown} is in none of {searched}{certificate}; "
                f"{why}",
                f"check the fingerprint with the host's owner, then add it to "
                f"{self.file(target.user_files[0]).shown if target.user_files else 'known_hosts'} "
                f"under {shlex.quote(name)}")
        first = self.file(target.user_files[0])
        with_ip = target.ip_name if ip_status == NEW else None
        text = _lines(name, key, target.hash_new, with_ip)
        return _Record(text, Verdict("added", name, key.key_type, key.fingerprint, first.shown))


class _VerifyPolicy(paramiko.MissingHostKeyPolicy):
    """``SSHClient`` calls this after key exchange and before authentication when its
    own (empty) host keys know nothing: exactly where `HostKeyStore.verify` belongs."""

    def __init__(self, store: HostKeyStore, target: HostKeyTarget) -> None:
        self.store, self.target = store, target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        transport, target = client.get_transport(), self.target
        assert transport is not None  # called during connect, on its transport
        if target.check_host_ip:  # the only check that needs the address connected to
            target = replace(target, address=peer_address(transport.sock))
        self.store.verify(transport, target)


def peer_address(sock: object) -> str | None:
    """The peer IP of a TCP socket; None for a proxy command or a jump host's channel."""
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            address: str = sock.getpeername()[0]  # (host, port[, flow, scope]) for AF_INET/AF_INET6
            return address
        except OSError:
            return None
    return None


def _is_cert(algorithm: str) -> bool:
    return algorithm.endswith(CERT_SUFFIX)


def _plain_type(algorithm: str) -> str:
    """The key type an algorithm uses: ``rsa-sha2-512(-cert-v01@openssh.com)`` -> ``ssh-rsa``."""
    if _is_cert(algorithm):
        algorithm = algorithm[:-len(CERT_SUFFIX)]
    return "ssh-rsa" if algorithm in ("rsa-sha2-256", "rsa-sha2-512") else algorithm


def _status(entries: list[_Match] | None, key: _Offered) -> tuple[str, _Match | None]:
    """``check_hostkeys_by_key_or_type``: ok / new / changed / revoked, and the entry behind it.

    A certificate is looked up among ``@cert-authority`` lines by its CA, a
    plain key among unmarked lines: it is ok if any recorded key equals it,
    changed if only other keys are recorded. Then ``@revoked`` lines are
    checked against the key and a certificate's CA.
    """
    status, found = NEW, None
    cert = key.certificate
    for match in entries or ():
        entry = match[1]
        if entry.marker != (CERT_AUTHORITY if cert else None):
            continue
        if entry.blob == (cert.ca_blob if cert else key.blob):
            status, found = OK, match
            break
        if not cert:
            status, found = CHANGED, match
    for match in entries or ():
        entry = match[1]
        if entry.marker == REVOKED and (entry.blob == key.blob or (cert and entry.blob == cert.ca_blob)):
            return REVOKED_KEY, match
    return status, found


def _where(match: _Match | None) -> str:
    return f"{match[0].shown}:{match[1].line}" if match else ""


def _verdict(status: str, name: str, key: _Offered, found: _Match | None) -> Verdict:
    key_type = key.certificate.cert_type if key.certificate else key.key_type
    return Verdict(status, name, key_type, key.fingerprint, _where(found))


def _lines(name: str, key: _Offered, hashed: bool, ip_name: str | None = None) -> str:
    """known_hosts lines for a new key, as ssh's ``add_host_to_hostfile`` writes them."""
    key_text = f"{key.key_type} {base64.b64encode(key.blob).decode()}"
    names = [name.lower()] + ([ip_name.lower()] if ip_name else [])
    if hashed:  # one hashed line per name
        return "".join(f"{hash_name(n)} {key_text}\n" for n in names)
    return f"{','.join(names)} {key_text}\n"


def _removal_hint(name: str, match: _Match) -> str:
    """How to remove the entry that ``match`` found for ``name``."""
    file, entry = match
    if _Names.kind_of(entry.names) == _Names.PATTERN:
        return (f"the entry is the pattern {entry.names!r} at {file.shown}:{entry.line}, shared with "
                f"other hosts: edit that line")
    return f"remove the old entry with `ssh-keygen -R {shlex.quote(name)} -f {_shell_path(file.shown)}`"


def _changed(name: str, key: _Offered, found: _Match, ip_name: str | None, ip_status: str,
             ip_found: _Match | None) -> HostKeyChanged:
    recorded = found[1]
    also = ""
    if ip_name and ip_status == CHANGED and ip_found and ip_found[1].blob != recorded.blob:
        also = f"; {ip_name} has yet another key in {_where(ip_found)}"
    elif ip_name and ip_status == OK:
        also = f"; the key recorded for {ip_name} is unchanged (possible DNS spoofing)"
    return HostKeyChanged(
        f"host key for {name} has changed: the server offered {key.shown}, {_where(found)} records "
        f"{recorded.key_type} {_fingerprint(recorded.blob)}{also} (possible man-in-the-middle, "
        f"or the host was rebuilt)",
        f"check the new fingerprint with the host's owner; if the host was rebuilt, "
        f"{_removal_hint(name, found)} and reconnect (a changed key is never accepted automatically)")


def _ip_changed(name: str, ip_name: str | None, key: _Offered, ip_found: _Match) -> HostKeyChanged:
    return HostKeyChanged(
        f"host key for {name} ({key.shown}) differs from the key recorded for its address "
        f"{ip_name} in {_where(ip_found)} (CheckHostIP; possible DNS spoofing, or the address "
        f"was reused)",
        f"check the fingerprint with the host's owner; if the address was reused, "
        f"{_removal_hint(ip_name or name, ip_found)}")


def _revoked(name: str, key: _Offered, found: _Match) -> HostKeyRevoked:
    what = (f"the CA key of its certificate ({_fingerprint(key.certificate.ca_blob)})"
            if key.certificate and found[1].blob == key.certificate.ca_blob else key.shown)
    return HostKeyRevoked(
        f"host key for {name} is revoked: {what} is marked @revoked in {_where(found)}",
        "a revoked key may be stolen: do not connect; get the host's new key from its owner "
        "(revoked keys are refused under every policy)")
