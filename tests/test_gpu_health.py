"""GPU health flags: fields, the field-set fallback for older drivers, warnings, limits.

Parsed from the captured-format fixtures in ``cluster/testing/fixtures/gpu``
(``h100-ecc``, ``h100-hot``: warnings; ``a100-r470``: a driver without
``temperature.gpu.tlimit``; ``geforce-not-supported``: one without remapped
rows either) and through the stand-in nvidia-smi in a real shell.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

import cluster.gpu as gpu
import cluster.gpu_health as health
from cluster.errors import InventoryError

ROOT = Path(gpu.__file__).resolve().parent / "testing"
FIXTURES = ROOT / "fixtures" / "gpu"
STAND_IN = ROOT / "bin" / "nvidia-smi"


def parsed(case: str, limits: health.HealthLimits = health.DEFAULT_LIMITS) -> gpu.GpuStatus:
    return gpu.parse((FIXTURES / f"{case}.txt").read_text(), limits)


def kinds(status: gpu.GpuStatus) -> list[tuple[int | None, str]]:
    return [(w.gpu, w.kind) for w in status.warnings]


def test_ecc_remapped_rows_and_recovery_action_warn_on_their_gpu():
    status = parsed("h100-ecc")
    assert kinds(status) == [(3, "ecc-uncorrected"), (3, "remapped-rows-pending"),
                             (3, "recovery-action")]
    ecc, remapped, action = status.warnings
    assert (ecc.value, ecc.limit) == (2, 0)
    assert remapped.value is True and action.value == "Reset"
    assert status.gpus[3].warnings == status.warnings
    assert gpu.classify(0, (FIXTURES / "h100-ecc.txt").read_text(), "", status) is None
    assert gpu.summarize(status).warning_count == 3
    doc = json.loads(json.dumps(status.to_json()))
    assert doc["warnings"][0] == {"gpu": 3, "kind": "ecc-uncorrected", "value": 2, "limit": 0}
    assert doc["gpus"][3]["warnings"] == doc["warnings"]
    assert ecc.describe() == "GPU 3: 2 uncorrected ECC errors"


def test_hot_gpu_at_its_slowdown_temperature_with_thermal_slowdown():
    status = parsed("h100-hot")
    hot = status.gpus[5]
    assert (hot.temperature_c, hot.slowdown_margin_c, hot.clock_event_reasons) == (91, -4, 0x68)
    assert kinds(status) == [(5, "temperature"), (5, "clock-slowdown")]
    temperature, slowed = status.warnings
    assert (temperature.value, temperature.limit) == (91, 87)  # 91 + (-4): T.Limit 0 at 87
    assert slowed.value == ("hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown")
    assert temperature.describe() == "GPU 5: 91 °C, limit 87 °C"
    assert json.loads(json.dumps(slowed.to_json()))["value"] == list(slowed.value)


def test_idle_and_power_capped_clocks_are_not_warnings():
    assert health.reason_names(0x5) == ("gpu_idle", "sw_power_cap")
    gpu_row = replace(parsed("h100-idle").gpus[0], clock_event_reasons=0x5)
    assert health.judge(gpu_row) == []
    assert health.reason_names(None) == ()


def test_limits_move_the_thresholds():
    idle = parsed("h100-idle")  # margins 54..58 degrees C, no ECC errors
    warm = health.HealthLimits(slowdown_margin_c=56)
    warned = parsed("h100-idle", warm)
    assert {w.gpu for w in warned.warnings} == {g.index for g in idle.gpus
                                               if g.slowdown_margin_c <= 56}
    first = next(w for w in warned.warnings)
    assert first.limit == first.value + idle.gpus[first.gpu].slowdown_margin_c - 56
    assert parsed("h100-ecc", health.HealthLimits(ecc_uncorrected_max=2)).warnings[0].kind \
        == "remapped-rows-pending"
    absolute = parsed("a100-r470", health.HealthLimits(temperature_max_c=26))
    assert [(w.gpu, w.value, w.limit) for w in absolute.warnings] == [(1, 26, 26), (3, 26, 26)]
    only_thermal = health.HealthLimits(clock_event_reasons=("hw_thermal_slowdown",))
    assert parsed("h100-hot", only_thermal).warnings[1].value == ("hw_thermal_slowdown",)


def test_legacy_driver_fields_are_null_never_guessed():
    status = parsed("a100-r470")
    assert status.field_set == "legacy"
    assert len(status.gpus) == 4 and status.bad_lines == []
    first = status.gpus[0]
    assert first.clock_event_reasons == 0x1 and first.remapped_rows_pending is False
    assert first.slowdown_margin_c is None and first.recovery_action is None
    assert status.notices == ['Field "temperature.gpu.tlimit" is not a valid field to query.']
    assert status.other_notices() == [] and status.warnings == []
    assert gpu.classify(0, (FIXTURES / "a100-r470.txt").read_text(), "", status) is None
    assert status.to_json()["field_set"] == "legacy"


def test_base_field_set_for_a_driver_without_remapped_rows():
    status = parsed("geforce-not-supported")
    assert status.field_set == "base"
    (card,) = status.gpus
    assert (card.clock_event_reasons, card.remapped_rows_pending, card.slowdown_margin_c) == (
        None, None, None)
    assert len(status.notices) == 2 and status.warnings == []


def test_every_field_set_refused_is_an_exit_failure():
    stdout = (FIXTURES / "bad-field.txt").read_text()
    status = gpu.parse(stdout)
    assert status.gpus == [] and status.bad_lines == [] and status.field_set == "base"
    failure = gpu.classify(2, stdout, "", status)
    assert failure.kind == "exit" and "mig.mode.current" in failure.message


def test_unknown_field_set_marker_is_not_understood():
    row = (FIXTURES / "l40s.txt").read_text().splitlines()[0]
    status = gpu.parse(f"{gpu.FIELDS_MARKER} future\n{row}\n")
    assert status.bad_lines == [f"{gpu.FIELDS_MARKER} future"]
    assert len(status.gpus) == 1 and status.degraded


@pytest.mark.parametrize("cell, value", [
    ("Yes", True), ("No", False), ("[N/A]", None), ("maybe", None),
])
def test_yes_no_cells(cell, value):
    assert gpu._value(cell, gpu.YES_NO) is value


@pytest.mark.parametrize("cell, value", [
    ("0x0000000000000040", 0x40), ("0x1", 1), ("[N/A]", None), ("0", None), ("64", None),
])
def test_hex_cells_are_never_read_as_decimal(cell, value):
    assert gpu._value(cell, gpu.HEX) == value


# ---------------------------------------------------------------------------
# roles.yaml gpu:
# ---------------------------------------------------------------------------


def test_parse_limits_defaults_and_values():
    assert health.parse_limits(None) == health.DEFAULT_LIMITS
    limits = health.parse_limits({"ecc_uncorrected_max": 3, "slowdown_margin_c": 5,
                                  "temperature_max_c": 85,
                                  "clock_event_reasons": ["hw_slowdown"]})
    assert limits == health.HealthLimits(3, 5, 85, ("hw_slowdown",))
    assert health.parse_limits({"slowdown_margin_c": -2}).slowdown_margin_c == -2


@pytest.mark.parametrize("section, message", [
    ([1], "gpu: expected a mapping"),
    ({"ecc_max": 1}, "gpu.ecc_max: unknown key"),
    ({"ecc_uncorrected_max": "2"}, "gpu.ecc_uncorrected_max: expected a whole number, got '2'"),
    ({"ecc_uncorrected_max": True}, "expected a whole number, got True"),
    ({"temperature_max_c": -1}, "gpu.temperature_max_c: must be >= 0"),
    ({"clock_event_reasons": "hw_slowdown"}, "expected a list of reason names"),
    ({"clock_event_reasons": ["hot"]}, "unknown reason 'hot'"),
])
def test_parse_limits_rejects_bad_values_naming_the_key(section, message):
    with pytest.raises(InventoryError) as err:
        health.parse_limits(section, "fleet.yaml")
    assert str(err.value).startswith("fleet.yaml: ")
    assert message in str(err.value)


# ---------------------------------------------------------------------------
# The fallback through a real shell and the stand-in
# ---------------------------------------------------------------------------


def _env(tmp_path: Path, state: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_SIM")}
    env.update(PATH=f"{STAND_IN.parent}:{os.environ['PATH']}", CLUSTER_SIM_ROOT=str(tmp_path),
               CLUSTER_SIM_GPU_STATE=state)
    return env


def test_stand_in_refuses_fields_its_driver_does_not_know(tmp_path):
    env = _env(tmp_path, "a100-r470")
    refused = subprocess.run(["nvidia-smi", "--query-gpu=index,temperature.gpu.tlimit",
                              "--format=csv,noheader,nounits"], env=env, capture_output=True,
                             text=True)
    assert refused.returncode == 2 and refused.stderr == ""
    assert refused.stdout == 'Field "temperature.gpu.tlimit" is not a valid field to query.\n\n'
    legacy = ",".join(f for f, _, _ in gpu.FIELD_SETS["legacy"])
    answered = subprocess.run(["nvidia-smi", f"--query-gpu={legacy}"], env=env,
                              capture_output=True, text=True)
    assert answered.returncode == 0 and answered.stdout.count("\n") == 4


def test_command_falls_back_in_one_shell_run(tmp_path):
    done = subprocess.run(["sh", "-c", gpu.COMMAND], env=_env(tmp_path, "geforce-not-supported"),
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0
    status = gpu.parse(done.stdout)
    assert status.field_set == "base" and len(status.gpus) == 1 and len(status.processes) == 1
    assert gpu.classify(done.returncode, done.stdout, done.stderr, status) is None
