"""gpu-status health flags and the folded status views, end to end on the loopback fleet.

Real sshd processes on 127.0.1.[1-8] with the stand-in nvidia-smi in a
different state per host: healthy idle/busy nodes, two with health warnings
(ECC + remapped rows, a hot GPU), and two older drivers that refuse the newer
query fields (the fallback runs in the same SSH round trip). The per-host
state is restored when the module ends (the fleet is shared).
"""

from __future__ import annotations

import json

import pytest
from helpers import restore_path, run_cli, save_path, set_gpu_state
from rich.cells import cell_len

from cluster.testing import Fleet

STATES = {
    "127.0.1.1": "h100-busy",
    "127.0.1.2": "h100-idle",
    "127.0.1.3": "h100-idle",
    "127.0.1.4": "h100-ecc",
    "127.0.1.5": "a100-r470",
    "127.0.1.6": "geforce-not-supported",
    "127.0.1.7": "h100-idle",
    "127.0.1.8": "h100-hot",
}
WARNED = ["127.0.1.4", "127.0.1.8"]


@pytest.fixture(scope="module")
def views_fleet(fleet: Fleet, tmp_path_factory):
    """The session fleet with STATES applied; a roles file with role gpu."""
    paths = [p for a in STATES for p in (fleet.host_dir(a) / "bin" / "nvidia-smi",
                                         fleet.host_dir(a) / "gpu-state")]
    saved = {p: save_path(p) for p in paths}
    for address, state in STATES.items():
        set_gpu_state(fleet, address, state)
    tmp = tmp_path_factory.mktemp("views")
    known = {"known_hosts": str(tmp / "known_hosts")}
    roles = fleet.write_roles(tmp / "roles.yaml", {"gpu": list(STATES)}, extra={"ssh": known})
    relaxed = fleet.write_roles(tmp / "relaxed.yaml", {"gpu": list(STATES)},
                                extra={"ssh": known, "gpu": {"ecc_uncorrected_max": 5}})
    try:
        yield roles, relaxed, tmp
    finally:
        for path, state in saved.items():
            restore_path(path, state)


@pytest.fixture(scope="module")
def health_json(views_fleet):
    roles, _, _ = views_fleet
    code, out, err = run_cli("gpu-status", "--roles-file", str(roles), "--json")
    return code, json.loads(out), err


def test_health_warnings_in_json_keep_exit_code_zero(health_json):
    code, doc, err = health_json
    assert code == 0, err
    by_host = {h["host"]: h for h in doc["hosts"]}
    assert [h["host"] for h in doc["hosts"]] == list(STATES)
    assert all(h["ok"] for h in doc["hosts"])
    ecc = by_host["127.0.1.4"]["warnings"]
    assert {(w["gpu"], w["kind"]) for w in ecc} == {
        (3, "ecc-uncorrected"), (3, "remapped-rows-pending"), (3, "recovery-action")}
    assert by_host["127.0.1.4"]["gpus"][3]["warnings"] == ecc
    hot = by_host["127.0.1.8"]["warnings"][0]
    assert hot == {"gpu": 5, "kind": "temperature", "value": 91, "limit": 87}
    assert [a for a, h in by_host.items() if h["warnings"]] == WARNED
    assert doc["summary"]["warned"] == 2


def test_older_drivers_fall_back_in_the_same_round_trip(health_json):
    _, doc, _ = health_json
    by_host = {h["host"]: h for h in doc["hosts"]}
    legacy, base = by_host["127.0.1.5"], by_host["127.0.1.6"]
    assert (legacy["field_set"], base["field_set"]) == ("legacy", "base")
    assert len(legacy["gpus"]) == 4 and legacy["gpus"][0]["clock_event_reasons"] == 1
    assert legacy["gpus"][0]["slowdown_margin_c"] is None  # not asked: null, never a guess
    assert base["gpus"][0]["remapped_rows_pending"] is None
    assert by_host["127.0.1.2"]["field_set"] == "current"


def test_strict_exits_1_on_warnings_and_limits_come_from_roles_yaml(views_fleet):
    roles, relaxed, _ = views_fleet
    code, out, err = run_cli("gpu-status", "--roles-file", str(roles), "--strict",
                             "-H", "127.0.1.[2-4]")
    assert code == 1, err
    assert "warn" in out and "GPU 3: 2 uncorrected ECC errors" in out
    code, _, err = run_cli("gpu-status", "--roles-file", str(roles), "--strict", "-H", "127.0.1.2")
    assert code == 0, err
    code, out, err = run_cli("gpu-status", "--roles-file", str(relaxed), "--json",
                             "-H", "127.0.1.4")
    kinds = [w["kind"] for w in json.loads(out)["hosts"][0]["warnings"]]
    assert "ecc-uncorrected" not in kinds and "remapped-rows-pending" in kinds


def test_bad_gpu_limits_exit_2_before_connecting(views_fleet):
    _, _, tmp = views_fleet
    bad = tmp / "bad.yaml"
    bad.write_text("roles:\n  gpu: 127.0.1.1\ngpu:\n  slowdown_margin: 5\n")
    code, out, err = run_cli("gpu-status", "--roles-file", str(bad))
    assert code == 2 and out == ""
    assert "gpu.slowdown_margin: unknown key" in err and "Traceback" not in err


def test_fold_puts_warnings_first_and_folds_the_idle_hosts(views_fleet):
    roles, _, _ = views_fleet
    code, out, err = run_cli("gpu-status", "--roles-file", str(roles), "--fold")
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("│") and line[1] != " "]
    hosts = [row.split("│")[1].strip() for row in rows]
    assert hosts[:2] == WARNED
    assert "127.0.1.[2-3,7] (3)" in hosts
    assert hosts[-1] == "127.0.1.[2-3,7] (3)"  # the largest group last
    assert len(hosts) == len(STATES) - 2
    assert "8 hosts in 6 rows" in out


def test_state_filter_and_json_unchanged_by_view_options(views_fleet, health_json):
    roles, _, _ = views_fleet
    code, out, err = run_cli("gpu-status", "--roles-file", str(roles), "--state", "warn")
    assert code == 0, err
    rows = [line.split("│")[1].strip() for line in out.splitlines()
            if line.startswith("│") and line[1] != " "]
    assert rows == WARNED and "--state warn: 2 of 8 hosts" in out
    code, out, _ = run_cli("gpu-status", "--roles-file", str(roles), "--json", "--fold",
                           "--state", "ok")
    assert [h["host"] for h in json.loads(out)["hosts"]] == list(STATES)
    code, _, err = run_cli("gpu-status", "--roles-file", str(roles), "--expand", "--fold")
    assert code == 2 and "exclude each other" in err


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_narrow_terminal_hides_columns_never_host_names(views_fleet, columns):
    roles, _, _ = views_fleet
    code, out, err = run_cli("gpu-status", "--roles-file", str(roles), "--expand",
                             columns=columns)
    assert code == 0, err
    lines = out.splitlines()
    for address in STATES:
        assert any(line.startswith(f"│{address} ") for line in lines), (address, out)
    table = [line for line in lines if line[:1] in "┏┃┡│└"]
    assert all(cell_len(line) <= columns for line in table)
    hidden = " ".join(line for line in lines if line[:1] not in "┏┃┡│└")
    assert ("hidden: Procs" in hidden) is (columns < 160)
    assert "widen the terminal or use --json" in hidden


def test_check_and_sys_status_fold_too(views_fleet):
    roles, _, _ = views_fleet
    code, out, err = run_cli("check", "--roles-file", str(roles), "--fold")
    assert code == 0, err
    labels = [line.split("│")[1].strip() for line in out.splitlines()
              if line.startswith("│") and line[1] != " "]
    counted = sum(int(label.rsplit("(", 1)[1].rstrip(")")) if "(" in label else 1
                  for label in labels)
    assert counted == len(STATES) and len(labels) < len(STATES)
    code, out, err = run_cli("sys-status", "--roles-file", str(roles), "--fold", "--samples", "1",
                             "--state", "failed")
    assert code == 0, err
    assert "--state failed: 0 of 8 hosts" in out


def test_a_host_wider_than_the_terminal_is_never_cropped(views_fleet):
    roles, _, _ = views_fleet
    code, out, err = run_cli("check", "--roles-file", str(roles), "-H", "127.0.1.2", columns=8)
    assert code == 0, err
    assert any(line.startswith("│127.0.1.2 │") for line in out.splitlines()), out
    code, out, err = run_cli("gpu-status", "--roles-file", str(roles), "-H", "127.0.1.2",
                             columns=8)
    assert code == 0, err
    assert any(line.startswith("│127.0.1.2 │") for line in out.splitlines()), out
