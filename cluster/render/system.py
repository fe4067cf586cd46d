"""sys-status and service-status output: tables and per-host JSON fields.

sys-status shows, per host, the mean of vmstat's interval samples (the
since-boot row is never included): run queue ``r``, blocked ``b``, idle
memory ``free`` and used/total memory (MemTotal - MemAvailable), swap in/out
``si``/``so``, CPU ``us``/``sy``/``id``/``wa``/``st`` and the load average.
Colours: CPU busy (100 - id) and memory use with the gpu-status thresholds
(10/75 % and 10/80 %); I/O wait from 10 % (yellow) and 30 % (red); any
swapping in yellow; load per CPU from 1 (yellow) and 2 (red).
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from ..result import Outcome, Report
from ..service import ServiceState
from ..system import SystemStatus, SystemSummary, summarize
from .core import failure_text, host_table, status_cell
from .gpu import MEM_THRESHOLDS, UTIL_THRESHOLDS, level_style, load_level, percent

WAIT_THRESHOLDS = (10, 30)
LOAD_PER_CPU_THRESHOLDS = (1.0, 2.0)
KIB_PER_GIB = 1024 * 1024

SYS_COLUMNS: tuple[str | tuple[str, dict], ...] = (
    "Host", "Status", *((c, {"justify": "right"}) for c in (
        "r", "b", "free", "mem used/total", "si", "so", "us", "sy", "id", "wa", "st",
        "load 1/5/15")), "Notes",
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


def _mem_text(s: SystemSummary) -> Text:
    share = percent(s.mem_used_kib, s.mem_total_kib)
    text = Text(f"{gib(s.mem_used_kib)} / {gib(s.mem_total_kib)}",
                style=level_style(load_level(share, MEM_THRESHOLDS)))
    if share is not None:
        text.append(f" {share:3.0f}%", style="dim")
    return text


def _load_text(s: SystemSummary) -> Text:
    if s.load is None:
        return Text("—")
    per_cpu = s.load[0] / s.cpus if s.cpus else None
    level = load_level(per_cpu, LOAD_PER_CPU_THRESHOLDS)
    style = {"moderate": "yellow", "heavy": "bold red"}.get(level or "", "")
    return Text(" ".join(f"{v:.2f}" for v in s.load), style=style)


def _cpu_cells(s: SystemSummary) -> list[Text]:
    busy = None if s.id is None else 100 - s.id
    busy_style = level_style(load_level(busy, UTIL_THRESHOLDS))
    wait_level = load_level(s.wa, WAIT_THRESHOLDS)
    wait_style = {"moderate": "yellow", "heavy": "bold red"}.get(wait_level or "", "")
    return [Text(_n(s.us), style=busy_style), Text(_n(s.sy), style=busy_style),
            Text(_n(s.id), style=busy_style), Text(_n(s.wa), style=wait_style), Text(_n(s.st))]


def sys_row(outcome: Outcome) -> list[Any]:
    data = outcome.data
    host, status = str(outcome.host), status_cell(outcome)
    if not isinstance(data, SystemStatus) or not data.samples:
        return [host, status, *[""] * 12, failure_text(outcome)]
    s = summarize(data)
    swap = "yellow" if (s.si or 0) > 0 or (s.so or 0) > 0 else ""
    notes = failure_text(outcome) if outcome.error else Text(
        f"{s.samples} sample{'s' if s.samples != 1 else ''}"
        + (f", {s.cpus} CPUs" if s.cpus else ""), style="dim")
    return [host, status, _n(s.r), _n(s.b), gib(s.free_kib), _mem_text(s),
            Text(_n(s.si), style=swap), Text(_n(s.so), style=swap), *_cpu_cells(s),
            _load_text(s), notes]


def sys_table(report: Report) -> Table:
    """One row per host: means over the interval samples, memory and load."""
    return host_table(SYS_COLUMNS, [sys_row(o) for o in report])


def sys_fields(outcome: Outcome) -> dict[str, Any]:
    """Per-host JSON: samples (by vmstat column name), summary, load, memory; null when unread."""
    data = outcome.data
    if not isinstance(data, SystemStatus):
        return {"samples": None, "summary": None}
    return data.to_json()


# ---------------------------------------------------------------------------
# service-status
# ---------------------------------------------------------------------------


def _state_text(state: ServiceState) -> Text:
    style = "green" if state.active else "bold red" if state.state in ("failed", "inactive") else "yellow"
    return Text(state.describe, style=style)


def _pids(state: ServiceState, limit: int = 6) -> str:
    pids = [state.main_pid] if state.main_pid else []
    pids += [pid for pid, _ in state.processes if pid not in pids]
    shown = ", ".join(str(p) for p in pids[:limit])
    return shown + (f" (+{len(pids) - limit})" if len(pids) > limit else "")


def _service_detail(state: ServiceState) -> Text:
    parts = []
    if state.unit:
        parts.append(f"{state.unit} ({state.unit_file_state or state.load_state or '?'})")
    if state.since and state.active:
        parts.append(f"since {state.since}")
    if state.restarts:
        parts.append(f"{state.restarts} restarts")
    if state.manager == "process" and state.processes:
        parts.append(state.processes[0][1][:80])
    text = Text("; ".join(parts), style="dim")
    for warning in state.warnings:
        text.append(("\n" if text else "") + warning, style="yellow")
    return text


def service_rows(outcome: Outcome) -> list[list[Any]]:
    """One row per requested service on the host; one failure row when it could not answer."""
    states = outcome.data if isinstance(outcome.data, list) else []
    host = str(outcome.host)
    if not states:
        return [[host, status_cell(outcome), "", "", "", "", failure_text(outcome)]]
    rows = []
    for i, state in enumerate(states):
        status = status_cell(outcome) if i == 0 else ""
        rows.append([host if i == 0 else "", status, state.name, state.manager,
                     _state_text(state), _pids(state), _service_detail(state)])
    return rows


def service_table(report: Report) -> Table:
    columns = ("Host", "Status", "Service", "Via", "State", "PIDs", "Details")
    return host_table(columns, [row for o in report for row in service_rows(o)])


def service_fields(outcome: Outcome) -> dict[str, Any]:
    """Per-host JSON: ``services`` (one object per requested name), null when unread."""
    states = outcome.data if isinstance(outcome.data, list) else None
    return {"services": [s.to_json() for s in states] if states is not None else None}
