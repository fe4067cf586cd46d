"""``inv run --detach``, ``inv jobs`` and ``inv stop --job`` output (docs/jobs.md).

``inv jobs`` is a folded status view (`cluster.render.fold`): one row per job and
host, equal hosts of a job (same state, same exit code) folded into one row when the
table is tall, failed and exited-with-an-error rows first. Start and stop print one
row per host the same way. ``Outcome.data`` is a `cluster.jobs.JobHost` (start,
jobs) or a `cluster.jobs.JobStop` (stop); the JSON documents are the reports' own.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from rich.text import Text

from ..jobs import EXITED, RUNNING, STARTING, VANISHED, JobHost, JobStop
from ..result import Outcome, Report
from .core import counted, duration
from .fold import EXPANDED_VIEW, FAILED, OK, WARN, BaseView, ViewOptions, failure_cell, to_cell, view_table
from .table import Cell, Column, Span, TextTable, host_column
from .text import shown

_LAST_LOG = 120  # characters of the last log line shown in a cell


def state_text(entry: JobHost | None, outcome: Outcome) -> Text:
    """``running`` green, ``exited 0`` green, ``exited 3`` / ``vanished`` red, else the failure kind."""
    if entry is None or entry.state not in (RUNNING, EXITED, VANISHED, STARTING):
        kind = outcome.error.kind if outcome.error else "—"
        return Text(kind, style="bold red")
    if entry.state == EXITED:
        code = "?" if entry.exit_code is None else str(entry.exit_code)
        return Text(f"exited {code}", style="green" if entry.exit_code == 0 else "bold red")
    style = {RUNNING: "green", STARTING: "yellow"}.get(entry.state, "bold red")
    return Text(entry.state, style=style)


def _notes(outcome: Outcome, last_log: str | None) -> Cell:
    """The last log line, then (failed) the failure's message and hint."""
    parts: list[Span] = []
    if last_log:
        parts.append((shown(last_log[:_LAST_LOG]), "dim"))
    if outcome.error is not None:
        if parts:
            parts.append(("\n", ""))
        parts.extend(failure_cell(outcome))
    return parts or ""


# --------------------------------------------------------------------------- inv jobs

JOBS_COLUMNS = (
    Column("Job"), host_column(), Column("State"), Column("Runtime", justify="right", drop=2),
    Column("PID", justify="right", drop=3),
    Column("Last log line / notes", wrap=True, drop=1, short="Notes", least=30),
)


def job_state(outcome: Outcome) -> str:
    """``failed`` (exited non-zero, vanished, unreachable...), ``warn`` while starting, ``ok``."""
    if not outcome.ok:
        return FAILED
    entry: JobHost | None = outcome.data
    return WARN if entry is not None and entry.state == STARTING else OK


def jobs_row(outcome: Outcome) -> list[Cell]:
    entry: JobHost | None = outcome.data
    return [to_cell(entry.name if entry is not None else None), shown(str(outcome.host)), to_cell(state_text(entry, outcome)),
            duration(entry.runtime_s) if entry else "—", to_cell(entry.pid if entry else None),
            _notes(outcome, entry.last_log if entry else None)]


class JobsView(BaseView):
    """inv jobs for `cluster.render.fold`: hosts of a job fold by state and exit code."""

    columns = JOBS_COLUMNS
    host_index = 1
    fold_warned = True  # hosts still starting fold with each other

    def state(self, outcome: Outcome) -> str:
        return job_state(outcome)

    def key(self, outcome: Outcome) -> Hashable | None:
        entry: JobHost | None = outcome.data
        if entry is None:
            return None
        if not outcome.ok:  # exited non-zero or vanished fold by job and code; others alone
            return (entry.name, entry.state, entry.exit_code) if entry.state in (EXITED, VANISHED) else None
        return (entry.name, entry.state, entry.exit_code)

    def rows(self, outcome: Outcome) -> list[list[Cell]]:
        return [jobs_row(outcome)]

    def folded_rows(self, outcomes: list[Outcome]) -> list[list[Cell]]:
        entries: list[JobHost] = [o.data for o in outcomes]
        cells = jobs_row(outcomes[0])
        cells[4] = f"{sum(1 for e in entries if e.pid)} pids"
        runtimes = [e.runtime_s for e in entries if e.runtime_s is not None]
        low, high = (duration(min(runtimes)), duration(max(runtimes))) if runtimes else ("—", "—")
        cells[3] = low if low == high else f"{low}–{high}"
        shared = {e.last_log for e in entries}
        cells[5] = _notes(outcomes[0], shared.pop() if len(shared) == 1 else None)
        return [cells]


def jobs_table(report: Report, options: ViewOptions = EXPANDED_VIEW) -> TextTable:
    """One row per job and host; equal hosts of a job folded when the table is tall."""
    return view_table(JobsView(), list(report), options, noun="job hosts")


def jobs_fields(outcome: Outcome) -> dict[str, Any]:
    """A host row of ``inv jobs --json`` / ``run --detach --json``: the entry's fields."""
    entry: JobHost | None = outcome.data
    return entry.to_json() if entry is not None else {"job": None, "state": None}


def jobs_summary(report: Report, elapsed: float | None = None) -> Text:
    """'2 jobs on 8 hosts: 7 running, 1 exited 0' (+ failures)."""
    entries = [o.data for o in report if o.data is not None]
    names = sorted({e.name for e in entries})
    hosts = {str(o.host) for o in report}
    if not report.outcomes:
        return Text("no jobs recorded (start one with `inv run --detach NAME CMD`)", style="dim")
    text = Text(f"{counted(len(names), 'job')} on {counted(len(hosts), 'host')}: ")
    counts: dict[str, int] = {}
    for outcome in report:
        counts[state_text(outcome.data, outcome).plain] = counts.get(
            state_text(outcome.data, outcome).plain, 0) + 1
    for index, (label, count) in enumerate(sorted(counts.items(), key=lambda kv: -kv[1])):
        if index:
            text.append(", ")
        style = "green" if label in (RUNNING, "exited 0") else "yellow" if label == STARTING else "bold red"
        text.append(f"{count} {label}", style=style)
    if elapsed is not None:
        text.append(f" in {elapsed:.1f} s", style="dim")
    return text


# --------------------------------------------------------------------------- run --detach

START_COLUMNS = (host_column(), Column("Status"), Column("PID", justify="right", drop=2),
                 Column("Log / notes", wrap=True, drop=1, short="Log", least=30))


class StartView(BaseView):
    """run --detach: one row per host; started hosts fold together."""

    columns = START_COLUMNS

    def state(self, outcome: Outcome) -> str:
        return OK if outcome.ok else FAILED

    def key(self, outcome: Outcome) -> Hashable | None:
        return ("started",) if outcome.ok else None

    def rows(self, outcome: Outcome) -> list[list[Cell]]:
        entry: JobHost | None = outcome.data
        status = Text("started", style="green") if outcome.ok else state_text(None, outcome)
        note: Any = shown(entry.log_path) if outcome.ok and entry else _notes(outcome, None)
        return [[shown(str(outcome.host)), to_cell(status), to_cell(entry.pid if entry else None), note]]

    def folded_rows(self, outcomes: list[Outcome]) -> list[list[Cell]]:
        cells = self.rows(outcomes[0])[0]
        cells[2] = f"{len(outcomes)} pids"
        cells[3] = shown(_log_pattern(outcomes))
        return [cells]


def _log_pattern(outcomes: list[Outcome]) -> str:
    """The log path with the host part shown as ``<host>`` (it differs per host)."""
    entry: JobHost = outcomes[0].data
    return f"{entry.log_path.rpartition('/')[0]}/{entry.name}--<host>@{entry.run_id}.log"


def start_table(report: Report, options: ViewOptions = EXPANDED_VIEW) -> TextTable:
    return view_table(StartView(), list(report), options)


def start_summary(report: Report, elapsed: float) -> Text:
    name = report.extra.get("job", "?")
    text = Text(f"job {name}: started on {len(report.ok)} of {counted(len(report), 'host')}",
                style="green" if report.all_ok else "bold red")
    text.append(f" in {elapsed:.1f} s", style="dim")
    if report.ok:
        text.append(f"\nnext: inv jobs --job {name} · inv logs --job {name} · inv stop --job {name}",
                    style="dim")
    return text


# --------------------------------------------------------------------------- stop --job

STOP_COLUMNS = (host_column(), Column("Status"), Column("Result"),
                Column("Took", justify="right", drop=2),
                Column("PIDs", wrap=True, drop=3), Column("Notes", wrap=True, drop=1, least=30))

_RESULT_STYLE = {"stopped": "green", "had exited": "dim", "vanished": "yellow", "still running": "bold red"}


class StopView(BaseView):
    """stop --job: one row per host; hosts with the same result fold together."""

    columns = STOP_COLUMNS

    def state(self, outcome: Outcome) -> str:
        return OK if outcome.ok else FAILED

    def key(self, outcome: Outcome) -> Hashable | None:
        stop: JobStop | None = outcome.data
        return (stop.result, stop.how) if outcome.ok and stop is not None else None

    def rows(self, outcome: Outcome) -> list[list[Cell]]:
        stop: JobStop | None = outcome.data
        if stop is None:
            return [[shown(str(outcome.host)), to_cell(state_text(None, outcome)), "—", "—", "",
                     _notes(outcome, None)]]
        result = stop.result + (f" ({stop.how})" if stop.how else "")
        pids = " ".join(str(p) for p in stop.pids[:8]) + (" …" if len(stop.pids) > 8 else "")
        status = Text("ok", style="green") if outcome.ok else state_text(None, outcome)
        return [[shown(str(outcome.host)), to_cell(status),
                 (result, _RESULT_STYLE.get(stop.result, "")),
                 duration(stop.seconds) if stop.seconds is not None else "—", pids,
                 _notes(outcome, None) if not outcome.ok else shown(stop.entry.log_path)]]

    def folded_rows(self, outcomes: list[Outcome]) -> list[list[Cell]]:
        cells = self.rows(outcomes[0])[0]
        cells[4] = f"{sum(len(o.data.pids) for o in outcomes)} pids"
        cells[5] = "logs kept"
        return [cells]


def stop_table(report: Report, options: ViewOptions = EXPANDED_VIEW) -> TextTable:
    return view_table(StopView(), list(report), options)


def stop_fields(outcome: Outcome) -> dict[str, Any]:
    stop: JobStop | None = outcome.data
    return stop.to_json() if stop is not None else {"job": None, "result": None}


def stop_summary(report: Report, elapsed: float) -> Text:
    name = report.extra.get("job", "?")
    stops = [o.data for o in report if o.data is not None]
    stopped = sum(1 for s in stops if s.result == "stopped")
    text = Text(f"job {name}: ")
    text.append(f"{len(report.ok)} of {counted(len(report), 'host')} done", style="green" if report.all_ok else "bold red")
    text.append(f" ({stopped} stopped, {len(stops) - stopped} had ended); name released where done, "
                "logs kept")
    text.append(f" in {elapsed:.1f} s", style="dim")
    return text
