"""`local` runs like a remote host: a shell on subprocess pipes, in its own session.

What a remote command gets, the controller's does too: the command text to a
shell (``bash -c``, as sshd runs the login shell), an optional stdin script
then EOF, stdout and stderr read as they arrive (`cluster.command.Capture`),
an exit code, a timeout, and Ctrl-C / timeout stopping it (`LocalCommand`,
`cluster.interrupt.stop`). Invoke's local runner fed ``in_stream`` one byte
per loop turn with a sleep in between (~10 ms a byte: 10 s for a 1 kB
script); here the script is written as the pipe takes it.

The command runs in a new session, as sshd does: its process group is
signalled as a whole, and a Ctrl-C typed at the terminal reaches this
process only, which then stops the command the same way on every host. It
runs with the ordinary scheduling policy even when started from one of the
engine's SCHED_BATCH threads (`batch_this_thread`, `ordinary_scheduling`).
"""

from __future__ import annotations

import os
import selectors
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .command import AFTER_EXIT_S, Capture
from .hosts import Host
from .interrupt import GRACE_S, Stoppable, local_signal, stop
from .shell import STDIN_RUNNER

SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
# Commands that only start a shell reading its script on stdin (what every
# stdin-fed script runs: `cluster.shell.STDIN_RUNNER`): started as that shell
# directly. `bash -c` would only exec it, so the result is the same, minus one
# shell start (~1 ms: a 1 kB script went from 1.66x to ~1.0x `bash -s`).
# argv[0] is the name `exec` would give it, so $0 and error messages match too.
_SHELL_ARGV = [os.path.basename(SHELL), "-s"]
_STDIN_SHELLS = {STDIN_RUNNER: _SHELL_ARGV, "sh -s": ["sh", "-s"]}
if SHELL == "/bin/bash":
    _STDIN_SHELLS["bash -s"] = _SHELL_ARGV
_READ_SIZE = 65536
# How often the loop looks at the process while its output is silent.
_POLL_S = 0.2


class LocalCommand:
    """A local command's process group, as `cluster.interrupt.stop` sees it."""

    def __init__(self, host: Host, proc: subprocess.Popen[bytes]) -> None:
        self.host = host
        self.proc = proc

    def finished(self) -> bool:
        return self.proc.poll() is not None

    def wait(self, seconds: float) -> bool:
        try:
            self.proc.wait(seconds)
            return True
        except subprocess.TimeoutExpired:
            return False

    def signal(self, name: str) -> None:
        local_signal(self.proc.pid, name)

    def kill_group(self) -> None:
        """TERM then KILL the group: members may outlive the shell (see `cluster.interrupt`)."""
        if local_signal(self.proc.pid, "TERM"):
            time.sleep(0.2)
            local_signal(self.proc.pid, "KILL")

    def close(self) -> None:
        pass  # the reading loop owns the pipes


def run_local(command: str, host: Host, capture: Capture, *, timeout: float | None = None,
              stdin: str | None = None, halt: threading.Event | None = None,
              register: Callable[[Stoppable | None], None] = lambda c: None) -> int:
    """Run ``command``; output to ``capture``; the exit code (128 + N when killed by signal N).

    Raises ``capture.timed_out(...)`` past ``timeout`` seconds, after stopping
    the command's process group; when ``halt`` is set, stops it and returns -1.
    ``register`` is told the running command (then None), for Ctrl-C.
    """
    argv = _STDIN_SHELLS.get(command)
    executable = "/bin/" + argv[0] if argv else None
    argv = argv or [SHELL, "-c", command]
    with ordinary_scheduling():
        proc = subprocess.Popen(argv, executable=executable, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                start_new_session=True)
    running = LocalCommand(host, proc)
    register(running)
    deadline = time.monotonic() + timeout if timeout else None
    try:
        finished = _pump(proc, capture, stdin.encode() if stdin else b"", deadline, halt)
        if not finished:
            stop([running])
            if halt is not None and halt.is_set():
                return -1
            raise capture.timed_out(command, timeout)
        code = proc.wait()
    except BaseException:
        if proc.poll() is None:  # Ctrl-C in this thread, or a failure while reading
            stop([running], grace=GRACE_S)
        raise
    finally:
        register(None)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return 128 - code if code < 0 else code


def _pump(proc: subprocess.Popen[bytes], capture: Capture, script: bytes, deadline: float | None,
          halt: threading.Event | None) -> bool:
    """Feed stdin, read both streams until EOF (or silence after exit); False on timeout or halt."""
    selector = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    selector.register(proc.stdout, selectors.EVENT_READ, capture.out)
    selector.register(proc.stderr, selectors.EVENT_READ, capture.err)
    if proc.stdin is not None:
        os.set_blocking(proc.stdin.fileno(), False)
        selector.register(proc.stdin, selectors.EVENT_WRITE, memoryview(script))
    quiet_since = None
    with selector:
        while selector.get_map():
            now = time.monotonic()
            if (deadline is not None and now >= deadline) or (halt is not None and halt.is_set()):
                return False
            wait = _POLL_S if deadline is None else min(_POLL_S, deadline - now)
            events = selector.select(wait)
            if not events:
                if proc.poll() is not None:
                    quiet_since = quiet_since or now
                    if now - quiet_since >= AFTER_EXIT_S:
                        break  # exited; a background child holds the pipes (see cluster.command)
                continue
            quiet_since = None
            for key, _ in events:
                if key.fileobj is proc.stdin:
                    _feed(selector, key)
                else:
                    _read(selector, key)
    return True


def _feed(selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
    rest: memoryview = key.data
    try:
        written = os.write(key.fd, rest[:_READ_SIZE])
    except BrokenPipeError:  # the shell stopped reading: the rest of the script is not wanted
        written = len(rest)
    rest = rest[written:]
    if rest:
        selector.modify(key.fileobj, selectors.EVENT_WRITE, rest)
    else:
        selector.unregister(key.fileobj)
        key.fileobj.close()  # type: ignore[union-attr]  # registered as proc.stdin, a file object. EOF: `bash -s` ends when the script does


def _read(selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
    chunk = os.read(key.fd, _READ_SIZE)
    if chunk:
        key.data(chunk)
    else:
        selector.unregister(key.fileobj)


# -- scheduling: the engine's threads run SCHED_BATCH; the commands they start do not --
#
# A fan-out's threads (a runner and a paramiko transport thread per host) hand the
# GIL and their events to each other all the time. A woken thread that preempts the
# thread waking it (Linux's wakeup preemption) finds the GIL still held by the
# thread it just pushed off the CPU, and both switch again. SCHED_BATCH threads do
# not preempt on wakeup. Only the calling thread changes (Linux keeps the policy
# per thread); a process it starts for the user gets the ordinary policy back
# (`ordinary_scheduling`). Measured: docs/performance.md, "Fourth look".
_BATCH = getattr(os, "SCHED_BATCH", None)
_OTHER = getattr(os, "SCHED_OTHER", None)


def _policy() -> int | None:
    """The calling thread's policy, or None where it cannot be read (not Linux, a seccomp filter)."""
    if _BATCH is None:
        return None
    try:
        return os.sched_getscheduler(0)
    except OSError:
        return None


def _set_policy(policy: int) -> None:
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError:  # not allowed here: the default is fine
        pass


def batch_this_thread() -> None:
    """Make the calling thread SCHED_BATCH where it is SCHED_OTHER (Linux; elsewhere nothing)."""
    if _BATCH is not None and _policy() == _OTHER:  # an explicit choice (chrt) is left alone
        _set_policy(_BATCH)


@contextmanager
def ordinary_scheduling() -> Iterator[None]:
    """Around starting a process: from a batch thread, the child gets SCHED_OTHER back."""
    batch, other = _BATCH, _OTHER
    if batch is None or other is None or _policy() != batch:
        yield
        return
    _set_policy(other)
    try:
        yield
    finally:
        _set_policy(batch)
