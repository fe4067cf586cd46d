"""System probe (vmstat + load + memory): command, parser, summary, classification.

Fixtures under tests/fixtures/vmstat/ are the stdout of ``cluster.system.command``
(``local-procps-4.0.2``, ``wide-timestamp`` and ``active-inactive`` were captured
on the CI machine; the others are built in the procps layouts of the reference
sheet) or plain vmstat output (``repeated-header``, ``wide-timestamp``,
``active-inactive``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import cluster.system as system
from cluster.errors import InputError
from cluster.system import classify, command, parse, summarize

FIXTURES = Path(__file__).parent / "fixtures" / "vmstat"

# case -> (interval samples, last column, failure kind or None)
EXPECTED = {
    "local-procps-4.0.2": (3, "st", None),
    "procps-3.2-16col": (2, "wa", None),
    "procps-3.3-17col": (2, "st", None),
    "procps-4.0.5-18col": (3, "gu", None),
    "seed-2-15": (15, "st", None),
    "repeated-header": (24, "st", None),
    "wide-timestamp": (2, "gu", None),
    "active-inactive": (2, "st", None),
    "german-groups": (2, "st", None),
    "german-columns": (0, None, "bad-output"),
    "malformed": (2, "st", None),
}
CASES = sorted(p.stem for p in FIXTURES.glob("*.txt"))


def text(case: str) -> str:
    return (FIXTURES / f"{case}.txt").read_text()


def data_rows(case: str) -> list[list[int]]:
    """The fixture's well-formed numeric vmstat rows, straight from the file."""
    rows = []
    for line in text(case).split("@@")[0].splitlines():
        tokens = line.split()
        if tokens and all(t.isdigit() for t in tokens[:12]) and len(tokens) >= 16:
            rows.append([int(t) for t in tokens if t.isdigit()])
    return rows


def test_every_fixture_has_expectations():
    assert set(CASES) == set(EXPECTED)


@pytest.mark.parametrize("case", CASES)
def test_fixture(case):
    n_samples, last_column, kind = EXPECTED[case]
    status = parse(text(case))
    assert len(status.samples) == n_samples
    assert (status.columns[-1] if status.columns else None) == last_column
    result = classify(0, text(case), "", status)
    assert (result.kind if result else None) == kind
    json.dumps(status.to_json())  # serialisable whatever the input


@pytest.mark.parametrize("case", [c for c in CASES if EXPECTED[c][2] is None and c != "malformed"])
def test_since_boot_row_dropped_and_values_mapped(case):
    status = parse(text(case))
    rows = data_rows(case)
    assert status.boot_row_dropped
    assert len(status.samples) == len(rows) - 1
    # the boot row is gone: sample k is file row k+1, column by column
    for sample, row in zip(status.samples, rows[1:]):
        assert sample.r == row[0] and sample.b == row[1]
        assert sample.get(status.columns[3]) == row[3]
        assert sample.get("in") == row[status.columns.index("in")]
        assert sample.id == row[status.columns.index("id")]


def test_17_and_18_columns_map_by_name():
    old = parse(text("procps-3.3-17col"))
    new = parse(text("procps-4.0.5-18col"))
    assert len(old.columns) == 17 and "gu" not in old.columns
    assert len(new.columns) == 18 and new.columns[-1] == "gu"
    assert all(s.gu is None for s in old.samples)
    assert all(s.gu == 0 for s in new.samples)
    assert new.samples[0].us == 25 and new.samples[0].cs == 173965
    assert new.samples[0].free == 1706200944  # overflowing the 6-wide column


def test_16_columns_without_st_and_old_meminfo():
    status = parse(text("procps-3.2-16col"))
    assert "st" not in status.columns and all(s.st is None for s in status.samples)
    assert status.mem_available_kib is None
    # old kernels: used = total - free - buffers - cached
    expected = status.mem_total_kib - status.mem_free_kib - status.buffers_kib - status.cached_kib
    assert status.mem_used_kib == expected
    assert summarize(status).st is None


def test_repeated_header_is_skipped():
    status = parse(text("repeated-header"))
    assert text("repeated-header").count(" r  b   swpd") == 2
    assert status.bad_lines == [] and len(status.samples) == 24
    assert [s.r for s in status.samples] == [r[0] for r in data_rows("repeated-header")[1:]]


def test_timestamp_columns():
    status = parse(text("wide-timestamp"))
    assert status.columns[-1] == "gu"
    assert [s.timestamp for s in status.samples] == ["2026-11-28 00:20:20", "2026-11-28 00:20:21"]
    assert status.samples[0].to_json()["timestamp"] == "2026-11-28 00:20:20"


def test_active_inactive_layout():
    status = parse(text("active-inactive"))
    assert status.samples[0].inact == 332616 and status.samples[0].active == 120496
    assert status.samples[0].buff is None


def test_german_header_fails_cleanly():
    status = parse(text("german-columns"))
    assert status.samples == [] and status.columns == []
    assert any("frei" in line for line in status.bad_lines)
    result = classify(0, text("german-columns"), "", status)
    assert result.kind == "bad-output" and "non-C locale" in result.message
    # the rest of the output is still read
    assert status.load == (0.1, 0.2, 0.3) and status.cpus == 208


def test_malformed_rows_go_to_bad_lines():
    status = parse(text("malformed"))
    assert [s.r for s in status.samples] == [45, 44]
    assert " 1  0      0 2402".strip() in status.bad_lines
    assert "Segmentation fault" in status.bad_lines
    assert any("abc" in line for line in status.bad_lines)
    assert status.load is None and "not a load average" in status.bad_lines
    assert status.mem_total_kib == 24683656 and status.cpus == 16


def test_load_memory_and_summary():
    status = parse(text("procps-4.0.5-18col"))
    assert status.load == (11.82, 10.97, 9.40)
    assert status.cpus == 208
    assert status.mem_total_kib == 2113523012
    assert status.mem_used_kib == 2113523012 - 1948233100
    summary = summarize(status)
    us = [s.us for s in status.samples]
    assert summary.samples == 3
    assert summary.us == pytest.approx(sum(us) / 3, abs=0.05)
    assert summary.r == pytest.approx(sum(s.r for s in status.samples) / 3, abs=0.05)
    assert summary.gu == 0 and summary.swap_used_kib == 0
    doc = summary.to_json()
    assert doc["in"] == summary.in_ and doc["load"] == [11.82, 10.97, 9.4]


def test_seed_vmstat_2_15_is_expressible():
    assert "vmstat -n 2 16" in command(samples=15, interval=2)
    assert system.duration_s(15, 2) == 30
    assert len(parse(text("seed-2-15")).samples) == 15


def test_command_shape():
    cmd = command()
    assert cmd.startswith("export LC_ALL=C;")
    assert "vmstat -n 1 3" in cmd and " -y" not in cmd
    assert cmd.rstrip().endswith("exit $rc")
    for marker in (system.LOADAVG_MARKER, system.MEMINFO_MARKER, system.NPROC_MARKER):
        assert f"echo '{marker}'" in cmd


@pytest.mark.parametrize("samples, interval",
                         [(0, 1), (-1, 1), (1, 0), (True, 1), ("3", 1), (2.5, 1)])
def test_command_rejects_bad_options(samples, interval):
    with pytest.raises(InputError):
        command(samples, interval)


def test_failures():
    missing = classify(127, "", "bash: line 1: vmstat: command not found\n")
    assert missing.kind == "exit" and missing.exit_code == 127 and "procps" in missing.hint
    other = classify(1, "", "vmstat: bad option\n")
    assert other.kind == "exit" and "bad option" in other.message
    assert classify(0, "").kind == "bad-output"
    assert "no vmstat header" in classify(0, "hello\n").message


@pytest.mark.skipif(not shutil.which("vmstat"), reason="vmstat not installed here")
def test_real_command_runs_and_parses():
    done = subprocess.run(["sh", "-c", command(samples=1, interval=1)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    status = parse(done.stdout)
    assert classify(done.returncode, done.stdout, done.stderr, status) is None
    assert len(status.samples) == 1 and status.bad_lines == []
    assert status.mem_total_kib and status.mem_total_kib > 0
    assert status.load is not None and status.cpus and status.cpus >= 1
    sample = status.samples[0]
    assert sum(sample.get(c) or 0 for c in ("us", "sy", "id", "wa", "st", "gu")) in range(97, 104)
