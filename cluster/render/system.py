"""sys-status and service-status output: tables (folded or per host) and per-host JSON fields.

sys-status shows, per host, the mean of vmstat's interval samples (the
since-boot row is never included): run queue ``r``, blocked ``b``, idle
memory ``free`` and used/total memory (MemTotal - MemAvailable), swap in/out
``si``/``so``, CPU ``us``/``sy``/``id``/``wa``/``st`` and the load average.
Colours: CPU busy (100 - id) and memory use with the gpu-status thresholds
(10/75 % and 10/80 %); I/O wait from 10 % (yellow) and 30 % (red); any
swapping in yellow; load per CPU from 1 (yellow) and 2 (red).

A sys-status host is ``warn`` when it swaps, or its memory use, I/O wait or
load per CPU is in the red band; healthy hosts fold when their CPU count,
memory size and every band (CPU busy, memory, I/O wait, load per CPU,
swapping) are equal. A service-status host is ``warn`` when a service check
printed a warning; hosts fold when every service reads the same (state,
unit, unit file state).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from ..result import Outcome, Report
from ..service import ServiceState
from ..system import SystemStatus, SystemSummary, summarize
from .fold import (
    EXPANDED_VIEW,
    FAILED,
    OK,
    WARN,
    BaseView,
    ViewOptions,
    empty_row,
    failure_cell,
    failure_key,
    host_name,
    state_cell,
    view_table,
)
from .levels import MEM_THRESHOLDS, UTIL_THRESHOLDS, level_style, load_level, percent, value_range, warning_style
from .table import Cell, Column, Span, TextTable, host_column
from .text import shown

WAIT_THRESHOLDS = (10, 30)
LOAD_PER_CPU_THRESHOLDS = (1.0, 2.0)
KIB_PER_GIB = 1024 * 1024

# drop: hidden first on a narrow terminal = highest.
SYS_COLUMNS = (
    host_column(), Column("Status"),
    Column("r", justify="right", drop=5), Column("b", justify="right", drop=8),
    Column("free", justify="right", drop=9),
    Column("mem used/total", justify="right", drop=1, short="mem"),
    Column("si", justify="right", drop=12), Column("so", justify="right", drop=11),
    Column("us", justify="right", drop=10), Column("sy", justify="right", drop=13),
    Column("id", justify="right", drop=2), Column("wa", justify="right", drop=3),
    Column("st", justify="right", drop=14),
    Column("load 1/5/15", justify="right", drop=4, short="load"),
    Column("Notes", wrap=True, drop=7),
)


# ---------------------------------------------------------------------------
# sys-status
# ---------------------------------------------------------------------------


def gib(kib: float | None) -> str:
    """KiB as ``"12.3G"`` (vmstat and /proc/meminfo count in KiB)."""
    return "—" if kib is None else f"{kib / KIB_PER_GIB:.1f}G"


def _n(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _levels(s: SystemSummary) -> dict[str, str | None]:
    """The band of each coloured value (they pick the colours and the fold key)."""
    per_cpu = s.load[0] / s.cpus if s.load is not None and s.cpus else None
    return {
        "busy": load_level(None if s.id is None else 100 - s.id, UTIL_THRESHOLDS),
        "memory": load_level(percent(s.mem_used_kib, s.mem_total_kib), MEM_THRESHOLDS),
        "wait": load_level(s.wa, WAIT_THRESHOLDS),
        "load": load_level(per_cpu, LOAD_PER_CPU_THRESHOLDS),
        "swap": "moderate" if (s.si or 0) > 0 or (s.so or 0) > 0 else None,
    }


def _mem_cell(s: SystemSummary, level: str | None) -> list[Span]:
    share = percent(s.mem_used_kib, s.mem_total_kib)
    cell: list[Span] = [(f"{gib(s.mem_used_kib)} / {gib(s.mem_total_kib)}", level_style(level))]
    if share is not None:
        cell.append((f" {share:3.0f}%", "dim"))
    return cell


def _load_cell(s: SystemSummary, level: str | None) -> Span:
    if s.load is None:
        return ("—", "")
    return (" ".join(f"{v:.2f}" for v in s.load), warning_style(level))


def _cpu_cells(s: SystemSummary, levels: dict[str, str | None]) -> list[Cell]:
    busy = level_style(levels["busy"])
    wait = warning_style(levels["wait"])
    return [(_n(s.us), busy), (_n(s.sy), busy), (_n(s.id), busy), (_n(s.wa), wait), _n(s.st)]


def _sys_notes(s: SystemSummary) -> Span:
    return (f"{s.samples} sample{'s' if s.samples != 1 else ''}"
            + (f", {s.cpus} CPUs" if s.cpus else ""), "dim")


def sys_data(outcome: Outcome) -> SystemStatus | None:
    data = outcome.data
    return data if isinstance(data, SystemStatus) and data.samples else None


def sys_row(outcome: Outcome, state: str = OK) -> list[Cell]:
    data = sys_data(outcome)
    host, status = host_name(outcome), state_cell(outcome, state)
    if data is None:
        return empty_row(SYS_COLUMNS, host, status, failure_cell(outcome))
    s = summarize(data)
    levels = _levels(s)
    swap = warning_style(levels["swap"])
    notes: Cell = failure_cell(outcome) if outcome.error else _sys_notes(s)
    return [host, status, _n(s.r), _n(s.b), gib(s.free_kib), _mem_cell(s, levels["memory"]),
            (_n(s.si), swap), (_n(s.so), swap), *_cpu_cells(s, levels),
            _load_cell(s, levels["load"]), notes]


def sys_state(outcome: Outcome) -> str:
    """``failed``; ``warn`` when swapping or memory, I/O wait or load per CPU is heavy; ``ok``."""
    if not outcome.ok:
        return FAILED
    data = sys_data(outcome)
    if data is None:
        return OK
    levels = _levels(summarize(data))
    heavy = any(levels[k] == "heavy" for k in ("memory", "wait", "load"))
    return WARN if heavy or levels["swap"] else OK


class SysView(BaseView):
    """sys-status for `cluster.render.fold`: warned hosts (a load level) fold with each other."""

    columns = SYS_COLUMNS
    fold_warned = True

    def state(self, outcome: Outcome) -> str:
        return sys_state(outcome)

    def key(self, outcome: Outcome) -> Hashable | None:
        data = sys_data(outcome)
        if not outcome.ok:
            return failure_key(outcome) if data is None else None
        if data is None:
            return None
        s = summarize(data)
        total_gib = round((s.mem_total_kib or 0) / KIB_PER_GIB)
        return (s.cpus, total_gib, s.samples, tuple(sorted(_levels(s).items(), key=str)))

    def rows(self, outcome: Outcome) -> list[list[Cell]]:
        return [sys_row(outcome, self.state(outcome))]

    def folded_rows(self, outcomes: list[Outcome]) -> list[list[Cell]]:
        first = outcomes[0]
        if sys_data(first) is None:
            return [sys_row(first, FAILED)]
        status = state_cell(first, self.state(first))
        # A group whose first host has data holds only hosts with data (`key`).
        summaries = [summarize(data) for o in outcomes if (data := sys_data(o)) is not None]
        return [_folded_sys_row(summaries, status)]


def _folded_sys_row(summaries: list[SystemSummary], state: Cell) -> list[Cell]:
    s = summaries[0]
    levels = _levels(s)

    def span(name: str, fmt: str = "{:.0f}") -> str:
        return value_range((getattr(x, name) for x in summaries), fmt)

    busy, wait = level_style(levels["busy"]), warning_style(levels["wait"])
    swap = warning_style(levels["swap"])
    used = value_range((x.mem_used_kib / KIB_PER_GIB for x in summaries if x.mem_used_kib), "{:.1f}")
    memory = (f"{used}G / {gib(s.mem_total_kib)}", level_style(levels["memory"]))
    load = value_range((x.load[0] for x in summaries if x.load), "{:.2f}")
    free = value_range((x.free_kib / KIB_PER_GIB for x in summaries if x.free_kib), "{:.1f}")
    return ["", state, span("r"), span("b"), free + "G", memory,
            (span("si"), swap), (span("so"), swap), (span("us"), busy), (span("sy"), busy),
            (span("id"), busy), (span("wa"), wait), span("st"),
            (f"{load} (1 min)", warning_style(levels["load"])), _sys_notes(s)]


def sys_table(report: Report, options: ViewOptions = EXPANDED_VIEW) -> TextTable:
    """Means over the interval samples, memory and load: folded or one row per host."""
    return view_table(SysView(), list(report), options)


def sys_fields(outcome: Outcome) -> dict[str, Any]:
    """Per-host JSON: samples (by vmstat column name), summary, load, memory; null when unread."""
    data = outcome.data
    if not isinstance(data, SystemStatus):
        return {"samples": None, "summary": None}
    return data.to_json()


# ---------------------------------------------------------------------------
# service-status
# ---------------------------------------------------------------------------

SERVICE_COLUMNS = (host_column(), Column("Status"), Column("Service"), Column("Via", drop=3),
                   Column("State"), Column("PIDs", drop=2), Column("Details", wrap=True, drop=1, least=24))


def _state_cell(state: ServiceState, describe: str | None = None) -> Span:
    style = ("green" if state.active else
             "bold red" if state.state in ("failed", "inactive") else "yellow")
    return (shown(describe or state.describe), style)


def _pids(state: ServiceState, limit: int = 6) -> str:
    pids = [state.main_pid] if state.main_pid else []
    pids += [pid for pid, _ in state.processes if pid not in pids]
    listed = ", ".join(str(p) for p in pids[:limit])
    return listed + (f" (+{len(pids) - limit})" if len(pids) > limit else "")


def _service_detail(state: ServiceState, per_host: bool = True) -> list[Span]:
    """Unit (file state), since, restarts, the process; ``per_host`` False: only what folds."""
    parts = []
    if state.unit:
        parts.append(f"{state.unit} ({state.unit_file_state or state.load_state or '?'})")
    if per_host and state.since and state.active:
        parts.append(f"since {state.since}")
    if state.restarts:
        parts.append(f"{state.restarts} restarts" if per_host else "restarted")
    if per_host and state.manager == "process" and state.processes:
        parts.append(state.processes[0][1][:80])
    cell: list[Span] = [(shown("; ".join(parts)), "dim")]
    for warning in state.warnings:
        cell.append(("\n" + shown(warning), "yellow"))
    return cell


def service_states(outcome: Outcome) -> list[ServiceState]:
    return outcome.data if isinstance(outcome.data, list) else []


def service_rows(outcome: Outcome, state: str | None = None) -> list[list[Cell]]:
    """One row per requested service on the host; one failure row when it could not answer."""
    states = service_states(outcome)
    host = host_name(outcome)
    status = state_cell(outcome, state or service_state(outcome))
    if not states:
        return [empty_row(SERVICE_COLUMNS, host, status, failure_cell(outcome))]
    rows = []
    for i, service in enumerate(states):
        rows.append([host if i == 0 else "", status if i == 0 else "", shown(service.name),
                     service.manager, _state_cell(service), _pids(service),
                     _service_detail(service)])
    return rows


def service_state(outcome: Outcome) -> str:
    if not outcome.ok:
        return FAILED
    return WARN if any(s.warnings for s in service_states(outcome)) else OK


class ServiceView(BaseView):
    """service-status for `cluster.render.fold`."""

    columns = SERVICE_COLUMNS

    def state(self, outcome: Outcome) -> str:
        return service_state(outcome)

    def key(self, outcome: Outcome) -> Hashable | None:
        states = service_states(outcome)
        if not states:
            return failure_key(outcome) if not outcome.ok else None
        if any(s.warnings for s in states):
            return None
        return (outcome.ok, outcome.error.kind if outcome.error else None,
                tuple((s.name, s.manager, s.active, s.state, s.sub_state, s.unit,
                       s.unit_file_state, bool(s.restarts), bool(s.processes)) for s in states))

    def rows(self, outcome: Outcome) -> list[list[Cell]]:
        return service_rows(outcome, self.state(outcome))

    def lines(self, outcome: Outcome) -> int:
        return max(1, len(service_states(outcome)))

    def folded_rows(self, outcomes: list[Outcome]) -> list[list[Cell]]:
        first = outcomes[0]
        states = service_states(first)
        if not states:
            return service_rows(first)
        status = state_cell(first, service_state(first))
        rows = []
        for i, service in enumerate(states):
            counts = [len(service_states(o)[i].processes) for o in outcomes]
            pids = f"{value_range(counts)} each" if any(counts) else ""
            describe = service.describe
            if service.manager == "process" and any(counts):
                describe = f"{service.state} ({value_range(counts)} processes)"
            rows.append(["", status if i == 0 else "", shown(service.name), service.manager,
                         _state_cell(service, describe), pids,
                         _service_detail(service, per_host=False)])
        return rows


def service_table(report: Report, options: ViewOptions = EXPANDED_VIEW) -> TextTable:
    return view_table(ServiceView(), list(report), options)


def service_fields(outcome: Outcome) -> dict[str, Any]:
    """Per-host JSON: ``services`` (one object per requested name), null when unread."""
    states = outcome.data if isinstance(outcome.data, list) else None
    return {"services": [s.to_json() for s in states] if states is not None else None}

