"""cluster.detach: the launch / identity / stop / status shell text, run for real on this
machine (``sh`` and ``bash``), and its parsers on captured output, broken output included."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest
from helpers import process_alive

from cluster import detach
from cluster.detach import Identity, Job

MARKER = "CLUSTER_TEST_RUN_ID"


def run(script: str, shell: str = "sh") -> subprocess.CompletedProcess[str]:
    return subprocess.run([shell, "-s"], input=script, capture_output=True, text=True, timeout=60)


def job(tmp_path, slot="srv-127.0.0.1-30000", run_id="20260101-000000-ab12", argv=("sleep", "300")) -> Job:
    return Job(run_dir=str(tmp_path / "run"), slot=slot, run_id=run_id, argv=tuple(argv), marker_env=MARKER)


def start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def launch(j: Job, shell: str = "sh", **kwargs) -> Identity:
    result = run(detach.launch_script(j, **kwargs), shell)
    assert result.returncode == 0, result.stderr
    pid, start = detach.parse_launch(result.stdout)
    return Identity(pid, start, j.run_id)


@pytest.fixture
def reap():
    """Stops what a test started, even when it fails."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.killpg(pid, 9)
        except OSError:
            pass


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_launch_records_first_then_identity_and_refuses_a_second(tmp_path, reap, shell):
    j = job(tmp_path)
    ident = launch(j, shell, doc='{"role": "decode"}', prelude=["export SECRET_X=s3cr3t"])
    reap.append(ident.pgid)
    assert os.getpgid(ident.pgid) == ident.pgid
    assert ident.start == start_time(ident.pgid)
    assert detach.parse_pid_file(open(j.pid_path).read()) == ident
    with open(f"/proc/{ident.pgid}/environ", "rb") as f:
        assert f"{MARKER}={j.run_id}".encode() in f.read().split(b"\0")
    record = open(j.record_path).read()
    assert '"state": "running"' in record and f'"pid": {ident.pgid}' in record and '"role": "decode"' in record
    assert "s3cr3t" not in record
    # 0600 files in a 0700 dir
    assert stat.S_IMODE(os.stat(j.run_dir).st_mode) == 0o700
    for name in os.listdir(j.run_dir):
        assert stat.S_IMODE(os.stat(os.path.join(j.run_dir, name)).st_mode) == 0o600, name
    # the slot is taken, whatever the run id: refused before any record is written
    other = Job(j.run_dir, j.slot, "20260101-000001-cd34", ("sleep", "300"), MARKER)
    second = run(detach.launch_script(other), shell)
    assert second.returncode == detach.EXIT_ALREADY_RUNNING
    assert j.run_id in second.stderr and str(ident.pgid) in second.stderr
    assert not os.path.exists(other.record_path)


def test_a_failing_prelude_removes_the_record_and_starts_nothing(tmp_path):
    j = job(tmp_path)
    out = run(detach.launch_script(j, prelude=["exit 7"]))
    assert out.returncode == 7 and not os.path.exists(j.record_path) and not os.path.exists(j.pid_path)


def test_record_says_starting_before_the_process_exists(tmp_path, reap):
    j = job(tmp_path)
    # The prelude runs after the record is written: it sees it, with state starting.
    ident = launch(j, prelude=[f"cp {j.record_path} {j.run_dir}/seen"])
    reap.append(ident.pgid)
    seen = open(f"{j.run_dir}/seen").read()
    assert '"state": "starting"' in seen and '"pid": null' in seen and j.run_id in seen


def test_pid_reuse_is_refused_and_the_unrelated_process_survives(tmp_path):
    # An unrelated job of the same user now holds the recorded process group id.
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        recorded = Identity(other.pid, start_time(other.pid) - 1, "20260101-000000-ab12")
        out = run(detach.stop_script([recorded], 1, MARKER))
        assert out.returncode == 0
        assert detach.parse_stop(out.stdout)[other.pid] == detach.GroupStop(verdict=detach.REUSED)
        # no start time recorded and no run-id marker on it: not ours either
        unknown = Identity(other.pid, None, "20260101-000000-ab12")
        out = run(detach.stop_script([unknown], 1, MARKER))
        assert detach.parse_stop(out.stdout)[other.pid].verdict == detach.REUSED
        assert process_alive(other.pid) and other.poll() is None
        check = run(detach.functions(MARKER) + "\n" + "\n".join(detach.check_lines([recorded])))
        assert detach.parse_verdicts(check.stdout) == {other.pid: detach.REUSED}
    finally:
        other.kill()
        other.wait()


def test_verified_stop_then_status(tmp_path, reap):
    j = job(tmp_path, argv=("sh", "-c", "sleep 300 & sleep 300; wait"))
    ident = launch(j)
    reap.append(ident.pgid)
    found = detach.parse_status(run(detach.status_script(j.run_dir, marker_env=MARKER)).stdout)
    assert [(f.state, f.identity) for f in found] == [(detach.RUNNING, ident)]
    out = run(detach.stop_script([ident], 5, MARKER))
    stopped = detach.parse_stop(out.stdout)[ident.pgid]
    assert out.returncode == 0 and stopped.verdict == detach.OK and stopped.was_running
    assert ident.pgid in stopped.pids and len(stopped.pids) >= 3 and stopped.how == "term"
    assert not any(process_alive(p) for p in stopped.pids)
    found = detach.parse_status(run(detach.status_script(j.run_dir, marker_env=MARKER)).stdout)
    assert [f.state for f in found] == [detach.VANISHED]
    # stopping again: gone, nothing signalled
    again = detach.parse_stop(run(detach.stop_script([ident], 1, MARKER)).stdout)
    assert again[ident.pgid] == detach.GroupStop(verdict=detach.GONE)


def test_orphans_of_a_dead_leader_are_found_by_their_marker(tmp_path, reap):
    # The leader exits at once, leaving a child in its group (a scheduler left behind).
    j = job(tmp_path, argv=("sh", "-c", "sleep 300 & exit 0"))
    ident = launch(j)
    reap.append(ident.pgid)
    deadline = time.monotonic() + 10
    while process_alive(ident.pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    out = detach.parse_stop(run(detach.stop_script([ident], 5, MARKER)).stdout)[ident.pgid]
    assert out.verdict == detach.OK and out.pids and ident.pgid not in out.pids
    assert not any(process_alive(p) for p in out.pids)


def test_an_execd_command_is_the_group_leader_itself(tmp_path, reap):
    j = Job(str(tmp_path / "run"), "s-1", "20260101-000000-ab12", ("sleep", "301"), MARKER, exit_code=False)
    ident = launch(j)
    reap.append(ident.pgid)
    with open(f"/proc/{ident.pgid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:2] == [b"sleep", b"301"]
    assert ident.start == start_time(ident.pgid)
    stopped = detach.parse_stop(run(detach.stop_script([ident], 5, MARKER)).stdout)[ident.pgid]
    assert stopped.was_running and stopped.pids == (ident.pgid,)


def test_exit_code_and_not_started(tmp_path):
    j = job(tmp_path, argv=("sh", "-c", "exit 3"))
    ident = launch(j)
    deadline = time.monotonic() + 10
    while not os.path.exists(j.exit_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    # a record whose launch never got to start anything
    never = job(tmp_path, slot="other-1", run_id="20260101-000000-ffff")
    with open(never.record_path, "w") as f:
        f.write('{"state": "starting"}\n')
    found = {f.path: f for f in detach.parse_status(run(detach.status_script(j.run_dir, marker_env=MARKER)).stdout)}
    assert (found[j.record_path].state, found[j.record_path].code) == (detach.EXITED, 3)
    assert found[j.record_path].identity == ident
    assert found[never.record_path].state == detach.NOT_STARTED
    # prune: the exited one goes; the young never-started one stays (a launch in progress?)
    pruned = run(detach.prune_script(j.run_dir, marker_env=MARKER))
    assert detach.parse_pruned(pruned.stdout) == [j.record_path]
    assert os.path.exists(j.log) and not os.path.exists(j.pid_path) and not os.path.exists(j.exit_path)
    assert os.path.exists(never.record_path)
    old = time.time() - 3600
    os.utime(never.record_path, (old, old))
    assert detach.parse_pruned(run(detach.prune_script(j.run_dir, marker_env=MARKER)).stdout) == [never.record_path]


def test_run_dir_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    j = Job(str(blocker / "run"), "s-1", "20260101-000000-ab12", ("true",), MARKER)
    out = run(detach.launch_script(j))
    assert out.returncode == detach.EXIT_RUN_DIR and "cannot create run dir" in out.stderr


def test_an_existing_run_dir_keeps_its_mode(tmp_path, reap):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # a team's run dir: not narrowed, but the files are 0600
    j = Job(str(shared), "s-1", "20260101-000000-ab12", ("sleep", "300"), MARKER)
    reap.append(launch(j).pgid)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777
    assert stat.S_IMODE(os.stat(j.record_path).st_mode) == 0o600


# --------------------------------------------------------------------------- pure


def test_names_are_checked():
    with pytest.raises(ValueError):
        Job("/r", "a b", "r1", ("x",))
    with pytest.raises(ValueError):
        Job("/r", "s", "r;1", ("x",))
    with pytest.raises(ValueError):
        Job("/r", "s", "r1", ())
    with pytest.raises(ValueError):
        Job("/r", "s", "r1", ("x",), marker_env="A-B")
    with pytest.raises(ValueError):
        Identity(1, 5, "r1")
    with pytest.raises(ValueError):
        detach.status_script("/r", "a;b")


def test_files_carry_slot_and_run_id():
    j = Job("~/.cluster/run/", "sglang-decode-h-1", "20260101-000000-ab12", ("x",))
    assert j.record_path == "~/.cluster/run/sglang-decode-h-1@20260101-000000-ab12.json"
    assert j.pid_path.endswith("@20260101-000000-ab12.pid") and j.log.endswith("@20260101-000000-ab12.log")
    assert j.lock_path == "~/.cluster/run/sglang-decode-h-1.lock"
    script = detach.launch_script(j)
    assert 'exec 9>>"$HOME"/.cluster/run/sglang-decode-h-1.lock' in script  # the host's home, not ours


def test_parsers_on_captured_and_broken_output():
    assert detach.parse_launch("noise\nDETACHED 123 456\n") == (123, 456)
    assert detach.parse_launch("DETACHED 123 null\n") == (123, None)
    assert detach.parse_launch("DETACHED x\n") is None and detach.parse_launch("") is None
    assert detach.parse_pid_file("10 20 r-1\n") == Identity(10, 20, "r-1")
    assert detach.parse_pid_file("10 - r-1") == Identity(10, None, "r-1")
    for bad in ("", "1 2 r", "x 2 r", "10 20", "10 20 r;1", "10 20 r 4"):
        assert detach.parse_pid_file(bad) is None, bad
    stop = ("VERDICT 10 ok\nPIDS 10 10 11\nKILL 10 11\nDONE 10 kill 31\nALIVE 10 11\n"
            "VERDICT 20 reused\nPIDS 20 20\nVERDICT 30 gone\nVERDICT 40 maybe\nPIDS x\nDONE 10\n")
    parsed = detach.parse_stop(stop)
    assert parsed[10] == detach.GroupStop("ok", (10, 11), (11,), "kill", 31, (11,))
    assert parsed[10].pids == (10, 11) and parsed[10].alive == (11,) and parsed[10].how == "kill"
    assert parsed[20].verdict == "reused" and parsed[30] == detach.GroupStop("gone")
    assert 40 not in parsed
    status = ("@@record /r/a@1.json\njson {\"x\": 1}\npid 10 20 1\nstate running\n"
              "@@record /r/b@2.json\njson\nstate exited 7\n"
              "@@record /r/c@3.json\nstate weird\n"
              "@@record /r/d@4.json\n")  # cut off
    found = detach.parse_status(status)
    assert [(f.path, f.state, f.code) for f in found] == [
        ("/r/a@1.json", "running", None), ("/r/b@2.json", "exited", 7),
        ("/r/c@3.json", "vanished", None), ("/r/d@4.json", "vanished", None)]
    assert found[0].identity == Identity(10, 20, "1") and found[1].identity is None


def test_scripts_are_posix_sh():
    # dash -n: parse only; the stop/status/launch text must not need bash.
    j = Job("/tmp/x", "s-1", "r-1", ("true",))
    for script in (detach.launch_script(j), detach.stop_script([Identity(5, 6, "r-1")]),
                   detach.status_script("/tmp/x"), detach.prune_script("/tmp/x", keep=["/tmp/x/a@b.json"])):
        checked = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
