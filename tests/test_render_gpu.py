"""Rendering of gpu-status / sys-status / service-status: cells, colours, rows, JSON fields.

Pure: outcomes are built from the probe fixtures (no SSH). Tables are
rendered to plain text with a wide console and inspected line by line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import gpu_fixture
from helpers import gpu_outcome as probe_outcome
from rich.console import Console

import cluster.gpu as gpu
import cluster.service as service
import cluster.system as system
from cluster.hosts import Host
from cluster.render import gpu as rg
from cluster.render import system as rs
from cluster.render.fold import ViewOptions
from cluster.render.levels import TEMP_THRESHOLDS, UTIL_THRESHOLDS, load_level
from cluster.result import Failure, Outcome, Report

ROOT = Path(__file__).resolve().parent
GPU_FIXTURES = ROOT.parent / "cluster" / "testing" / "fixtures" / "gpu"
VMSTAT_FIXTURES = ROOT / "fixtures" / "vmstat"
SERVICE_FIXTURES = ROOT / "fixtures" / "service"


def gpu_outcome(case: str, address: str = "10.8.0.81") -> Outcome:
    """What run_probe would make of a host printing the fixture ``case``."""
    return probe_outcome(address, *gpu_fixture(case))


def unreachable(address: str = "10.8.0.90") -> Outcome:
    return Outcome(Host(address), False,
                   error=Failure("unreachable", "connection refused on port 22", "is sshd running?"))


def render(renderable, width: int = 220) -> str:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(renderable)
    return console.export_text()


EXPANDED = ViewOptions(fold=False)


def row_of(text: str, start: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("│" + start)]
    assert lines, f"no row starting {start!r} in:\n{text}"
    return lines[0]


# ---------------------------------------------------------------------------
# Levels and cells
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("value, level", [
    (None, None), (0, "light"), (9.9, "light"), (10, "moderate"), (74.9, "moderate"),
    (75, "heavy"), (100, "heavy"),
])
def test_load_level_util_thresholds(value, level):
    assert load_level(value, UTIL_THRESHOLDS) == level


@pytest.mark.parametrize("used, total, style", [
    (1, 100, "green"), (10, 100, "yellow"), (79, 100, "yellow"), (80, 100, "bold red"),
])
def test_memory_colour_follows_mem_thresholds(used, total, style):
    assert rg.memory_cell(used, total)[1] == style


def test_memory_cell_gib_and_unknown():
    assert rg.memory_cell(19818, 81559)[0] == f"{19818 / 1024:.1f}/{81559 / 1024:.1f} GiB"
    assert rg.memory_cell(None, None)[0] == "—"
    assert rg.memory_cell(None, 81559)[0].startswith("—/")


def plain(cell) -> str:
    return "".join(t for t, _ in cell)


def test_util_cell_mig_is_not_zero_percent():
    assert plain(rg.util_cell(None, None, mig=2, total=2)) == "MIG"
    mixed = plain(rg.util_cell(0.0, 0, mig=1, total=2))
    assert mixed.endswith("+1 MIG") and mixed.startswith("0/0 %")
    assert plain(rg.util_cell(None, None)) == "—"


def test_util_cell_colours_mean_and_max_separately():
    cell = rg.util_cell(5.0, 90)
    assert plain(cell) == "5/90 %"
    assert dict((t, s) for t, s in cell) == {"5": "green", "/": "", "90 %": "bold red"}


def test_power_and_temperature_cells():
    assert rg.power_cell(631.95, 700.0) == ("632/700 W", "bold red")
    assert rg.power_cell(None, 700.0)[0] == "—/700 W"
    assert rg.temperature_cell(None)[0] == "—"
    assert rg.temperature_cell(TEMP_THRESHOLDS[1])[1] == "bold red"
    assert rg.temperature_cell(TEMP_THRESHOLDS[0] - 1)[1] == ""


def test_short_name_drops_vendor_prefix_only_and_spells_controls():
    assert rg.short_name("NVIDIA H100 80GB HBM3") == "H100 80GB HBM3"
    assert rg.short_name("Tesla T4") == "Tesla T4"
    assert rg.short_name(None) == "—"
    assert rg.short_name("NVIDIA \x1b]0;pwned\x07H100") == "\\x1b]0;pwned\\x07H100"


# ---------------------------------------------------------------------------
# Host table
# ---------------------------------------------------------------------------


def test_host_row_aggregates_match_summary():
    outcome = gpu_outcome("h100-busy")
    summary = gpu.summarize(outcome.data)
    row = row_of(render(rg.gpu_table(Report([outcome]))), "10.8.0.81")
    assert f"{summary.gpu_count}× H100 80GB HBM3" in row
    assert f"{summary.utilization_mean:.0f}/{summary.utilization_max} %" in row
    assert f"{summary.power_w:.0f}/{summary.power_limit_w:.0f} W" in row
    assert f"{summary.temperature_max} °C" in row
    assert f" {summary.process_count} " in row
    assert " ok " in row


def test_mig_host_shows_mig_in_table_and_gpu_rows():
    outcome = gpu_outcome("h100-mig")
    text = render(rg.gpu_table(Report([outcome]), show_gpus=True))
    assert "MIG" in row_of(text, "10.8.0.81")
    mig = [g for g in outcome.data.gpus if g.mig]
    for g in mig:
        line = row_of(text, f"  [{g.index}]")
        assert "MIG" in line and "0 %" not in line


def test_degraded_host_keeps_data_and_names_lost_gpu():
    outcome = gpu_outcome("lost-gpu")
    assert outcome.error.kind == "degraded"
    text = render(rg.gpu_table(Report([outcome]), show_gpus=True))
    row = row_of(text, "10.8.0.81")
    assert "degraded" in row and f"{len(outcome.data.gpus)}× H100 80GB HBM3 (+1 lost)" in row
    lost = row_of(text, "  [?]")
    assert "lost" in lost and outcome.data.lost[0] in lost
    assert rg.host_row(outcome)[1] == [("degraded", "bold yellow")]
    assert sum(1 for line in text.splitlines() if line.startswith("│  [")) == (
        len(outcome.data.gpus) + len(outcome.data.lost))


def test_reset_required_gpu_row_is_flagged():
    outcome = gpu_outcome("h100-reset-required")
    faulted = outcome.data.faulted[0]
    text = render(rg.gpu_table(Report([outcome]), show_gpus=True))
    assert "reset-required" in row_of(text, f"  [{faulted.index}]")
    assert rg.gpu_status_cell(faulted) == ("reset-required", "bold red")


@pytest.mark.parametrize("case, kind", [
    ("driver-mismatch", "driver"), ("no-nvidia-smi", "no-gpu-tool"), ("nvml-unknown-error", "nvml"),
])
def test_failed_host_row_has_kind_message_and_hint(case, kind):
    outcome = gpu_outcome(case)
    text = render(rg.gpu_table(Report([outcome])))
    assert kind in row_of(text, "10.8.0.81")
    flat = " ".join(text.split())
    assert outcome.error.message.split()[0] in flat
    assert "→" in flat


def test_infoROM_warning_shown_once():
    outcome = gpu_outcome("inforom")
    assert outcome.ok and len(outcome.data.notices) == 2  # printed by both queries
    text = render(rg.gpu_table(Report([outcome])))
    assert text.count("infoROM") == 1 and "GPU 1: infoROM corrupted" in text


# ---------------------------------------------------------------------------
# Processes, summary line, JSON
# ---------------------------------------------------------------------------


def test_process_rows_by_host_then_gpu_then_memory():
    busy, mig = gpu_outcome("h100-busy", "10.8.0.81"), gpu_outcome("h100-mig", "10.8.0.82")
    rows = rg.process_rows(Report([busy, unreachable(), mig]))
    assert len(rows) == len(busy.data.processes) + len(mig.data.processes)
    hosts = [r[0] for r in rows]
    assert hosts == sorted(hosts)  # host order kept (81 before 82), unreachable skipped
    for host in ("10.8.0.81", "10.8.0.82"):
        keys = [(int(r[1]), -int(r[4].split()[0])) for r in rows if r[0] == host]
        assert keys == sorted(keys)
    names = {r[3] for r in rows}
    assert {p.name for p in busy.data.processes} <= names


def test_gpu_view_procs_without_processes_says_so():
    text = render(rg.gpu_view(Report([gpu_outcome("h100-idle")]), show_procs=True))
    assert "no GPU processes" in text


def test_gpu_fields_contract_and_nulls():
    busy = gpu_outcome("h100-busy")
    fields = rg.gpu_fields(busy)
    assert fields["gpus"] == [g.to_json() for g in busy.data.gpus]
    assert fields["processes"] == [p.to_json() for p in busy.data.processes]
    assert fields["summary"] == gpu.summarize(busy.data).to_json()
    for missing in (unreachable(), gpu_outcome("driver-mismatch")):
        fields = rg.gpu_fields(missing)
        assert fields["gpus"] is None and fields["processes"] is None and fields["summary"] is None


def test_gpu_document_summary_totals():
    outcomes = [gpu_outcome("h100-busy", "10.8.0.81"), gpu_outcome("lost-gpu", "10.8.0.82"),
                gpu_outcome("h100-reset-required", "10.8.0.83"), unreachable()]
    doc = rg.gpu_document(Report(outcomes), {"tick": 2})
    assert doc["task"] == "gpu-status" and doc["tick"] == 2
    assert doc["summary"]["ok"] == 1 and doc["summary"]["failed"] == 3
    assert doc["summary"]["gpus"] == sum(len(o.data.gpus) for o in outcomes[:3])
    assert doc["summary"]["gpus_lost"] == 1 and doc["summary"]["gpus_faulted"] == 1
    assert doc["summary"]["degraded"] == 2
    assert doc["summary"]["processes"] == sum(len(o.data.processes) for o in outcomes[:3])
    line = rg.gpu_summary_line(Report(outcomes)).plain
    assert f"{doc['summary']['gpus']} GPUs (1 lost, 1 faulted)" in line


# ---------------------------------------------------------------------------
# sys-status and service-status
# ---------------------------------------------------------------------------


def sys_outcome(fixture: str, meminfo: str = "") -> Outcome:
    stdout = (VMSTAT_FIXTURES / fixture).read_text() + meminfo
    outcome = Outcome(Host("10.8.0.81"), True, stdout=stdout, exit_code=0)
    outcome.data = system.parse(stdout)
    failure = system.classify(0, stdout, "", outcome.data)
    if failure:
        outcome.fail(failure)
    return outcome


def test_sys_row_shows_means_memory_and_load():
    outcome = sys_outcome("seed-2-15.txt")
    assert outcome.ok
    summary = system.summarize(outcome.data)
    row = row_of(render(rs.sys_table(Report([outcome]))), "10.8.0.81")
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells[2] == rs._n(summary.r) and cells[3] == rs._n(summary.b)
    assert cells[4] == rs.gib(summary.free_kib)
    assert cells[8:13] == [rs._n(v) for v in (summary.us, summary.sy, summary.id, summary.wa,
                                              summary.st)]
    assert cells[5].startswith(f"{rs.gib(summary.mem_used_kib)} / {rs.gib(summary.mem_total_kib)}")
    assert cells[13] == " ".join(f"{v:.2f}" for v in summary.load)
    assert f"{summary.samples} samples" in cells[14]


@pytest.mark.parametrize("load, cpus, style", [
    ((0.5, 0, 0), 2, ""), ((2.0, 0, 0), 2, "yellow"), ((4.0, 0, 0), 2, "bold red"),
])
def test_load_colour_is_per_cpu(load, cpus, style):
    summary = system.summarize(system.SystemStatus(load=load, cpus=cpus))
    assert rs._load_cell(summary, rs._levels(summary)["load"])[1] == style


def test_sys_failed_host_row_and_fields():
    outcome = unreachable()
    row = row_of(render(rs.sys_table(Report([outcome]))), "10.8.0.90")
    assert "unreachable" in row
    assert rs.sys_fields(outcome) == {"samples": None, "summary": None}


def test_service_rows_one_per_service_with_state():
    stdout = (SERVICE_FIXTURES / "no-systemd.txt").read_text()
    outcome = Outcome(Host("10.8.0.81"), True, stdout=stdout, exit_code=0)
    outcome.data = service.parse(stdout)
    failure = service.classify(0, stdout, "", outcome.data)
    if failure:
        outcome.fail(failure)
    text = render(rs.service_table(Report([outcome, unreachable()])))
    for state in outcome.data:
        line = next(ln for ln in text.splitlines() if f" {state.name} " in ln)
        assert state.describe in line
    assert "unreachable" in row_of(text, "10.8.0.90")
    fields = rs.service_fields(outcome)
    assert [s["name"] for s in fields["services"]] == [s.name for s in outcome.data]
    assert rs.service_fields(unreachable()) == {"services": None}
