"""GPU probe: parser, classification, fixtures and the stand-in nvidia-smi.

Fixtures live in ``cluster/testing/fixtures/gpu/<case>.txt`` (the exact stdout
of ``cluster.gpu.COMMAND`` in that GPU state) with ``<case>.exit`` holding the
exit code when it is not 0, so the stand-in and a rehearsal cluster share them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import cluster.gpu as gpu
from cluster.gpu import classify, parse, summarize

ROOT = Path(gpu.__file__).resolve().parent / "testing"
FIXTURES = ROOT / "fixtures" / "gpu"
STAND_IN = ROOT / "bin" / "nvidia-smi"
HGX_BUS_IDS = [f"00000000:{b}:00.0" for b in ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")]
CONTRACT_GPU_KEYS = ["index", "uuid", "name", "memory_used_mib", "memory_total_mib",
                     "utilization_pct", "temperature_c", "power_w", "power_limit_w"]

# case -> (GPUs parsed, processes parsed, failure kind or None)
EXPECTED = {
    "h100-idle": (8, 0, None),
    "h100-busy": (8, 9, None),
    "h200": (8, 1, None),
    "h200-r580-idle": (1, 0, None),
    "h200-r580-busy": (1, 1, None),
    "a100": (4, 0, None),
    "a100-r470": (4, 0, None),
    "h100-ecc": (8, 0, None),
    "h100-hot": (8, 1, None),
    "h100-mig": (2, 2, None),
    "l40s": (1, 0, None),
    "geforce-not-supported": (1, 1, None),
    "h100-reset-required": (8, 0, "degraded"),
    "unknown-error": (2, 0, "degraded"),
    "proc-names": (2, 3, None),
    "lost-gpu": (7, 1, "degraded"),
    "lost-gpu-610": (3, 0, "degraded"),
    "gpu-lost": (0, 0, "gpu-lost"),
    "inforom": (4, 1, None),
    "driver-not-loaded": (0, 0, "driver"),
    "driver-mismatch": (0, 0, "driver"),
    "nvml-unknown-error": (0, 0, "nvml"),
    "nvml-no-gpus": (0, 0, "nvml"),
    "no-devices": (0, 0, "no-gpu"),
    "bad-field": (0, 0, "exit"),
    "no-nvidia-smi": (0, 0, "no-gpu-tool"),
    "apps-insufficient-permissions": (1, 1, None),
    "truncated-row": (1, 0, "degraded"),
    "apps-failed": (2, 0, None),
}
CASES = sorted(p.stem for p in FIXTURES.glob("*.txt"))


def load(case: str) -> tuple[str, int, str]:
    """(stdout, exit code, stderr) of COMMAND in the fixture's state."""
    exit_file = FIXTURES / f"{case}.exit"
    stderr_file = FIXTURES / f"{case}.stderr"
    return (
        (FIXTURES / f"{case}.txt").read_text(),
        int(exit_file.read_text()) if exit_file.exists() else 0,
        stderr_file.read_text() if stderr_file.exists() else "",
    )


def parsed(case: str) -> gpu.GpuStatus:
    return parse(load(case)[0])


def failure(case: str):
    stdout, code, stderr = load(case)
    return classify(code, stdout, stderr, parse(stdout))


# ---------------------------------------------------------------------------
# Every fixture
# ---------------------------------------------------------------------------


def test_every_fixture_has_expectations():
    assert CASES, FIXTURES
    assert set(CASES) == set(EXPECTED)


@pytest.mark.parametrize("case", CASES)
def test_fixture_counts_and_kind(case):
    n_gpus, n_procs, kind = EXPECTED[case]
    status = parsed(case)
    assert len(status.gpus) == n_gpus
    assert len(status.processes) == n_procs
    result = failure(case)
    assert (result.kind if result else None) == kind
    if result is not None:
        assert result.message and result.hint
        assert result.kind in gpu.KINDS + ("exit",)


@pytest.mark.parametrize("case", CASES)
def test_fixture_json_is_contract_shaped(case):
    doc = json.loads(json.dumps(parsed(case).to_json()))
    for row in doc["gpus"]:
        assert list(row)[:9] == CONTRACT_GPU_KEYS
        assert isinstance(row["index"], int)
    for proc in doc["processes"]:
        assert {"pid", "name", "gpu_uuid", "used_memory_mib"} <= set(proc)


@pytest.mark.parametrize("case", [c for c in CASES if EXPECTED[c][0]])
def test_fixture_rows_have_the_queried_width(case):
    """Fixtures stay in step with FIELD_SETS: GPU rows have one cell per field of their set."""
    status = parsed(case)
    stdout = load(case)[0].split(gpu.APPS_MARKER)[0].split(gpu.FIELDS_MARKER)[-1]
    rows = [line for line in stdout.splitlines() if line[:1].isdigit()]
    widths = {len(r.split(", ")) for r in rows}
    assert len(gpu.FIELD_SETS[status.field_set]) in widths


# ---------------------------------------------------------------------------
# Specific values
# ---------------------------------------------------------------------------


def test_h100_idle_fields():
    status = parsed("h100-idle")
    assert [g.index for g in status.gpus] == list(range(8))
    assert [g.pci_bus_id for g in status.gpus] == HGX_BUS_IDS
    first = status.gpus[0]
    assert first.name == "NVIDIA H100 80GB HBM3"
    assert first.uuid.startswith("GPU-") and len({g.uuid for g in status.gpus}) == 8
    assert (first.memory_used_mib, first.memory_total_mib) == (1, 81559)
    assert (first.utilization_pct, first.temperature_c) == (0, 30)
    assert first.power_w == pytest.approx(100.89) and first.power_limit_w == 700.0
    assert first.fan_pct is None and first.tokens == {"fan_pct": "[N/A]",
                                                     "retired_pages_pending": "[N/A]"}
    assert (first.pstate, first.mig_mode, first.ecc_uncorrected) == ("P0", "Disabled", 0)
    assert first.flags == []
    assert status.processes == [] and status.bad_lines == [] and status.lost == []
    assert status.processes_error is None


def test_health_fields_of_a_current_driver():
    status = parsed("h100-idle")
    first = status.gpus[0]
    assert status.field_set == "current"
    assert first.slowdown_margin_c == 57        # 30 degrees C now, T.Limit 0 at 87
    assert first.clock_event_reasons == 0x1     # gpu_idle
    assert first.remapped_rows_pending is False
    assert first.retired_pages_pending is None and first.tokens["retired_pages_pending"] == "[N/A]"
    assert first.recovery_action == "None"
    assert status.warnings == [] and first.warnings == []
    doc = first.to_json()
    assert doc["slowdown_margin_c"] == 57 and doc["warnings"] == []
    assert parsed("h100-mig").gpus[0].remapped_rows_pending is None  # [N/A] under MIG


def test_h100_busy_processes_and_summary():
    status = parsed("h100-busy")
    tp3 = [p for p in status.processes if p.name == "sglang::scheduler_TP3"]
    assert len(tp3) == 1
    assert (tp3[0].pid, tp3[0].used_memory_mib, tp3[0].gpu_index) == (412304, 75690, 3)
    assert tp3[0].gpu_uuid == status.gpus[3].uuid
    on_gpu0 = sorted(p.pid for p in status.processes if p.gpu_index == 0)
    assert on_gpu0 == [412250, 412301]

    summary = summarize(status)
    utils = [g.utilization_pct for g in status.gpus]
    assert summary.gpu_count == 8
    assert summary.models == ["NVIDIA H100 80GB HBM3"]
    assert summary.utilization_mean == pytest.approx(sum(utils) / 8, abs=0.05)
    assert summary.utilization_max == 100 and min(utils) == 94
    assert summary.memory_used_mib == sum(g.memory_used_mib for g in status.gpus)
    assert summary.memory_total_mib == 8 * 81559
    assert summary.temperature_max == 68
    assert summary.power_w == pytest.approx(sum(g.power_w for g in status.gpus))
    assert summary.power_limit_w == pytest.approx(5600.0)
    assert summary.process_count == 9 and not summary.degraded
    assert json.loads(json.dumps(summary.to_json()))["gpu_count"] == 8


def test_h200_and_a100_reference_values():
    h200 = parsed("h200").gpus[0]
    assert (h200.name, h200.memory_used_mib, h200.memory_total_mib) == (
        "NVIDIA H200", 32362, 143771)
    assert (h200.utilization_pct, h200.power_w) == (100, pytest.approx(627.40))
    assert parsed("h200").processes[0].name == "./gpu_burn"
    a100 = parsed("a100")
    assert {g.name for g in a100.gpus} == {"NVIDIA A100-SXM4-80GB"}
    assert {g.memory_total_mib for g in a100.gpus} == {81920}
    assert {g.power_limit_w for g in a100.gpus} == {500.0}


def test_real_h200_captures_driver_580():
    # Captured on a real H200 (driver 580.159.04, CUDA 13.0): COMMAND's exact
    # output, idle and with one torch process holding 20 GiB.
    idle, busy = parsed("h200-r580-idle"), parsed("h200-r580-busy")
    for status in (idle, busy):
        assert status.field_set == "current" and not status.notices and not status.bad_lines
        assert status.warnings == [] and status.processes_error is None
        (card,) = status.gpus
        assert (card.name, card.memory_total_mib, card.power_limit_w) == ("NVIDIA H200", 143771, 700.0)
        assert (card.fan_pct, card.retired_pages_pending, card.remapped_rows_pending) == (None, None, False)
        assert card.recovery_action == "None" and card.mig_mode == "Disabled"
        # T.Limit 0 (the maximum operating temperature) is at 87 degrees C on both machines.
        assert card.temperature_c + card.slowdown_margin_c == 87
    assert idle.gpus[0].clock_event_reasons == 0x1  # gpu_idle: normal, not flagged
    assert (idle.gpus[0].temperature_c, idle.gpus[0].memory_used_mib) == (33, 0)
    (process,) = busy.processes
    assert (process.pid, process.used_memory_mib, process.name) == (474, 21090, "/opt/torch/.venv/bin/python3")
    assert process.gpu_uuid == busy.gpus[0].uuid
    assert (busy.gpus[0].memory_used_mib, busy.gpus[0].clock_event_reasons) == (21099, 0)


def test_mig_is_flagged_not_zero():
    status = parsed("h100-mig")
    mig, plain = status.gpus
    assert mig.mig and mig.flags == ["mig"] and mig.mig_mode == "Enabled"
    assert mig.utilization_pct is None and mig.memory_utilization_pct is None
    assert mig.tokens["utilization_pct"] == "[N/A]"
    assert mig.memory_used_mib == 11125
    assert not plain.mig and plain.utilization_pct == 0
    # compute-apps names the parent GPU's uuid under MIG
    assert {p.gpu_index for p in status.processes} == {0}
    summary = summarize(status)
    assert summary.mig_gpus == 1
    assert summary.utilization_max == 0  # only the non-MIG GPU counts
    assert classify(0, load("h100-mig")[0], "", status) is None


def test_not_supported_and_na_tokens_become_null():
    (card,) = parsed("geforce-not-supported").gpus
    assert card.fan_pct == 38
    assert card.utilization_pct is None and card.power_w is None and card.power_limit_w is None
    assert card.tokens["power_w"] == "[Not Supported]"
    assert card.mig_mode is None and card.tokens["mig_mode"] == "[N/A]"
    assert card.flags == []  # [Not Supported] is not a fault
    (proc,) = parsed("geforce-not-supported").processes
    assert proc.used_memory_mib is None and proc.tokens == {"used_memory_mib": "[Not Supported]"}
    summary = summarize(parsed("geforce-not-supported"))
    assert summary.power_w is None and summary.utilization_mean is None
    (l40s,) = parsed("l40s").gpus
    assert l40s.fan_pct is None and l40s.mig_mode is None and not l40s.mig


def test_reset_required_gpu_is_a_fault():
    status = parsed("h100-reset-required")
    bad = status.gpus[3]
    assert bad.flags == ["reset-required"]
    assert bad.temperature_c is None and bad.utilization_pct is None and bad.pstate is None
    assert bad.tokens["temperature_c"] == "[GPU requires reset]"
    assert all(not g.flags for i, g in enumerate(status.gpus) if i != 3)
    result = failure("h100-reset-required")
    assert result.kind == "degraded"
    assert "GPU 3" in result.message and "00000000:5D:00.0" in result.message
    assert "7 of 8" in result.message and "reset" in result.hint


def test_unknown_error_only_faults_core_fields():
    healthy, broken = parsed("unknown-error").gpus
    assert healthy.power_limit_w is None and healthy.tokens["power_limit_w"] == "[Unknown Error]"
    assert healthy.flags == []
    assert broken.flags == ["unknown-error"]
    assert broken.temperature_c is None and broken.power_w is None
    assert "GPU 1" in failure("unknown-error").message


def test_process_names_with_commas_and_spaces():
    names = [p.name for p in parsed("proc-names").processes]
    assert names == [
        "/opt/My Models, Inc/bin/serve --port 30000",
        "/srv/tools/a, 100",
        "python3 -m sglang.launch_server",
    ]
    second = parsed("proc-names").processes[1]
    assert (second.pid, second.used_memory_mib) == (5013, 10240)


def test_insufficient_permissions_in_process_rows():
    (proc,) = parsed("apps-insufficient-permissions").processes
    assert proc.pid is None and proc.used_memory_mib is None and proc.name == "python3"
    assert proc.tokens["pid"] == "[Insufficient Permissions]"
    assert proc.gpu_index == 0


def test_lost_gpu_keeps_the_others():
    status = parsed("lost-gpu")
    assert status.lost == ["00000000:5D:00.0"]
    assert [g.index for g in status.gpus] == [0, 1, 2, 4, 5, 6, 7]
    assert status.bad_lines == []
    assert any("Unable to determine" in w for w in status.notices)
    result = failure("lost-gpu")
    assert result.kind == "degraded" and result.exit_code == 15
    assert "00000000:5D:00.0" in result.message and "Xid" in result.hint
    assert summarize(status).lost_count == 1 and summarize(status).degraded


def test_lost_gpu_line_in_the_middle_driver_610_form():
    status = parsed("lost-gpu-610")
    assert status.lost == ["00000000:34:00.0"]
    assert [g.index for g in status.gpus] == [0, 2, 3]
    assert failure("lost-gpu-610").exit_code is None  # exit 0, still degraded


@pytest.mark.parametrize("tail, bus", [
    (" 0000:0B:00.0: Unknown Error", "00000000:0B:00.0"),  # older, with a space
    ("0000:65:00.0: Unknown Error", "00000000:65:00.0"),   # newer, glued to "GPU"
    ("1: 0000:34:00.0: Unknown Error", "00000000:34:00.0"),  # driver 610: index + bus id
    (" 00000000:db:00.0: GPU is lost", "00000000:DB:00.0"),
])
def test_lost_line_forms(tail, bus):
    line = "Unable to determine the device handle for GPU" + tail
    assert parse(line + "\n").lost == [bus]


def test_only_lost_gpus_is_gpu_lost():
    result = failure("gpu-lost")
    assert result.kind == "gpu-lost" and "00000000:0B:00.0" in result.message
    assert parsed("gpu-lost").processes_error.startswith("process query exited 15")


def test_inforom_is_a_warning_not_a_failure():
    status = parsed("inforom")
    assert failure("inforom") is None
    assert status.gpus[1].flags == ["inforom"]
    assert [g.index for g in status.gpus if g.flags] == [1]
    assert any("infoROM is corrupted" in w for w in status.notices)
    assert len(status.processes) == 1 and status.processes_error is None
    # A health warning on the GPU it names (printed by both queries: one warning).
    assert [(w.gpu, w.kind) for w in status.warnings] == [(1, "inforom")]
    assert status.other_notices() == []


@pytest.mark.parametrize("case, code, message_part, hint_part", [
    ("driver-not-loaded", 9, "driver not loaded", "lsmod"),
    ("driver-mismatch", 18, "Failed to initialize NVML: Driver/library version mismatch",
     "reboot or reload the driver"),
    ("nvml-unknown-error", 255, "Failed to initialize NVML: Unknown Error", "dmesg"),
    ("nvml-no-gpus", 255, "No supported GPUs were found", "lspci"),
    ("no-devices", 6, "No devices were found", "lspci"),
    ("bad-field", 2, 'Field "mig.mode.current" is not a valid field', "field"),
    ("no-nvidia-smi", 127, "no NVIDIA tools on this host", "CPU-only"),
])
def test_host_failures(case, code, message_part, hint_part):
    result = failure(case)
    assert result.exit_code == code
    assert message_part in result.message
    assert hint_part in result.hint
    assert result.to_json()["kind"] == EXPECTED[case][2]


def test_unknown_exit_code_is_generic_exit():
    result = classify(3, "Unable to query: operation not available\n", "", None)
    assert result.kind == "exit" and result.exit_code == 3
    assert "operation not available" in result.message


def test_exit_zero_without_rows():
    assert classify(0, "", "").kind == "no-gpu"
    result = classify(0, "something else entirely\n", "")
    assert result.kind == "bad-output" and "something else" in result.message


def test_truncated_row_and_garbage_are_bad_lines_not_crashes():
    status = parsed("truncated-row")
    assert [g.index for g in status.gpus] == [0]
    assert len(status.bad_lines) == 3  # cut row, "Segmentation fault", garbage process line
    assert status.bad_lines[0].startswith("1, GPU-")
    result = failure("truncated-row")
    assert result.kind == "degraded" and "not understood" in result.message


def test_process_query_failure_after_good_gpu_query():
    status = parsed("apps-failed")
    assert len(status.gpus) == 2 and status.processes == []
    assert status.processes_error == (
        "process query exited 255: Failed to initialize NVML: Unknown Error")
    assert status.bad_lines == []


def test_empty_process_section_is_no_processes():
    status = parse(load("a100")[0])
    assert status.processes == [] and status.processes_error is None


def test_name_with_comma_in_gpu_row_is_rejected_by_width():
    row = load("l40s")[0].splitlines()[0].replace("NVIDIA L40S", "NVIDIA L40S, rev 2")
    status = parse(row + "\n")
    assert status.gpus == [] and status.bad_lines == [row]


def test_units_and_crlf_are_tolerated():
    row = load("l40s")[0].splitlines()[0]
    with_units = row.replace(", 46068,", ", 46068 MiB,").replace(", 350.00,", ", 350.00 W,")
    (card,) = parse(with_units + "\r\n").gpus
    assert card.memory_total_mib == 46068 and card.power_limit_w == 350.0


def test_command_shape():
    command = gpu.COMMAND
    queries = [q.split()[0].split(",") for q in command.split("--query-gpu=")[1:]]
    assert queries == [[f for f, _, _ in fields] for fields in gpu.FIELD_SETS.values()]
    assert queries[0] == [f for f, _, _ in gpu.GPU_FIELDS]
    # Each fallback runs only when the previous query was refused (exit 2), after its marker.
    assert command.count("if [ $rc = 2 ]; then echo '@@gpu-fields ") == len(gpu.FIELD_SETS) - 1
    fields = queries[0]
    assert {"index", "uuid", "name", "memory.used", "memory.total", "utilization.gpu",
            "temperature.gpu", "power.draw", "power.limit"} <= set(fields)
    apps = command.split("--query-compute-apps=")[1].split()[0].split(",")
    assert apps[-1] == "process_name"
    assert command.count("--format=csv,noheader,nounits") == len(gpu.FIELD_SETS) + 1
    assert command.rstrip().endswith("exit $rc")


# ---------------------------------------------------------------------------
# The stand-in nvidia-smi, run through a real shell
# ---------------------------------------------------------------------------


def _env(bin_dir: Path, sim_root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_SIM")}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", CLUSTER_SIM_ROOT=str(sim_root), **extra)
    return env


def _run_command(shell: str, env: dict[str, str], timeout: float = 20):
    return subprocess.run([shell, "-c", gpu.COMMAND], env=env, capture_output=True,
                          text=True, timeout=timeout)


SHELLS = [s for s in ("sh", "bash") if shutil.which(s)]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("case", CASES)
def test_stand_in_reproduces_fixture_byte_for_byte(case, shell, tmp_path):
    (tmp_path / "gpu-state").write_text(case + "\n")
    stdout, code, stderr = load(case)
    # The first call splits the fixture and writes the cache, the second reads the cache.
    for attempt in ("split", "cached"):
        done = _run_command(shell, _env(STAND_IN.parent, tmp_path))
        assert done.stdout == stdout, attempt
        assert done.returncode == code, attempt
        if stderr:
            assert stderr.strip() in done.stderr
        assert (tmp_path / f".nvidia-smi-{case}.sh").is_file()


def _stand_in(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nvidia-smi", *args], env=env, capture_output=True, text=True)


def test_stand_in_cache_follows_fixture_edits_and_paths(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    first, second = tmp_path / "a" / "gpus.txt", tmp_path / "b" / "gpus.txt"
    for path, text in ((first, "0, it's, first\n"), (second, "0, second\n")):
        path.parent.mkdir()
        path.write_text(text + "@@compute-apps\n@@compute-apps-exit 0\n")
    env = _env(STAND_IN.parent, root, CLUSTER_SIM_GPU_STATE=str(first))
    assert _stand_in(env, "--query-gpu=index").stdout == "0, it's, first\n"
    cache = root / ".nvidia-smi-gpus.sh"
    assert f"'{first}'" in cache.read_text()
    # Same file name elsewhere: the cache names its source, so it is not reused.
    env["CLUSTER_SIM_GPU_STATE"] = str(second)
    assert _stand_in(env, "--query-gpu=index").stdout == "0, second\n"
    # The fixture rewritten later than the cache: split again.
    second.write_text("0, edited\n@@compute-apps\n1, app, 5\n@@compute-apps-exit 0\n")
    later = cache.stat().st_mtime + 2
    os.utime(second, (later, later))
    assert _stand_in(env, "--query-gpu=index").stdout == "0, edited\n"
    assert _stand_in(env, "--query-compute-apps=pid").stdout == "1, app, 5\n"


def test_stand_in_without_a_writable_root_still_answers(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o555)
    env = _env(STAND_IN.parent, root, CLUSTER_SIM_GPU_STATE="h100-busy")
    try:
        for _ in range(2):
            assert _stand_in(env, "--query-gpu=index").stdout == load("h100-busy")[0].split("@@")[0]
    finally:
        root.chmod(0o755)
    if os.geteuid() != 0:  # root writes anyway
        assert not list(root.iterdir())


def test_stand_in_works_through_a_symlink_and_defaults_to_h100_idle(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").symlink_to(STAND_IN)
    done = _run_command("sh", _env(bin_dir, tmp_path / "no-such-root"))
    assert done.returncode == 0
    assert done.stdout == load("h100-idle")[0]


def test_stand_in_list_and_unknown_state(tmp_path):
    env = _env(STAND_IN.parent, tmp_path, CLUSTER_SIM_GPU_STATE="h100-busy")
    listing = subprocess.run(["nvidia-smi", "-L"], env=env, capture_output=True, text=True)
    lines = listing.stdout.splitlines()
    assert len(lines) == 8
    assert lines[3].startswith("GPU 3: NVIDIA H100 80GB HBM3 (UUID: GPU-")
    env["CLUSTER_SIM_GPU_STATE"] = "no-such-case"
    missing = subprocess.run(["nvidia-smi", "--query-gpu=index"], env=env,
                             capture_output=True, text=True)
    assert missing.returncode == 3 and "no-such-case" in missing.stderr


def test_stand_in_failure_state_fails_every_invocation(tmp_path):
    env = _env(STAND_IN.parent, tmp_path, CLUSTER_SIM_GPU_STATE="driver-mismatch")
    done = subprocess.run(["nvidia-smi", "-L"], env=env, capture_output=True, text=True)
    assert done.returncode == 18
    assert done.stdout.startswith("Failed to initialize NVML: Driver/library version mismatch")


def test_stand_in_hang_does_not_return(tmp_path):
    (tmp_path / "gpu-state").write_text("hang")
    proc = subprocess.Popen(["sh", "-c", gpu.COMMAND], env=_env(STAND_IN.parent, tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        time.sleep(1.0)
        assert proc.poll() is None, "the hang state returned"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)


def test_missing_nvidia_smi_through_a_real_shell(tmp_path):
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    done = subprocess.run(["/bin/sh", "-c", gpu.COMMAND], env=env, capture_output=True, text=True)
    assert done.returncode == 127 and done.stdout == ""
    assert classify(done.returncode, done.stdout, done.stderr).kind == "no-gpu-tool"
