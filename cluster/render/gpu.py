"""gpu-status output: the host table (plus per-GPU rows), the process table, JSON fields.

Load colours follow nvitop's defaults: green = light, yellow = moderate,
red = heavy, with thresholds 10/75 % for utilization and 10/80 % for memory
(``UTIL_THRESHOLDS``, ``MEM_THRESHOLDS``). Power is coloured by percent of
the limit with the utilization thresholds; temperature turns yellow at
``TEMP_THRESHOLDS[0]`` and red at ``TEMP_THRESHOLDS[1]`` degrees C (data-centre
GPUs start slowing down in the high 80s). MIG GPUs report no utilization:
they show as "MIG", never as 0 %.
"""

from __future__ import annotations

from typing import Any, Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..gpu import DEGRADED, FAULT_FLAGS, Gpu, GpuProcess, GpuStatus, GpuSummary, summarize
from ..result import Outcome, Report
from .core import failure_text, host_table, json_document, status_cell, summary_line

UTIL_THRESHOLDS = (10, 75)
MEM_THRESHOLDS = (10, 80)
TEMP_THRESHOLDS = (75, 85)
LEVEL_STYLES = {"light": "green", "moderate": "yellow", "heavy": "bold red"}
MIB_PER_GIB = 1024

COLUMNS: tuple[str | tuple[str, dict], ...] = (
    "Host", "Status", "GPUs", ("Util avg/max", {"justify": "right"}),
    ("Memory used/total", {"justify": "right"}), ("Temp", {"justify": "right"}),
    ("Power draw/limit", {"justify": "right"}), ("Procs", {"justify": "right"}), "Notes",
)


# ---------------------------------------------------------------------------
# Pure helpers: levels and cells
# ---------------------------------------------------------------------------


def load_level(value: float | None, thresholds: Sequence[float]) -> str | None:
    """``light`` below the first threshold, ``heavy`` from the second, else ``moderate``."""
    if value is None:
        return None
    low, high = thresholds
    if value < low:
        return "light"
    return "heavy" if value >= high else "moderate"


def level_style(level: str | None) -> str:
    return LEVEL_STYLES.get(level or "", "")


def percent(part: float | None, whole: float | None) -> float | None:
    """``part`` as a percentage of ``whole`` (None when either is unknown or whole is 0)."""
    if part is None or not whole:
        return None
    return 100.0 * part / whole


def _styled(text: str, level: str | None) -> Text:
    return Text(text, style=level_style(level))


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def util_text(mean: float | None, peak: float | None, mig: int = 0, total: int = 0) -> Text:
    """``"87/100 %"``, ``"MIG"`` (every GPU in MIG mode) or ``"3/5 % +2 MIG"``."""
    if total and mig >= total:
        return Text("MIG", style="cyan")
    if mean is None:
        text = Text("—")
    else:
        text = _styled(f"{mean:.0f}", load_level(mean, UTIL_THRESHOLDS))
        text.append("/")
        text.append_text(_styled(f"{_num(peak)} %", load_level(peak, UTIL_THRESHOLDS)))
    if mig:
        text.append(f" +{mig} MIG", style="cyan")
    return text


def memory_text(used_mib: float | None, total_mib: float | None) -> Text:
    """``"19.4/79.6 GiB"`` coloured by the used fraction."""
    if used_mib is None and total_mib is None:
        return Text("—")
    share = percent(used_mib, total_mib)
    used = "—" if used_mib is None else f"{used_mib / MIB_PER_GIB:.1f}"
    total = "—" if total_mib is None else f"{total_mib / MIB_PER_GIB:.1f}"
    return Text(f"{used}/{total} GiB", style=level_style(load_level(share, MEM_THRESHOLDS)))


def temperature_text(celsius: float | None) -> Text:
    if celsius is None:
        return Text("—")
    low, high = TEMP_THRESHOLDS
    style = "bold red" if celsius >= high else "yellow" if celsius >= low else ""
    return Text(f"{celsius:.0f} °C", style=style)


def power_text(draw_w: float | None, limit_w: float | None) -> Text:
    """``"5055/5600 W"`` coloured by draw as a share of the limit."""
    if draw_w is None and limit_w is None:
        return Text("—")
    level = load_level(percent(draw_w, limit_w), UTIL_THRESHOLDS)
    return _styled(f"{_num(draw_w)}/{_num(limit_w)} W", level)


def short_name(name: str | None) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"H100 80GB HBM3"`` (the table is wide enough as is)."""
    if not name:
        return "—"
    return name[len("NVIDIA "):] if name.startswith("NVIDIA ") else name


def models_text(summary: GpuSummary, lost: int = 0) -> str:
    """``"8× H100 80GB HBM3"`` (``"+1 lost"`` appended when GPUs could not be read)."""
    name = ", ".join(short_name(m) for m in summary.models) if summary.models else "GPU"
    text = f"{summary.gpu_count}× {name}" if summary.gpu_count else "no GPU"
    return text + (f" (+{lost} lost)" if lost else "")


def host_status_cell(outcome: Outcome) -> Text:
    """Like `core.status_cell`, but a degraded host (data still shown) is yellow, not red."""
    if outcome.error is not None and outcome.error.kind == DEGRADED:
        return Text(DEGRADED, style="bold yellow")
    return status_cell(outcome)


def gpu_data(outcome: Outcome) -> GpuStatus | None:
    """The parsed GPU status of a host, when it has GPU rows to show."""
    data = outcome.data
    if isinstance(data, GpuStatus) and (data.gpus or data.lost):
        return data
    return None


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def _notes(outcome: Outcome, data: GpuStatus | None) -> Text:
    if outcome.error is not None:
        return failure_text(outcome)
    notes = Text()
    for line in ([w.describe() for w in data.warnings] + data.other_notices()) if data else []:
        notes.append(("\n" if notes else "") + line, style="yellow")
    if data and data.processes_error:
        notes.append(("\n" if notes else "") + data.processes_error, style="dim")
    return notes


def host_row(outcome: Outcome) -> list[Any]:
    """One host: its aggregates, or its failure (kind, message, hint) when there is no data."""
    data = gpu_data(outcome)
    host, status = str(outcome.host), host_status_cell(outcome)
    if data is None:
        return [host, status, "", "", "", "", "", "", _notes(outcome, None)]
    s = summarize(data)
    return [host, status, models_text(s, s.lost_count),
            util_text(s.utilization_mean, s.utilization_max, s.mig_gpus, s.gpu_count),
            memory_text(s.memory_used_mib, s.memory_total_mib), temperature_text(s.temperature_max),
            power_text(s.power_w, s.power_limit_w), str(s.process_count), _notes(outcome, data)]


def gpu_flags_text(g: Gpu) -> Text:
    """``ok`` in green, else the GPU's flags (faults in red, MIG in cyan)."""
    if not g.flags:
        return Text("ok", style="green")
    text = Text()
    for i, flag in enumerate(g.flags):
        style = "bold red" if flag in FAULT_FLAGS else "cyan" if flag == "mig" else "yellow"
        text.append(("," if i else "") + flag, style=style)
    return text


def gpu_rows(data: GpuStatus) -> list[list[Any]]:
    """One row per GPU (index order as printed), then one per lost GPU."""
    procs: dict[str | None, int] = {}
    for proc in data.processes:
        procs[proc.gpu_uuid] = procs.get(proc.gpu_uuid, 0) + 1
    rows: list[list[Any]] = []
    for g in data.gpus:
        util = (Text("MIG", style="cyan") if g.mig else
                _styled(f"{_num(g.utilization_pct)} %", load_level(g.utilization_pct, UTIL_THRESHOLDS))
                if g.utilization_pct is not None else Text("—"))
        rows.append([Text(f"  [{g.index}]", style="cyan"), gpu_flags_text(g), short_name(g.name), util,
                     memory_text(g.memory_used_mib, g.memory_total_mib),
                     temperature_text(g.temperature_c), power_text(g.power_w, g.power_limit_w),
                     str(procs.get(g.uuid, 0)), Text(g.pci_bus_id or "", style="dim")])
    for bus in data.lost:
        rows.append([Text("  [?]", style="cyan"), Text("lost", style="bold red"),
                     Text("cannot be opened", style="red"), "", "", "", "", "",
                     Text(bus, style="dim")])
    return rows


def gpu_table(report: Report, show_gpus: bool = False) -> Table:
    """One row per host; with ``show_gpus`` each host's GPU rows follow it."""
    rows: list[list[Any]] = []
    for outcome in report:
        rows.append(host_row(outcome))
        data = gpu_data(outcome)
        if show_gpus and data is not None:
            rows.extend(gpu_rows(data))
    return host_table(COLUMNS, rows)


def process_rows(report: Report) -> list[list[Any]]:
    """(host, GPU, pid, name, memory) for every compute process, host order then GPU index."""
    rows: list[list[Any]] = []
    for outcome in report:
        data = gpu_data(outcome)
        if data is None:
            continue
        ordered = sorted(data.processes, key=lambda p: (
            p.gpu_index if p.gpu_index is not None else 1 << 30, -(p.used_memory_mib or 0)))
        for proc in ordered:
            rows.append([str(outcome.host), _gpu_label(proc), _num(proc.pid), proc.name,
                         "—" if proc.used_memory_mib is None else f"{proc.used_memory_mib} MiB"])
    return rows


def _gpu_label(proc: GpuProcess) -> str:
    if proc.gpu_index is not None:
        return str(proc.gpu_index)
    return proc.gpu_uuid or "?"


def process_table(report: Report) -> Table:
    columns = ("Host", ("GPU", {"justify": "right"}), ("PID", {"justify": "right"}), "Process",
               ("GPU memory", {"justify": "right"}))
    return host_table(columns, process_rows(report), title="GPU processes")


def gpu_view(report: Report, show_gpus: bool = False, show_procs: bool = False) -> RenderableType:
    """The table(s) of one gpu-status round."""
    parts: list[RenderableType] = [gpu_table(report, show_gpus)]
    if show_procs:
        rows = process_rows(report)
        parts.append(process_table(report) if rows else Text("no GPU processes", style="dim"))
    return Group(*parts)


# ---------------------------------------------------------------------------
# Summary and JSON
# ---------------------------------------------------------------------------


def gpu_totals(report: Report) -> dict[str, Any]:
    """Fleet-wide counts for the summary: GPUs seen, lost, faulted, processes, degraded hosts."""
    totals = {"gpus": 0, "gpus_lost": 0, "gpus_faulted": 0, "processes": 0, "degraded": 0}
    for outcome in report:
        data = gpu_data(outcome)
        if data is None:
            continue
        totals["gpus"] += len(data.gpus)
        totals["gpus_lost"] += len(data.lost)
        totals["gpus_faulted"] += len(data.faulted)
        totals["processes"] += len(data.processes)
        totals["degraded"] += int(outcome.error is not None and outcome.error.kind == DEGRADED)
    return totals


def gpu_summary_line(report: Report, elapsed: float | None = None) -> Text:
    """The core summary line plus GPU totals: ``… · 24 GPUs, 1 lost, 9 processes``."""
    text = summary_line(report, elapsed)
    totals = gpu_totals(report)
    text.append(f" · {totals['gpus']} GPUs")
    if totals["gpus_lost"] or totals["gpus_faulted"]:
        text.append(f" ({totals['gpus_lost']} lost, {totals['gpus_faulted']} faulted)",
                    style="bold yellow")
    text.append(f", {totals['processes']} processes")
    return text


def gpu_fields(outcome: Outcome) -> dict[str, Any]:
    """Per-host JSON fields: DESIGN.md's ``gpus``/``processes`` plus extras and a summary.

    ``gpus``/``processes``/``summary`` are null when the host gave no GPU
    data (not reached, timed out, or nvidia-smi failed before listing GPUs);
    a degraded host keeps the GPUs it could read.
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
