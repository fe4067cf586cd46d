"""Detached jobs, pure parts: names, records and the controller store, the launch / status /
stop shell text (also run by this machine's ``sh`` in a temp dir: no SSH), the status
parser on captured output (broken output included), states and failure kinds, and the
folded ``inv jobs`` table."""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cluster import detach, jobs
from cluster.errors import InputError, ParameterError
from cluster.hosts import Host
from cluster.render import jobs as jobs_render
from cluster.render.fold import ViewOptions
from cluster.result import Failure, Outcome, Report

FIXTURE = Path(__file__).parent / "fixtures" / "jobs" / "status.txt"
HOST = Host("10.8.0.81")
RUN = "20261204-113230-a2ab"


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a", "bench", "Bench-2.final_x", "1st", "a" * 64, "x.y-z_0"])
def test_good_names(name):
    assert jobs.check_name(name) == name


@pytest.mark.parametrize("name", ["", None, "-rf", "--help", ".hidden", "..", "../x", "a/b", "a b",
                                  "x;id", "$(id)", "`id`", "é", "a" * 65, "a\nb", "'q'", "_x", "a*"])
def test_bad_names_are_parameter_errors(name):
    with pytest.raises(ParameterError) as info:
        jobs.check_name(name, "job")
    assert info.value.parameter == "job"
    assert info.value.naming("--job").startswith("--job")


@pytest.mark.parametrize("command", ["", "   ", None, "echo\0x"])
def test_bad_commands(command):
    with pytest.raises(ParameterError):
        jobs.check_command(command)


def test_host_slugs_keep_hosts_apart_on_a_shared_home():
    assert jobs.host_slug(HOST) == "10.8.0.81"
    assert jobs.host_slug(Host("10.8.0.81", port=2222)) == "10.8.0.81-2222"
    assert jobs.host_slug(Host("gpu01.example", user="op")) == "gpu01.example"
    assert jobs.host_slug(Host("we:ird/../x")) == "we_ird_.._x"
    assert "/" not in jobs.host_slug(Host("a/b"))
    assert jobs.slot_of("bench", HOST) == "bench--10.8.0.81"


# --------------------------------------------------------------------------- records


def entry(name: str = "bench", command: str = "sleep 300") -> jobs.JobHost:
    return jobs.new_entry(name, command, HOST, RUN)


def test_entry_files_are_detach_files_named_after_job_host_and_run():
    e = entry()
    assert e.log_path == f"~/.cluster/jobs/bench--10.8.0.81@{RUN}.log"
    assert e.record_path == f"~/.cluster/jobs/bench--10.8.0.81@{RUN}.json"
    assert e.detached.marker_env == jobs.MARKER_ENV
    assert e.identity is None
    e.pid, e.start_time = 4242, 99
    assert e.identity == detach.Identity(4242, 99, RUN)


def test_entry_round_trip_keeps_records_free_of_observations():
    e = entry()
    e.pid, e.start_time, e.started_at = 4242, 99, 1.5
    e.state, e.exit_code, e.last_log = jobs.EXITED, 3, "bye"
    doc = e.to_doc()
    assert "state" not in doc and "last_log" not in doc and "exit_code" not in doc
    back = jobs.JobHost.from_doc({**doc, "from_a_newer_writer": 1})
    assert (back.pid, back.start_time, back.target, back.command) == (4242, 99, "10.8.0.81", "sleep 300")
    assert back.state == jobs.STARTING
    row = e.to_json()
    assert row["job"] == "bench" and row["exit_code"] == 3 and "target" not in row
    assert row["log_path"].endswith(".log")


@pytest.mark.parametrize("doc", [
    {"target": "10.8.0.81", "name": "../x", "run_id": RUN, "command": "x"},
    {"target": "10.8.0.81", "name": "ok", "run_id": "a b", "command": "x"},
    {"target": 5, "name": "ok", "run_id": RUN, "command": "x"},
    {"name": "ok", "run_id": RUN, "command": "x"},
    "not an object",
])
def test_bad_entries_are_refused(doc):
    with pytest.raises((ValueError, ParameterError)):
        jobs.JobHost.from_doc(doc)


def test_job_records_on_the_controller(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTER_STATE_DIR", str(tmp_path / "state"))
    assert jobs.load_job("bench") is None and jobs.list_jobs() == []
    job = jobs.Job("bench", "sleep 300", 1.0, [entry()])
    path = jobs.save_job(job)
    assert path == tmp_path / "state" / "jobs" / "bench.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    loaded = jobs.load_job("bench")
    assert loaded is not None and loaded.hosts[0].run_id == RUN
    assert [j.name for j in jobs.list_jobs()] == ["bench"]
    assert jobs.Job("bench", "x", 1.0, []).hosts == []
    jobs.save_job(jobs.Job("bench", "x", 1.0, []))  # nothing left: the record goes
    assert not path.exists()


@pytest.mark.parametrize("text", ["{not json", "[]", '{"name": "x"}', '{"name": "../x", "command": "c", '
                                  '"created_at": 1, "hosts": []}', '{"name": "x", "command": "c", '
                                  '"created_at": 1, "hosts": [{"name": "x"}]}'])
def test_a_broken_controller_record_names_its_file(tmp_path, monkeypatch, text):
    monkeypatch.setenv("CLUSTER_STATE_DIR", str(tmp_path))
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "x.json").write_text(text)
    with pytest.raises(InputError, match="x.json"):
        jobs.load_job("x")


def test_record_updates_are_serialised(tmp_path, monkeypatch):
    """A second writer waits for the first (flock): without the lock it would read the
    record before the first wrote it, and the first's write would drop its entry."""
    monkeypatch.setenv("CLUSTER_STATE_DIR", str(tmp_path))
    inside, release = threading.Event(), threading.Event()

    def add(host: str, wait: bool):
        def change(job):
            if wait:
                inside.set()
                release.wait(10)
            job = job or jobs.Job("x", "c", 1.0)
            job.hosts.append(jobs.new_entry("x", "c", Host(host), RUN))
            return job
        return change

    first = threading.Thread(target=jobs.update_job, args=("x", add("10.8.0.81", True)))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=jobs.update_job, args=("x", add("10.8.0.82", False)))
    second.start()
    second.join(2)  # with the lock it is still waiting here; without, it has written already
    release.set()
    first.join(10)
    second.join(10)
    assert sorted(e.target for e in jobs.load_job("x").hosts) == ["10.8.0.81", "10.8.0.82"]


def test_an_unwritable_state_dir_is_bad_input(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("CLUSTER_STATE_DIR", str(tmp_path / "file"))
    with pytest.raises(InputError, match="CLUSTER_STATE_DIR"):
        jobs.check_state_dir()


def test_entries_match_hosts_by_address_and_port():
    other = jobs.new_entry("bench", "x", Host("10.8.0.82", port=2222), RUN)
    job = jobs.Job("bench", "x", 1.0, [entry(), other])
    assert job.entries([Host("10.8.0.81", user="op", port=22)]) == [job.hosts[0]]
    assert job.entries([Host("10.8.0.82")]) == []
    assert job.entries([Host("10.8.0.82", port=2222)]) == [other]
    sources = jobs.log_sources(job, [Host("10.8.0.81", user="op")])
    assert [(str(s.host), s.paths) for s in sources] == [("op@10.8.0.81", (job.hosts[0].log_path,))]


# --------------------------------------------------------------------------- shell text


def test_the_launch_refuses_a_held_name_before_writing_its_record():
    script = jobs.launch_script(entry(command="echo \"it's $HOME\"; $(touch /tmp/x)"))
    held = script.index(f"exit {jobs.EXIT_HELD}")
    assert script.index("flock -n 9") < held < script.index(r'\"state\": \"starting\"')
    # the command is one quoted word of the launch (the login shell gets it as $1)
    assert shlex.quote("echo \"it's $HOME\"; $(touch /tmp/x)") in script


def test_stop_prunes_records_only_when_nothing_survived():
    seen = jobs.parse_status(FIXTURE.read_text())
    script = jobs.stop_command(seen, 5)
    assert script.index("kill -TERM") < script.index('if [ "$rc" = 0 ]') < script.index("rm -f")
    assert script.rstrip().endswith('exit "$rc"')


def run_sh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, timeout=60)


def test_launch_status_and_stop_run_by_this_machines_shell(tmp_path):
    """The scripts as a host runs them (sh -s), in a temp run dir: no SSH."""
    run_dir = str(tmp_path / "jobs")
    live = jobs.new_entry("live", "echo up; sleep 300", HOST, RUN, run_dir)
    ends = jobs.new_entry("ends", "echo bye; exit 3", HOST, RUN, run_dir)
    launched = {}
    for e in (live, ends):
        result = run_sh(jobs.launch_script(e))
        assert result.returncode == 0, result.stderr
        launched[e.name] = detach.parse_launch(result.stdout)
    try:
        again = run_sh(jobs.launch_script(jobs.new_entry("live", "true", HOST, "run2", run_dir)))
        assert again.returncode == detach.EXIT_ALREADY_RUNNING
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = {o.entry.name: o for o in jobs.parse_status(run_sh(jobs.status_command(run_dir, "*")).stdout)}
            if seen["ends"].found.state == jobs.EXITED and seen["live"].last_log == "up":
                break
            time.sleep(0.05)
        assert seen["live"].found.state == jobs.RUNNING and seen["live"].found.identity.pgid == launched["live"][0]
        assert seen["ends"].found.code == 3 and seen["ends"].last_log == "bye"
        held = run_sh(jobs.launch_script(jobs.new_entry("ends", "true", HOST, "run2", run_dir)))
        assert held.returncode == jobs.EXIT_HELD and "ended run" in held.stderr

        stopped = run_sh(jobs.stop_command(list(seen.values()), 5))
        assert stopped.returncode == 0, stopped.stderr
        groups = detach.parse_stop(stopped.stdout)
        assert groups[launched["live"][0]].was_running and groups[launched["live"][0]].alive == ()
        left = sorted(p.name for p in Path(run_dir).iterdir())
        assert [n for n in left if n.endswith((".json", ".pid", ".exit"))] == []
        assert len([n for n in left if n.endswith(".log")]) == 2
    finally:
        for pid, _ in launched.values():
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------- status parser


def test_status_on_captured_output():
    seen = {o.entry.name: o for o in jobs.parse_status(FIXTURE.read_text())}
    assert sorted(seen) == ["bench", "fails", "killed"]
    bench, fails, killed = seen["bench"], seen["fails"], seen["killed"]
    assert bench.found.state == jobs.RUNNING and bench.runtime_s == 2.0 and bench.last_log == "step 1"
    assert bench.found.identity == detach.Identity(5586, 3794613, RUN)
    assert fails.found.state == jobs.EXITED and fails.found.code == 3 and fails.runtime_s == 0.0
    assert killed.found.state == jobs.VANISHED and killed.runtime_s is None and killed.last_log == ""


@pytest.mark.parametrize("cut", [0, 1, 3, 5, 200, 600, 1400])
def test_status_on_cut_off_output_never_raises(cut):
    text = FIXTURE.read_text()[:cut]
    for observed in jobs.parse_status(text):
        assert observed.found.state in (jobs.RUNNING, jobs.EXITED, jobs.VANISHED, detach.NOT_STARTED,
                                        detach.REUSED)


def test_status_with_garbage_and_an_unreadable_record():
    text = ("@@now nope\nrandom line\n@@record /x/a--h@r1.json\njson {broken\nstate running\n"
            "times - -\nlog\n@@record /x/b--h@r1.json\nstate exited notanumber\ntimes 10 5\n")
    seen = jobs.parse_status(text)
    assert [o.entry for o in seen] == [None, None]
    assert seen[0].runtime_s is None and seen[1].found.code is None and seen[1].runtime_s is None


def observed(state: str, code: int | None = None) -> jobs.Observed:
    found = detach.Found("/h/.cluster/jobs/bench--10.8.0.81@r.json", "", detach.Identity(77, 5, RUN),
                         state, code)
    return jobs.Observed(found, None, 12.0, "last")


@pytest.mark.parametrize("state, code, shown, kind", [
    (detach.RUNNING, None, jobs.RUNNING, None),
    (detach.EXITED, 0, jobs.EXITED, None),
    (detach.EXITED, 3, jobs.EXITED, jobs.JOB_EXITED),
    (detach.VANISHED, None, jobs.VANISHED, jobs.JOB_VANISHED),
    (detach.REUSED, None, jobs.VANISHED, jobs.JOB_VANISHED),
    (detach.NOT_STARTED, None, jobs.STARTING, None),
])
def test_states_and_failure_kinds(state, code, shown, kind):
    e = entry()
    failure = jobs.observe(e, observed(state, code))
    assert e.state == shown and (failure.kind if failure else None) == kind
    assert e.pid == 77 and e.runtime_s == 12.0 and e.last_log == "last"
    if state == detach.REUSED:
        assert "another process" in failure.message
    if kind == jobs.JOB_EXITED:
        assert failure.exit_code == 3


def test_a_record_gone_from_its_host_is_no_job():
    e = entry()
    assert "never started" in jobs.observe(e, None).message  # an interrupted start
    e.pid = 4242
    failure = jobs.observe(e, None)
    assert failure.kind == jobs.NO_JOB and e.state == jobs.VANISHED and "gone" in failure.hint


# --------------------------------------------------------------------------- table


def job_outcome(host: str, state: str, code: int | None = None, failure: Failure | None = None,
                name: str = "bench", runtime: float = 30.0) -> Outcome:
    e = jobs.new_entry(name, "x", Host(host), RUN)
    e.state, e.exit_code, e.pid, e.runtime_s, e.last_log = state, code, 1000, runtime, "same line"
    return Outcome(Host(host), failure is None, error=failure, data=e)


def fleet_report() -> Report:
    outcomes = [job_outcome(f"10.8.0.{i}", jobs.RUNNING, runtime=float(i)) for i in range(1, 41)]
    exited = Failure(jobs.JOB_EXITED, "exited with code 3", "see logs", exit_code=3)
    outcomes += [job_outcome(f"10.8.1.{i}", jobs.EXITED, 3, exited) for i in (1, 2)]
    down = Failure("unreachable", "connection refused", "is sshd running?")
    gone = job_outcome("10.8.2.1", jobs.UNKNOWN, failure=down)
    outcomes.append(gone)
    return Report(outcomes, fields=jobs_render.jobs_fields)


def test_folded_jobs_table_puts_failures_first():
    table = jobs_render.jobs_table(fleet_report(), ViewOptions(fold=True))
    text = "\n".join(_lines(table))
    lines = [line for line in text.splitlines() if "bench" in line]
    assert len(lines) == 3
    # failed rows first (in host order), then the healthy groups
    assert "exited 3" in lines[0] and "10.8.1.[1-2] (2)" in lines[0] and "exited with code 3" in text
    assert "unreachable" in lines[1] and "10.8.2.1" in lines[1]
    assert "10.8.0.[1-40] (40)" in lines[2] and "running" in lines[2] and "40 pids" in lines[2]
    assert "1.0 s–40.0 s" in lines[2]


def test_state_filter_keeps_the_failed_hosts():
    table = jobs_render.jobs_table(fleet_report(), ViewOptions(state="failed"))
    text = "\n".join(_lines(table))
    assert "│ running" not in text and text.count("exited 3") == 2 and "3 of 43 job hosts" in text


def _lines(table) -> list[str]:
    from rich.console import Console

    console = Console(width=200, record=True, file=open(os.devnull, "w"))
    console.print(table)
    return console.export_text().splitlines()


def test_expanded_table_and_summary_and_json():
    report = fleet_report()
    text = "\n".join(_lines(jobs_render.jobs_table(report)))
    assert text.count("│ running") == 40 and text.count("exited 3") == 2
    summary = jobs_render.jobs_summary(report).plain
    assert summary.startswith("1 job on 43 hosts: 40 running, 2 exited 3, 1 unreachable")
    doc = json.loads(json.dumps(report.to_dict(), default=str))
    assert doc["summary"] == {"ok": 40, "failed": 3}
    assert doc["hosts"][40]["error"]["kind"] == "job-exited" and doc["hosts"][40]["exit_code"] == 3
    assert all(row["job"] == "bench" for row in doc["hosts"])


def test_empty_jobs_summary_says_how_to_start_one():
    assert "inv run --detach" in jobs_render.jobs_summary(Report()).plain


def test_folded_start_table_names_the_log_per_host():
    started = [job_outcome(f"10.8.0.{i}", jobs.RUNNING) for i in range(1, 4)]
    held = Failure(jobs.JOB_EXISTS, "job bench is already on this host", "inv stop --job bench")
    report = Report([*started, job_outcome("10.8.0.9", jobs.RUNNING, failure=held)])
    text = "\n".join(_lines(jobs_render.start_table(report, ViewOptions(fold=True))))
    assert "10.8.0.[1-3] (3)" in text and "3 pids" in text
    assert f"~/.cluster/jobs/bench--<host>@{RUN}.log" in text
    assert text.index("job-exists") < text.index("10.8.0.[1-3]")
    summary = jobs_render.start_summary(Report(report.outcomes, extra={"job": "bench"}), 0.5).plain
    assert summary.startswith("job bench: started on 3 of 4 hosts")
