"""Connections and bounded fan-out over Fabric.

What this layer adds to Fabric (see shared/reference/peers.md):

* `BoundedGroup`: a ``ThreadingGroup`` whose ``_do`` runs at most ``fanout``
  hosts at a time on a thread pool. Fabric starts one thread per host with no
  limit; here the thread count depends on the fanout, never on the host count.
* `Engine`: one shared `fabric.Config`, one private key loaded once and
  handed to every connection as ``pkey``, one shared known_hosts store with
  our host-key policy, a connect timeout that is always set (TCP, banner and
  auth), and a cache of open connections so later rounds (``--watch``,
  ``--follow``, start-pd readiness polls) reuse them without new handshakes.
* `HostSession`: run one command on one host and capture or stream its
  output (`cluster.command.Capture`). Remote commands go straight to a
  paramiko channel (no Invoke runner threads, no pty, stdin closed); ``local``
  runs on subprocess pipes (`cluster.localrun`). A command that times out or
  is interrupted (Ctrl-C) is stopped on its host (`cluster.interrupt`).

No parsing, classification or rendering happens here.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import paramiko
from fabric import Config, Connection, ThreadingGroup
from fabric.group import GroupResult

from . import interrupt
from .command import AFTER_EXIT_S, Capture, CommandResult, Lines, OnOutput, text
from .connect import (
    GuardedChannel,
    JumpPool,
    Keepalive,
    ShellProxy,
    disconnect,
    expand_tokens,
    hop_name,
    open_channel,
    parse_proxy_jump,
)
from .errors import InputError
from .hostkeys import ACCEPT_NEW, STRICT_HOST_KEY_CHECKING, HostKeyError, HostKeyStore, HostKeyTarget, peer_address
from .hosts import Host
from .inventory import DEFAULT_CONNECT_TIMEOUT, SSHSettings
from .keys import KeyAuth, KeyRing
from .localrun import batch_this_thread, run_local
from .sshconfig import HostConfig, Resolver

if TYPE_CHECKING:  # what paramiko.Transport accepts as its socket (a stub-only name)
    from paramiko.transport import _SocketLike as SocketLike

_READ_SIZE = 65536


# paramiko logs transport-thread errors (e.g. banner timeouts) with tracebacks;
# we classify those errors ourselves, so keep its logger quiet.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


class HandshakeTimeout(paramiko.SSHException):
    """TCP connected but the SSH banner/key exchange did not finish in time."""


class ConnectionLost(paramiko.SSHException):
    """The connection died while a command was running (host or sshd went away)."""


# -- performance: see docs/performance.md for the profile behind each choice --

# AEAD ciphers first. With aes-gcm the cipher authenticates each packet, so
# paramiko computes no separate HMAC and skips its MAC comparison, a pure-Python
# loop over every MAC byte (``util.constant_time_bytes_eq``) that showed up as
# the hottest function of the handshake. OpenSSH has offered aes-gcm since 6.2;
# a server without it still negotiates the other ciphers (only the order changes).
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


class LeanPacketizer(paramiko.packet.Packetizer):  # paramiko.Packetizer too, but not in its stubs
    """paramiko's packetizer without a timer thread per handshake, ACKing at once.

    * Handshake timeout as a deadline. paramiko starts a ``threading.Timer``
      per connection for it: one more thread created, woken and joined for
      every host, all through the GIL. The timer only sets a flag that
      ``read_all`` checks before each ``recv`` (every 0.1 s at worst), so a
      deadline compared at those same points times out at the same moments.
    * ``TCP_QUICKACK`` after each packet read (Linux). sshd sends small
      packets back to back without ``TCP_NODELAY`` (e.g. a debug message
      right before the channel-open confirmation); Nagle holds the second one
      until we ACK the first, and Linux delays that ACK up to 40 ms. Quick
      mode is not sticky, hence once per packet (one cheap syscall).
      Measured: channel open 45 ms -> 4-14 ms per host.
    * Buffered reads (`read_all`). paramiko reads exactly what it needs: a
      packet's first block, then its rest, each a ``recv`` on a socket with a
      timeout, which CPython makes a ``poll`` and a ``recv``, each dropping and
      retaking the GIL (a wait and two context switches when 64 threads want
      it). One ``recv`` of what is there serves the next reads. Measured on 64
      loopback hosts: 31 -> 9 ``recv`` per connection, 18 % fewer context
      switches of the whole process.
    """

    _deadline: float | None = None
    _handshake_done = False

    def __init__(self, sock: Any) -> None:
        super().__init__(sock)
        quickack = getattr(socket, "TCP_QUICKACK", None)
        self._quickack = quickack if isinstance(sock, socket.socket) else None
        self._sock = sock
        # A socket or channel returns what is there; paramiko's ProxyCommand waits
        # for all the bytes asked for (up to its timeout): read it exactly.
        self._read_size = _READ_SIZE if isinstance(sock, (socket.socket, GuardedChannel)) else 0

    last_read = 0.0  # monotonic time of the latest packet (keepalive: the peer is alive)

    def read_message(self) -> tuple[int, paramiko.Message]:
        message = super().read_message()
        self.last_read = time.monotonic()
        if self._quickack is not None:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, self._quickack, 1)
            except OSError:
                self._quickack = None  # not a TCP socket after all
        return message

    # What the last recv brought beyond the bytes asked for, and how far it is used.
    _pending = b""
    _used = 0
    # paramiko's own state, used as its read_all uses it (private: not in the stubs).
    _Packetizer__remainder: bytes
    _Packetizer__closed: bool
    _Packetizer__need_rekey: bool
    _check_keepalive: Callable[[], None]

    def read_all(self, n: int, check_rekey: bool = False) -> bytes:
        """``n`` bytes, as paramiko's ``read_all`` (same timeouts, EOF and rekey
        checks), from one larger ``recv`` kept for the reads that follow."""
        banner_rest = self._Packetizer__remainder  # what readline() read past the banner
        if banner_rest:
            self._pending, self._used = self._pending[self._used:] + banner_rest, 0
            self._Packetizer__remainder = b""
        start = self._used
        if len(self._pending) - start >= n:
            self._used = start + n
            return self._pending[start:start + n]
        out = self._pending[start:]
        self._pending, self._used = b"", 0
        while len(out) < n:
            if self.handshake_timed_out():
                raise EOFError()
            try:
                got = self._sock.recv(max(n - len(out), self._read_size))
            except (socket.timeout, BlockingIOError):  # EAGAIN: paramiko's kernel workaround
                self._idle(check_rekey and not out)
                continue
            except OSError:
                if self._Packetizer__closed:
                    raise EOFError() from None
                raise
            if not got:
                raise EOFError()
            wanted = n - len(out)
            if len(got) > wanted:
                self._pending, self._used = got, wanted
                got = got[:wanted]
            out += got
        return out

    def _idle(self, may_rekey: bool) -> None:
        """A read timed out (every 0.1 s): what paramiko checks then."""
        if self._Packetizer__closed:
            raise EOFError()
        if may_rekey and self._Packetizer__need_rekey:
            raise paramiko.packet.NeedRekeyException()
        self._check_keepalive()

    def start_handshake(self, timeout: float) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + float(timeout)

    def handshake_timed_out(self) -> bool:
        if self._deadline is None or self._handshake_done:
            return False
        return time.monotonic() >= self._deadline

    def complete_handshake(self) -> None:
        if self._deadline is not None:
            self._handshake_done = True


class LeanTransport(paramiko.Transport):
    """paramiko's Transport without the log work that nobody reads.

    * ``_log``: paramiko formats and passes about 36 messages per connection to
      `logging`, which drops them unless DEBUG logging is on. That is checked first here.
    * ``_parse_debug``: sshd sends SSH_MSG_DEBUG lines (OpenSSH 8.2+: the
      authorized_keys options of the accepted key). paramiko escaped each one
      byte by byte, building a new bytes object for every byte, only to log it at DEBUG.
    * ``_filter_algorithm``: paramiko filters each algorithm list against
      ``disabled_algorithms`` on every read (17 per connection); with none disabled
      (always, unless a caller passes some) the list is returned as it is.
    * ``run``: the transport thread runs SCHED_BATCH (`cluster.localrun.batch_this_thread`).
    """

    def run(self) -> None:
        batch_this_thread()
        super().run()

    def _log(self, level: int, msg: Any, *args: Any) -> None:
        if self.logger.isEnabledFor(level):
            super()._log(level, msg, *args)  # type: ignore[misc]  # private, not in the stubs

    def _parse_debug(self, m: paramiko.Message) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            super()._parse_debug(m)  # type: ignore[misc]  # private, not in the stubs

    def _filter_algorithm(self, type_: str) -> tuple[str, ...]:
        if not self.disabled_algorithms:
            return tuple(getattr(self, "_preferred_" + type_))
        return super()._filter_algorithm(type_)  # type: ignore[misc, no-any-return]  # private


def make_transport(sock: SocketLike, disabled_algorithms: Mapping[str, Iterable[str]] | None = None
                   ) -> paramiko.Transport:
    """The paramiko Transport for one connection (``SSHClient.connect(transport_factory=)``).

    * ``TCP_NODELAY``: SSH sends many small packets and waits for each answer;
      with Nagle on, a packet sent while the previous one is unacknowledged
      sits out the peer's delayed ACK (40 ms on Linux). Measured: connect +
      auth 80 ms -> 38 ms per host. OpenSSH sets it for interactive sessions.
    * AEAD ciphers first (`PREFERRED_CIPHERS`).
    * no timer thread per handshake, immediate ACKs (`LeanPacketizer`).
    """
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # not for a ProxyCommand
    transport = LeanTransport(sock, disabled_algorithms=disabled_algorithms, packetizer_class=LeanPacketizer)
    options = transport.get_security_options()
    offered = tuple(options.ciphers)
    first = tuple(c for c in PREFERRED_CIPHERS if c in offered)
    options.ciphers = first + tuple(c for c in offered if c not in first)
    return transport


class HopTransport:
    """``SSHClient.connect(transport_factory=)``: `make_transport`, then the store's
    host-key algorithm order for this hop (before the key exchange)."""

    def __init__(self, store: HostKeyStore, target: HostKeyTarget) -> None:
        self.store, self.target = store, target

    # The stubs' factory protocol (keyword-only gss_kex, gss_deleg_creds): paramiko 5 passes only
    # (sock, disabled_algorithms=), 3.x all three; GSS is never asked for, so the flags go unused.
    def __call__(self, sock: SocketLike, /, *, gss_kex: bool = False, gss_deleg_creds: bool = False,
                 disabled_algorithms: Mapping[str, Iterable[str]] | None = None) -> paramiko.Transport:
        transport = make_transport(sock, disabled_algorithms)
        self.store.prepare(transport, self.target)
        return transport


class LeanConnection(Connection):  # type: ignore[misc]  # fabric ships no types: its classes are Any
    """A Fabric ``Connection`` that is cheap to build and never writes the shared config.

    Behaviour is Fabric's; two costs of its invoke ``DataProxy`` base go away:

    * ``Connection.__init__`` assigns ``self.inline_ssh_env``, which Fabric does
      not declare at class level, so invoke stores it as a *config key*: every
      connection wrote into the one `fabric.Config` all threads share and
      re-merged the whole config. Declaring it here makes it a plain
      attribute. (With the next point: 0.83-1.08 ms -> 0.41 ms per connection.)
    * ``DataProxy.__setattr__`` calls ``dir(self)`` on every assignment to tell
      attributes from config keys (a dozen times per connection); names the
      class declares skip that test.
    """

    inline_ssh_env = None
    host_config: HostConfig | None = None  # the HostConfig it was built from (Engine.make_connection)

    def open_gateway(self) -> Any:
        """The `Route`'s socket (ProxyCommand or a channel through the shared jump connection)."""
        return self.gateway.open()

    def __setattr__(self, key: str, value: Any) -> None:
        if key in _CONNECTION_ATTRIBUTES:
            object.__setattr__(self, key, value)
        else:
            super().__setattr__(key, value)


# Class-level names only: what DataProxy would find in dir(self) for them anyway.
_CONNECTION_ATTRIBUTES = frozenset(dir(LeanConnection))


class LeanConfig(Config):  # type: ignore[misc]  # fabric ships no types
    """The engine's one `fabric.Config`, with cheap misses on two internal names.

    Reading a nested section (``config.timeouts``, ``config.connect_kwargs``:
    four times per connection) makes invoke probe the root for ``_keypath``
    and ``_root``, which a root does not have. Each miss went through
    ``DataProxy.__getattr__``, which builds its error message from ``dir()``
    of the class and the sorted config keys before raising AttributeError.
    """

    def __getattr__(self, key: str) -> Any:
        if key in ("_keypath", "_root"):
            raise AttributeError(key)
        return super().__getattr__(key)


class _NoSSHConfig(paramiko.SSHConfig):
    """Fabric's per-connection ssh_config lookup, answered empty at once.

    The Resolver evaluated the host's config already (``ssh -G``); paramiko's lookup
    of an empty config still cost ~0.1 ms per connection.
    """

    def lookup(self, hostname: str) -> paramiko.SSHConfigDict:
        return paramiko.SSHConfigDict()


class HostSession:
    """One host of an engine: a lazily opened connection plus command helpers.

    Hashable by identity so it can key a Fabric ``GroupResult``.
    """

    def __init__(self, host: Host, engine: Engine) -> None:
        self.host = host
        self.engine = engine
        self._connection: Connection | None = None
        self._port: int | None = None
        self._timeout: float | None = None  # kept after release(): failures name it
        self.elapsed = 0.0
        # The command in flight (for Ctrl-C, `BoundedGroup._run_pool`), set by the runner thread.
        self.running: interrupt.Stoppable | None = None
        # close() (any thread: Ctrl-C, Engine.close) vs release() (the runner thread).
        self._closing = threading.Lock()

    def __repr__(self) -> str:
        return f"<HostSession {self.host}>"

    # -- connection -------------------------------------------------------
    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = self.engine.make_connection(self.host)
            self._port = int(self._connection.port)
            self._timeout = float(self._connection.connect_timeout)
        return self._connection

    @property
    def port(self) -> int | None:
        """The port actually used (host, roles file or ssh_config), None for local."""
        if self.host.is_local:
            return None
        if self._port is None:
            try:
                self._port = int(self.connection.port)
            except Exception:  # its config could not be resolved: reported as the host's failure
                return None
        return self._port

    @property
    def connect_timeout(self) -> float:
        """This host's connect timeout (roles/CLI, else its ConnectTimeout, else the default)."""
        return self._timeout if self._timeout is not None else self.engine.settings.timeout_or_default

    @property
    def is_connected(self) -> bool:
        return self._connection is not None and self._connection.is_connected

    def open(self) -> None:
        """Connect and authenticate (no-op for ``local`` or when already open)."""
        if self.host.is_local:
            return
        connection = self.connection
        try:
            connection.open()
        except paramiko.SSHException as exc:
            # paramiko's start_client() gives up waiting after the timeout but
            # carries on, and the failure surfaces later as "No existing
            # session": report what really happened, a handshake that never ended.
            route = connection.gateway
            if isinstance(route, Route) and route.failure(exc) is not exc:
                raise route.failure(exc) from None
            if "No existing session" in str(exc):
                raise HandshakeTimeout(
                    f"no SSH banner/handshake within {self.connect_timeout:g} s"
                ) from None
            raise
        transport = connection.client.get_transport()
        _relax_polling(transport)
        if transport is not None and connection.host_config is not None:
            start_keepalive(transport, connection.host_config)

    def handshake(self) -> paramiko.PKey:
        """Key exchange and host-key check (`HostKeyStore.verify`), no authentication.

        Returns the server's host key (keyscan). Reaches the host as a
        connection does: directly, or through its jump hosts / ProxyCommand.
        """
        cxn = self.connection
        hostname, port = cxn.host, int(cxn.port)
        timeout = self.connect_timeout
        if isinstance(cxn.gateway, Route):  # behind a jump host or proxy: reach it the same way
            sock, address = cxn.gateway.open(), None
        else:
            sock = socket.create_connection((hostname, port), timeout=timeout)
            address = peer_address(sock)
        target = self.engine.host_key_target(hostname, port, address, config=cxn.host_config)
        transport = HopTransport(self.engine.host_keys, target)(sock)
        try:
            transport.banner_timeout = timeout
            transport.start_client(timeout=timeout)
            self.engine.host_keys.verify(transport, target)
            return transport.get_remote_server_key()
        finally:
            transport.close()

    def close(self) -> None:
        """Close the connection (kept for reuse: the next command reconnects). Any thread."""
        with self._closing:
            _close_connection(self._connection)

    def release(self) -> None:
        """Close and forget the connection (the next use builds a new one).

        For one-shot calls: a closed paramiko client still holds its transport,
        packetizer and buffers (tens of KiB), so keeping 1,000 of them made
        memory grow with the host count; after ``release`` it grows only with
        the fanout. Only the thread that used the session may call it; a
        concurrent `close` (Ctrl-C) finds either the connection or None, never
        a connection taken away between its check and its use.
        """
        with self._closing:
            connection, self._connection = self._connection, None
            _close_connection(connection)

    # -- commands -----------------------------------------------------------
    def run(self, command: str, timeout: float | None = None, stdin: str | None = None,
            on_output: OnOutput | None = None) -> CommandResult:
        """Run ``command`` and capture stdout/stderr/exit code.

        ``stdin`` is sent to the command's standard input, then EOF (without
        it stdin is closed at once). With ``on_output(stream, chunk)`` the
        output is handed on as it arrives instead of kept (`Capture`). A
        non-zero exit is a result, not an exception. Raises on transport
        errors and `CommandTimedOut` past ``timeout`` seconds, after stopping
        the command on the host (`cluster.interrupt.stop`).
        """
        if self.host.is_local:
            capture = Capture(on_output)
            code = self._run_local(command, capture, timeout, stdin)
            return capture.result(command, code)
        return self._run_remote(command, timeout, stdin, Capture(on_output))

    def _run_local(self, command: str, capture: Capture, timeout: float | None, stdin: str | None,
                   halt: threading.Event | None = None) -> int:
        return run_local(command, self.host, capture, timeout=timeout, stdin=stdin, halt=halt,
                         register=self._set_running)

    def _set_running(self, command: interrupt.Stoppable | None) -> None:
        self.running = command

    def _run_remote(self, command: str, timeout: float | None, stdin: str | None, capture: Capture,
                    halt: threading.Event | None = None) -> CommandResult:
        """The command behind the pgid wrapper (`cluster.interrupt`), read until it ends."""
        wrapped, token = interrupt.wrap(command)
        pids = interrupt.PidLine(token)
        capture.filter_err = pids.feed
        channel = self._open_channel(wrapped, stdin)
        running = interrupt.RemoteCommand(self.host, channel, pids)
        self.running = running
        deadline = time.monotonic() + timeout if timeout else None
        try:
            finished = _drain(channel, capture, deadline, halt)
            if not finished:
                interrupt.stop([running])
                if halt is None or not halt.is_set():
                    raise capture.timed_out(command, timeout)
            code = channel.recv_exit_status() if finished else -1
        except BaseException:
            if not running.finished():  # a transport error or Ctrl-C in this thread
                interrupt.stop([running])
            raise
        finally:
            self.running = None
            channel.close()
        rest = pids.flush()
        if rest:
            capture.err(rest)
        return capture.result(command, code)

    def _open_channel(self, command: str, stdin: str | None = None) -> paramiko.Channel:
        self.open()
        transport = self.connection.client.get_transport()
        if transport is None or not transport.is_active():
            # The cached connection died (host rebooted, sshd restarted): reconnect once.
            self.connection.close()
            self.connection.open()
            transport = self.connection.client.get_transport()
        channel: paramiko.Channel = transport.open_session(timeout=self.connect_timeout)
        if self.connection.forward_agent:  # ForwardAgent yes: this command may use our agent
            paramiko.agent.AgentRequestHandler(channel)
        channel.exec_command(command)
        if stdin:
            channel.sendall(stdin.encode())
        channel.shutdown_write()  # then EOF: remote reads end instead of hanging
        return channel

    def stream(self, command: str, on_line: Callable[[str], None],
               stop: threading.Event | None = None, timeout: float | None = None) -> CommandResult:
        """Run ``command`` and call ``on_line`` for each complete stdout line as it arrives.

        When ``stop`` is set the command is stopped on the host (as on Ctrl-C)
        and the exit code is -1, as when the connection is lost while streaming.
        Returns the exit code and the captured stderr.
        """
        lines = Lines(lambda line: on_line(text(line)))
        capture = Capture(lambda stream, chunk: lines.feed(chunk) if stream == "out" else None)
        if self.host.is_local:
            code = self._run_local(command, capture, timeout, None, halt=stop)
            result = capture.result(command, code)
        else:
            try:
                result = self._run_remote(command, timeout, None, capture, halt=stop)
            except ConnectionLost:
                result = capture.result(command, -1)
        if not (stop and stop.is_set()):
            lines.flush()
        return result


def _close_connection(connection: Connection | None) -> None:
    if connection is None:
        return
    transport = connection.client.get_transport()
    if transport is not None:
        disconnect(transport)
    if (transport is not None and _wake_transport_thread(transport)
            and transport is not threading.current_thread()):
        # The thread sees EOF and ends, closing the socket itself. Closing it from here
        # first freed the descriptor while the thread could be between reading it and
        # poll(): the number, reused at once by another host's new connection, was then
        # polled for IDLE_POLL_S (hosts stalled 1 s, one run in three at 64 hosts) and
        # could have been read from.
        transport.join(2.0)
    connection.close()
    # paramiko's close() does not wait for the transport thread; joining it
    # keeps the thread count bounded by the fanout during large runs. (A
    # transport whose connect failed before the handshake never started.)
    if (transport is not None and transport.is_alive()
            and transport is not threading.current_thread()):
        transport.join(2.0)


# How often an idle transport thread wakes once the handshake is over (paramiko: 0.1 s).
IDLE_POLL_S = 1.0


def _relax_polling(transport: paramiko.Transport | None) -> None:
    """Let an authenticated connection's transport thread sleep longer in ``recv()``.

    paramiko's transport thread wakes every 0.1 s to see whether it was
    closed: with open connections kept for ``--watch`` that measured 3 % of a
    core for 64 idle hosts and 9.5 % for 256, all through the GIL. After the
    handshake nothing needs that pace: `HostSession.close` wakes the thread
    with ``shutdown()``, and keepalives/rekeys only get 1 s granularity.
    """
    sock = getattr(transport, "sock", None)
    if isinstance(sock, socket.socket) and (sock.gettimeout() or 0) < IDLE_POLL_S:
        sock.settimeout(IDLE_POLL_S)


def _wake_transport_thread(transport: paramiko.Transport) -> bool:
    """Make the transport thread see the end of the connection now.

    That thread sits in ``recv()`` with a 0.1 s timeout and only then notices
    ``close()``; closing a socket from another thread does not wake a blocked
    ``recv()``, but ``shutdown()`` does (it returns EOF at once). Without this,
    the join in `HostSession.close` cost up to 100 ms of a worker's time per
    host. Everything we sent has been written already; shutdown keeps it.
    True when the socket was shut down here (the thread then ends by itself).
    """
    sock = transport.sock
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
            return True
        except OSError:
            pass  # not connected any more
    return False


def _drain(channel: paramiko.Channel, capture: Capture, deadline: float | None,
           halt: threading.Event | None = None) -> bool:
    """Read both streams until EOF and the exit status, without busy polling.

    Returns False at the ``deadline`` or when ``halt`` is set (the command is
    still running). After the exit status, output silent for `AFTER_EXIT_S`
    ends the read (a background child holding stdout, `cluster.command`).

    Waits on one ``threading.Event`` that paramiko sets when either stream
    gets data or closes (``BufferedPipe.set_event``), not on ``select()`` of
    ``channel.fileno()``: that creates an OS pipe per channel and writes to
    it for every packet, syscalls that showed in second rounds on open
    connections. (A read that empties a buffer clears the event; every read
    is followed by another look at both streams before waiting again.)
    """
    ready = threading.Event()
    channel.in_buffer.set_event(ready)
    channel.in_stderr_buffer.set_event(ready)
    quiet_since = None
    while True:
        got = False
        while channel.recv_ready():
            capture.out(channel.recv(_READ_SIZE))
            got = True
        while channel.recv_stderr_ready():
            capture.err(channel.recv_stderr(_READ_SIZE))
            got = True
        if got:
            quiet_since = None
            continue
        now = time.monotonic()
        remaining = None if deadline is None else deadline - now
        if (remaining is not None and remaining <= 0) or (halt is not None and halt.is_set()):
            return False
        # At most 0.5 s: the exit status and a halt are Events of their own, seen on waking.
        wait = min(remaining, 0.5) if remaining is not None else 0.5
        if channel.exit_status_ready():
            if channel.eof_received:
                # Exit status arrives after EOF; anything still buffered was read above.
                if not channel.recv_ready() and not channel.recv_stderr_ready():
                    return True
                continue
            quiet_since = quiet_since or now
            if now - quiet_since >= AFTER_EXIT_S:
                return True  # exited; a background child holds its stdout open
            wait = min(wait, AFTER_EXIT_S - (now - quiet_since))
        _check_alive(channel)
        if channel.eof_received:
            # Both streams are at EOF (the event stays set from now on):
            # wait for the exit status instead.
            channel.status_event.wait(wait)
            continue
        ready.wait(wait)


def _check_alive(channel: paramiko.Channel) -> None:
    """Fail fast when the connection died mid-command (else the wait loop runs until the timeout)."""
    transport = channel.get_transport()
    closed_early = channel.closed and not channel.exit_status_ready()
    if closed_early or transport is None or not transport.is_active():
        raise ConnectionLost("connection lost while the command was running")


class BoundedGroup(ThreadingGroup):  # type: ignore[misc]  # fabric ships no types
    """A Fabric ``ThreadingGroup`` with at most ``fanout`` hosts in flight.

    Members are `HostSession` objects. ``run``/``call`` return a
    ``GroupResult`` (session -> result or exception) in member order and never
    raise for per-host failures.
    """

    def __init__(self, sessions: Iterable[HostSession], fanout: int = 64,
                 on_done: Callable[[HostSession, Any], None] | None = None) -> None:
        super().__init__()
        self.extend(sessions)
        self.fanout = max(1, int(fanout))
        self.on_done = on_done

    def _do(self, method: str, *args: Any, **kwargs: Any) -> GroupResult:
        return self.call(lambda session: getattr(session, method)(*args, **kwargs))

    def call(self, fn: Callable[[HostSession], Any]) -> GroupResult:
        """Apply ``fn(session)`` to every member, ``fanout`` at a time."""
        done: dict[HostSession, Any] = {}
        if len(self):
            self._run_pool(fn, done)
        results = GroupResult()
        for session in self:
            results[session] = done[session]
        return results

    def _run_pool(self, fn: Callable[[HostSession], Any], done: dict[HostSession, Any]) -> None:
        """``fanout`` runners take sessions from one queue and put results on another.

        Not ``ThreadPoolExecutor`` + ``concurrent.futures.wait``: ``wait()``
        adds and removes a waiter on *every* pending future each time it
        returns, O(hosts) per finished host, O(N^2) for 1,000 hosts; and the
        executor starts its workers one by one inside ``submit()``, where each
        ``Thread.start()`` waits for the new thread to win the GIL from the
        dozens already connecting (about 1 s of wall time for 64 workers).
        Here the runners' threads (`WORKERS`, reused across calls) exist
        before any host is connecting.
        """
        todo: queue.SimpleQueue[HostSession | None] = queue.SimpleQueue()
        finished: queue.SimpleQueue[Any] = queue.SimpleQueue()  # (session, value) pairs, _RUNNER_DONE
        runners = min(self.fanout, len(self))
        for session in self:
            todo.put(session)
        for _ in range(runners):
            todo.put(None)  # one stop mark per runner, after the work
        WORKERS.start(lambda: _run_hosts(todo, finished, fn), runners,
                      then=lambda: finished.put(_RUNNER_DONE))
        stopped = 0
        interrupted = False
        try:
            while len(done) < len(self):
                try:
                    item = finished.get(timeout=0.5)
                except queue.Empty:
                    continue
                if item is _RUNNER_DONE:
                    stopped += 1
                    continue
                session, value = item
                if isinstance(value, BaseException) and not isinstance(value, Exception):
                    raise value  # SystemExit & co. from a worker stop the whole call
                done[session] = value
                if self.on_done:
                    self.on_done(session, value)
        except KeyboardInterrupt:
            interrupted = True
            _drop_queued(todo, runners)
            raise interrupt.Interrupted(self._stop_running(finished, stopped, runners)) from None
        except BaseException:
            _drop_queued(todo, runners)
            for session in self:
                session.close()
            raise
        finally:
            # Hand the threads back idle before returning (the next call reuses them).
            # After Ctrl-C they were given `SETTLE_S`; the stragglers end on their own.
            while stopped < runners and not interrupted:
                if finished.get() is _RUNNER_DONE:
                    stopped += 1

    def _stop_running(self, finished: queue.SimpleQueue[Any], stopped: int, runners: int) -> list[Host]:
        """Ctrl-C: stop every host's command (`cluster.interrupt.stop`), let the runners
        report, close the connections. The hosts whose command was stopped."""
        hosts = interrupt.stop([s.running for s in self if s.running is not None])
        deadline = time.monotonic() + interrupt.SETTLE_S
        while stopped < runners and (left := deadline - time.monotonic()) > 0:
            try:
                if finished.get(timeout=left) is _RUNNER_DONE:
                    stopped += 1
            except queue.Empty:
                break
        # A runner that opened its channel while the others were being stopped.
        hosts += interrupt.stop([s.running for s in self if s.running is not None])
        for session in self:
            session.close()
        return hosts


_RUNNER_DONE = object()


def _run_hosts(todo: queue.SimpleQueue[HostSession | None], finished: queue.SimpleQueue[Any],
               fn: Callable[[HostSession], Any]) -> None:
    """One runner of a call: hosts from ``todo`` until its stop mark."""
    while (session := todo.get()) is not None:
        try:
            value = _timed(fn, session)
        except BaseException as exc:  # handed to the calling thread, which re-raises it
            value = exc
        finished.put((session, value))


def _drop_queued(todo: queue.SimpleQueue[Any], runners: int) -> None:
    """Take the hosts not started yet off the queue; one stop mark per runner instead."""
    while True:
        try:
            todo.get_nowait()
        except queue.Empty:
            break
    for _ in range(runners):
        todo.put(None)


# A worker thread idle this long ends (the next call starts a new one).
IDLE_WORKER_S = 5.0


class WorkerThreads:
    """Threads shared by every fan-out call of the process, reused from call to call.

    Starting and ending 64 threads per call cost 12-19 ms of CPU on this
    2-core machine (more wall time under load): a tenth of a second round on
    open connections, and every ``--watch`` tick paid it again. A call asks
    for ``count`` threads at once (its fanout); idle ones are reused and the
    missing ones started first, before any job is queued. A thread idle for
    `IDLE_WORKER_S` ends, so the count follows the fanouts in use at the
    moment, never the host count.

    Invariant (under ``_lock``): ``_idle >= _pending``, so every queued job
    has a thread that will take it; an idle thread only ends when no job is
    pending.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], Callable[[], None]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads not running a job (waiting, or about to)
        self._pending = 0  # jobs queued and not yet taken
        self._serial = 0

    def start(self, job: Callable[[], None], count: int, then: Callable[[], None]) -> None:
        """Run ``job`` on ``count`` threads at once; each calls ``then()`` once idle again.

        Exceptions from ``job`` are swallowed: jobs report their own errors.
        """
        with self._lock:
            self._pending += count
            missing = max(0, self._pending - self._idle)
            self._idle += missing
            first = self._serial
            self._serial += missing
        for number in range(first, first + missing):
            threading.Thread(target=self._loop, daemon=True, name=f"cluster-host_{number}").start()
        for _ in range(count):
            self._jobs.put((job, then))

    def _loop(self) -> None:
        batch_this_thread()
        while True:
            try:
                job, then = self._jobs.get(timeout=IDLE_WORKER_S)
            except queue.Empty:
                with self._lock:
                    if self._pending:
                        continue  # a job is queued: someone must take it
                    self._idle -= 1
                    return
            with self._lock:
                self._idle -= 1
                self._pending -= 1
            try:
                job()
            except BaseException:  # jobs report their own errors; the count must stay right
                pass
            with self._lock:
                self._idle += 1
            then()  # after: the caller may count on this thread being reusable


WORKERS = WorkerThreads()


def _timed(fn: Callable[[HostSession], Any], session: HostSession) -> Any:
    started = time.monotonic()
    try:
        return fn(session)
    except Exception as exc:  # a per-host failure is a value, not a crash
        return exc
    finally:
        session.elapsed = time.monotonic() - started


class Engine:
    """Shared SSH state for a set of hosts: config, keys, host keys, jump hosts, open connections."""

    def __init__(self, settings: SSHSettings | None = None) -> None:
        self.settings = settings or SSHSettings()
        self.config = self._make_config()
        self.resolver = Resolver(self.settings.ssh_config)
        self.keys = KeyRing()
        self.key_path = load_private_key(self.settings)
        self.host_keys = HostKeyStore()
        self.jumps = JumpPool(self._login_hop)
        self._sessions: dict[Host, HostSession] = {}
        self._lock = threading.Lock()

    def _make_config(self) -> Config:
        overrides: dict[str, Any] = {
            "run": {"hide": True, "warn": True, "in_stream": False},
            "timeouts": {"connect": self.settings.timeout_or_default},
            # ssh_config is evaluated per host by `sshconfig.Resolver` (ssh -G), not by Fabric.
            "load_ssh_configs": False,
        }
        return LeanConfig(overrides=overrides, ssh_config=_NoSSHConfig())

    @functools.cached_property
    def key_description(self) -> str:
        """Which keys authenticate (named in auth failure hints that do not list them)."""
        return f"{self.key_path}, ssh-agent and IdentityFile keys" if self.key_path else \
            "ssh-agent and IdentityFile keys"

    def session(self, host: Host) -> HostSession:
        """The (cached) session of ``host``; connections are reused across calls."""
        with self._lock:
            if host not in self._sessions:
                self._sessions[host] = HostSession(host, self)
            return self._sessions[host]

    # -- per-host configuration (docs/roles.md: CLI > roles.yaml ssh: > ssh_config > defaults) --
    def host_config(self, host: Host) -> HostConfig:
        """The effective ssh_config of ``host``: host expression / roles user and port act as ``ssh -l/-p``."""
        return self.resolver.resolve(host.hostname, host.user or self.settings.user,
                                     host.port or self.settings.port)

    def connect_timeout(self, config: HostConfig) -> float:
        """roles.yaml/CLI ``connect_timeout`` when set, else ConnectTimeout, else the default."""
        if self.settings.connect_timeout is not None:
            return float(self.settings.connect_timeout)
        return config.connect_timeout or DEFAULT_CONNECT_TIMEOUT

    def make_connection(self, host: Host) -> Connection:
        """A Fabric Connection with the host's effective config, our host-key store and keys."""
        config = self.host_config(host)
        timeout = self.connect_timeout(config)
        route = self.route(config, timeout)
        connection = LeanConnection(
            config.hostname,
            user=config.user,
            port=config.port,
            config=self.config,
            connect_kwargs=self._connect_kwargs(config, timeout),
            gateway=route or False,
            forward_agent=config.forward_agent,
        )
        connection.host_config = config
        # Fabric truncates connect_timeout with int(); keep fractions ourselves.
        connection.connect_timeout = timeout
        # Host keys: the store orders the host-key algorithms before the key
        # exchange and checks the key after it (paramiko's own, empty HostKeys
        # hands every key to the policy, before authentication).
        target = self.host_key_target(config.hostname, config.port, config=config)
        connection.connect_kwargs["transport_factory"] = HopTransport(self.host_keys, target)
        connection.client.set_missing_host_key_policy(self.host_keys.client_policy(target))
        return connection

    def host_key_target(self, hostname: str, port: int, address: str | None = None,
                        config: HostConfig | None = None) -> HostKeyTarget:
        """How the host-key store sees one hop: its ssh_config, with roles.yaml known_hosts/policy first."""
        settings = self.settings
        if config is None:
            return HostKeyTarget(hostname, port, user_files=self._user_files(None),
                                 policy=settings.host_key_policy or ACCEPT_NEW, address=address)
        # `ssh -G` prints ssh's default "ask" when nothing is set: that stays our default (accept-new).
        checking = config.strict_host_key_checking
        policy = settings.host_key_policy or (
            ACCEPT_NEW if checking == "ask" else STRICT_HOST_KEY_CHECKING.get(checking, ACCEPT_NEW))
        return HostKeyTarget(hostname, port, alias=config.host_key_alias, user_files=self._user_files(config),
                             global_files=config.global_known_hosts, policy=policy,
                             hash_new=config.hash_known_hosts, check_host_ip=config.check_host_ip,
                             address=address)

    def _user_files(self, config: HostConfig | None) -> tuple[str, ...]:
        if self.settings.known_hosts:
            return (self.settings.known_hosts,)
        return config.user_known_hosts if config is not None else HostKeyTarget.user_files

    def _connect_kwargs(self, config: HostConfig, timeout: float) -> dict[str, Any]:
        return {
            "banner_timeout": timeout,
            "auth_timeout": timeout,
            "channel_timeout": timeout,
            "auth_strategy": self.auth_strategy(config),
            "transport_factory": make_transport,
        }

    def auth_strategy(self, config: HostConfig) -> KeyAuth:
        """The keys offered to this host, in OpenSSH's order (`keys.KeyRing.candidates`)."""
        first = [self.key_path] if self.key_path else []
        # `ssh -G` prints IdentityFile/CertificateFile with their % tokens; ssh expands them per host.
        identity_files = tuple(expand_tokens(p, config) if "%" in p else p for p in config.identity_files)
        certificate_files = tuple(expand_tokens(p, config) if "%" in p else p for p in config.certificate_files)
        offered, skipped = self.keys.candidates(first, identity_files, certificate_files,
                                                config.identity_agent, config.identities_only)
        return self.keys.strategy(config.user, offered, skipped)

    # -- routes: direct, ProxyCommand, jump hosts (connect.py) --
    def route(self, config: HostConfig, timeout: float) -> Route | None:
        """How to reach a target: None (direct TCP), or a `Route` (ProxyCommand / jump chain)."""
        jump = self.settings.proxy_jump if self.settings.proxy_jump is not None else config.proxy_jump
        if jump is not None and jump.strip().lower() != "none":
            return Route(self, config, timeout, chain=self.jump_chain(jump))
        if self.settings.proxy_jump is None and config.proxy_command:
            return Route(self, config, timeout, proxy_command=expand_tokens(config.proxy_command, config))
        return None

    def jump_chain(self, jump: str, depth: int = 0) -> tuple[HostConfig, ...]:
        """The hops of a ProxyJump value, first hop first; the first hop's own ProxyJump comes before it."""
        try:
            specs = parse_proxy_jump(jump)
        except ValueError as exc:
            raise InputError(f"ProxyJump: {exc}") from None
        if depth > 8:
            raise InputError(f"ProxyJump: more than 8 nested jump hosts at {jump!r}")
        hops = [self.resolver.resolve(s.host, s.user, s.port) for s in specs]
        first = hops[0]
        # A jump host's own ProxyJump counts, unless it names the jump host itself (a `Host *` line).
        own = [(j.host, j.port) for j in parse_proxy_jump(first.proxy_jump)] if first.proxy_jump else []
        loops = (specs[0].host, specs[0].port) in own or (first.hostname, first.port) in own
        before = self.jump_chain(first.proxy_jump, depth + 1) if first.proxy_jump and own and not loops else ()
        return before + tuple(hops)

    def _login_hop(self, config: HostConfig, sock: Any) -> paramiko.Transport:
        """Connect, check the host key and authenticate one jump host (`JumpPool`)."""
        timeout = self.connect_timeout(config)
        proxy = None
        if sock is None and config.proxy_command:
            sock = proxy = ShellProxy(expand_tokens(config.proxy_command, config))
        client = paramiko.SSHClient()
        target = self.host_key_target(config.hostname, config.port, config=config)
        client.set_missing_host_key_policy(self.host_keys.client_policy(target))
        try:
            client.connect(config.hostname, config.port, config.user, sock=sock, timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
                           transport_factory=HopTransport(self.host_keys, target),
                           auth_strategy=self.auth_strategy(config))
        except paramiko.SSHException as exc:
            client.close()
            if proxy is not None and not isinstance(exc, (HostKeyError, paramiko.AuthenticationException)):
                raise proxy.failure(exc) from None
            if "No existing session" in str(exc):
                raise HandshakeTimeout(f"no SSH banner/handshake within {timeout:g} s") from None
            raise
        transport = client.get_transport()
        assert transport is not None
        start_keepalive(transport, config)
        return transport

    def group(self, hosts: Sequence[Host], fanout: int | None = None,
              on_done: Callable[[HostSession, Any], None] | None = None) -> BoundedGroup:
        return BoundedGroup([self.session(h) for h in hosts], fanout or self.settings.fanout, on_done)

    def call(self, hosts: Sequence[Host], fn: Callable[[HostSession], Any], *,
             fanout: int | None = None, keep_open: bool = False,
             on_done: Callable[[HostSession, Any], None] | None = None) -> GroupResult:
        """Apply ``fn`` to each host's session with bounded concurrency.

        Unless ``keep_open``, each host's connection is closed as soon as its
        work ends, so open connections (and paramiko transport threads) never
        exceed the fanout either.
        """
        work = fn if keep_open else _closing(fn)
        return self.group(hosts, fanout, on_done).call(work)

    def run(self, hosts: Sequence[Host], command: str, *, timeout: float | None = None,
            fanout: int | None = None, keep_open: bool = False,
            on_done: Callable[[HostSession, Any], None] | None = None,
            on_output: Callable[[Host, str, bytes], None] | None = None) -> GroupResult:
        """Run one command on every host; see `call`. With ``on_output(host, stream, chunk)``
        output is handed on as it arrives (from the hosts' threads) instead of kept."""
        def run_one(session: HostSession) -> CommandResult:
            consumer = functools.partial(on_output, session.host) if on_output else None
            return session.run(command, timeout=timeout, on_output=consumer)

        return self.call(hosts, run_one, fanout=fanout, keep_open=keep_open, on_done=on_done)

    def close(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.close()
        self.jumps.close()
        self.keys.close()
        self.resolver.close()  # its temporary wrapper config (rebuilt if the engine is used again)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _closing(fn: Callable[[HostSession], Any]) -> Callable[[HostSession], Any]:
    def work(session: HostSession) -> Any:
        try:
            return fn(session)
        finally:
            session.release()

    return work


def load_private_key(settings: SSHSettings) -> str | None:
    """The key file offered first: ``ssh.key_filename``, else the GCE key when it exists.

    A configured key that does not exist is bad input (exit 2). Its content is
    read by `keys.KeyRing` with every other key: an encrypted one is skipped
    there (the agent may hold it), never a prompt or a traceback.
    """
    configured = settings.resolved_key()
    if configured and settings.key_filename and not os.path.exists(configured):
        raise InputError(f"ssh key not found: {configured} "
                         "(set ssh.key_filename, or run `inv ensure-key`)")
    return configured


class Route:
    """The way to one target through a ProxyCommand or a jump chain (the connection's ``gateway``)."""

    def __init__(self, engine: Engine, config: HostConfig, timeout: float, *,
                 chain: tuple[HostConfig, ...] = (), proxy_command: str | None = None) -> None:
        self.engine, self.config, self.timeout = engine, config, timeout
        self.chain, self.proxy_command = chain, proxy_command
        self.proxy: ShellProxy | None = None

    def open(self) -> Any:
        """A socket-like object to the target: a ProxyCommand's pipes or a direct-tcpip channel."""
        if self.proxy_command is not None:
            self.proxy = ShellProxy(self.proxy_command)
            return self.proxy
        transport = self.engine.jumps.transport(self.chain)
        return open_channel(transport, hop_name(self.chain[-1]), self.config.hostname, self.config.port,
                            self.timeout)

    def failure(self, exc: BaseException) -> BaseException:
        """What a failed connection through this route is reported as (a ProxyCommand shows its stderr)."""
        if self.proxy is not None and not isinstance(exc, (HostKeyError, paramiko.AuthenticationException)):
            return self.proxy.failure(exc)
        return exc


KEEPALIVE = Keepalive()  # one thread for every connection of the process that asks for keepalives


def start_keepalive(transport: paramiko.Transport, config: HostConfig) -> None:
    """ServerAliveInterval / ServerAliveCountMax as ssh does them (`connect.Keepalive`)."""
    KEEPALIVE.watch(transport, config.server_alive_interval, config.server_alive_count_max)
