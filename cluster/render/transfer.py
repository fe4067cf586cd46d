"""put / get: one row per host (bytes, seconds, changed/skipped), totals, and a live progress bar."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Group
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from ..result import Outcome, Report
from ..transfer import HostTransfer
from .core import failure_text, host_table, status_cell, stderr_console
from .text import shown


def transfer_view(report: Report, verb: str) -> Group:
    """The per-host table, then one line of totals (``verb``: "sent" or "received")."""
    return Group(transfer_table(report), totals_line(report, verb))


def transfer_table(report: Report) -> Table:
    rows = []
    for outcome in report:
        data = outcome.data if isinstance(outcome.data, HostTransfer) else None
        detail = failure_text(outcome) if outcome.error else Text(shown(data.target if data else ""))
        rows.append((Text(str(outcome.host), overflow="fold"), status_cell(outcome),
                     result_cell(data, outcome.ok),
                     human_bytes(data.sent) if data else "—",
                     f"{data.seconds:.1f}" if data else "—",
                     rate(data) if data else "—", detail))
    return host_table([("Host", {"no_wrap": True}), "Status", "Result",
                       ("Bytes", {"justify": "right"}), ("Seconds", {"justify": "right"}),
                       ("Rate", {"justify": "right"}), ("Path / error", {"overflow": "fold"})], rows)


def result_cell(data: HostTransfer | None, ok: bool) -> Text:
    """'changed', 'skipped' (same size and sha256), or counts for a tree / a partial failure."""
    if data is None or not data.files:
        return Text("—" if not ok else "nothing to copy")
    changed, skipped = data.changed, data.skipped
    if len(data.files) == 1 and ok:
        return Text(data.files[0].status, style="yellow" if changed else "green")
    parts = [f"{changed} changed"] if changed else []
    parts += [f"{skipped} skipped"] if skipped else []
    return Text(", ".join(parts), style="yellow" if changed else "green")


def totals_line(report: Report, verb: str) -> Text:
    """'sent 800.0 MB: 8 files changed, 0 skipped' (over every host)."""
    data = [o.data for o in report if isinstance(o.data, HostTransfer)]
    sent = sum(d.sent for d in data)
    changed = sum(d.changed for d in data)
    skipped = sum(d.skipped for d in data)
    not_copied = sum(len(d.not_copied) for d in data)
    text = Text(f"{verb} {human_bytes(sent)}: {changed} file{'s' * (changed != 1)} changed, "
                f"{skipped} skipped (same size and sha256)")
    if not_copied:
        text.append(f"; {not_copied} not copied (symlinks or special files: see --json)",
                    style="yellow")
    return text


def transfer_fields(outcome: Outcome) -> dict[str, Any]:
    """The task fields of one host in the ``--json`` document."""
    if isinstance(outcome.data, HostTransfer):
        return outcome.data.to_json()
    return HostTransfer().to_json()


def human_bytes(n: float) -> str:
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    return f"{n:.1f} TB"


RATE_MIN_BYTES = 1_000_000  # below this, connection setup dominates and a rate says nothing


def rate(data: HostTransfer) -> str:
    if data.sent < RATE_MIN_BYTES or data.seconds <= 0:
        return "—"
    return f"{human_bytes(data.sent / data.seconds)}/s"


@contextmanager
def progress(hosts: int, label: str, total_bytes: int | None = None, enabled: bool | None = None,
             delay: float = 1.0) -> Iterator[tuple[Callable[..., None] | None, Callable[..., None]]]:
    """A bar of bytes and hosts done on stderr, when it is a terminal and the work outlasts ``delay``.

    Yields ``(on_progress, on_done)`` for `cluster.transfer.put` / ``get``:
    ``on_progress`` is None when nothing is shown (no per-chunk cost then).
    Without ``total_bytes`` (get: sizes are learnt on the hosts) the total
    grows with what each host plans. Skipped bytes shrink the total instead
    of counting as moved.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled or hosts == 0:
        yield None, lambda *args: None
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TextColumn("{task.fields[hosts]}"), TimeRemainingColumn(),
                   console=stderr_console(), transient=True)
    known = total_bytes is not None
    task = bar.add_task(label, total=total_bytes or 0, hosts=f"0/{hosts} hosts")
    lock = threading.Lock()
    state = {"done": 0, "failed": 0, "total": total_bytes or 0}

    def on_progress(host: Any, sent: int = 0, skipped: int = 0, planned: int = 0) -> None:
        if skipped or (planned and not known):
            with lock:
                state["total"] += (0 if known else planned) - skipped
                bar.update(task, total=max(state["total"], 0))
        if sent:
            bar.advance(task, sent)

    def on_done(*args: Any) -> None:
        with lock:
            state["done"] += 1
            value = args[-1] if args else None
            if isinstance(value, BaseException) or (
                    isinstance(value, HostTransfer) and value.failure is not None):
                state["failed"] += 1
            failed = f", {state['failed']} failed" if state["failed"] else ""
            bar.update(task, hosts=f"{state['done']}/{hosts} hosts{failed}")

    timer = threading.Timer(delay, bar.start)  # quick transfers stay quiet
    timer.daemon = True
    timer.start()
    try:
        yield on_progress, on_done
    finally:
        timer.cancel()
        bar.stop()
