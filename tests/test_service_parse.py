"""Service probe: command quoting, parser, classification; run through a real shell."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import cluster.service as service
from cluster.errors import InputError
from cluster.service import classify, command, parse, pgrep_pattern, validate_names

FIXTURES = Path(__file__).parent / "fixtures" / "service"

# case -> [(name, manager, active, state)], failure kind or None
EXPECTED = {
    "systemd-active": ([("nginx", "systemd", True, "active")], None),
    "systemd-failed": ([("sglang-router", "systemd", False, "failed")], "inactive"),
    "systemd-sglang-by-hand": ([("sglang", "process", True, "active")], None),
    "no-systemd": ([("sglang", "process", False, "inactive"),
                    ("vllm serve", "process", False, "inactive")], "inactive"),
    "pgrep-missing": ([("sglang", "process", False, "unknown")], "exit"),
    "systemctl-error": ([("nginx", "process", True, "active")], None),
    "unit-inactive-process-running": ([("sglang", "systemd", False, "inactive")], "inactive"),
}
CASES = sorted(p.stem for p in FIXTURES.glob("*.txt"))


def text(case: str) -> str:
    return (FIXTURES / f"{case}.txt").read_text()


def test_every_fixture_has_expectations():
    assert set(CASES) == set(EXPECTED)


@pytest.mark.parametrize("case", CASES)
def test_fixture(case):
    states = parse(text(case))
    expected, kind = EXPECTED[case]
    assert [(s.name, s.manager, s.active, s.state) for s in states] == expected
    result = classify(0, text(case), "", states)
    assert (result.kind if result else None) == kind
    docs = json.loads(json.dumps([s.to_json() for s in states]))
    assert all({"name", "manager", "active", "state", "processes"} <= set(d) for d in docs)


def test_systemd_fields():
    (nginx,) = parse(text("systemd-active"))
    assert nginx.unit == "nginx.service" and nginx.sub_state == "running"
    assert nginx.main_pid == 1207 and nginx.unit_file_state == "enabled"
    assert nginx.since == "Fri 2026-11-27 22:14:05 UTC" and nginx.restarts == 0
    assert [pid for pid, _ in nginx.processes] == [1207, 1208, 1209]
    assert nginx.describe == "active (running)"


def test_failed_unit_message_and_hint():
    (router,) = parse(text("systemd-failed"))
    assert router.main_pid is None and router.restarts == 5 and router.result == "exit-code"
    result = classify(0, text("systemd-failed"))
    assert result.message == "sglang-router: failed (failed)"
    assert "journalctl -u sglang-router.service" in result.hint


def test_unit_not_found_falls_back_to_processes_and_drops_own_shell():
    (sglang,) = parse(text("systemd-sglang-by-hand"))
    assert sglang.load_state == "not-found"
    assert [pid for pid, _ in sglang.processes] == [90412, 90518, 90519, 90520]
    assert all(service.MARKER not in cmd for _, cmd in sglang.processes)
    assert sglang.processes[1] == (90518, "sglang::scheduler_TP0")


def test_the_controllers_own_service_status_command_is_not_the_service():
    """Issue 14, item 15: on the rehearsal cluster `inv service-status sglang` itself matched."""
    stdout = text("no-systemd").replace(
        "@@svc-pgrep-exit 0",
        "4242 /usr/bin/python3 /usr/local/bin/inv service-status sglang --role decode\n@@svc-pgrep-exit 0", 1)
    assert "4242" in stdout
    assert parse(stdout)[0].processes == []
    kept = stdout.replace("inv service-status sglang", "sglang.launch_server --service-status-port 1")
    assert [pid for pid, _ in parse(kept)[0].processes] == [4242]


def test_only_own_shell_matching_means_not_running():
    states = parse(text("no-systemd"))
    assert states[0].processes == []
    assert "311 bash -c" in text("no-systemd")  # the only match is our own shell
    result = classify(0, text("no-systemd"))
    assert "sglang: inactive (no matching process)" in result.message
    assert "vllm serve: inactive" in result.message


def test_pgrep_missing_is_unknown_not_inactive():
    (state,) = parse(text("pgrep-missing"))
    assert state.warnings == ["pgrep failed (exit 127): sh: 1: pgrep: not found"]
    result = classify(0, text("pgrep-missing"))
    assert result.kind == "exit" and "pgrep" in result.hint


def test_systemctl_error_is_a_warning():
    (nginx,) = parse(text("systemctl-error"))
    assert nginx.warnings[0].startswith("systemctl show failed (exit 1): System has not")


def test_inactive_unit_with_stray_processes_warns():
    (state,) = parse(text("unit-inactive-process-running"))
    assert state.processes == [(90412, "python3 -m sglang.launch_server --port 30000")]
    assert "1 matching process(es) run outside it" in state.warnings[0]


def test_no_output():
    assert classify(255, "", "bash: -c: line 1: syntax error\n").kind == "exit"
    assert classify(0, "").kind == "bad-output"


@pytest.mark.parametrize("names, expected", [
    ("sglang", ["sglang"]),
    ("sglang, nginx,sglang", ["sglang", "nginx"]),
    (["vllm serve", "a;b"], ["vllm serve", "a;b"]),
])
def test_validate_names(names, expected):
    assert validate_names(names) == expected


@pytest.mark.parametrize("names", ["", "a,,b", ["x\ny"], ["a" * 300], []])
def test_validate_names_rejects(names):
    with pytest.raises(InputError):
        validate_names(names)


def test_pgrep_pattern_is_literal():
    assert pgrep_pattern("sglang.launch_server") == r"sglang\.launch_server"
    assert pgrep_pattern("a+b(c)|[d]$") == r"a\+b\(c\)\|\[d\]\$"


def test_every_name_is_quoted():
    hostile = "x'; touch /tmp/pwned; echo '"
    cmd = command([hostile])
    assert shlex.quote(hostile) in cmd
    assert shlex.quote(pgrep_pattern(hostile)) in cmd
    assert "\n" not in cmd  # one line: the marker filter relies on it


# ---------------------------------------------------------------------------
# Through a real shell
# ---------------------------------------------------------------------------


@pytest.fixture
def decoy():
    """A process whose command line holds a distinctive name, killed by pid afterwards."""
    name = f"svc-decoy-{os.getpid()}.x"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", name])
    yield name, proc.pid
    proc.kill()
    proc.wait(timeout=10)


def test_real_shell_without_systemd(tmp_path, decoy):
    name, pid = decoy
    hostile = "it's $(touch pwned)"
    cmd = command([name, hostile, "no-such-service-zz"], systemd_dir=str(tmp_path / "absent"))
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=tmp_path,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "pwned").exists()
    states = parse(done.stdout)
    assert [s.name for s in states] == [name, hostile, "no-such-service-zz"]
    assert [s.manager for s in states] == ["process"] * 3
    assert [p for p, _ in states[0].processes] == [pid]
    assert states[0].active and not states[1].active and not states[2].active
    assert classify(done.returncode, done.stdout, done.stderr, states).kind == "inactive"


def test_real_shell_with_a_systemd_stand_in(tmp_path, decoy):
    """systemd 'present' (a directory we choose) and a fake systemctl answering per unit."""
    name, _ = decoy
    (tmp_path / "systemd").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text(
        "#!/bin/sh\n"
        'for last; do :; done\n'
        'if [ "$last" = nginx ]; then\n'
        "  printf 'MainPID=1207\\nId=nginx.service\\nLoadState=loaded\\nActiveState=active\\n"
        "SubState=running\\n'\n"
        "else\n"
        "  printf 'MainPID=0\\nId=%s.service\\nLoadState=not-found\\nActiveState=inactive\\n"
        "SubState=dead\\n' \"$last\"\n"
        "fi\n"
    )
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    cmd = command(f"nginx,{name}", systemd_dir=str(tmp_path / "systemd"))
    done = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, env=env, timeout=30)
    nginx, decoyed = parse(done.stdout)
    assert (nginx.manager, nginx.active, nginx.main_pid, nginx.unit) == (
        "systemd", True, 1207, "nginx.service")
    assert (decoyed.manager, decoyed.load_state, decoyed.active) == ("process", "not-found", True)
    assert classify(done.returncode, done.stdout, done.stderr) is None
