"""Shared rendering: host tables, status cells, summary line, JSON document, progress.

Every task prints the same shape (DESIGN.md "Output"): a table with one row
per host (failures included, with kind and hint), then a one-line summary;
or, with ``--json``, one JSON document
``{"task", "hosts": [{"host", "ok", "error", ...}], "summary": {"ok", "failed"}}``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from ..lazy import lazy
from ..result import Outcome, Report, fold_outputs
from .text import shown, shown_lines

# rich loads with the first table or styled line: a piped `inv run` whose hosts all
# answered prints its summary without it (about 20 ms of start-up).
if TYPE_CHECKING:
    from rich import cells as rich_cells
    from rich import console as rich_console
    from rich import markup as rich_markup
    from rich import table as rich_table
    from rich import text as rich_text
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
else:
    rich_cells = lazy("rich.cells")
    rich_console = lazy("rich.console")
    rich_markup = lazy("rich.markup")
    rich_table = lazy("rich.table")
    rich_text = lazy("rich.text")

Row = Sequence[Any]


def stdout_console() -> Console:
    # soft_wrap off + wide default so piped output is not squeezed into 80 columns;
    # COLUMNS, when set, is the width either way (rich reads it).
    wide = sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit()
    return rich_console.Console(file=sys.stdout, highlight=False, width=None if wide else 160)


def stderr_console() -> Console:
    return rich_console.Console(file=sys.stderr, highlight=False, stderr=True)


def status_cell(outcome: Outcome) -> Text:
    """'ok' in green, or the failure kind in red."""
    if outcome.ok:
        return rich_text.Text("ok", style="green")
    return rich_text.Text(failure_label(outcome), style="bold red")


def failure_text(outcome: Outcome) -> Text:
    """Message and hint of a failed host, for the table's detail column."""
    if outcome.error is None:
        return rich_text.Text("")
    # Messages quote remote stderr: spelled out, never interpreted by the terminal.
    text = rich_text.Text(shown(outcome.error.message), style="red")
    if outcome.error.hint:
        text.append("\n→ " + shown(outcome.error.hint), style="dim")
    return text


def host_table(columns: Sequence[str | tuple[str, dict[str, Any]]], rows: Iterable[Row],
               title: str | None = None) -> Table:
    """A rich table; ``columns`` are names or (name, column kwargs).

    A ``Host`` column is never cut or wrapped (rich would shrink it first on a narrow
    terminal, to ``127.0.6…``): it keeps the width of its longest name; the other
    columns wrap instead.
    """
    table = rich_table.Table(title=title, title_justify="left", header_style="bold", show_lines=False,
                  expand=False, pad_edge=False)
    rows = list(rows)
    for index, column in enumerate(columns):
        name, kwargs = (column, {}) if isinstance(column, str) else column
        if name == "Host":
            widest = max((rich_cells.cell_len(line) for row in rows if index < len(row)
                          for line in _plain(row[index]).splitlines()), default=4)
            kwargs = {"no_wrap": True, "min_width": max(widest, 4), **kwargs}
        table.add_column(name, **kwargs)
    for row in rows:
        # Plain cells may hold remote text (a process's command line, a user name).
        table.add_row(*[cell if isinstance(cell, rich_text.Text) else rich_text.Text(shown_lines(_cell(cell))) for cell in row])
    return table


def _plain(cell: Any) -> str:
    return cell.plain if isinstance(cell, rich_text.Text) else shown_lines(_cell(cell))


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def duration(value: float | int | None) -> str:
    """Seconds for a table cell: ``12.3 s`` below two minutes, then ``4m05s``, then ``3h07m``."""
    if value is None:
        return "—"
    value = float(value)
    if value < 120:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 120:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``1 host``, ``3 hosts`` (``noun`` is the singular; ``plural`` when not noun + s)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def failure_label(outcome: Outcome) -> str:
    """The failure kind as summaries count it; a nonzero exit with its code (``exit 3``)."""
    error = outcome.error
    if error is None:
        return "failed"
    return f"exit {error.exit_code}" if error.kind == "exit" and error.exit_code is not None else error.kind


def summary_line(report: Report, elapsed: float | None = None, noun: str = "host") -> Text:
    """'8 hosts: 7 ok, 1 failed (1 unreachable) in 1.2 s'; counts first, exit codes as
    the command returned them ('1 failed (1 exit 3)'), '1 host' singular."""
    text = rich_text.Text()
    for part, style in summary_parts(report, elapsed, noun):
        text.append(part, style=style)
    return text


def summary_parts(report: Report, elapsed: float | None = None,
                  noun: str = "host") -> list[tuple[str, str | None]]:
    """`summary_line` as (text, rich style) pieces; joined, its plain text."""
    failed = report.failed
    parts: list[tuple[str, str | None]] = [(f"{counted(len(report), noun)}: ", None),
                                           (f"{len(report.ok)} ok", "green")]
    if failed:
        kinds = Counter(failure_label(o) for o in failed)
        detail = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
        parts += [(", ", None), (f"{len(failed)} failed ({detail})", "bold red")]
    if elapsed is not None:
        parts.append((f" in {elapsed:.1f} s", "dim"))
    return parts


def json_document(task: str, report: Report,
                  fields: Callable[[Outcome], dict[str, Any]] | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``--json`` document of the contract (`cluster.result.Report.to_dict`), with
    ``task``, per-host ``fields`` and ``extra`` set as the task prints them."""
    described = dataclasses.replace(report, task=task, fields=fields or report.fields,
                                    extra={**report.extra, **(extra or {})})
    return described.to_dict()


def print_json(doc: dict[str, Any], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(doc, indent=2, default=str) + "\n")
    stream.flush()


def output_groups(report: Report, console: Console) -> None:
    """clush -b style: one header per group of hosts with identical output."""
    for group in fold_outputs(report):
        outcome = group.outcome
        header = rich_text.Text(f"---- {group.folded} ", style="bold cyan")
        header.append(f"({len(group.hosts)}) ", style="dim")
        header.append_text(status_cell(outcome))
        console.print(header)
        if outcome.stdout:
            console.print(rich_markup.escape(outcome.stdout.rstrip("\n")), markup=True, highlight=False)
        if outcome.error is not None:
            console.print(failure_text(outcome))


@contextmanager
def progress(total: int, label: str, enabled: bool | None = None,
             delay: float = 1.0) -> Iterator[Callable[..., None]]:
    """Live "N/M hosts done" on stderr when it is a TTY and the work lasts > ``delay`` s.

    Yields a callback to call once per finished host (it accepts and ignores
    arguments so it can be passed as the engine's ``on_done``).
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled or total == 0:
        yield lambda *args: None
        return
    console = stderr_console()
    state = {"done": 0, "failed": 0}
    status = console.status(f"{label}: 0/{total} hosts done", spinner="dots")
    lock = threading.Lock()

    def text() -> str:
        failed = f", {state['failed']} failed" if state["failed"] else ""
        return f"{label}: {state['done']}/{total} hosts done{failed}"

    def tick(*args: Any) -> None:
        with lock:
            state["done"] += 1
            if args and isinstance(args[-1], BaseException):
                state["failed"] += 1
            status.update(text())

    # Only show the spinner when the work outlasts ``delay``: quick tasks stay quiet.
    timer = threading.Timer(delay, status.start)
    timer.daemon = True
    timer.start()
    try:
        yield tick
    finally:
        timer.cancel()
        status.stop()
