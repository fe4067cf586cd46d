"""gpu-status output: the host table (folded or per host, plus per-GPU rows), processes, JSON.

Colours and bands: `cluster.render.levels` (utilization 10/75 %, memory
10/80 %, power as a share of its limit with the utilization thresholds,
temperature yellow from 75 °C and red from 85 °C). MIG GPUs report no
utilization: they show as "MIG", never as 0 %.

A host is ``ok``, ``warn`` (answered, but a GPU carries a health warning:
`cluster.gpu_health`; its Notes name them) or failed (the failure kind;
``degraded`` in yellow when GPU data is still shown). Healthy hosts fold when
they have the same GPU model and count and every value in the same band
(`cluster.render.fold`); the table is drawn by `cluster.render.table`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from ..gpu import DEGRADED, Gpu, GpuProcess, GpuStatus, GpuSummary, summarize
from ..result import Outcome, Report
from .core import counted, json_document, summary_line
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
from .levels import MEM_THRESHOLDS, TEMP_THRESHOLDS, UTIL_THRESHOLDS, level_style, load_level, percent, value_range, warning_style
from .table import Cell, Column, Span, TextTable, host_column
from .text import shown

MIB_PER_GIB = 1024

# drop: the order columns are hidden in on a narrow terminal (highest first).
COLUMNS = (
    host_column(), Column("Status"), Column("GPUs", wrap=True, drop=5, least=17),
    Column("Util avg/max", justify="right", drop=1),
    Column("Memory used/total", justify="right", drop=2),
    Column("Temp", justify="right", drop=3),
    Column("Power draw/limit", justify="right", drop=6),
    Column("Procs", justify="right", drop=7),
    Column("Notes", wrap=True, drop=4, least=30),
)


# ---------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def util_cell(mean: float | None, peak: float | None, mig: int = 0, total: int = 0) -> list[Span]:
    """``87/100 %`` (mean, max coloured apart), ``MIG`` (every GPU in MIG mode) or ``+2 MIG``."""
    if total and mig >= total:
        return [("MIG", "cyan")]
    if mean is None:
        cell: list[Span] = [("—", "")]
    else:
        cell = [(f"{mean:.0f}", level_style(load_level(mean, UTIL_THRESHOLDS))), ("/", ""),
                (f"{_num(peak)} %", level_style(load_level(peak, UTIL_THRESHOLDS)))]
    if mig:
        cell.append((f" +{mig} MIG", "cyan"))
    return cell


def memory_cell(used_mib: float | None, total_mib: float | None) -> Span:
    """``19.4/79.6 GiB`` coloured by the used share."""
    if used_mib is None and total_mib is None:
        return ("—", "")
    used = "—" if used_mib is None else f"{used_mib / MIB_PER_GIB:.1f}"
    total = "—" if total_mib is None else f"{total_mib / MIB_PER_GIB:.1f}"
    return (f"{used}/{total} GiB", level_style(memory_level(used_mib, total_mib)))


def memory_level(used_mib: float | None, total_mib: float | None) -> str | None:
    return load_level(percent(used_mib, total_mib), MEM_THRESHOLDS)


def temperature_cell(celsius: float | None) -> Span:
    if celsius is None:
        return ("—", "")
    return (f"{celsius:.0f} °C", warning_style(load_level(celsius, TEMP_THRESHOLDS)))


def power_level(draw_w: float | None, limit_w: float | None) -> str | None:
    return load_level(percent(draw_w, limit_w), UTIL_THRESHOLDS)


def power_cell(draw_w: float | None, limit_w: float | None) -> Span:
    """``5055/5600 W`` coloured by draw as a share of the limit."""
    if draw_w is None and limit_w is None:
        return ("—", "")
    return (f"{_num(draw_w)}/{_num(limit_w)} W", level_style(power_level(draw_w, limit_w)))


def short_name(name: str | None) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"H100 80GB HBM3"`` (the table is wide enough as is)."""
    if not name:
        return "—"
    return shown(name[len("NVIDIA "):] if name.startswith("NVIDIA ") else name)


def models_text(summary: GpuSummary, lost: int = 0) -> str:
    """``"8× H100 80GB HBM3"`` (``"+1 lost"`` appended when GPUs could not be read)."""
    name = ", ".join(short_name(m) for m in summary.models) if summary.models else "GPU"
    text = f"{summary.gpu_count}× {name}" if summary.gpu_count else "no GPU"
    return text + (f" (+{lost} lost)" if lost else "")


def gpu_data(outcome: Outcome) -> GpuStatus | None:
    """The parsed GPU status of a host, when it has GPU rows to show."""
    data = outcome.data
    if isinstance(data, GpuStatus) and (data.gpus or data.lost):
        return data
    return None


def host_state(outcome: Outcome) -> str:
    """``failed`` (degraded included), ``warn`` (a health warning) or ``ok``."""
    if not outcome.ok:
        return FAILED
    data = gpu_data(outcome)
    return WARN if data is not None and data.warnings else OK


# ---------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------


def _notes(outcome: Outcome, data: GpuStatus | None) -> list[Span]:
    notes: list[Span] = []
    if outcome.error is not None:
        notes.extend(failure_cell(outcome))
    lines = [(shown(w.describe()), "yellow") for w in data.warnings] if data else []
    lines += [(shown(n), "yellow") for n in data.other_notices()] if data else []
    if data and data.processes_error:
        lines.append((shown(data.processes_error), "dim"))
    for text, style in lines:
        notes.append((("\n" if notes else "") + text, style))
    return notes


def _status(outcome: Outcome) -> list[Span]:
    if outcome.error is not None and outcome.error.kind == DEGRADED:
        return [(DEGRADED, "bold yellow")]  # a degraded host still shows its data
    return state_cell(outcome, host_state(outcome))


def host_row(outcome: Outcome) -> list[Cell]:
    """One host: its aggregates, or its failure (kind, message, hint) when there is no data."""
    data = gpu_data(outcome)
    if data is None:
        return empty_row(COLUMNS, host_name(outcome), _status(outcome), _notes(outcome, None))
    s = summarize(data)
    return [host_name(outcome), _status(outcome), models_text(s, s.lost_count),
            util_cell(s.utilization_mean, s.utilization_max, s.mig_gpus, s.gpu_count),
            memory_cell(s.memory_used_mib, s.memory_total_mib),
            temperature_cell(s.temperature_max), power_cell(s.power_w, s.power_limit_w),
            str(s.process_count), _notes(outcome, data)]


def gpu_status_cell(g: Gpu) -> Span:
    """Faults in red, else ``warn`` (a health warning), ``mig`` or ``ok``."""
    if g.faults:
        return (",".join(g.faults), "bold red")
    if g.warnings:
        return (WARN, "bold yellow")
    return ("mig", "cyan") if g.mig else ("ok", "green")


def gpu_rows(data: GpuStatus) -> list[list[Cell]]:
    """One row per GPU (index order as printed), then one per lost GPU."""
    procs: dict[str | None, int] = {}
    for proc in data.processes:
        procs[proc.gpu_uuid] = procs.get(proc.gpu_uuid, 0) + 1
    rows: list[list[Cell]] = []
    for g in data.gpus:
        if g.mig:
            util: Cell = ("MIG", "cyan")
        elif g.utilization_pct is None:
            util = "—"
        else:
            util = (f"{g.utilization_pct} %",
                    level_style(load_level(g.utilization_pct, UTIL_THRESHOLDS)))
        notes: list[Span] = [(shown(g.pci_bus_id or ""), "dim")]
        notes += [("\n" + shown(w.describe(with_gpu=False)), "yellow") for w in g.warnings]
        rows.append([(f"  [{g.index}]", "cyan"), gpu_status_cell(g), short_name(g.name), util,
                     memory_cell(g.memory_used_mib, g.memory_total_mib),
                     temperature_cell(g.temperature_c), power_cell(g.power_w, g.power_limit_w),
                     str(procs.get(g.uuid, 0)), notes])
    for bus in data.lost:
        rows.append([("  [?]", "cyan"), ("lost", "bold red"), ("cannot be opened", "red"),
                     "", "", "", "", "", (shown(bus), "dim")])
    return rows


class GpuView(BaseView):
    """gpu-status for `cluster.render.fold`: state, fold key, rows (``show_gpus``: GPU rows too)."""

    columns = COLUMNS

    def __init__(self, show_gpus: bool = False) -> None:
        self.show_gpus = show_gpus
        self._summaries: dict[int, GpuSummary] = {}  # by id(data): keys and rows share them

    def summary(self, data: GpuStatus) -> GpuSummary:
        found = self._summaries.get(id(data))
        if found is None:
            found = self._summaries[id(data)] = summarize(data)
        return found

    def state(self, outcome: Outcome) -> str:
        return host_state(outcome)

    def key(self, outcome: Outcome) -> Hashable | None:
        data = gpu_data(outcome)
        if not outcome.ok:
            return failure_key(outcome) if data is None else None  # degraded: its own row
        if data is None or data.lost or data.processes_error or data.other_notices():
            return None
        s = self.summary(data)
        return (tuple(s.models), s.gpu_count, s.mig_gpus, s.memory_total_mib, s.power_limit_w,
                load_level(s.utilization_mean, UTIL_THRESHOLDS),
                load_level(s.utilization_max, UTIL_THRESHOLDS),
                memory_level(s.memory_used_mib, s.memory_total_mib),
                load_level(s.temperature_max, TEMP_THRESHOLDS),
                power_level(s.power_w, s.power_limit_w), s.process_count > 0)

    def rows(self, outcome: Outcome) -> list[list[Cell]]:
        rows = [host_row(outcome)]
        data = gpu_data(outcome)
        if self.show_gpus and data is not None:
            rows.extend(gpu_rows(data))
        return rows

    def lines(self, outcome: Outcome) -> int:
        data = gpu_data(outcome)
        if not self.show_gpus or data is None:
            return 1
        return 1 + len(data.gpus) + len(data.lost)

    def folded_rows(self, outcomes: list[Outcome]) -> list[list[Cell]]:
        if not outcomes[0].ok:  # the same failure: shown once
            return [host_row(outcomes[0])]
        return [_folded_host_row([self.summary(o.data) for o in outcomes])]


def _folded_host_row(summaries: list[GpuSummary]) -> list[Cell]:
    """Equal hosts (same key): each value's range; styles from the shared band."""
    s = summaries[0]
    if s.gpu_count and s.mig_gpus >= s.gpu_count:
        util: Cell = ("MIG", "cyan")
    else:
        util = [(value_range(x.utilization_mean for x in summaries),
                 level_style(load_level(s.utilization_mean, UTIL_THRESHOLDS))), ("/", ""),
                (value_range(x.utilization_max for x in summaries) + " %",
                 level_style(load_level(s.utilization_max, UTIL_THRESHOLDS)))]
        if s.mig_gpus:
            util.append((f" +{s.mig_gpus} MIG", "cyan"))
    used = value_range((x.memory_used_mib / MIB_PER_GIB for x in summaries), "{:.1f}")
    memory = (f"{used}/{s.memory_total_mib / MIB_PER_GIB:.1f} GiB",
              level_style(memory_level(s.memory_used_mib, s.memory_total_mib)))
    temps = (value_range(x.temperature_max for x in summaries) + " °C",
             warning_style(load_level(s.temperature_max, TEMP_THRESHOLDS)))
    power = (f"{value_range(x.power_w for x in summaries)}/{_num(s.power_limit_w)} W",
             level_style(power_level(s.power_w, s.power_limit_w)))
    return ["", ("ok", "green"), models_text(s), util, memory,
            temps if s.temperature_max is not None else "—",
            power if s.power_limit_w is not None else "—",
            value_range(x.process_count for x in summaries), ""]


def gpu_table(report: Report, show_gpus: bool = False,
              options: ViewOptions = EXPANDED_VIEW) -> TextTable:
    """The host table: folded or one row per host (`cluster.render.fold`), GPU rows on request."""
    return view_table(GpuView(show_gpus), list(report), options)


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

PROCESS_COLUMNS = (host_column(), Column("GPU", justify="right"),
                   Column("PID", justify="right"), Column("Process", wrap=True),
                   Column("GPU memory", justify="right", drop=1))


def process_rows(report: Report) -> list[list[Any]]:
    """(host, GPU, pid, name, memory) for every compute process, host order then GPU index."""
    rows: list[list[Any]] = []
    for outcome in report:
        data = gpu_data(outcome)
        if data is None:
            continue
        ordered = sorted(data.processes, key=lambda p: (
            p.gpu_index if p.gpu_index is not None else 1 << 30, -(p.used_memory_mib or 0)))
        host = host_name(outcome)
        for proc in ordered:
            rows.append([host, _gpu_label(proc), _num(proc.pid), shown(proc.name),
                         "—" if proc.used_memory_mib is None else f"{proc.used_memory_mib} MiB"])
    return rows


def _gpu_label(proc: GpuProcess) -> str:
    if proc.gpu_index is not None:
        return str(proc.gpu_index)
    return shown(proc.gpu_uuid or "?")


def process_table(report: Report) -> TextTable:
    return TextTable(PROCESS_COLUMNS, process_rows(report), title="GPU processes")


def gpu_view(report: Report, show_gpus: bool = False, show_procs: bool = False,
             options: ViewOptions = EXPANDED_VIEW) -> RenderableType:
    """The table(s) of one gpu-status round."""
    parts: list[RenderableType] = [gpu_table(report, show_gpus, options)]
    if show_procs:
        rows = process_rows(report)
        parts.append(process_table(report) if rows else Text("no GPU processes", style="dim"))
    return Group(*parts)


# ---------------------------------------------------------------------------
# Summary and JSON
# ---------------------------------------------------------------------------


def gpu_totals(report: Report) -> dict[str, Any]:
    """Fleet-wide counts: GPUs seen, lost, faulted, processes, degraded and warned hosts."""
    totals = {"gpus": 0, "gpus_lost": 0, "gpus_faulted": 0, "processes": 0, "degraded": 0,
              "warnings": 0, "warned": 0}
    for outcome in report:
        data = gpu_data(outcome)
        if data is None:
            continue
        totals["gpus"] += len(data.gpus)
        totals["gpus_lost"] += len(data.lost)
        totals["gpus_faulted"] += len(data.faulted)
        totals["processes"] += len(data.processes)
        totals["degraded"] += int(outcome.error is not None and outcome.error.kind == DEGRADED)
        totals["warnings"] += len(data.warnings)
        totals["warned"] += int(bool(data.warnings))
    return totals


def gpu_summary_line(report: Report, elapsed: float | None = None) -> Text:
    """The core summary line plus GPU totals: ``… · 24 GPUs, 1 lost, 9 processes · 2 warned``."""
    text = summary_line(report, elapsed)
    totals = gpu_totals(report)
    text.append(f" · {counted(totals['gpus'], 'GPU')}")
    if totals["gpus_lost"] or totals["gpus_faulted"]:
        text.append(f" ({totals['gpus_lost']} lost, {totals['gpus_faulted']} faulted)",
                    style="bold yellow")
    text.append(f", {counted(totals['processes'], 'process', 'processes')}")
    if totals["warned"]:
        text.append(f" · {counted(totals['warned'], 'host')} with GPU warnings ({totals['warnings']})",
                    style="bold yellow")
    return text


def gpu_fields(outcome: Outcome) -> dict[str, Any]:
    """Per-host JSON fields: DESIGN.md's ``gpus``/``processes`` plus extras and a summary.

    ``gpus``/``processes``/``summary`` are null when the host gave no GPU
    data (not reached, timed out, or nvidia-smi failed before listing GPUs);
    a degraded host keeps the GPUs it could read. ``warnings`` lists every
    GPU's health warnings (``{gpu, kind, value, limit}``).
    """
    data = gpu_data(outcome)
    if data is None:
        return {"gpus": None, "processes": None, "warnings": [], "lost": [], "notices": [],
                "bad_lines": [], "processes_error": None, "field_set": None, "summary": None}
    doc = data.to_json()
    doc["summary"] = summarize(data).to_json()
    return doc


def gpu_document(report: Report, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``--json`` document of one round (summary carries the GPU totals too)."""
    doc = json_document("gpu-status", report, gpu_fields, extra)
    doc["summary"].update(gpu_totals(report))
    return doc


def warned(report: Report) -> bool:
    """Whether any host carries a GPU health warning (``--strict`` exits 1 then)."""
    return any(data is not None and data.warnings for data in map(gpu_data, report))
