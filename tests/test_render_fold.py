"""Folded status views: equal hosts share a row, faults and outliers first, JSON per host.

Pure: a generated fleet of 1,000 hosts (parsed from the stand-in's
captured-format fixtures, with per-host variations inside a band and a few
outliers) is rendered folded, expanded and filtered; the hosts of each
folded row are read back from its NodeSet range and compared with the hosts
that were made equal. Also sys-status, service-status, check and pd-status,
and gpu-status on 60-, 80- and 120-column terminals.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from ClusterShell.NodeSet import NodeSet
from helpers import gpu_fixture as fixture
from helpers import gpu_outcome
from rich.cells import cell_len

import cluster.gpu as gpu
import cluster.service as service
import cluster.system as system
from cluster.checks import CheckInfo
from cluster.errors import InputError
from cluster.hosts import Host
from cluster.render import basic, fold, serving
from cluster.render import gpu as rg
from cluster.render import system as rs
from cluster.render.fold import ViewOptions, view_options
from cluster.result import Failure, Outcome, Report
from cluster.serving.plan import ServerSpec
from cluster.serving.records import ServerRecord

ROOT = Path(__file__).resolve().parent
SERVICE_FIXTURES = ROOT / "fixtures" / "service"
FOLDED = ViewOptions(fold=True)
EXPANDED = ViewOptions(fold=False)


def idle_variant(n: int, used_mib: int = 1) -> str:
    """The idle H100 fixture, hottest GPU 30-34 degrees C and power varied by ``n``."""
    text, _ = fixture("h100-idle")
    rows, rest = text.split(gpu.APPS_MARKER, 1)
    out = []
    for line in rows.splitlines():
        cells = line.split(", ")
        cells[4] = str(used_mib)
        cells[8] = str(29 + n % 5 + int(cells[0]) % 2)
        cells[9] = f"{70 + (n % 50):.2f}"
        out.append(", ".join(cells))
    return "\n".join(out) + "\n" + gpu.APPS_MARKER + rest


def unreachable(address: str, port: int = 22) -> Outcome:
    return Outcome(Host(address), False, error=Failure(
        "unreachable", f"connection refused on port {port}", "is sshd running?"))


def address(i: int) -> str:
    return f"10.8.{i // 250}.{i % 250 + 1}"


# Outliers by position in the fleet (everything else: idle, every 10th busy).
OUTLIERS = {
    17: "h100-hot", 404: "h100-ecc", 111: "lost-gpu", 250: "h100-mig", 777: "a100",
    5: "driver-mismatch", 505: "driver-mismatch", 905: "driver-mismatch",
}
REFUSED = {60: 22, 61: 22, 62: 2222}
HALF_FULL = 333  # idle but half its GPU memory used: another memory band


@pytest.fixture(scope="module")
def fleet() -> Report:
    outcomes = []
    for i in range(1000):
        if i in REFUSED:
            outcomes.append(unreachable(address(i), REFUSED[i]))
        elif i in OUTLIERS:
            outcomes.append(gpu_outcome(address(i), *fixture(OUTLIERS[i])))
        elif i == HALF_FULL:
            outcomes.append(gpu_outcome(address(i), idle_variant(i, used_mib=40000)))
        elif i % 10 == 3:
            outcomes.append(gpu_outcome(address(i), fixture("h100-busy")[0]))
        else:
            outcomes.append(gpu_outcome(address(i), idle_variant(i)))
    return Report(outcomes)


def first_cells(table) -> list[str]:
    """The first cell of every row (the host or the folded range), as plain text."""
    return [" ".join("".join(t for t, _ in line) for line in row[0].lines) for row in table.rows]


def hosts_of(label: str) -> set[str]:
    return set(NodeSet(label.split(" (")[0]))


def test_folding_groups_exactly_the_equal_hosts_outliers_first(fleet):
    table = rg.gpu_table(fleet, options=FOLDED)
    labels = first_cells(table)
    idle = {address(i) for i in range(1000) if i % 10 != 3 and i not in OUTLIERS
            and i not in REFUSED and i != HALF_FULL}
    busy = {address(i) for i in range(1000) if i % 10 == 3 and i not in OUTLIERS
            and i not in REFUSED and i != HALF_FULL}
    driver = {address(i) for i, case in OUTLIERS.items() if case == "driver-mismatch"}
    expected = [
        {address(5)} | driver - {address(5)},        # failed, in first-host order: driver x3,
        {address(60), address(61)},                  # refused on port 22 (same message) x2,
        {address(62)},                               # refused on another port,
        {address(111)},                              # degraded (lost GPU): its own row
        {address(17)}, {address(404)},               # warned: hot, ECC
        {address(250)}, {address(HALF_FULL)}, {address(777)},  # ok outliers, alone in a band
        busy, idle,                                  # then the groups, smallest first
    ]
    assert [hosts_of(label) if "(" in label else {label} for label in labels] == expected
    assert labels[-1] == f"{fold.fold_names(sorted(idle))} ({len(idle)})"
    assert sum(len(s) for s in expected) == 1000


def test_folded_row_shows_the_ranges_of_its_hosts(fleet):
    table = rg.gpu_table(fleet, options=FOLDED)
    idle_row = table.rows[-1]
    texts = ["".join(t for t, _ in cell.lines[0]) for cell in idle_row]
    assert texts[1:4] == ["ok", "8× H100 80GB HBM3", "0/0 %"]
    assert texts[5] == "30–34 °C"  # temperatures vary inside the band: one row, their range
    assert texts[6].endswith("/5600 W") and "–" in texts[6]
    assert idle_row[5].lines[0][0][1] == ""  # one band, one colour


def test_a_warned_host_never_folds_with_healthy_ones(fleet):
    twin = gpu_outcome("10.8.9.1", fixture("h100-ecc")[0])
    again = gpu_outcome("10.8.9.2", fixture("h100-ecc")[0])
    table = rg.gpu_table(Report([*fleet, twin, again]), options=FOLDED)
    labels = first_cells(table)
    assert "10.8.9.1" in labels and "10.8.9.2" in labels  # identical warnings: still apart
    warned = [i for i, label in enumerate(labels) if label in ("10.8.9.1", "10.8.9.2")]
    idle_index = len(labels) - 1
    assert all(i < idle_index for i in warned)
    row = table.rows[labels.index("10.8.9.1")]
    assert "".join(t for t, _ in row[1].lines[0]) == "warn"
    notes = " ".join("".join(t for t, _ in line) for line in row[-1].lines)
    assert "GPU 3: 2 uncorrected ECC errors" in notes


def test_expanded_keeps_host_order_and_state_filters(fleet):
    table = rg.gpu_table(fleet, options=EXPANDED)
    assert first_cells(table) == [str(o.host) for o in fleet]
    warned = rg.gpu_table(fleet, options=ViewOptions(fold=True, state="warn"))
    assert first_cells(warned) == [address(17), address(404)]
    failed = rg.gpu_table(fleet, options=ViewOptions(fold=False, state="failed"))
    assert set(first_cells(failed)) == {str(o.host) for o in fleet if not o.ok}
    ok = rg.gpu_table(fleet, options=ViewOptions(fold=True, state="ok"))
    assert sum(len(hosts_of(label)) if "(" in label else 1 for label in first_cells(ok)) == \
        sum(1 for o in fleet if rg.host_state(o) == "ok")
    assert "--state ok:" in warned.notes[0] or "--state warn: 2 of 1000 hosts" == warned.notes[0]


def test_json_stays_one_entry_per_host(fleet):
    doc = json.loads(json.dumps(rg.gpu_document(fleet)))
    assert [h["host"] for h in doc["hosts"]] == [str(o.host) for o in fleet]
    assert doc["summary"]["warned"] == 2 and doc["summary"]["warnings"] == 5
    hot = doc["hosts"][17]
    assert [(w["gpu"], w["kind"]) for w in hot["warnings"]] == [(5, "temperature"),
                                                               (5, "clock-slowdown")]


def test_folding_is_the_default_only_when_the_table_is_taller_than_the_terminal(fleet):
    small = Report(list(fleet)[:20])
    assert len(rg.gpu_table(small, options=ViewOptions(height=50)).rows) == 20
    assert len(rg.gpu_table(fleet, options=ViewOptions(height=50)).rows) == 11
    assert len(rg.gpu_table(fleet, options=ViewOptions(height=None)).rows) == 1000  # a pipe
    # --gpus: 9 rows a host, so 20 hosts no longer fit 50 lines.
    assert len(rg.gpu_table(small, True, ViewOptions(height=50)).rows) < 20 * 9


def test_view_options_reject_bad_combinations():
    assert view_options(expand=True).fold is False and view_options(fold=True).fold is True
    assert view_options(state="warn", height=40) == ViewOptions(None, "warn", 40)
    with pytest.raises(InputError, match="--expand and --fold"):
        view_options(expand=True, fold=True)
    with pytest.raises(InputError, match="--state must be one of ok, warn, failed"):
        view_options(state="broken")


@pytest.mark.parametrize("width, hidden", [
    (120, "Procs, Power"), (80, "Procs, Power, GPUs, Notes"),
    (60, "Procs, Power, GPUs, Notes, Temp"),
])
def test_gpu_status_on_narrow_terminals_never_cuts_a_host(fleet, width, hidden):
    report = Report([o for i, o in enumerate(fleet) if i in (17, 60, 62, 111, 250)])
    text = rg.gpu_table(report, options=EXPANDED).text(width)
    lines = text.splitlines()
    for outcome in report:
        assert any(line.startswith(f"│{outcome.host} ") for line in lines), outcome.host
    assert all(cell_len(line) <= width for line in lines)
    bottom = max(i for i, line in enumerate(lines) if line.startswith("└"))
    assert " ".join(lines[bottom + 1:]) == f"hidden: {hidden} — widen the terminal or use --json"
    header = lines[1]
    for name in ("Host", "Status", "Util"):  # the most important columns stay
        assert name in header


# ---------------------------------------------------------------------------
# sys-status, service-status, check, pd-status
# ---------------------------------------------------------------------------


def vmstat_text(us: int, wa: int = 0, si: int = 0, load: float = 0.3, cpus: int = 8,
                used_kib: int = 4_000_000) -> str:
    header = ("procs -----------memory---------- ---swap-- -----io---- -system-- ------cpu-----\n"
              " r  b   swpd   free   buff  cache   si   so    bi    bo   in   cs us sy id wa st\n")
    row = f" 1  0      0 9000000 100 200 {si} 0 0 0 100 200 {us} 1 {99 - us - wa} {wa} 0\n"
    total = 32_000_000
    return (header + row * 3 + f"@@loadavg\n{load} 0.20 0.10 1/100 123\n@@meminfo\n"
            f"MemTotal: {total} kB\nMemAvailable: {total - used_kib} kB\n@@nproc\n{cpus}\n")


def sys_outcome(address_: str, stdout: str) -> Outcome:
    outcome = Outcome(Host(address_), True, stdout=stdout, exit_code=0)
    outcome.data = system.parse(stdout)
    assert outcome.data.samples and system.classify(0, stdout, "", outcome.data) is None
    return outcome


def test_sys_status_folds_by_band_and_warns_on_swapping():
    outcomes = [sys_outcome(f"10.0.0.{i}", vmstat_text(us=1 + i % 5)) for i in range(1, 41)]
    outcomes[9] = sys_outcome("10.0.0.10", vmstat_text(us=2, si=30))          # swapping
    outcomes[10] = sys_outcome("10.0.0.11", vmstat_text(us=3, si=12))         # swapping too
    outcomes[19] = sys_outcome("10.0.0.20", vmstat_text(us=90))               # busy band
    outcomes.append(unreachable("10.0.0.99"))
    report = Report(outcomes)
    table = rs.sys_table(report, FOLDED)
    labels = first_cells(table)
    # warn here is a load level: the two swapping hosts fold together, after the failure.
    assert labels[:3] == ["10.0.0.99", "10.0.0.[10-11] (2)", "10.0.0.20"]
    assert hosts_of(labels[3]) == {f"10.0.0.{i}" for i in range(1, 41)} - {
        "10.0.0.10", "10.0.0.11", "10.0.0.20"}
    states = {str(o.host): rs.sys_state(o) for o in report}
    assert states["10.0.0.10"] == "warn" and states["10.0.0.99"] == "failed"
    swapping = ["".join(t for t, _ in cell.lines[0]) for cell in table.rows[1]]
    assert swapping[1] == "warn" and swapping[6] == "12–30"  # si
    last = ["".join(t for t, _ in cell.lines[0]) for cell in table.rows[-1]]
    assert last[8] == "1–5"  # us, within the light band


def service_outcome(address_: str, case: str) -> Outcome:
    stdout = (SERVICE_FIXTURES / f"{case}.txt").read_text()
    outcome = Outcome(Host(address_), True, stdout=stdout, exit_code=0)
    outcome.data = service.parse(stdout)
    failure = service.classify(0, stdout, "", outcome.data)
    if failure is not None:
        outcome.fail(failure)
    return outcome


def test_service_status_folds_hosts_whose_services_read_the_same():
    outcomes = [service_outcome(f"10.0.1.{i}", "systemd-active") for i in range(1, 31)]
    outcomes[4] = service_outcome("10.0.1.5", "systemd-failed")
    report = Report(outcomes)
    table = rs.service_table(report, FOLDED)
    labels = [label for label in first_cells(table) if label]
    assert labels[0] == "10.0.1.5"
    assert hosts_of(labels[1]) == {f"10.0.1.{i}" for i in range(1, 31)} - {"10.0.1.5"}
    services = len(outcomes[0].data)
    assert len(table.rows) == len(outcomes[4].data) + services  # one row per service


def test_check_folds_by_latency_band_and_identical_failures():
    outcomes = [Outcome(Host(f"10.0.2.{i}"), True, data=CheckInfo(f"gpu{i:03d}", 3.0 + i, 5.0))
                for i in range(1, 21)]
    outcomes.append(Outcome(Host("10.0.2.30"), True, data=CheckInfo("gpu030", 1500.0, 5.0)))
    outcomes += [unreachable("10.0.2.40"), unreachable("10.0.2.41")]
    table = basic.check_table(Report(outcomes), FOLDED)
    rows = [["".join(t for t, _ in cell.lines[0]) for cell in row] for row in table.rows]
    assert rows[0][0] == "10.0.2.[40-41] (2)" and rows[0][1] == "unreachable"
    assert rows[1][0] == "10.0.2.30" and rows[1][3] == "1500 ms"
    assert rows[2][0] == "10.0.2.[1-20] (20)"
    assert rows[2][2:] == ["gpu[001-020]", "4–23 ms", "5 ms"]


def server(host: str, status: str = "ready", health: int = 200, role: str = "decode") -> Outcome:
    row = ServerRecord(ServerSpec(engine="sglang", role=role, host=host, target=host, port=30001),
                       pid=1234, status=status, alive=True, listening=True, health=health,
                       uptime_s=120, last_log="The server is fired up and ready to roll!")
    return Outcome(Host(host), True, data=row)


def test_pd_status_folds_servers_of_a_role_and_keeps_loading_ones_apart():
    outcomes = [server(f"10.0.3.{i}") for i in range(1, 25)]
    outcomes[3] = server("10.0.3.4", status="loading", health=503)
    outcomes[5] = server("10.0.3.6", status="loading", health=503)
    outcomes.append(server("10.0.3.100", role="prefill"))
    table = serving.status_table(Report(outcomes), FOLDED)
    rows = [["".join(t for t, _ in cell.lines[0]) for cell in row] for row in table.rows]
    assert [r[1] for r in rows] == ["10.0.3.[4,6] (2)", "10.0.3.100",
                                    "10.0.3.[1-3,5,7-24] (22)"]
    assert rows[0][4] == "loading" and serving.server_state(outcomes[3]) == "warn"
    assert rows[2][0] == "decode" and rows[2][3] == "22 pids"
    assert rows[2][9] == "The server is fired up and ready to roll!"


# ---------------------------------------------------------------------------
# Remote text: spelled out, never interpreted (cluster.render.text.shown)
# ---------------------------------------------------------------------------

ESC = "\x1b]0;pwned\x07\x1b[2J"


def rendered(table, width: int = 200) -> str:
    import io

    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=width, force_terminal=True, color_system="standard").print(table)
    return out.getvalue()


def assert_spelled(text: str) -> None:
    assert "\x07" not in text and "\x1b]" not in text and "\x1b[2J" not in text
    assert "\\x1b]0;pwned\\x07" in text


def test_remote_text_in_gpu_tables_is_spelled_out():
    stdout, _ = fixture("h100-idle")
    rows, rest = stdout.split(gpu.APPS_MARKER, 1)
    lines = rows.splitlines()
    cells = lines[0].split(", ")
    cells[2] = f"NVIDIA H100{ESC}"
    cells[19] = f"Reset{ESC}"
    lines[0] = ", ".join(cells)
    evil = ("\n".join(lines) + f"\nWARNING: odd{ESC}\n" + gpu.APPS_MARKER
            + rest.replace("@@compute-apps-exit 0",
                           f"{cells[1]}, 77, 100, python{ESC}\n@@compute-apps-exit 0"))
    outcome = gpu_outcome("10.0.9.1", evil)
    assert outcome.ok and outcome.data.warnings[0].value == f"Reset{ESC}"
    report = Report([outcome])
    for table in (rg.gpu_view(report, True, True, EXPANDED),
                  rg.gpu_view(report, False, False, FOLDED)):
        assert_spelled(rendered(table))


def test_remote_text_in_other_tables_is_spelled_out():
    check = Outcome(Host("10.0.9.2"), True, data=CheckInfo(f"vm{ESC}", 3.0, 4.0))
    failed = Outcome(Host("10.0.9.3"), False, error=Failure("exit", f"exit code 1: {ESC}", "x"))
    assert_spelled(rendered(basic.check_table(Report([check, failed]), EXPANDED)))
    assert_spelled(rendered(basic.check_table(Report([check, check]), FOLDED)))
    row = ServerRecord(ServerSpec(engine="sglang", role="decode", host="10.0.9.4",
                                  target="10.0.9.4", port=30001),
                       pid=1, status="ready", alive=True, listening=True, health=200, uptime_s=5,
                       last_log=f"INFO {ESC}")
    server_outcome = Outcome(Host("10.0.9.4"), True, data=row)
    assert_spelled(rendered(serving.status_table(Report([server_outcome]), EXPANDED)))
    twin = Outcome(Host("10.0.9.5"), True, data=replace(row, spec=replace(row.spec, host="10.0.9.5",
                                                                        target="10.0.9.5")))
    assert_spelled(rendered(serving.status_table(Report([server_outcome, twin]), FOLDED)))
    states = service.parse((SERVICE_FIXTURES / "no-systemd.txt").read_text())
    states[0].processes = [(42, f"python -m sglang.launch_server {ESC}")]
    states[0].warnings = [f"odd {ESC}"]
    svc = Outcome(Host("10.0.9.6"), True, data=states)
    assert_spelled(rendered(rs.service_table(Report([svc]), EXPANDED)))
