"""How a connection reaches its host: directly, through a ProxyCommand, or through jump hosts.

Jump hosts work like OpenSSH's ControlMaster: ONE authenticated connection
per jump chain (`JumpPool`), shared by every target behind it, each target a
``direct-tcpip`` channel on it. N hosts behind one bastion make one bastion
login, so a stock bastion (``MaxStartups 10:30:100``) never drops targets at
the default fanout. A hop is checked like a target (same keys, timeouts,
host-key store with a `HostKeyTarget` from its own ssh_config) and a failing
hop raises `HopError` naming it, for every target behind it.

A ProxyCommand runs as ssh runs it (``$SHELL -c "exec CMD"`` after ``%``
token expansion, `expand_tokens`); its stderr is kept and shown when the
connection fails (`ProxyCommandError`).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import select
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paramiko
from paramiko.proxy import ProxyCommand

from .sshconfig import HostConfig

# A jump chain, hop by hop: (hostname, port, user, proxy command).
ChainKey = tuple[tuple[str, int, str, str | None], ...]

# A failed hop is remembered this long: every target behind it in the same round gets
# the hop's failure at once instead of retrying the login (a later round retries).
HOP_FAILURE_TTL_S = 5.0


class HopError(paramiko.SSHException):
    """A jump host failed: ``hop`` names it, ``cause`` is its own exception (classified like a target's)."""

    def __init__(self, hop: str, cause: BaseException) -> None:
        super().__init__(f"jump host {hop}: {cause}")
        self.hop, self.cause = hop, cause


class ChannelOpenError(paramiko.SSHException):
    """The jump host could not open a channel to the target (kind ``unreachable``)."""

    def __init__(self, hop: str, target: str, reason: str) -> None:
        super().__init__(f"jump host {hop} cannot reach {target}: {reason}")
        self.hop, self.target, self.reason = hop, target, reason


class ProxyCommandError(paramiko.SSHException):
    """The ProxyCommand did not carry a connection (kind ``unreachable``); ``stderr`` is its own output."""

    def __init__(self, command: str, detail: str, stderr: str) -> None:
        last = [line for line in stderr.strip().splitlines() if line.strip()]
        shown = f": {last[-1][:200]}" if last else ""
        super().__init__(f"ProxyCommand `{command}` {detail}{shown}")
        self.command, self.detail, self.stderr = command, detail, stderr


@dataclass(frozen=True)
class JumpSpec:
    """One ProxyJump entry: ``[user@]host[:port]`` or ``ssh://[user@]host[:port]``."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        text = f"{self.user}@{self.host}" if self.user else self.host
        return f"{text}:{self.port}" if self.port else text


_JUMP = re.compile(r"^(?:ssh://)?(?:(?P<user>[^@]+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<name>[^:]+))(?::(?P<port>\d+))?$")


def parse_proxy_jump(text: str | None) -> list[JumpSpec]:
    """ProxyJump's comma-separated hops, first hop first; ``none``/empty: no jump."""
    if not text or text.strip().lower() == "none":
        return []
    hops = []
    for item in text.split(","):
        match = _JUMP.match(item.strip())
        if not match:
            raise ValueError(f"bad ProxyJump entry {item.strip()!r}: expected [user@]host[:port]")
        port = match.group("port")
        hops.append(JumpSpec(match.group("v6") or match.group("name"), match.group("user"),
                             int(port) if port else None))
    return hops


def expand_tokens(text: str, config: HostConfig) -> str:
    """OpenSSH's ``%`` tokens of ProxyCommand (``%h %p %r %n %%`` and the rest of ssh_config(5))."""
    local = socket.gethostname()
    try:
        entry = pwd.getpwuid(os.getuid())
        local_user, home = entry.pw_name, entry.pw_dir
    except KeyError:
        local_user, home = os.environ.get("USER", ""), os.environ.get("HOME", "")
    connection_hash = hashlib.sha1(f"{local}{config.hostname}{config.port}{config.user}{config.proxy_jump or ''}"
                                   .encode()).hexdigest()
    tokens = {
        "%": "%", "h": config.hostname, "p": str(config.port), "r": config.user, "n": config.alias,
        "l": local, "L": local.split(".")[0], "u": local_user, "d": os.environ.get("HOME") or home,
        "i": str(os.getuid()), "k": config.host_key_alias or config.hostname, "C": connection_hash,
        "j": config.proxy_jump or "",
    }

    def swap(match: re.Match[str]) -> str:
        return tokens.get(match.group(1), str(match.group(0)))

    return re.sub(r"%(.)", swap, text)


class ShellProxy(ProxyCommand):
    """paramiko's ProxyCommand, run through the shell as ssh does, stderr kept in a file."""

    def __init__(self, command: str) -> None:  # not super().__init__: that spawns without a shell
        self.cmd = [command]  # paramiko joins it into its own error messages
        self.command_text = command
        self._stderr = tempfile.TemporaryFile()
        shell = os.environ.get("SHELL") or "/bin/sh"
        self.process = subprocess.Popen([shell, "-c", f"exec {command}"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._stderr, bufsize=0,
                                        start_new_session=True)
        self.timeout = None

    def stderr_text(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def failure(self, exc: BaseException) -> ProxyCommandError:
        try:
            code = self.process.wait(timeout=0.5)
            detail = f"exited {code}"
        except subprocess.TimeoutExpired:
            detail = f"failed ({exc})"
        error = ProxyCommandError(self.command_text, detail, self.stderr_text())
        self.close()
        return error

    def close(self) -> None:
        """Stop the command and release its pipes (paramiko's close only signals it)."""
        if self.process.poll() is None:
            super().close()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self._stderr):
            if stream is not None and not stream.closed:
                stream.close()


class JumpPool:
    """One authenticated transport per jump chain, shared by every target behind it.

    ``connect_hop(config, sock, name)`` is the engine's way of logging in to a
    hop over ``sock`` (None: a direct TCP connection) and returns its
    authenticated transport.
    """

    def __init__(self, connect_hop: Callable[[HostConfig, object | None], paramiko.Transport]) -> None:
        self._connect_hop = connect_hop
        self._transports: dict[ChainKey, paramiko.Transport] = {}
        self._failures: dict[ChainKey, tuple[float, HopError]] = {}
        self._locks: dict[ChainKey, threading.Lock] = {}
        self._lock = threading.Lock()

    def transport(self, chain: tuple[HostConfig, ...]) -> paramiko.Transport:
        """The authenticated transport of the last hop of ``chain`` (opening the chain once)."""
        key = tuple((c.hostname, c.port, c.user, c.proxy_command) for c in chain)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            live = self._transports.get(key)
            if live is not None and live.is_active():
                return live
            failed = self._failures.get(key)
            if failed and time.monotonic() - failed[0] < HOP_FAILURE_TTL_S:
                raise failed[1]
            below = self.transport(chain[:-1]) if len(chain) > 1 else None
            hop = chain[-1]
            sock: object | None = None
            try:
                if below is not None:
                    sock = open_channel(below, hop_name(chain[-2]), hop.hostname, hop.port, None)
                transport = self._connect_hop(hop, sock)
            except HopError as exc:
                self._failures[key] = (time.monotonic(), exc)
                raise
            except Exception as exc:  # classified by the caller, named after this hop
                error = HopError(hop_name(hop), exc)
                self._failures[key] = (time.monotonic(), error)
                raise error from None
            self._failures.pop(key, None)
            self._transports[key] = transport
            return transport

    def close(self) -> None:
        with self._lock:
            transports, self._transports = list(self._transports.values()), {}
            self._failures = {}
        for transport in transports:
            disconnect(transport)
            transport.close()


def disconnect(transport: paramiko.Transport) -> None:
    """End the connection as ssh does: SSH_MSG_DISCONNECT, reason 11 "disconnected by user".

    paramiko's ``close()`` only drops the socket, so sshd logged "Connection
    closed by" instead of the "Received disconnect ... disconnected by user" an
    ssh session leaves, and took a slower way out (about 0.8 ms of sshd CPU per
    connection, docs/performance.md). The caller closes the transport after.

    Never waits long: paramiko's writer retries until the connection closes, so
    the goodbye is skipped when the message cannot go out at once (a peer that
    stopped reading) or another thread keeps the connection's writer busy
    (Ctrl-C during a transfer to such a peer): closing is all that is left then.
    """
    lock = getattr(transport.packetizer, "_Packetizer__write_lock", None)  # paramiko's sender lock
    if not transport.is_active() or lock is None or not _can_send_now(transport.sock):
        return
    # The transport thread holds the lock for a moment now and then (a channel close it answers).
    if not lock.acquire(timeout=GOODBYE_WAIT_S):
        return
    try:
        message = paramiko.Message()
        message.add_byte(paramiko.common.cMSG_DISCONNECT)
        message.add_int(11)  # SSH_DISCONNECT_BY_APPLICATION
        message.add_string("disconnected by user")
        message.add_string("")  # language tag
        transport._send_message(message)  # type: ignore[attr-defined]  # paramiko's own sender; no public one
    except (OSError, EOFError, ValueError, paramiko.SSHException):
        pass  # already gone: closing is all that is left
    finally:
        lock.release()


# How long a goodbye waits for another thread's write to finish (then it is skipped).
GOODBYE_WAIT_S = 0.1


def _can_send_now(sock: Any) -> bool:
    """Whether a short message goes out without waiting: TCP buffer room, or a jump channel's window."""
    if isinstance(sock, GuardedChannel):
        sock = sock.channel
    if isinstance(sock, socket.socket):
        # poll, not select: a run with 1,000 connections open has descriptors past FD_SETSIZE.
        poller = select.poll()
        try:
            poller.register(sock, select.POLLOUT)
        except (OSError, ValueError):  # closed meanwhile
            return False
        return any(events & select.POLLOUT for _, events in poller.poll(0))
    if isinstance(sock, paramiko.Channel):
        return sock.send_ready()
    return False  # a ProxyCommand's pipe: not worth a check of its own


class Keepalive:
    """ServerAliveInterval / ServerAliveCountMax for every connection of an engine, on one thread.

    OpenSSH sends ``keepalive@openssh.com`` with want-reply after ``interval`` s
    without traffic and drops the connection when ``count_max`` go
    unanswered. paramiko's own keepalive asks for no reply, so a dead peer
    stays undetected; here any packet read (`LeanPacketizer.last_read`) counts
    as an answer, and a connection that stays silent is closed: the command
    on it fails as a lost connection instead of hanging until its timeout.
    """

    def __init__(self) -> None:
        self._watched: dict[paramiko.Transport, list[float]] = {}  # transport -> [interval, count_max, missed]
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, transport: paramiko.Transport, interval: int, count_max: int) -> None:
        if interval <= 0:
            return
        with self._lock:
            self._watched[transport] = [interval, max(1, count_max), 0, time.monotonic()]
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True, name="cluster-keepalive")
                self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(0.5)
            with self._lock:
                for transport in [t for t in self._watched if not t.is_active()]:
                    del self._watched[transport]
                if not self._watched:
                    self._thread = None
                    return
                items = list(self._watched.items())
            for transport, state in items:
                self._tick(transport, state)

    def _tick(self, transport: paramiko.Transport, state: list[float]) -> None:
        interval, count_max, missed, sent = state
        now = time.monotonic()
        heard = getattr(transport.packetizer, "last_read", None) or 0.0
        if heard > sent:
            state[2], state[3] = 0, max(heard, sent)
            return
        if now - state[3] < interval:
            return
        if missed >= count_max:
            transport.close()  # "Timeout, server not responding" in ssh
            return
        message = paramiko.Message()
        message.add_byte(paramiko.common.cMSG_GLOBAL_REQUEST)
        message.add_string("keepalive@openssh.com")
        message.add_boolean(True)
        try:
            transport._send_user_message(message)  # type: ignore[attr-defined]  # paramiko's own sender; no public one
        except (OSError, EOFError, paramiko.SSHException):
            transport.close()
            return
        state[2], state[3] = missed + 1, now


def hop_name(config: HostConfig) -> str:
    """How a failure names a jump host: its alias, and the address when that differs."""
    if config.alias != config.hostname:
        return f"{config.alias} ({config.hostname}:{config.port})"
    return f"{config.hostname}:{config.port}" if config.port != 22 else config.hostname


class GuardedChannel:
    """A direct-tcpip channel used as a target's socket, closed only once no read/write is under way.

    paramiko closes a transport's socket from the closing thread while the
    transport thread may be inside ``Channel.recv``, which then sends a
    WINDOW_ADJUST for a channel already closed. sshd treats a message for a
    freed channel as a protocol error and drops the *whole* jump connection,
    with every other target on it (seen: 27 of 40 hosts lost). Here ``close``
    waits for the reads and writes in flight: the last one to finish closes.
    """

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self._lock = threading.Lock()
        self._busy = 0
        self._closing = False

    def _enter(self) -> bool:
        with self._lock:
            if self._closing:
                return False
            self._busy += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._busy -= 1
            last = self._closing and self._busy == 0
        if last:
            self.channel.close()

    def recv(self, size: int) -> bytes:
        if not self._enter():
            return b""  # EOF for the transport thread
        try:
            return self.channel.recv(size)
        finally:
            self._leave()

    def send(self, data: bytes) -> int:
        if not self._enter():
            raise OSError("channel closed")
        try:
            return self.channel.send(data)
        finally:
            self._leave()

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            now = self._busy == 0
        if now:
            self.channel.close()

    def __getattr__(self, name: str) -> Any:  # settimeout, getpeername, _closed ...: the channel's
        return getattr(self.channel, name)


def open_channel(transport: paramiko.Transport, hop: str, hostname: str, port: int,
                 timeout: float | None) -> GuardedChannel:
    """A ``direct-tcpip`` channel from the hop to ``hostname:port``."""
    try:
        return GuardedChannel(transport.open_channel("direct-tcpip", dest_addr=(hostname, port), src_addr=("", 0),
                                      timeout=timeout))
    except paramiko.ChannelException as exc:
        raise ChannelOpenError(hop, f"{hostname}:{port}", exc.text or f"code {exc.code}") from None
    except paramiko.SSHException as exc:
        if not transport.is_active():
            raise HopError(hop, exc) from None
        raise ChannelOpenError(hop, f"{hostname}:{port}", str(exc) or "channel not opened") from None
