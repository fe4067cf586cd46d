"""Copy files to and from every host: `put` (controller -> hosts) and `get` (hosts -> controller).

Over SFTP on the engine's connections (the same bounded fan-out, host keys
and failure classification as every task); ``local`` is a plain local copy
through the same code (`cluster.hostfiles.LocalFiles`).

What holds on every host (docs/transfer.md):

* A file appears at its final name whole or not at all: it is written to a
  temp name in the destination directory (``.NAME.XXXXXXXX.part``, created
  exclusively) and renamed onto the final name. A failed file's temp is
  removed, over a fresh connection when the old one died; the failure
  names it when even that is impossible.
* Permission bits (rwx) and the modification time are copied;
  setuid/setgid/sticky bits and ownership are not.
* A destination file with the source's size and sha256 is left alone
  (``skipped``) unless ``force``; one remote command hashes every candidate
  of a host (`cluster.hostfiles.HASH_COMMAND`); without a hashing tool the
  files are copied.
* `get` writes ``LOCALDIR/<host>/<name>``: one directory per host
  (`host_dir_name`, distinct for every ``user@host:port``), so no host
  writes over another's file.

Bad input (a missing local file, a directory without ``recursive``, an
unusable LOCALDIR) raises `InputError` before any connection. Per-host
problems are `Failure` values with the kinds below (docs/transfer.md).
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import paramiko
from invoke.exceptions import CommandTimedOut

from .defaults import TRANSFER_IDLE_TIMEOUT_S
from .errors import InputError
from .hostfiles import (
    Attributes,
    HashCache,
    LocalFiles,
    RemoteFiles,
    SftpUnavailable,
    open_sftp,
    unsafe_names,
)
from .hosts import Host
from .result import SSH, Failure, Report, build_report
from .ssh import Engine, HostSession

Files = LocalFiles | RemoteFiles  # either side of a transfer

# Failure kinds of put/get (besides the connection kinds of the contract).
NO_SUCH_FILE = "no-such-file"
NO_SUCH_DIR = "no-such-dir"
NOT_A_DIRECTORY = "not-a-directory"
IS_A_DIRECTORY = "is-a-directory"
PERMISSION_DENIED = "permission-denied"
DISK_FULL = "disk-full"
NO_SFTP = "no-sftp"
STALLED = "stalled"
TRANSFER = "transfer"
KINDS = (NO_SUCH_FILE, NO_SUCH_DIR, NOT_A_DIRECTORY, IS_A_DIRECTORY, PERMISSION_DENIED, DISK_FULL,
         NO_SFTP, STALLED, TRANSFER)

CHANGED = "changed"
SKIPPED = "skipped"

_CHUNK = 1 << 20  # bytes read from the source per write (and per progress report)
_PERMISSION_BITS = 0o777

# on_progress(host, sent=, skipped=, planned=): bytes moved / found unchanged since the last
# call, or the bytes a host is about to handle (once, when it knows: get learns sizes on the host).
Progress = Callable[..., None]


class TransferError(Exception):
    """A per-host failure found while transferring; carries its `Failure`."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


# ---------------------------------------------------------------------------
# Plans: everything checked before connecting
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One file or directory of a source tree."""

    rel: str  # posix path below the source root; "" is the root itself
    size: int
    mode: int  # permission bits only
    mtime: float
    is_dir: bool = False


@dataclass(frozen=True)
class PutPlan:
    """What `put` sends: a local file or tree, and the destination as the user typed it."""

    source: str  # absolute local path
    name: str  # the name it gets inside a destination directory
    destination: str
    is_dir: bool
    entries: tuple[Entry, ...]  # the root first, directories before their contents
    not_copied: tuple[str, ...] = ()  # symlinked directories, sockets, fifos, devices

    @property
    def files(self) -> list[Entry]:
        return [e for e in self.entries if not e.is_dir]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries if not e.is_dir)


@dataclass(frozen=True)
class GetPlan:
    """What `get` fetches: a remote path, into one directory per host under ``directory``."""

    source: str
    directory: str
    recursive: bool
    host_dirs: dict[Host, str] = field(hash=False)


def plan_put(local: str, remote: str, recursive: bool = False) -> PutPlan:
    """Check LOCAL and REMOTE and list what to send; `InputError` (exit 2) when unusable."""
    _check_remote_path(remote, "REMOTE")
    path = os.path.abspath(os.path.expanduser(local))
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"put: no such file or directory: {local}") from None
    except OSError as exc:
        raise InputError(f"put: cannot read {local}: {exc.strerror}") from None
    name = os.path.basename(path.rstrip("/"))
    if not name:
        raise InputError(f"put: {local} has no name to give the copy")
    if stat.S_ISDIR(info.st_mode):
        if not recursive:
            raise InputError(f"put: {local} is a directory: pass --recursive")
        entries, not_copied = _walk_local(path)
        return PutPlan(path, name, remote, True, entries, not_copied)
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"put: {local} is not a regular file or directory")
    _check_readable(path, local)
    return PutPlan(path, name, remote, False, (_entry("", info),))


def plan_get(remote: str, localdir: str, hosts: Sequence[Host], recursive: bool = False) -> GetPlan:
    """Check REMOTE and LOCALDIR, create LOCALDIR and name each host's directory in it."""
    _check_remote_path(remote, "REMOTE")
    directory = os.path.abspath(os.path.expanduser(localdir))
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise InputError(f"get: LOCALDIR {localdir} exists and is not a directory")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise InputError(f"get: cannot create LOCALDIR {localdir}: {exc.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InputError(f"get: cannot write in LOCALDIR {localdir}")
    names: dict[str, Host] = {}
    for host in hosts:
        name = host_dir_name(host)
        other = names.setdefault(name.casefold(), host)
        if other != host:
            raise InputError(f"get: hosts {other} and {host} would share {localdir}/{name}: "
                             "name each host once")
    host_dirs = {h: os.path.join(directory, host_dir_name(h)) for h in hosts}
    return GetPlan(remote, directory, recursive, host_dirs)


_DIR_NAME_SAFE = re.compile(r"[^A-Za-z0-9.-]")


def host_dir_name(host: Host) -> str:
    """The directory `get` writes a host's files to: ``user@name_port``, distinct per host.

    Characters other than letters, digits, ``.`` and ``-`` in the user and
    host name are %-escaped (``fe80::1`` -> ``fe80%3A%3A1``), so ``@`` and
    ``_`` only ever separate user, name and port, and two different hosts
    never get the same directory. A leading dot is escaped too (no ``..``).
    """
    def escape(text: str) -> str:
        escaped = _DIR_NAME_SAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), text)
        return "%2E" + escaped[1:] if escaped.startswith(".") else escaped

    name = escape(host.hostname)
    if host.user:
        name = f"{escape(host.user)}@{name}"
    return f"{name}_{host.port}" if host.port else name


def _check_remote_path(path: str, what: str) -> None:
    if not path:
        raise InputError(f"{what} must not be empty")
    if "\0" in path or "\n" in path:
        raise InputError(f"{what}: a path cannot hold a NUL or newline: {path!r}")


def _check_readable(path: str, shown: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InputError(f"put: cannot read {shown}: {exc.strerror}") from None


def _entry(rel: str, info: os.stat_result, is_dir: bool = False) -> Entry:
    return Entry(rel, 0 if is_dir else info.st_size, info.st_mode & _PERMISSION_BITS,
                 info.st_mtime, is_dir)


def _walk_local(root: str) -> tuple[tuple[Entry, ...], tuple[str, ...]]:
    """The tree under ``root``: directories (not followed when symlinked) and files."""
    entries = [_entry("", os.stat(root), True)]
    not_copied: list[str] = []

    def fail(exc: OSError) -> None:
        raise InputError(f"put: cannot read {exc.filename}: {exc.strerror}")

    for directory, dirs, files in os.walk(root, onerror=fail):
        dirs.sort()
        rel_dir = os.path.relpath(directory, root)
        for name in sorted(dirs) + sorted(files):
            path = os.path.join(directory, name)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            _check_utf8(rel)
            try:
                info = os.stat(path)
            except OSError:  # a dangling symlink
                not_copied.append(rel)
                continue
            if stat.S_ISDIR(info.st_mode) and os.path.islink(path):
                not_copied.append(rel)
            elif stat.S_ISDIR(info.st_mode):
                entries.append(_entry(rel, info, True))
            elif stat.S_ISREG(info.st_mode):
                _check_readable(path, path)
                entries.append(_entry(rel, info))
            else:
                not_copied.append(rel)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(directory, d))]
    return tuple(entries), tuple(not_copied)


def _check_utf8(name: str) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"put: file name is not UTF-8 (SFTP needs UTF-8 names): {name!r}") from None


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FileCopy:
    """One file of a host's transfer: where it went, its size, changed or skipped."""

    path: str
    size: int
    status: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "status": self.status}


@dataclass
class HostTransfer:
    """``Outcome.data`` of put/get: what one host's transfer did (also when it failed)."""

    target: str = ""  # put: the remote path written; get: the local path
    files: list[FileCopy] = field(default_factory=list)
    sent: int = 0  # bytes that crossed the connection (or the local copy)
    seconds: float = 0.0
    not_copied: list[str] = field(default_factory=list)  # get: symlinks, special files, unsafe names
    failure: Failure | None = None

    @property
    def changed(self) -> int:
        return sum(1 for f in self.files if f.status == CHANGED)

    @property
    def skipped(self) -> int:
        return sum(1 for f in self.files if f.status == SKIPPED)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.target, "bytes": self.sent, "seconds": round(self.seconds, 3),
                "changed": self.changed, "skipped": self.skipped,
                "files": [f.to_json() for f in self.files], "not_copied": list(self.not_copied)}


# ---------------------------------------------------------------------------
# put / get across hosts
# ---------------------------------------------------------------------------

def put(engine: Engine, hosts: Sequence[Host], plan: PutPlan, *, mkdir: bool = False,
        force: bool = False, timeout: float = TRANSFER_IDLE_TIMEOUT_S, fanout: int | None = None,
        on_progress: Progress | None = None,
        on_done: Callable[[HostSession, Any], None] | None = None) -> Report:
    """Copy ``plan``'s file or tree to every host; ``Outcome.data`` is a `HostTransfer`.

    ``mkdir`` creates missing destination directories; ``force`` copies files
    that are already there with the same content.
    """
    hashes = HashCache()  # each local file hashed once, however many hosts need it

    def work(session: HostSession) -> HostTransfer:
        return _on_host(session, timeout, on_progress, hashes,
                        lambda job: _put_tree(job, plan, mkdir, force), sending=True)

    return _report(engine.call(hosts, work, fanout=fanout, on_done=on_done), engine)


def get(engine: Engine, hosts: Sequence[Host], plan: GetPlan, *, force: bool = False,
        timeout: float = TRANSFER_IDLE_TIMEOUT_S, fanout: int | None = None,
        on_progress: Progress | None = None,
        on_done: Callable[[HostSession, Any], None] | None = None) -> Report:
    """Fetch ``plan.source`` from every host into ``plan.host_dirs[host]``; data: `HostTransfer`."""
    def work(session: HostSession) -> HostTransfer:
        return _on_host(session, timeout, on_progress, None,
                        lambda job: _get_tree(job, plan, force), sending=False)

    return _report(engine.call(hosts, work, fanout=fanout, on_done=on_done), engine)


def _report(results: Any, engine: Engine) -> Report:
    report = build_report(results, engine)
    for outcome in report:
        if isinstance(outcome.data, HostTransfer) and outcome.data.failure is not None:
            outcome.fail(outcome.data.failure)
    return report


class _Job:
    """One host's transfer in progress: both sides, the result, the temp files not yet renamed."""

    def __init__(self, session: HostSession, host_files: Files, sending: bool,
                 on_progress: Progress | None, hashes: HashCache | None) -> None:
        self.session = session
        self.host_files = host_files
        controller = LocalFiles(hashes, where="the controller")
        self.src: Files
        self.dst: Files
        self.src, self.dst = (controller, host_files) if sending else (host_files, controller)
        self.result = HostTransfer()
        self.temps: list[str] = []  # on self.dst
        self._on_progress = on_progress
        self.total = 0  # bytes this host should move (for messages)

    def progress(self, sent: int = 0, skipped: int = 0, planned: int = 0) -> None:
        self.result.sent += sent
        if self._on_progress is not None:
            self._on_progress(self.session.host, sent=sent, skipped=skipped, planned=planned)


def _on_host(session: HostSession, timeout: float, on_progress: Progress | None,
             hashes: HashCache | None, body: Callable[[_Job], None], sending: bool) -> HostTransfer:
    """Run ``body`` on one host; connection failures raise (classified like every task's)."""
    started = time.monotonic()
    try:
        host_files = (LocalFiles() if session.host.is_local
                      else RemoteFiles(session, open_sftp(session, timeout), timeout))
    except SftpUnavailable as exc:
        return HostTransfer(failure=Failure(
            NO_SFTP, f"the host's sshd refused the sftp subsystem: {exc}",
            "enable it in sshd_config (Subsystem sftp ...) or ask the host's admin"))
    job = _Job(session, host_files, sending, on_progress, hashes)
    error: BaseException | None = None
    try:
        body(job)
    except Exception as exc:  # per-host failure: a value on the outcome
        error = exc
    finally:
        # A stalled channel would stall the cleanup too: remove temps over a new connection.
        left = _remove_temps(job, timeout, fresh=isinstance(error, TimeoutError))
        job.host_files.close()
        job.result.seconds = time.monotonic() - started
    if error is not None:
        job.result.failure = _failure_of(error, job, left, timeout)
    return job.result


def _failure_of(error: BaseException, job: _Job, left: list[str], timeout: float) -> Failure:
    if isinstance(error, TransferError):
        failure = error.failure
    elif isinstance(error, TimeoutError):
        failure = Failure(STALLED, f"no progress for {timeout:g} s after {_size(job.result.sent)}",
                          "the host or the network hangs; check it, or raise --timeout")
    elif isinstance(error, (paramiko.SSHException, EOFError, OSError)):
        detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        failure = Failure(SSH, f"connection lost after {_size(job.result.sent)} of "
                          f"{_size(job.total)} ({detail})",
                          "the host or its sshd went away mid-transfer; no file was left half-"
                          "written at its final name; rerun to finish (unchanged files are skipped)")
    else:
        failure = Failure(TRANSFER, f"{type(error).__name__}: {error}", "unexpected error; "
                          "rerun with --json for details")
    if left:
        where = ", ".join(left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
        failure = Failure(failure.kind, f"{failure.message}; temp file left: {where}",
                          f"{failure.hint}; remove the temp file by hand")
    return failure


def _remove_temps(job: _Job, timeout: float, fresh: bool = False) -> list[str]:
    """Remove the temp files of files that failed; over a new connection if the old one
    died (or stalled: ``fresh``).

    Returns the temp files that could not be removed (named in the failure).
    """
    if not job.temps:
        return []
    side = job.dst
    if side.is_local:
        return _remove_each(side, job.temps)
    # A transport can look alive right after its peer died: whatever the old channel
    # could not remove is retried over a new one.
    left = list(job.temps) if fresh or not side.answers() else _remove_each(side, job.temps)
    if not left:
        return []
    try:
        job.session.release()
        new = RemoteFiles(job.session, open_sftp(job.session, timeout), timeout)
    except Exception:
        return left
    try:
        return _remove_each(new, left)
    finally:
        new.close()


def _remove_each(side: Files, temps: Sequence[str]) -> list[str]:
    """Remove ``temps`` on ``side``; the ones that could not be removed."""
    left = []
    for temp in temps:
        try:
            side.remove(temp)
        except FileNotFoundError:
            pass
        except Exception:
            left.append(temp)
    return left


# ---------------------------------------------------------------------------
# put on one host
# ---------------------------------------------------------------------------

def _put_tree(job: _Job, plan: PutPlan, mkdir: bool, force: bool) -> None:
    dst = job.dst
    target = _put_target(dst, plan, mkdir)
    job.result.target = target
    job.total = plan.size
    job.progress(planned=job.total)
    existing, created = _dest_dirs(dst, target, plan) if plan.is_dir else (
        _existing_file(dst, target), [])
    pairs = [(_join(plan.source, e.rel), _join(target, e.rel), e) for e in plan.files]
    same = set() if force else _unchanged(
        job, [(s, d, e.size) for s, d, e in pairs if _same_size(existing.get(d), e.size)])
    for source, dest, entry in pairs:
        if dest in same:
            job.result.files.append(FileCopy(dest, entry.size, SKIPPED))
            job.progress(skipped=entry.size)
            continue
        if existing.get(dest) is not None and existing[dest].is_dir:
            raise TransferError(Failure(IS_A_DIRECTORY, f"{dest} is a directory",
                                        "remove it, or put to another path"))
        _copy(job, source, dest, entry.size, entry.mode, entry.mtime)
        job.result.files.append(FileCopy(dest, entry.size, CHANGED))
    for path, mode in reversed(created):  # last: a read-only directory must be filled first
        with _doing("chmod", dst, path):
            dst.chmod(path, mode)


def _put_target(dst: Files, plan: PutPlan, mkdir: bool) -> str:
    """Where the source goes on this host, like cp/scp: into REMOTE if it is a directory."""
    given = dst.resolve(plan.destination)
    into = given.endswith("/")
    with _doing("reach", dst, given):
        attrs = dst.stat(given)
    if attrs is not None and attrs.is_dir:
        return _join(_normalized(dst, given), plan.name)
    if attrs is not None:
        if into or plan.is_dir:
            raise TransferError(Failure(NOT_A_DIRECTORY, f"{given.rstrip('/')} is a file, not a "
                                        "directory", "put to a directory, or to a new path"))
        return _normalized(dst, given)
    directory, name = ((given.rstrip("/") or "/"), plan.name) if into else (
        posixpath.dirname(given) or ".", posixpath.basename(given))
    if mkdir:
        _makedirs(dst, directory)
    return _join(_normalized(dst, directory), name)


def _normalized(side: Files, path: str, action: str = "reach") -> str:
    with _doing(action, side, path, missing=NO_SUCH_DIR):
        return side.normalize(path)


def _makedirs(dst: Files, directory: str) -> None:
    """``mkdir -p``: every missing directory on the way to ``directory``."""
    parts = [p for p in directory.split("/") if p not in ("", ".")]
    path = "/" if directory.startswith("/") else ""
    for part in parts:
        path = posixpath.join(path, part) if path else part
        with _doing("reach", dst, path):
            attrs = dst.stat(path)
        if attrs is None:
            with _doing("mkdir", dst, path):
                dst.mkdir(path)
        elif not attrs.is_dir:
            raise TransferError(Failure(NOT_A_DIRECTORY, f"{path} is a file, not a directory",
                                        "put to a directory, or to a new path"))


def _dest_dirs(dst: Files, target: str, plan: PutPlan) -> tuple[dict[str, Attributes], list[tuple[str, int]]]:
    """Create the tree's missing directories; return the files already there and the dirs made."""
    existing: dict[str, Attributes] = {}
    created: list[tuple[str, int]] = []
    for entry in (e for e in plan.entries if e.is_dir):
        path = _join(target, entry.rel)
        known = existing.get(path) if entry.rel else _stat(dst, path, "reach")
        if known is None:
            with _doing("mkdir", dst, path):
                dst.mkdir(path)
            created.append((path, entry.mode))
            continue
        if not known.is_dir:
            raise TransferError(Failure(NOT_A_DIRECTORY, f"{path} is a file, not a directory",
                                        "remove it, or put to another path"))
        with _doing("list", dst, path):
            for attrs in dst.listdir(path):
                existing[_join(path, attrs.name)] = attrs
    return existing, created


def _existing_file(dst: Files, path: str) -> dict[str, Attributes]:
    attrs = _stat(dst, path, "reach")
    return {path: attrs} if attrs is not None else {}


def _stat(side: Files, path: str, action: str = "stat") -> Attributes | None:
    with _doing(action, side, path):
        return side.stat(path)


def _same_size(attrs: Attributes | None, size: int) -> bool:
    return attrs is not None and attrs.is_file and attrs.size == size


def _unchanged(job: _Job, pairs: list[tuple[str, str, int]]) -> set[str]:
    """Destination paths whose file already has its source's sha256 (sizes already equal).

    The host is asked first (one command for all of ``pairs``): when it has
    no hashing tool, the controller's files are not hashed for nothing.
    """
    if not pairs:
        return set()
    size = sum(p[2] for p in pairs)
    host_is_source = job.src is job.host_files
    controller = job.dst if host_is_source else job.src
    host_paths = [s if host_is_source else d for s, d, _ in pairs]
    local_paths = [d if host_is_source else s for s, d, _ in pairs]
    try:
        on_host = job.host_files.sha256(host_paths, size)
    except CommandTimedOut:
        return set()  # hashing took too long: copy, which is always correct
    if not on_host:
        return set()
    here = controller.sha256([lp for hp, lp in zip(host_paths, local_paths) if hp in on_host], size)
    return {dest for (_, dest, _), hp, lp in zip(pairs, host_paths, local_paths)
            if on_host.get(hp) is not None and on_host.get(hp) == here.get(lp)}


# ---------------------------------------------------------------------------
# get from one host
# ---------------------------------------------------------------------------

def _get_tree(job: _Job, plan: GetPlan, force: bool) -> None:
    src, dst = job.src, job.dst
    given = src.resolve(plan.source)
    attrs = _stat(src, given)
    if attrs is None:
        raise TransferError(Failure(NO_SUCH_FILE, f"{given}: no such file or directory",
                                    "check the path on that host (relative paths start in the "
                                    "login user's home)"))
    absolute = _normalized(src, given, "stat")
    root = _join(plan.host_dirs[job.session.host], posixpath.basename(absolute.rstrip("/")) or "ROOT")
    job.result.target = root
    if attrs.is_dir:
        if not plan.recursive:
            raise TransferError(Failure(IS_A_DIRECTORY, f"{given} is a directory",
                                        "pass --recursive to fetch a directory"))
        dirs, files = _walk_remote(src, absolute, job.result.not_copied)
    elif attrs.is_file:
        dirs, files = [], [("", attrs)]
    else:
        raise TransferError(Failure(TRANSFER, f"{given} is not a regular file or directory",
                                    "only files and directories are copied"))
    job.total = sum(a.size for _, a in files)
    job.progress(planned=job.total)
    created = _local_dirs(dst, root, [("", attrs)] + dirs if attrs.is_dir else [])
    pairs = [(_join(absolute, rel), _join(root, rel), a) for rel, a in files]
    existing = {d: _stat(dst, d) for _, d, _ in pairs}
    same = set() if force else _unchanged(
        job, [(s, d, a.size) for s, d, a in pairs if _same_size(existing[d], a.size)])
    for source, dest, attrs_ in pairs:
        if dest in same:
            job.result.files.append(FileCopy(dest, attrs_.size, SKIPPED))
            job.progress(skipped=attrs_.size)
            continue
        _copy(job, source, dest, attrs_.size, attrs_.mode & _PERMISSION_BITS, attrs_.mtime)
        job.result.files.append(FileCopy(dest, attrs_.size, CHANGED))
    for path, mode in reversed(created):
        with _doing("chmod", dst, path):
            dst.chmod(path, mode)


def _walk_remote(src: Files, root: str, not_copied: list[str]
                 ) -> tuple[list[tuple[str, Attributes]], list[tuple[str, Attributes]]]:
    """Directories and regular files under ``root`` (symlinks and special files are listed apart)."""
    dirs: list[tuple[str, Attributes]] = []
    files: list[tuple[str, Attributes]] = []
    pending = [""]
    while pending:
        rel_dir = pending.pop(0)
        with _doing("list", src, _join(root, rel_dir)):
            listing = sorted(src.listdir(_join(root, rel_dir)), key=lambda a: a.name)
        unsafe = set(unsafe_names(a.name for a in listing))
        for attrs in listing:
            rel = f"{rel_dir}/{attrs.name}" if rel_dir else attrs.name
            if attrs.name in unsafe or stat.S_ISLNK(attrs.mode):
                not_copied.append(rel)
            elif attrs.is_dir:
                dirs.append((rel, attrs))
                pending.append(rel)
            elif attrs.is_file:
                files.append((rel, attrs))
            else:
                not_copied.append(rel)
    return dirs, files


def _local_dirs(dst: Files, root: str, dirs: list[tuple[str, Attributes]]) -> list[tuple[str, int]]:
    """Make the host's local directories; return the ones created, with their remote modes."""
    with _doing("mkdir", dst, root):
        os.makedirs(posixpath.dirname(root), exist_ok=True)
    created = []
    for rel, attrs in dirs:
        path = _join(root, rel)
        if not os.path.isdir(path):
            with _doing("mkdir", dst, path):
                dst.mkdir(path)
            created.append((path, attrs.mode & _PERMISSION_BITS))
    return created


# ---------------------------------------------------------------------------
# one file, both directions
# ---------------------------------------------------------------------------

def _copy(job: _Job, source: str, dest: str, size: int, mode: int, mtime: float) -> None:
    """``source`` (on job.src) to ``dest`` (on job.dst) through a temp name, then rename."""
    src, dst = job.src, job.dst
    temp = temp_name(dest)
    with _doing("create", dst, temp):
        out = dst.create(temp)
    job.temps.append(temp)
    done = 0
    try:
        with _doing("read", src, source, missing=NO_SUCH_FILE):
            inp = src.open_read(source, size)
        try:
            while True:
                with _doing("read", src, source):
                    chunk = inp.read(_CHUNK)
                if not chunk:
                    break
                with _doing("write", dst, temp, needed=size - done):
                    out.write(chunk)
                done += len(chunk)
                job.progress(sent=len(chunk))
        finally:
            _close_quietly(inp)
        with _doing("write", dst, temp, needed=size - done):
            out.close()
    except BaseException:
        _close_quietly(out)
        raise
    with _doing("rename", dst, dest):
        dst.finish(temp, dest, mode, mtime)
    job.temps.remove(temp)


def temp_name(final: str) -> str:
    """``dir/.NAME.XXXXXXXX.part``: beside the final name, unique per writer (NFS-shared dirs)."""
    directory, name = posixpath.split(final)
    short = name.encode("utf-8")[:150].decode("utf-8", "ignore")
    return posixpath.join(directory, f".{short}.{secrets.token_hex(4)}.part")


def _close_quietly(handle: Any) -> None:
    try:
        handle.close()
    except Exception:
        pass


def _join(root: str, rel: str) -> str:
    return posixpath.join(root, rel) if rel else root


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# ---------------------------------------------------------------------------
# classification of file errors
# ---------------------------------------------------------------------------

_VERBS = {"create": "create a file in", "write": "write", "read": "read", "mkdir": "create",
          "rename": "rename onto", "stat": "look up", "reach": "reach", "list": "list",
          "chmod": "set the mode of"}


@contextmanager
def _doing(action: str, side: Files, path: str, needed: int = 0,
           missing: str = NO_SUCH_DIR) -> Iterator[None]:
    """Turn an ``OSError`` of ``action`` on ``path`` into a `TransferError` with kind and hint.

    Connection errors pass through unchanged (`_failure_of` reports them).
    ``missing`` is the kind of ENOENT: a missing directory when writing, a
    missing file when reading a source.
    """
    try:
        yield
    except OSError as exc:
        if isinstance(exc, (ConnectionError, TimeoutError)) or not side.answers():
            raise
        raise TransferError(file_failure(exc, action, side, path, needed, missing)) from None


def file_failure(exc: OSError, action: str, side: Files, path: str, needed: int = 0,
                 missing: str = NO_SUCH_DIR) -> Failure:
    """The `Failure` of an ``OSError`` raised doing ``action`` on ``path``.

    Over SFTP only ENOENT and EACCES come with an errno; a bare failure
    while writing is checked against the file system's free space.
    """
    verb = _VERBS.get(action, action)
    place = f" on {side.where}" if side.where else ""
    code = exc.errno
    text = exc.strerror or (str(exc.args[0]) if exc.args else type(exc).__name__)
    if code == errno.ENOENT:
        if missing == NO_SUCH_FILE:
            return Failure(NO_SUCH_FILE, f"{path}: no such file or directory",
                           "check the path on that host")
        # "reach" looks a directory itself up; the others act on an entry inside one.
        folder = path if action == "reach" else posixpath.dirname(path.rstrip("/")) or "/"
        return Failure(NO_SUCH_DIR, f"{folder.rstrip('/') or '/'} does not exist",
                       "create it first, or pass --mkdir")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return Failure(PERMISSION_DENIED, f"cannot {verb} {path}{place}: {text}",
                       _permission_hint(action, side))
    if code in (errno.ENOSPC, errno.EDQUOT):
        return _disk_full(path, f"cannot {verb} {path}{place}: {text}")
    if code == errno.ENOTDIR:
        return Failure(NOT_A_DIRECTORY, f"cannot {verb} {path}{place}: a part of the path is a file",
                       "put to a directory, or to a new path")
    if code == errno.EISDIR:
        return Failure(IS_A_DIRECTORY, f"cannot {verb} {path}{place}: it is a directory",
                       "remove it, or use another path")
    if code is None and action in ("create", "write", "rename", "mkdir"):
        free = side.free_bytes(posixpath.dirname(path) or ".")
        if free is not None and free < max(needed, 1):
            return _disk_full(path, f"cannot {verb} {path}{place}: {_size(free)} free, "
                              f"{_size(needed)} still to write")
        return Failure(TRANSFER, f"cannot {verb} {path}: the SFTP server says {text!r}",
                       "it gives no reason: check free space and quotas (df -h), and that the "
                       "path is a regular file or directory")
    return Failure(TRANSFER, f"cannot {verb} {path}{place}: {text}",
                   "see the message; rerun with --json for details")


def _disk_full(path: str, message: str) -> Failure:
    folder = posixpath.dirname(path) or "."
    return Failure(DISK_FULL, message, f"free space on that file system (df -h {folder}), "
                   "or put to another one")


def _permission_hint(action: str, side: Files) -> str:
    if action in ("read", "list", "stat"):
        return "the login user cannot read it: fix its permissions, or copy it somewhere " \
               "readable first (inv run 'sudo cp ...')"
    return "the login user cannot write there: pick a directory it owns (e.g. under ~/), " \
           "or fix the permissions"
