"""A host's files as a transfer sees them: over SFTP (`RemoteFiles`) or the controller's own (`LocalFiles`).

Both offer the same few operations: stat, list a directory, make one,
create a temp file exclusively, read, *finish* (permission bits + mtime,
then an atomic rename onto the final name), remove, sha256 of many files at
once, and free space. Both raise ``OSError`` with the same errnos where the
protocol carries one, so `cluster.transfer` runs one code path for both.
SFTP (version 3, OpenSSH's ``sftp-server``) only tells "no such file" and
"permission denied" apart; everything else, a full disk included, comes as a
bare "Failure" (``errno`` None): `cluster.transfer` asks `free_bytes` then.

`open_sftp` is the one place that reaches into an engine session for its
authenticated paramiko Transport.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shlex
import shutil
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

import paramiko

from .ssh import HostSession

# The SFTP channel's receive window and largest packet we accept (what a `get`
# is fed with): OpenSSH's and paramiko's defaults. A larger window made `get`
# slower and costlier on 16 hosts (8 MiB: 1.3x the wall time and CPU), as
# paramiko buffers more unread data; docs/performance.md, "Transfers".
SFTP_WINDOW = 2 * 1024 * 1024
SFTP_MAX_PACKET = 32768
# Bytes per SFTP read/write request. paramiko sends 32 KiB ("some servers choke"
# on more). OpenSSH's sftp-server takes messages up to 256 KiB and tells its own
# client (limits@openssh.com) to send 255 KiB: fewer requests, each answered,
# 15-20 % more throughput on 16 hosts (docs/performance.md, "Transfers").
SFTP_REQUEST = 32768
OPENSSH_SFTP_REQUEST = 261120
# Read-ahead of one file in a `get`: at most this many SFTP read requests in flight.
PREFETCH_REQUESTS = 128

# One remote command hashes every candidate file: paths arrive NUL-separated
# on stdin (never on a command line, so no quoting and no ARG_MAX limit);
# exit 127 when the host has no hashing tool (the files are then copied).
HASH_COMMAND = (
    "if command -v sha256sum >/dev/null 2>&1; then set -- sha256sum; "
    "elif command -v shasum >/dev/null 2>&1; then set -- shasum -a 256; "
    "else exit 127; fi; exec xargs -0 \"$@\" --"
)
HASH_READ_RATE = 50e6  # bytes/s a host hashes at least; sizes the hash command's timeout
_HASH_CHUNK = 1 << 20


class SftpUnavailable(paramiko.SSHException):
    """The host's sshd refused the ``sftp`` subsystem (or it failed to start)."""


def open_sftp(session: HostSession, timeout: float) -> paramiko.SFTPClient:
    """An SFTP client on ``session``'s authenticated connection (opened if needed).

    ``timeout``: seconds any read or write may wait without progress before
    raising ``TimeoutError`` (a stalled host never hangs the transfer).
    """
    session.open()
    transport = session.connection.client.get_transport()
    if transport is None or not transport.is_active():
        # The cached connection died (host rebooted, sshd restarted): reconnect once.
        session.release()
        session.open()
        transport = session.connection.client.get_transport()
    channel = transport.open_session(window_size=SFTP_WINDOW, max_packet_size=SFTP_MAX_PACKET,
                                     timeout=session.connect_timeout)
    channel.settimeout(timeout)
    try:
        channel.invoke_subsystem("sftp")
        return paramiko.SFTPClient(channel)
    except (paramiko.SSHException, EOFError) as exc:
        channel.close()
        if transport.is_active():
            raise SftpUnavailable(str(exc) or type(exc).__name__) from None
        raise


def request_size(server_version: str) -> int:
    """Bytes per SFTP request for a server that sent this SSH version string (`SFTP_REQUEST`)."""
    software = server_version.split("-", 2)[-1]
    return OPENSSH_SFTP_REQUEST if software.startswith("OpenSSH_") else SFTP_REQUEST


def remote_relative(path: str) -> str:
    """``~/x`` -> ``x``, ``~`` -> ``.``: SFTP starts in the login directory and does not expand ``~``."""
    if path == "~":
        return "."
    if path.startswith("~/"):
        return path[2:] or "."
    return path


@dataclass(frozen=True)
class Attributes:
    """What a transfer needs to know about one file (``lstat`` in listings)."""

    name: str
    size: int
    mode: int
    mtime: float

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @classmethod
    def of(cls, name: str, st: Any) -> Attributes:
        return cls(name, int(st.st_size or 0), int(st.st_mode or 0), float(st.st_mtime or 0))


class RemoteFiles:
    """One host's files over SFTP; hashes and free space through one shell command each."""

    is_local = False
    where = ""  # failure messages name the path only: the row already names the host

    def __init__(self, session: HostSession, sftp: paramiko.SFTPClient, timeout: float) -> None:
        self.session = session
        self.sftp = sftp
        self.timeout = timeout
        channel = sftp.get_channel()
        assert channel is not None  # an open SFTPClient has its channel
        self.request_size = request_size(channel.get_transport().remote_version)

    def alive(self) -> bool:
        """Whether the SFTP channel and its connection still stand (else: connection lost)."""
        channel = self.sftp.get_channel()
        transport = channel.get_transport() if channel is not None else None
        return bool(channel and not channel.closed and transport and transport.is_active())

    def answers(self) -> bool:
        """Whether the server still answers a request (one round trip). Right after its
        peer died a transport can still look `alive`, and the dying sftp-server's bare
        "Failure" must not be taken for a file error."""
        if not self.alive():
            return False
        try:
            self.sftp.normalize(".")
            return True
        except (OSError, EOFError, paramiko.SSHException):
            return False

    def close(self) -> None:
        try:
            self.sftp.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def resolve(self, path: str) -> str:
        return remote_relative(path)

    def normalize(self, path: str) -> str:
        return self.sftp.normalize(path)

    def stat(self, path: str) -> Attributes | None:
        try:
            return Attributes.of(posixpath.basename(path), self.sftp.stat(path))
        except FileNotFoundError:
            return None

    def listdir(self, path: str) -> list[Attributes]:
        return [Attributes.of(a.filename, a) for a in self.sftp.listdir_attr(path)]

    def mkdir(self, path: str) -> None:
        self.sftp.mkdir(path, 0o777)  # the server's umask applies, as with mkdir -p

    def chmod(self, path: str, mode: int) -> None:
        self.sftp.chmod(path, mode)

    def create(self, path: str) -> PipelinedWriter:
        """A new file for writing; fails if ``path`` exists (never follows a planted link)."""
        return PipelinedWriter(self.sftp.open(path, "wbx"), self.request_size)

    def open_read(self, path: str, size: int) -> paramiko.SFTPFile:
        handle = self.sftp.open(path, "rb")
        handle.MAX_REQUEST_SIZE = self.request_size
        if size > SFTP_MAX_PACKET:
            handle.prefetch(size, PREFETCH_REQUESTS)
        return handle

    def finish(self, temp: str, final: str, mode: int, mtime: float) -> None:
        """Give ``temp`` its mode and mtime, then rename it onto ``final`` atomically."""
        self.sftp.chmod(temp, mode)
        self.sftp.utime(temp, (mtime, mtime))
        try:
            self.sftp.posix_rename(temp, final)
        except OSError as exc:
            if exc.errno is not None or "unsupported" not in str(exc).lower():
                raise
            # A server without posix-rename@openssh.com: plain SFTP rename refuses
            # to replace, so remove first (not atomic: documented in docs/transfer.md).
            if self.stat(final) is not None:
                self.sftp.remove(final)
            self.sftp.rename(temp, final)

    def remove(self, path: str) -> None:
        self.sftp.remove(path)

    def sha256(self, paths: list[str], size: int) -> dict[str, str]:
        """sha256 of each path that exists, by one remote command; {} when the host has no tool."""
        if not paths:
            return {}
        result = self.session.run(HASH_COMMAND, stdin="\0".join(paths) + "\0",
                                  timeout=self.timeout + size / HASH_READ_RATE)
        if result.exited == 127:
            return {}
        return parse_sha256sum(result.stdout)

    def free_bytes(self, directory: str) -> int | None:
        """Bytes available to the login user in ``directory``'s file system, None if unknown."""
        try:
            result = self.session.run(f"df -Pk -- {shlex.quote(directory)}", timeout=self.timeout)
        except Exception:  # diagnosis only: the original failure is what counts
            return None
        return parse_df_available(result.stdout) if result.ok else None


class PipelinedWriter:
    """An SFTP file written without waiting for each write's answer; ``close`` checks them all.

    paramiko's pipelined ``SFTPFile`` only reads the answers of the writes it
    drains itself (in batches, once more than 100 are pending); ``close()``
    drops the others unread. A write the server refused (a full disk) would go
    unnoticed and a truncated file would be renamed into place. Here every
    answer is read before closing, then the file's size is checked against
    what was sent.
    """

    def __init__(self, handle: paramiko.SFTPFile, request_size: int) -> None:
        handle.set_pipelined(True)
        handle.MAX_REQUEST_SIZE = request_size  # bytes per write request
        self.handle = handle
        self.written = 0
        self._closing = False

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.written += len(data)

    def close(self) -> None:
        if self._closing:  # a second call (after a failure) only releases the handle
            self.handle.close()
            return
        self._closing = True
        # paramiko privates (absent from its stubs): the numbers of the writes not yet answered
        pending = self.handle._reqs  # type: ignore[attr-defined]
        while pending:
            self.handle.sftp._read_response(pending.popleft())  # type: ignore[attr-defined]  # raises on a refused write
        size = self.handle.stat().st_size
        if size != self.written:
            raise OSError(f"the file holds {size} bytes after {self.written} were written")
        self.handle.close()


class LocalFiles:
    """The controller's own files, with the same operations as `RemoteFiles`."""

    is_local = True

    def __init__(self, hashes: HashCache | None = None, where: str = "") -> None:
        self.hashes = hashes or HashCache()
        self.where = where  # "the controller" when it is get's destination, named in failures

    def alive(self) -> bool:
        return True

    def answers(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def resolve(self, path: str) -> str:
        """Relative paths start in the home directory, as they do over SFTP."""
        return os.path.join(os.path.expanduser("~"), remote_relative(path))

    def normalize(self, path: str) -> str:
        return os.path.abspath(path)

    def stat(self, path: str) -> Attributes | None:
        try:
            return Attributes.of(os.path.basename(path), os.stat(path))
        except FileNotFoundError:
            return None

    def listdir(self, path: str) -> list[Attributes]:
        with os.scandir(path) as entries:
            return [Attributes.of(e.name, e.stat(follow_symlinks=False)) for e in entries]

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o777)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)

    def create(self, path: str) -> IO[bytes]:
        return open(path, "xb")

    def open_read(self, path: str, size: int) -> IO[bytes]:
        return open(path, "rb")

    def finish(self, temp: str, final: str, mode: int, mtime: float) -> None:
        os.chmod(temp, mode)
        os.utime(temp, (mtime, mtime))
        os.replace(temp, final)

    def remove(self, path: str) -> None:
        os.remove(path)

    def sha256(self, paths: list[str], size: int) -> dict[str, str]:
        found = {}
        for path in paths:
            try:
                found[path] = self.hashes.get(path)
            except OSError:  # missing or unreadable: it will be copied over
                continue
        return found

    def free_bytes(self, directory: str) -> int | None:
        try:
            return shutil.disk_usage(directory).free
        except OSError:
            return None


class HashCache:
    """sha256 of local files, each computed once however many hosts ask (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._known: dict[str, str] = {}

    def get(self, path: str) -> str:
        with self._lock:
            lock = self._locks.setdefault(path, threading.Lock())
        with lock:
            if path not in self._known:
                self._known[path] = file_sha256(path)
            return self._known[path]


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- pure parsers (tests/fixtures/transfer/) ----------------------------------------------

_ESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}


def parse_sha256sum(text: str) -> dict[str, str]:
    """``{path: hex digest}`` from ``sha256sum`` / ``shasum -a 256`` output.

    Lines are ``HASH  NAME`` (or ``HASH *NAME``, binary mode). A name holding
    a backslash, newline or carriage return is escaped and its line starts
    with a backslash. Lines that do not parse (error text) are ignored: those
    files count as different and are copied.
    """
    found: dict[str, str] = {}
    for line in text.split("\n"):
        escaped = line.startswith("\\")
        if escaped:
            line = line[1:]
        digest, sep, rest = line.partition(" ")
        if not sep or len(digest) != 64 or not _is_hex(digest) or rest[:1] not in (" ", "*"):
            continue
        name = _unescape(rest[1:]) if escaped else rest[1:]
        if name is None:  # a bad escape
            continue
        found[name] = digest.lower()
    return found


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def _unescape(name: str) -> str | None:
    out, chars = [], iter(name)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        code = next(chars, "")
        if code not in _ESCAPES:
            return None
        out.append(_ESCAPES[code])
    return "".join(out)


def parse_df_available(text: str) -> int | None:
    """Available bytes from ``df -Pk`` output (POSIX format), None if it does not parse.

    The data line is ``DEVICE BLOCKS USED AVAILABLE CAPACITY% MOUNTPOINT``;
    the mount point may hold spaces, so the capacity (``NN%``) anchors it.
    """
    for line in reversed(text.strip().splitlines()[1:]):
        fields = line.split()
        for index in range(4, len(fields)):
            if fields[index].endswith("%") and fields[index - 1].isdigit():
                return int(fields[index - 1]) * 1024
    return None


def unsafe_names(names: Iterable[str]) -> list[str]:
    """Names a server listed that must not become local paths (``..``, ``/``, NUL, empty)."""
    return [n for n in names if n in ("", ".", "..") or "/" in n or "\0" in n]
