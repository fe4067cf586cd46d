"""Rendering for ``inv kill``: one row per matching process, failed hosts included."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from ..kill import DENIED, GONE, KILLED, MATCHED, SIGNALLED, STILL_ALIVE, KillResult
from ..result import Outcome, Report
from .core import failure_text, host_table, status_cell

_RESULT_STYLE = {KILLED: "green", GONE: "dim", SIGNALLED: "green", MATCHED: "yellow",
                 STILL_ALIVE: "bold red", DENIED: "bold red"}
_RESULT_TEXT = {MATCHED: "would signal"}


def kill_table(report: Report) -> Table:
    """Host, status, pid, user, result, command; a host's later rows leave host/status blank."""
    rows: list[tuple[Any, ...]] = []
    for outcome in report:
        data: KillResult | None = outcome.data
        host = str(outcome.host)
        if data is None:
            rows.append((host, status_cell(outcome), None, None, None, failure_text(outcome)))
            continue
        if not data.processes:
            note = Text("no matching process", style="dim")
            rows.append((host, status_cell(outcome), None, None, None,
                         failure_text(outcome) if outcome.error else note))
            continue
        for index, proc in enumerate(data.processes):
            result = Text(_RESULT_TEXT.get(proc.result, proc.result),
                          style=_RESULT_STYLE.get(proc.result, ""))
            first = index == 0
            rows.append((host if first else "", status_cell(outcome) if first else Text(""),
                         proc.pid, proc.user, result, proc.command))
        if outcome.error is not None:
            rows.append(("", Text(""), None, None, None, failure_text(outcome)))
    return host_table(["Host", "Status", ("PID", {"justify": "right"}), "User", "Result",
                       ("Command", {"overflow": "fold"})], rows)


def kill_fields(outcome: Outcome) -> dict[str, Any]:
    """Task fields of one host in the --json document."""
    data: KillResult | None = outcome.data
    if data is None:
        return {"processes": []}
    return {"processes": [p.to_json() for p in data.processes]}


def kill_summary(report: Report) -> Text:
    """'3 matched: 2 killed, 1 survived' across hosts (dry run: '3 matched, nothing signalled')."""
    data = [o.data for o in report if o.data is not None]
    total = sum(len(d.processes) for d in data)
    text = Text(f"{total} matching process{'es' if total != 1 else ''}")
    if data and data[0].dry_run:
        text.append(" (dry run: nothing signalled)", style="yellow")
        return text
    counts = [(r, sum(d.count(r) for d in data))
              for r in (KILLED, SIGNALLED, GONE, STILL_ALIVE, DENIED)]
    parts = [(f"{n} {r}", _RESULT_STYLE[r]) for r, n in counts if n]
    if parts:
        text.append(": ")
        for i, (part, style) in enumerate(parts):
            if i:
                text.append(", ")
            text.append(part, style=style)
    return text
