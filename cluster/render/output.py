"""`inv run` output: remote output is data.

Three shapes, chosen by where stdout goes (`RunOutput.for_stdout`):

* **piped** (stdout not a terminal): stdout carries the hosts' stdout bytes
  unchanged, host after host in the order given, each host's bytes whole
  (`OrderedStdout`): ``inv run -H h "seq 1 1000000" | sha256sum`` equals the
  same through ``ssh h``. Bytes are written as they arrive for the first
  unfinished host and spooled for the others until their turn, so the cost
  is linear in the bytes and memory stays bounded (`SPOOL_MEMORY`). Everything
  else (which host failed, each host's stderr, the summary) goes to stderr.
* **terminal**: clush ``-b`` style groups of hosts with identical output
  (stdout and stderr), remote text with control characters spelled out
  (`cluster.render.text.shown_lines`), never wrapped or marked up by rich;
  stderr under a marker; the failure; the summary.
* **stream** (``--stream``): ``host: line`` as lines arrive (`LiveLines`).
"""

from __future__ import annotations

import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

from ..command import STDERR, STDOUT, Lines
from ..hosts import Host, fold_names
from ..lazy import lazy
from ..result import Outcome, Report
from .core import status_cell, summary_line, summary_parts
from .text import shown, shown_lines

# rich loads with the first styled line (see `RunOutput.finish`).
if TYPE_CHECKING:
    from rich import console as rich_console
    from rich import text as rich_text
    from rich.console import Console
    from rich.text import Text
else:
    rich_console = lazy("rich.console")
    rich_text = lazy("rich.text")

# Per waiting host, what is kept in memory before its output spools to a temp file.
SPOOL_MEMORY = 4 << 20
_COPY_SIZE = 1 << 20
STDERR_MARK = "stderr│ "


class OrderedStdout:
    """Hosts' stdout bytes to one binary stream, host after host, each whole.

    Thread-safe: `write` and `done` are called from the hosts' runner threads.
    A consumer that went away (``| head``) ends the writing, not the run.
    """

    def __init__(self, hosts: Sequence[Host], out: IO[bytes]) -> None:
        self.out = out
        self._order = list(hosts)
        self._position = {host: i for i, host in enumerate(self._order)}
        self._spools: dict[Host, Any] = {}
        self._done: set[Host] = set()
        self._current = 0  # index of the host whose bytes go straight out
        self._lock = threading.Lock()
        self.broken = False

    def write(self, host: Host, chunk: bytes) -> None:
        with self._lock:
            if self._position[host] == self._current:
                self._emit(chunk)
            else:
                spool = self._spools.get(host)
                if spool is None:
                    spool = self._spools[host] = tempfile.SpooledTemporaryFile(SPOOL_MEMORY)
                spool.write(chunk)

    def done(self, host: Host) -> None:
        """``host`` has no more output: the next hosts' spooled bytes follow."""
        with self._lock:
            self._done.add(host)
            while self._current < len(self._order) and self._order[self._current] in self._done:
                self._current += 1
                if self._current < len(self._order):
                    self._unspool(self._order[self._current])
            self._flush()

    def _unspool(self, host: Host) -> None:
        spool = self._spools.pop(host, None)
        if spool is None:
            return
        with spool:
            spool.seek(0)
            while chunk := spool.read(_COPY_SIZE):
                self._emit(chunk)

    def _emit(self, chunk: bytes) -> None:
        if self.broken:
            return
        try:
            self.out.write(chunk)
        except BrokenPipeError:
            self.broken = True

    def _flush(self) -> None:
        if not self.broken:
            try:
                self.out.flush()
            except BrokenPipeError:
                self.broken = True


class LiveLines:
    """``--stream``: each host's whole lines as they arrive, ``host: line``.

    On a terminal the host name is coloured and the line spelled safe
    (`shown`); piped, the line's bytes are written unchanged after the plain
    prefix. stderr lines are marked (``host: stderr│ line``). A last line
    without newline is printed when its host finishes (`done`).
    """

    COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta",
               "bright_green")

    def __init__(self, hosts: Sequence[Host], out: IO[bytes], terminal: bool) -> None:
        self.out = out
        self.terminal = terminal
        width = max((len(str(h)) for h in hosts), default=0)
        self._prefix = {h: self._make_prefix(h, i, width) for i, h in enumerate(hosts)}
        self._lines: dict[tuple[Host, str], Lines] = {}
        self._lock = threading.Lock()
        self.broken = False

    def _make_prefix(self, host: Host, index: int, width: int) -> bytes:
        name = f"{str(host):<{width}}: "
        if not self.terminal:
            return name.encode()
        colour = self.COLOURS[index % len(self.COLOURS)]
        return _styled(rich_text.Text(name, style=colour)).encode()

    def write(self, host: Host, stream: str, chunk: bytes) -> None:
        key = (host, stream)
        lines = self._lines.get(key)
        if lines is None:
            lines = self._lines[key] = Lines(lambda line: self._line(host, stream, line))
        lines.feed(chunk)  # only this host's runner thread feeds this key

    def done(self, host: Host) -> None:
        for stream in (STDOUT, STDERR):
            lines = self._lines.pop((host, stream), None)
            if lines is not None:
                lines.flush()

    def _line(self, host: Host, stream: str, line: bytes) -> None:
        if self.terminal:
            line = shown(line.decode("utf-8", "replace")).encode()
        mark = STDERR_MARK.encode() if stream == STDERR else b""
        with self._lock:
            if self.broken:
                return
            try:
                self.out.write(self._prefix[host] + mark + line + b"\n")
                self.out.flush()
            except BrokenPipeError:
                self.broken = True


class RunOutput:
    """What `inv run` prints, in the shape its stdout calls for (see the module doc)."""

    def __init__(self, hosts: Sequence[Host], *, terminal: bool, stream: bool,
                 out: IO[bytes] | None = None, text_out: IO[str] | None = None,
                 err: IO[str] | None = None) -> None:
        self.terminal = terminal
        self.out = out if out is not None else sys.stdout.buffer
        self.text_out = text_out if text_out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.live = LiveLines(hosts, self.out, terminal) if stream else None
        self.ordered = OrderedStdout(hosts, self.out) if not (stream or terminal) else None

    @classmethod
    def for_stdout(cls, hosts: Sequence[Host], stream: bool = False) -> RunOutput:
        return cls(hosts, terminal=sys.stdout.isatty(), stream=stream)

    @property
    def on_output(self) -> Callable[[Host, str, bytes], None] | None:
        """The per-chunk consumer for `cluster.api.Cluster.run` (None: keep output in the report)."""
        if self.live is not None:
            return self.live.write
        if self.ordered is not None:
            return self._ordered_write
        return None

    def _ordered_write(self, host: Host, stream: str, chunk: bytes) -> None:
        if stream == STDOUT:
            assert self.ordered is not None  # only handed out when there is one
            self.ordered.write(host, chunk)

    def on_done(self, tick: Callable[..., None]) -> Callable[..., None]:
        """The engine's ``on_done``: a host's output is complete, then ``tick`` (progress)."""
        def done(session: Any, value: Any) -> None:
            if self.live is not None:
                self.live.done(session.host)
            if self.ordered is not None:
                self.ordered.done(session.host)
            tick(session, value)

        return done

    def finish(self, report: Report, elapsed: float) -> None:
        """After the run: groups (terminal) or status and stderr (piped/stream), then the summary."""
        if self.terminal and self.live is None:
            console = rich_console.Console(file=self.text_out, highlight=False)
            print_groups(report, console)
            console.print(summary_line(report, elapsed))
            return
        with_stderr = self.live is None
        if not self.err.isatty() and not _failures_and_stderr(report, with_stderr):
            # Nothing but the summary, to a pipe or file: its plain text, without loading rich.
            self.err.write("".join(part for part, _ in summary_parts(report, elapsed)) + "\n")
            self.err.flush()
            return
        console = rich_console.Console(file=self.err, highlight=False, stderr=True)
        print_failures_and_stderr(report, console, with_stderr=with_stderr)
        console.print(summary_line(report, elapsed))


def print_groups(report: Report, console: Console) -> None:
    """clush -b style: one header per group of hosts with identical output, then the output
    (control characters spelled out), the stderr (marked) and the failure."""
    for hosts, outcome in _groups(report, lambda o: (o.stdout, o.stderr)):
        console.print(_header(hosts, outcome))
        if outcome.stdout:
            _raw(console, shown_lines(outcome.stdout.rstrip("\n")) + "\n")
        _print_stderr(console, outcome)
        _print_failure(console, outcome)


def print_failures_and_stderr(report: Report, console: Console, with_stderr: bool = True) -> None:
    """Piped run: for each group of hosts that failed or wrote to stderr, a header, the
    stderr (marked) and the failure."""
    for hosts, outcome in _failures_and_stderr(report, with_stderr):
        console.print(_header(hosts, outcome))
        if with_stderr:
            _print_stderr(console, outcome)
        _print_failure(console, outcome)


def _failures_and_stderr(report: Report, with_stderr: bool) -> list[tuple[list[Host], Outcome]]:
    """The groups of hosts that failed or wrote to stderr (``with_stderr``)."""
    return [(hosts, outcome) for hosts, outcome in _groups(report, lambda o: (o.stderr if with_stderr else "",))
            if not outcome.ok or (with_stderr and outcome.stderr)]


def _groups(report: Report, key: Callable[[Outcome], tuple[object, ...]]) -> list[tuple[list[Host], Outcome]]:
    """Hosts with the same status and ``key``, in order of their first host."""
    groups: dict[tuple[object, ...], list[Outcome]] = {}
    for outcome in report:
        error = outcome.error
        status = (outcome.ok, outcome.exit_code, error.kind if error else None,
                  error.message if error else None)
        groups.setdefault((status, key(outcome)), []).append(outcome)
    return [([o.host for o in members], members[0]) for members in groups.values()]


def _header(hosts: list[Host], outcome: Outcome) -> Text:
    header = rich_text.Text(f"---- {fold_names([str(h) for h in hosts])} ", style="bold cyan")
    header.append(f"({len(hosts)}) ", style="dim")
    header.append_text(status_cell(outcome))
    return header


def _print_stderr(console: Console, outcome: Outcome) -> None:
    if not outcome.stderr:
        return
    lines = shown_lines(outcome.stderr.rstrip("\n")).split("\n")
    _raw(console, "".join(_styled(rich_text.Text(STDERR_MARK, style="yellow"), console) + line + "\n"
                          for line in lines))


def _print_failure(console: Console, outcome: Outcome) -> None:
    if outcome.error is None:
        return
    text = rich_text.Text(shown(outcome.error.message), style="red")
    if outcome.error.hint:
        text.append("\n→ " + shown(outcome.error.hint), style="dim")
    console.print(text, soft_wrap=True)


def _raw(console: Console, text: str) -> None:
    """Text straight to the console's file: no wrapping, markup or tab expansion (rich's
    layout of a large output was superlinear)."""
    console.file.flush()
    console.file.write(text)
    console.file.flush()


def _styled(text: Text, console: Console | None = None) -> str:
    """``text`` as the terminal codes of its style (plain when the console has no colour)."""
    console = console or rich_console.Console(force_terminal=True, highlight=False)
    if console.color_system is None:
        return text.plain
    with console.capture() as captured:
        console.print(text, end="", soft_wrap=True)
    return captured.get()
