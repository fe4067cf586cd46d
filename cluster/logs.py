"""Logs from every host: read the last lines, save them, or follow them live.

Which file: the caller names the files per host (`LogSource`): any path on every
host (:func:`file_sources`, ``--file``), or the server logs of a recorded PD
deployment (:func:`cluster.serving.records.select_log_sources`, which the API and the
task use when no file is named). Commands are built here (pure, every path and
pattern shell-quoted) and run over the engine's connections:

* :func:`read_logs`   one round trip per host: ``tail -n N`` (or the whole file),
  optionally through ``grep -E`` first (the last N *matching* lines).
* :func:`save_logs`   the same output streamed into ``DIR/<host>.log`` (never held
  in memory, so a complete multi-GB log is fine).
* :func:`follow_logs` ``tail -F`` on every host at once, on connections kept
  open, until stopped. Each complete line is handed to a callback with its host;
  ``tail``'s own notices (file removed, replaced, reappeared) come as notices,
  and a host whose stream ends (connection lost, sshd gone) is reported as it
  happens while the others keep streaming.

A missing file is that host's failure (kind ``no-log``), never the task's.
No rendering here.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .command import CommandResult
from .defaults import LOG_LINES, LOG_READ_TIMEOUT_S
from .errors import ParameterError
from .hosts import Host
from .options import regex
from .result import Failure, Outcome, Report, build_report, classify_exception
from .shell import path as shell_path
from .shell import quote
from .ssh import Engine, HostSession

# Failure kinds added by this module (docs/logs.md).
NO_LOG = "no-log"            # the file does not exist (or is a directory) on that host
UNREADABLE = "unreadable"    # it exists but the login user may not read it
DISCONNECTED = "disconnected"  # --follow: the host's stream ended before we stopped it

# Exit codes of the remote scripts (sysexits' EX_NOINPUT / EX_NOPERM).
MISSING_EXIT = 66
UNREADABLE_EXIT = 77
_MESSAGE_PREFIX = "cluster-logs: "

# GNU tail's messages about followed files ("has become inaccessible", "has
# appeared", "has been replaced", "cannot open") arrive on stderr; the follow
# command folds stderr into stdout so they show up in order, as notices.
_TAIL_NOTICE = re.compile(r"^tail: ")


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class LogSource:
    """The file(s) to read on one host. ``roles`` is informative (from a deployment)."""

    host: Host
    paths: tuple[str, ...]
    roles: tuple[str, ...] = ()


def file_sources(hosts: Sequence[Host], path: str) -> list[LogSource]:
    """The same ``path`` on every host (``--file``)."""
    if not path or not str(path).strip():
        raise ParameterError("file", "{name}: empty path")
    if "\n" in path or "\0" in path:
        raise ParameterError("file", "{name}: a path cannot hold a newline or NUL")
    return [LogSource(h, (path,)) for h in hosts]


# --------------------------------------------------------------------------- options


def check_lines(value: Any, option: str = "lines") -> int | None:
    """``value`` as a line count >= 0 (None stays None); `ParameterError` otherwise."""
    if value is None:
        return None
    text = str(value).strip()
    if not text.isdigit():
        raise ParameterError(option, f"{{name}} must be a whole number >= 0, got {value!r}")
    return int(text)


def check_grep(pattern: str | None) -> str | None:
    """A non-empty extended regular expression (None stays None).

    The hosts run ``grep -E``; Python's ``re`` accepts nearly every ERE, so a
    pattern it rejects (unbalanced parenthesis...) is refused here, before
    any connection, instead of failing on every host.
    """
    if pattern is None:
        return None
    if not str(pattern):
        raise ParameterError("grep", "{name}: empty pattern")
    return regex(pattern, "grep")


# --------------------------------------------------------------------------- commands


def _checks(paths: Sequence[str]) -> list[str]:
    """Shell lines that set ``rc`` and print a message for each path that cannot be read."""
    lines = ["rc=0"]
    for raw in paths:
        p = shell_path(raw)
        missing, directory, denied = (
            f"echo {quote(f'{_MESSAGE_PREFIX}{problem}: {raw}')} >&2"
            for problem in ("no such file", "is a directory", "permission denied"))
        lines += [
            f"if [ ! -e {p} ]; then {missing}; rc={MISSING_EXIT}",
            f"elif [ -d {p} ]; then {directory}; rc={MISSING_EXIT}",
            f'elif [ ! -r {p} ]; then {denied}; [ "$rc" = 0 ] && rc={UNREADABLE_EXIT}',
            "fi",
        ]
    return lines


def read_command(paths: Sequence[str], lines: int | None = LOG_LINES,
                 grep: str | None = None) -> str:
    """Shell text printing the last ``lines`` lines (None: all) of each readable path.

    With ``grep`` only lines matching that extended regex count (the last N
    matches). Several paths get ``==> path <==`` headers, like ``tail``. Exit 66
    when a path is missing (the others are still printed), 77 when unreadable.
    """
    if not paths:
        return (f"echo {quote(_MESSAGE_PREFIX + 'no log file recorded for this host')} >&2; "
                f"exit {MISSING_EXIT}")
    script = _checks(paths)
    for raw in paths:
        p = shell_path(raw)
        header = [f"echo {quote('==> ' + raw + ' <==')}"] if len(paths) > 1 else []
        script += [f"if [ -e {p} ] && [ ! -d {p} ] && [ -r {p} ]; then",
                   *("  " + h for h in header),
                   "  " + _reader(p, lines, grep),
                   "fi"]
    script.append('exit "$rc"')
    return "\n".join(script) + "\n"


def _reader(p: str, lines: int | None, grep: str | None) -> str:
    if grep is not None:
        # -a: a log holding one NUL byte is still text (without it grep prints
        # "Binary file matches" instead of the lines).
        matches = f"grep -a -E -e {quote(grep)} -- {p}"
        return matches if lines is None else f"{matches} | tail -n {int(lines)}"
    return f"cat -- {p}" if lines is None else f"tail -n {int(lines)} -- {p}"


def follow_command(paths: Sequence[str], lines: int = 10, grep: str | None = None) -> str:
    """Shell text that follows ``paths`` by name (``tail -F``) until the connection ends.

    Fails like :func:`read_command` (exit 66/77) when a path cannot be read at
    the start. ``tail``'s notices go to stdout so they interleave in order.
    ``--pid=$PPID`` ends tail when the SSH session process goes (no pty means
    no SIGHUP), so a stopped follow leaves nothing behind on the host.
    """
    if not paths:
        return read_command(paths)
    quoted = " ".join(shell_path(p) for p in paths)
    tail = f"tail -n {int(lines)} --pid=\"$PPID\" -F -- {quoted} 2>&1"
    if grep is not None:
        # Keep tail's notices through the filter; --line-buffered or lines wait in grep.
        tail += f" | grep -a --line-buffered -E -e {quote(grep)} -e {quote(_TAIL_NOTICE.pattern)}"
    script = _checks(paths) + ['[ "$rc" = 0 ] || exit "$rc"', tail]
    return "\n".join(script) + "\n"


def is_notice(line: str) -> bool:
    """True for ``tail``'s own messages (file gone, replaced, appeared) in a follow stream."""
    return bool(_TAIL_NOTICE.match(line))


# --------------------------------------------------------------------------- outcomes


def classify(outcome: Outcome) -> None:
    """Turn the scripts' exit codes 66/77 into ``no-log`` / ``unreadable`` failures."""
    code = outcome.exit_code
    if code not in (MISSING_EXIT, UNREADABLE_EXIT):
        return
    messages = [line[len(_MESSAGE_PREFIX):] for line in outcome.stderr.splitlines()
                if line.startswith(_MESSAGE_PREFIX)]
    message = "; ".join(messages) or f"exit code {code}"
    if code == MISSING_EXIT:
        outcome.fail(Failure(NO_LOG, message, "check the path (--file), or whether the server "
                             "was started on this host (inv pd-status)", exit_code=code))
    else:
        outcome.fail(Failure(UNREADABLE, message, "the login user may not read it: ask for read "
                             "access or log in as its owner", exit_code=code))


@dataclass
class LogText:
    """What was read on one host (``Outcome.data`` of :func:`read_logs`)."""

    paths: tuple[str, ...]
    lines: list[str]


@dataclass
class SavedLog:
    """What :func:`save_logs` wrote for one host (``Outcome.data``)."""

    paths: tuple[str, ...]
    saved_to: Path | None
    lines: int = 0
    bytes: int = 0


# --------------------------------------------------------------------------- operations


def read_logs(engine: Engine, sources: Sequence[LogSource], lines: int | None = LOG_LINES,
              grep: str | None = None, *, timeout: float | None = LOG_READ_TIMEOUT_S,
              on_done: Callable[[HostSession, Any], None] | None = None) -> Report:
    """The last ``lines`` lines (None: everything) of each host's files, in host order."""
    commands = {s.host: read_command(s.paths, lines, grep) for s in sources}
    results = engine.call([s.host for s in sources],
                          lambda session: session.run(commands[session.host], timeout=timeout),
                          on_done=on_done)
    report = build_report(results, engine, classify)
    paths = {s.host: s.paths for s in sources}
    for outcome in report:
        outcome.data = LogText(paths[outcome.host], outcome.stdout.splitlines())
    return report


def save_file_name(host: Host, taken: set[str]) -> str:
    """``<host>.log`` (``local.log`` for the controller), made unique within ``taken``."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", host.hostname).strip("_") or "host"
    name, n = f"{base}.log", 1
    while name in taken:
        n += 1
        suffix = f"-{host.port}" if host.port and n == 2 else f"-{n}"
        name = f"{base}{suffix}.log"
    taken.add(name)
    return name


def check_save_dir(directory: str | os.PathLike[str]) -> Path:
    """``--save DIR``, created if needed and checked writable before any host is
    contacted: a local problem is one error (exit 2), never a failure per host."""
    target = Path(directory).expanduser()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParameterError("save", f"{{name}}: cannot create {target}: {exc.strerror}") from None
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".write-check.", dir=target)
    except OSError as exc:
        raise ParameterError("save", f"{{name}}: cannot write in {target}: {exc.strerror}") from None
    os.close(descriptor)
    os.unlink(probe)
    return target


def save_logs(engine: Engine, sources: Sequence[LogSource], directory: str | os.PathLike[str],
              lines: int | None = None, grep: str | None = None, *,
              timeout: float | None = None,
              on_done: Callable[[HostSession, Any], None] | None = None) -> Report:
    """Write each host's log (all of it, or its last ``lines`` lines) to ``directory/<host>.log``.

    The output is streamed to ``<host>.log.part`` and renamed when complete, so
    a failed host leaves no (partial) file. ``Outcome.data`` is a `SavedLog`.
    """
    target = check_save_dir(directory)
    taken: set[str] = set()
    files = {s.host: target / save_file_name(s.host, taken) for s in sources}
    commands = {s.host: read_command(s.paths, lines, grep) for s in sources}
    counts: dict[Host, tuple[int, int]] = {}

    def save(session: HostSession) -> CommandResult:
        final = files[session.host]
        # A fresh file of our own (O_EXCL, random name) in DIR, renamed over the final
        # name when complete: a symlink planted at DIR/<host>.log or .part is replaced,
        # never followed, and a failed host leaves nothing behind.
        descriptor, temp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=target)
        partial = Path(temp)
        n_lines = n_bytes = 0
        try:
            with open(descriptor, "w", encoding="utf-8", errors="replace") as handle:
                def write(line: str) -> None:
                    nonlocal n_lines, n_bytes
                    handle.write(line + "\n")
                    n_lines += 1
                    n_bytes += len(line) + 1
                result = session.stream(commands[session.host], write, timeout=timeout)
            if result.exited == 0:
                partial.replace(final)
                counts[session.host] = (n_lines, n_bytes)
            return result
        finally:
            partial.unlink(missing_ok=True)

    results = engine.call([s.host for s in sources], save, on_done=on_done)
    report = build_report(results, engine, classify)
    paths = {s.host: s.paths for s in sources}
    for outcome in report:
        n_lines, n_bytes = counts.get(outcome.host, (0, 0))
        saved = files[outcome.host] if outcome.ok and outcome.host in counts else None
        outcome.data = SavedLog(paths[outcome.host], saved, n_lines, n_bytes)
    return report


@dataclass(frozen=True)
class FollowEvent:
    """One thing that happened while following: a log line, a tail notice, or a host's end."""

    host: Host
    kind: str  # "line" | "notice" | "ended"
    text: str = ""
    error: Failure | None = None


@dataclass
class FollowStats:
    """Per-host totals of a follow (``Outcome.data``)."""

    paths: tuple[str, ...]
    lines: int = 0
    notices: list[str] = field(default_factory=list)


def follow_logs(engine: Engine, sources: Sequence[LogSource],
                on_event: Callable[[FollowEvent], None], lines: int = 10,
                grep: str | None = None, *, stop: threading.Event | None = None,
                duration: float | None = None) -> Report:
    """Follow every host's files at once until ``stop`` is set, ``duration`` passes or Ctrl-C.

    One SSH channel per host on a connection that stays open (one reader
    thread per host: a follow needs every stream live at once, so this is not
    bounded by the fanout). ``on_event`` is called from the reader threads,
    one complete line at a time; it must be thread-safe (print under a lock).
    A host whose stream ends early gets an ``ended`` event and fails
    (``disconnected``, ``no-log`` ...); the others keep streaming. Ctrl-C in
    the calling thread ends the follow normally: hosts still streaming are ok.
    """
    stop = stop or threading.Event()
    stats = {s.host: FollowStats(s.paths) for s in sources}
    values: dict[Host, Any] = {}
    early: set[Host] = set()  # hosts whose stream ended before we stopped it
    sessions = {s.host: engine.session(s.host) for s in sources}

    def follow_one(source: LogSource) -> None:
        session = sessions[source.host]
        host_stats = stats[source.host]

        def on_line(line: str) -> None:
            if is_notice(line):
                host_stats.notices.append(line)
                on_event(FollowEvent(source.host, "notice", line))
            else:
                host_stats.lines += 1
                on_event(FollowEvent(source.host, "line", line))

        started = time.monotonic()
        try:
            values[source.host] = session.stream(follow_command(source.paths, lines, grep),
                                                 on_line, stop)
        except Exception as exc:  # per-host failure: classified below
            values[source.host] = exc
        finally:
            session.elapsed = time.monotonic() - started
        if not stop.is_set():
            early.add(source.host)
            outcome = _follow_outcome(engine, session, values[source.host])
            on_event(FollowEvent(source.host, "ended", "", outcome.error))

    threads = [threading.Thread(target=follow_one, args=(s,), name=f"follow-{s.host}", daemon=True)
               for s in sources]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + duration if duration is not None else None
    try:
        while any(t.is_alive() for t in threads) and not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            for thread in threads:
                thread.join(0.05)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a follow normally ends
    finally:
        stop.set()
        for thread in threads:
            thread.join(5.0)
    outcomes = []
    for source in sources:
        session = sessions[source.host]
        if source.host in early:
            outcome = _follow_outcome(engine, session, values.get(source.host))
        else:
            outcome = Outcome(source.host, True, elapsed=session.elapsed)
        outcome.data = stats[source.host]
        outcomes.append(outcome)
    return Report(outcomes)


def _follow_outcome(engine: Engine, session: HostSession, value: Any) -> Outcome:
    """Why a host's follow stream ended before it was stopped, as a failed `Outcome`."""
    host = session.host
    if isinstance(value, BaseException):
        failure = classify_exception(value, host, port=_port(session),
                                     key_description=engine.key_description,
                                     known_hosts=engine.settings.known_hosts or "~/.ssh/known_hosts",
                                     connect_timeout=session.connect_timeout)
        return Outcome(host, False, error=failure, elapsed=session.elapsed)
    outcome = Outcome(host, False, stdout="", stderr=value.stderr, exit_code=value.exited,
                      elapsed=session.elapsed)
    if value.exited in (MISSING_EXIT, UNREADABLE_EXIT):
        outcome.ok = True  # classify() decides
        classify(outcome)
        return outcome
    how = ("connection closed" if value.exited == -1
           else f"tail exited with code {value.exited}")
    last = value.stderr.strip().splitlines()[-1:] if value.stderr.strip() else []
    detail = f" ({last[0]})" if last else ""
    outcome.error = Failure(DISCONNECTED, f"stream ended: {how}{detail}",
                            "the host went away or sshd was restarted: check it with `inv check`")
    return outcome


def _port(session: HostSession) -> int | None:
    try:
        return session.port
    except Exception:
        return None
