"""Stopping a running command on its host: Ctrl-C and command timeouts.

Closing an SSH channel does not stop the remote command: without a pty, sshd
keeps it running (re-parented to init) until it ends by itself. So a command
that must stop is signalled, in this order (`stop`):

1. ``INT``, through the RFC 4254 §6.9 ``signal`` channel request. OpenSSH's
   sshd (7.9 and later) sends it to the command's process group (``killpg``:
   the session's shell and everything it started that did not leave the group).
2. ``TERM`` the same way after `GRACE_S`, for commands that ignore ``INT``.
3. Then, for every command that was running: ``kill -TERM``, then ``kill
   -KILL``, of the command's process group from a second channel on the same
   connection. This catches what the signal request cannot: a server that
   refused it (old sshd, a forced command, a subsystem), a command that
   ignores both signals, and background children that outlived their shell
   (a non-interactive shell starts ``cmd &`` with INT ignored; sshd only
   signals while the shell lives). Where the group is already gone, the
   first ``kill`` fails and that is all. The group id comes from `WRAPPER`,
   a first line every command prints on stderr (its shell's ``$$``: sshd makes
   the shell a session leader, so that is its process group), stripped from
   what the caller sees (`PidLine`).
4. The channel is closed.

A command that puts a child in a new session (``setsid``, ``nohup ... &``
with ``disown`` does not) has detached it on purpose and is not followed.
`local` commands run in their own session (`cluster.localrun`) and get the
same sequence with ``os.killpg``.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from .hosts import Host, fold_names

if TYPE_CHECKING:  # typing only: this module loads no SSH code
    import paramiko

# Between INT and TERM, and between TERM and the group kill (fallback).
GRACE_S = 1.0
# How long Ctrl-C waits for the hosts' runners to report before leaving them.
SETTLE_S = 5.0

# A first line on stderr naming the command's process group: `TOKEN` is
# random per command, so remote output cannot fake it. A builtin and `$$`:
# no extra process per command. Needs a POSIX-style login shell (bash, dash,
# zsh, ksh: what cloud images ship); fish and csh do not take `$$` / `>&2`
# this way. (A forced command in authorized_keys replaces the whole command,
# wrapper included: then step 3 has no group to kill.)
_PID_MARK = b"cluster-pgid:"
WRAPPER = "printf 'cluster-pgid:%s:%s\\n' {token} $$ >&2\n{command}"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a fan-out call, after the hosts' commands were stopped."""

    def __init__(self, hosts: Sequence[Host]) -> None:
        super().__init__()
        self.hosts = list(hosts)

    def __str__(self) -> str:
        if not self.hosts:
            return "no command was running"
        names = fold_names([str(h) for h in self.hosts])
        return f"command stopped on {len(self.hosts)} host{'s' if len(self.hosts) != 1 else ''}: {names}"


def wrap(command: str) -> tuple[str, bytes]:
    """``command`` behind the pgid line, and the token that marks that line."""
    token = secrets.token_hex(6)
    return WRAPPER.format(token=token, command=command), token.encode()


class PidLine:
    """Takes the wrapper's line out of the stderr stream, keeping its pgid.

    Feed every stderr chunk through `feed`; it returns what the caller sees.
    The line is looked for in the first `LOOK_BYTES` of stderr (a login shell's
    rc file may print before the command runs, e.g. Debian's bash sources
    ~/.bashrc for sshd), and only a line with this command's token is taken out.
    """

    LOOK_BYTES = 16384

    def __init__(self, token: bytes) -> None:
        self.prefix = _PID_MARK + token + b":"
        self.pgid: int | None = None
        self._held: bytes | None = b""  # None once found or given up
        self._seen = 0

    def feed(self, chunk: bytes) -> bytes:
        if self._held is None:
            return chunk
        data, passed = self._held + chunk, list[bytes]()
        while (newline := data.find(b"\n")) >= 0:
            line, data = data[:newline], data[newline + 1:]
            if self._take(line):
                self._held = None
                return b"".join(passed) + data
            passed.append(line + b"\n")
            self._seen += newline + 1
        if self._seen > self.LOOK_BYTES:
            self._held = None
        elif data and len(data) < 64 and (self.prefix.startswith(data) or data.startswith(self.prefix)):
            self._held, data = data, b""  # maybe the start of our line: wait for its end
        else:
            self._held = b""
        return b"".join(passed) + data

    def _take(self, line: bytes) -> bool:
        if not line.startswith(self.prefix):
            return False
        match = re.fullmatch(rb"(\d{1,10})", line[len(self.prefix):])
        if match is not None:
            self.pgid = int(match.group(1))
        return match is not None

    def flush(self) -> bytes:
        """What was held back when the stream ended without a newline."""
        held, self._held = self._held or b"", None
        return held


class Stoppable(Protocol):
    """A command in flight on one host (`RemoteCommand`, `cluster.localrun.LocalCommand`)."""

    host: Host

    def finished(self) -> bool: ...
    def wait(self, seconds: float) -> bool: ...
    def signal(self, name: str) -> None: ...
    def kill_group(self) -> None: ...
    def close(self) -> None: ...


class RemoteCommand:
    """A command on a paramiko channel, as `stop` sees it."""

    def __init__(self, host: Host, channel: paramiko.Channel, pids: PidLine) -> None:
        self.host = host
        self.channel = channel
        self.pids = pids

    def finished(self) -> bool:
        """Exited, and nothing holds its output open any more (a background child would)."""
        channel = self.channel
        return bool(channel.closed or (channel.exit_status_ready() and channel.eof_received))

    def wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self.finished() and time.monotonic() < deadline:
            self.channel.status_event.wait(0.05)
        return self.finished()

    def signal(self, name: str) -> None:
        send_signal(self.channel, name)

    def kill_group(self) -> None:
        pgid = self.pids.pgid
        transport = self.channel.get_transport()
        if pgid is None or pgid <= 1 or transport is None or not transport.is_active():
            return
        channel = transport.open_session(timeout=GRACE_S * 5)
        try:
            channel.exec_command(kill_group_command(pgid))
            channel.shutdown_write()
            channel.status_event.wait(GRACE_S * 5)
        finally:
            channel.close()

    def close(self) -> None:
        self.channel.close()


def send_signal(channel: paramiko.Channel, name: str) -> None:
    """RFC 4254 §6.9: ``signal`` request, signal name without "SIG", no reply asked.

    No reply: paramiko closes a channel whose request failed, and a refusal is
    noticed anyway (the command keeps running; `stop` goes on to the fallback).
    """
    from paramiko import Message
    from paramiko.common import cMSG_CHANNEL_REQUEST

    transport = channel.transport
    if channel.closed or not channel.active or transport is None:
        return
    message = Message()
    message.add_byte(cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("signal")
    message.add_boolean(False)
    message.add_string(name)
    try:
        transport._send_user_message(message)  # type: ignore[attr-defined]  # paramiko's own sender; no public one
    except (EOFError, OSError):
        pass  # the connection is gone: nothing left to stop through it


def kill_group_command(pgid: int) -> str:
    """TERM the process group, KILL what is left a moment later (fallback of `stop`)."""
    pgid = int(pgid)
    return (f"kill -TERM -- -{pgid} 2>/dev/null || exit 0; "
            f"sleep {GRACE_S:g}; kill -KILL -- -{pgid} 2>/dev/null; exit 0")


def stop(commands: Iterable[Stoppable], grace: float = GRACE_S) -> list[Host]:
    """INT, TERM, then kill the group, waiting ``grace`` between steps; close them all.

    Returns the hosts whose command was still running when asked to stop.
    A second Ctrl-C during the sequence skips to closing the channels.
    """
    commands = list(commands)
    running = [c for c in commands if not c.finished()]
    try:
        _escalate(running, grace)
    except KeyboardInterrupt:
        pass
    finally:
        for command in commands:
            try:
                command.close()
            except Exception:  # a broken connection: closing it is all we wanted
                pass
    return [c.host for c in running]


def _escalate(running: list[Stoppable], grace: float) -> None:
    for name in ("INT", "TERM"):
        live = [c for c in running if not c.finished()]
        if not live:
            break
        for command in live:
            command.signal(name)
        _wait_all(live, grace)
    threads = [threading.Thread(target=_quietly(c.kill_group), daemon=True) for c in running]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + grace * 6
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def _wait_all(commands: list[Stoppable], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for command in commands:
        command.wait(max(0.0, deadline - time.monotonic()))


def _quietly(fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except Exception:  # the host went away: nothing left to kill there
            pass

    return run


def local_signal(pid: int, name: str) -> bool:
    """Signal a local process group by signal name (`cluster.localrun`); False when it is gone."""
    import signal as signals

    try:
        os.killpg(pid, getattr(signals, "SIG" + name))
        return True
    except (ProcessLookupError, PermissionError):
        return False
