"""What one command on one host gives back, remote or local: kept or streamed output.

`Capture` receives a command's output chunks as they arrive. Without a
consumer it keeps them (``CommandResult.stdout``); with ``on_output`` it hands
each chunk on at once and keeps only stderr (failure messages quote it), so a
command's output costs memory in proportion to one chunk, not to its size.

A finished command's output ends at EOF, like OpenSSH, with one exception:
once the exit status is in, output that stays silent for `AFTER_EXIT_S`
ends the read. A background child that kept the command's stdout open
(``inv run "sleep 8 &"``) would otherwise hold the call until it exits (``ssh``
does wait: it is an interactive tool, this one reports exit statuses).
Output the background child writes later is not read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from invoke.exceptions import CommandTimedOut
from invoke.runners import Result as InvokeResult

# Output silent this long after the exit status: the read ends (see above).
AFTER_EXIT_S = 0.5

# Where a streamed chunk came from.
STDOUT, STDERR = "out", "err"
OnOutput = Callable[[str, bytes], None]


@dataclass
class CommandResult:
    """Captured result of one command on one host (remote or local)."""

    command: str
    stdout: str
    stderr: str
    exited: int

    @property
    def ok(self) -> bool:
        return self.exited == 0

    @property
    def failed(self) -> bool:
        return not self.ok


class Capture:
    """One command's output as it arrives: kept, or handed to ``on_output`` (stdout and stderr).

    ``filter_err`` sees stderr first (`cluster.interrupt.PidLine` takes the
    wrapper's line out there).
    """

    def __init__(self, on_output: OnOutput | None = None,
                 filter_err: Callable[[bytes], bytes] | None = None) -> None:
        self.on_output = on_output
        self.filter_err = filter_err
        self._out: list[bytes] = []
        self._err: list[bytes] = []

    def out(self, chunk: bytes) -> None:
        if self.on_output is not None:
            self.on_output(STDOUT, chunk)
        else:
            self._out.append(chunk)

    def err(self, chunk: bytes) -> None:
        if self.filter_err is not None:
            chunk = self.filter_err(chunk)
            if not chunk:
                return
        self._err.append(chunk)
        if self.on_output is not None:
            self.on_output(STDERR, chunk)

    def result(self, command: str, exited: int) -> CommandResult:
        return CommandResult(command, text(self._out), text(self._err), exited)

    def timed_out(self, command: str, timeout: float | None) -> CommandTimedOut:
        """The exception of a command past its timeout, with what it printed so far."""
        partial = InvokeResult(stdout=text(self._out), stderr=text(self._err), command=command, exited=-1)
        return CommandTimedOut(partial, timeout or 0)  # type: ignore[arg-type]  # invoke says int; it only prints it


def text(data: bytes | list[bytes]) -> str:
    raw = b"".join(data) if isinstance(data, list) else data
    return raw.decode("utf-8", "replace")


class Lines:
    """Bytes in, whole lines out (without the newline): ``on_line`` per complete line;
    `flush` hands on a last line that has no newline. Linear in the bytes, long lines too."""

    def __init__(self, on_line: Callable[[bytes], None]) -> None:
        self.on_line = on_line
        self._tail: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        if b"\n" not in chunk:
            self._tail.append(chunk)
            return
        first, *lines, last = chunk.split(b"\n")
        self.on_line(b"".join([*self._tail, first]))
        for line in lines:
            self.on_line(line)
        self._tail = [last] if last else []

    def flush(self) -> None:
        tail, self._tail = b"".join(self._tail), []
        if tail:
            self.on_line(tail)
