"""Rendering for ``inv logs``: folded per-host blocks, the --save table, --follow lines.

Log lines are printed with ``soft_wrap`` so a long line stays one line (piped
output is not re-wrapped at the console width) and with markup off, so
``[brackets]`` in logs print as they are.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any, Sequence, TextIO

from rich.console import Console, Group
from rich.text import Text

from ..hosts import Host
from ..logs import FollowEvent, FollowStats, LogText, SavedLog
from ..result import Outcome, Report, fold_outputs
from .core import Row, counted, failure_text, host_table, status_cell
from .text import shown, shown_lines

# Host colours for --follow; red is kept for errors.
PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta",
           "bright_green", "bright_yellow", "bright_blue")


def _files(outcomes: Sequence[Outcome]) -> str:
    paths = {p for o in outcomes for p in _paths(o)}
    if len(paths) == 1:
        return next(iter(paths))
    return f"{len(paths)} files" if paths else ""


def _paths(outcome: Outcome) -> tuple[str, ...]:
    data = outcome.data
    return tuple(getattr(data, "paths", ()) or ())


def log_groups(report: Report, console: Console) -> None:
    """clush -b style: one header per group of hosts whose output is identical, then the lines."""
    by_host = {o.host: o for o in report}
    for group in fold_outputs(report):
        outcome = group.outcome
        members = [by_host[h] for h in group.hosts]
        header = Text(f"---- {group.folded} ", style="bold cyan")
        header.append(f"({len(group.hosts)}) ", style="dim")
        header.append_text(status_cell(outcome))
        where = _files(members)
        if where:
            header.append(f" · {where}", style="dim")
        console.print(header, soft_wrap=True)
        if outcome.stdout:
            print_remote(console, Text(), outcome.stdout.rstrip("\n"))
        elif outcome.ok:
            console.print(Text("(no lines)", style="dim"))
        if outcome.error is not None:
            console.print(failure_text(outcome), soft_wrap=True)


def saved_view(report: Report, directory: str) -> Group:
    """--save: where the files went, then one row per host: file, lines, bytes, or why not.

    File names are shown relative to the directory (printed once, unwrapped) so
    long paths never get folded inside a table cell.
    """
    rows: list[Row] = []
    for outcome in report:
        data: SavedLog | None = outcome.data
        remote = _files([outcome])
        if outcome.ok and data is not None and data.saved_to is not None:
            rows.append((str(outcome.host), status_cell(outcome), data.saved_to.name, data.lines,
                         data.bytes, remote))
        else:
            rows.append((str(outcome.host), status_cell(outcome), failure_text(outcome), None,
                         None, remote))
    table = host_table(["Host", "Status", "File", ("Lines", {"justify": "right"}),
                        ("Bytes", {"justify": "right"}), ("Remote log", {"overflow": "fold"})],
                       rows)
    where = Text(f"saved to {Path(directory).expanduser().resolve()}/", style="bold")
    return Group(where, table)


def logs_fields(outcome: Outcome) -> dict[str, Any]:
    """Task fields of one host in the --json document (read, save or follow)."""
    data = outcome.data
    fields: dict[str, Any] = {"files": list(_paths(outcome))}
    if isinstance(data, LogText):
        fields["lines"] = data.lines
    elif isinstance(data, SavedLog):
        fields.update(saved_to=str(data.saved_to) if data.saved_to else None,
                      saved_lines=data.lines, saved_bytes=data.bytes)
    elif isinstance(data, FollowStats):
        fields.update(followed_lines=data.lines, notices=data.notices)
    return fields


def print_remote(console: Console, lead: Text, remote: str) -> None:
    """``lead`` then log text the user asked to see: on a terminal with every control
    character spelled out; in a pipe byte for byte (rich would drop BEL, CR...)."""
    if console.is_terminal:
        console.print(lead.append(shown_lines(remote)), soft_wrap=True, markup=False, highlight=False)
    else:
        console.file.write(lead.plain + remote + "\n")


class FollowPrinter:
    """Prints follow events: ``host │ line``, host in its own colour, whole lines under a lock."""

    def __init__(self, hosts: Sequence[Host], console: Console) -> None:
        self.console = console
        self.lock = threading.Lock()
        names = [str(h) for h in hosts]
        self.width = max((len(n) for n in names), default=0)
        self.styles = {h: PALETTE[i % len(PALETTE)] for i, h in enumerate(hosts)}

    def prefix(self, host: Host, style: str | None = None) -> Text:
        return Text(f"{str(host):<{self.width}} │ ", style=style or self.styles.get(host, ""))

    def __call__(self, event: FollowEvent) -> None:
        text = self.prefix(event.host)
        if event.kind == "line":
            with self.lock:
                print_remote(self.console, text, event.text)
                self.console.file.flush()
            return
        if event.kind == "notice":
            text.append(f"⚠ {shown(event.text)}", style="bold yellow")
        else:
            why = event.error.message if event.error else "stream ended"
            text.append(f"✖ {shown(why)}", style="bold red")
            if event.error and event.error.hint:
                text.append(f" → {shown(event.error.hint)}", style="dim")
        with self.lock:
            self.console.print(text, soft_wrap=True, markup=False, highlight=False)
            self.console.file.flush()


class JsonFollowPrinter:
    """--follow --json: one object per line, ``{"host", "line"}`` or ``{"host", "event", ...}``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()

    def __call__(self, event: FollowEvent) -> None:
        doc: dict[str, Any] = {"host": str(event.host)}
        if event.kind == "line":
            doc["line"] = event.text
        else:
            doc["event"] = event.kind
            if event.text:
                doc["message"] = event.text
            if event.error is not None:
                doc["error"] = event.error.to_json()
        with self.lock:
            self.stream.write(json.dumps(doc) + "\n")
            self.stream.flush()


def follow_header(hosts: Sequence[Host], paths: Sequence[str]) -> Text:
    """The line printed before following: how many hosts, which file(s), how to stop."""
    files = {p for p in paths}
    where = next(iter(files)) if len(files) == 1 else f"{len(files)} files"
    return Text(f"following {where} on {counted(len(hosts), 'host')} · Ctrl-C to stop", style="dim")
