"""Detached jobs on the loopback fleet (real sshd): ``inv run --detach``, ``inv jobs``,
``inv logs --job``, ``inv stop --job`` across 8 hosts; a job that exits on its own; a
host that "reboots" (its processes killed, sshd restarted) -> ``vanished``; the same
name twice refused (also two starts at once); hostile names exit 2 before any
connection; an unwritable state dir starts nothing.

Every fleet host shares this machine's kernel and the login user's home, so the tests
look at the job's processes through /proc directly (the run-id marker
``CLUSTER_JOB_RUN_ID`` in their environment) and use a unique job name each. Whatever
a failing test leaves is killed by pid and its files removed at the end.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from helpers import CLI, REPO, cli_json, run_cli

from cluster.api import Cluster
from cluster.jobs import MARKER_ENV

ALL = "127.0.1.[1-8]"


def marked(run_id: str) -> dict[int, str]:
    """Live (non-zombie) processes carrying the run id: {pid: the host they were started on}."""
    found = {}
    wanted = f"{MARKER_ENV}={run_id}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if wanted in environ and state not in ("Z", "X"):
            host = next((v[len(b"CLUSTER_SIM_HOST="):].decode() for v in environ
                         if v.startswith(b"CLUSTER_SIM_HOST=")), "")
            found[int(entry.name)] = host
    return found


def wait_for(predicate, timeout: float = 30.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


class JobsEnv:
    """A roles file for the fleet's 8 hosts, a private state dir, unique job names."""

    def __init__(self, fleet, tmp_path: Path) -> None:
        self.fleet = fleet
        self.roles = fleet.write_roles(tmp_path / "roles.yaml", {"all": ALL},
                                       extra={"ssh": {"known_hosts": str(tmp_path / "known_hosts")}})
        self.state = tmp_path / "state"
        self.tag = uuid.uuid4().hex[:8]
        self.names: list[str] = []
        self.run_ids: list[str] = []
        self.jobs_dir = Path(pwd.getpwnam(fleet.user).pw_dir) / ".cluster" / "jobs"

    def name(self, what: str) -> str:
        name = f"t{self.tag}-{what}"
        self.names.append(name)
        return name

    def env(self, state: Path | None = None) -> dict[str, str]:
        return {"CLUSTER_STATE_DIR": str(state or self.state)}

    def cli(self, *args: str, state: Path | None = None) -> tuple[int, str, str]:
        return run_cli(*args, "--roles-file", str(self.roles), env=self.env(state))

    def json(self, *args: str, state: Path | None = None) -> tuple[int, dict]:
        code, doc = cli_json(*args, "--roles-file", str(self.roles), env=self.env(state))
        if doc.get("run_id"):
            self.run_ids.append(doc["run_id"])
        return code, doc

    def rows(self, doc: dict) -> dict[str, dict]:
        """The host rows of a document, by host (one job per document here)."""
        return {row["host"]: row for row in doc["hosts"]}

    def files(self, name: str) -> list[str]:
        return sorted(p.name for p in self.jobs_dir.glob(f"{name}--*")) if self.jobs_dir.is_dir() else []

    def cleanup(self) -> None:
        for run_id in self.run_ids:
            for pid in marked(run_id):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for name in self.names:
            for path in self.jobs_dir.glob(f"{name}--*") if self.jobs_dir.is_dir() else []:
                path.unlink(missing_ok=True)


@pytest.fixture
def jobs_env(fleet, tmp_path):
    env = JobsEnv(fleet, tmp_path)
    yield env
    env.cleanup()


def test_start_list_logs_stop_on_8_hosts(jobs_env):
    name = jobs_env.name("bench")
    code, doc = jobs_env.json("run", "--detach", name,
                              'echo "started on $CLUSTER_SIM_HOST"; sleep 300')
    assert code == 0, doc
    assert doc["task"] == "run" and doc["job"] == name and doc["summary"] == {"ok": 8, "failed": 0}
    run_id = doc["run_id"]
    started = jobs_env.rows(doc)
    assert len(started) == 8 and all(r["state"] == "running" and r["run_id"] == run_id for r in started.values())
    pids = {host: row["pid"] for host, row in started.items()}
    assert len(set(pids.values())) == 8
    for host, pid in pids.items():  # each host's process leads its own group, started there
        assert os.getpgid(pid) == pid
        assert marked(run_id).get(pid) == host

    # inv jobs: every host running; the table names the job
    assert wait_for(lambda: all(r["last_log"] for r in jobs_env.rows(jobs_env.json("jobs", "--job", name)[1]).values()))
    code, doc = jobs_env.json("jobs")
    assert code == 0 and doc["jobs"] == [name]
    rows = jobs_env.rows(doc)
    assert {h: r["pid"] for h, r in rows.items()} == pids
    assert all(r["state"] == "running" and r["runtime_s"] is not None for r in rows.values())
    assert all(r["last_log"] == f"started on {h}" for h, r in rows.items())
    code, out, _ = jobs_env.cli("jobs", "--job", name)
    assert code == 0 and "running" in out and name in out and "8 running" in out

    # another controller (no record) finds the job on the hosts it names
    code, doc = jobs_env.json("jobs", "-H", "127.0.1.[1-2]", state=jobs_env.state.parent / "other")
    assert code == 0 and sorted(jobs_env.rows(doc)) == ["127.0.1.1", "127.0.1.2"]
    assert all(r["job"] == name and r["state"] == "running" for r in doc["hosts"])

    # inv logs --job: each host's own log
    code, doc = jobs_env.json("logs", "--job", name)
    assert code == 0 and doc["summary"]["ok"] == 8
    code, out, _ = jobs_env.cli("logs", "--job", name, "-H", "127.0.1.3")
    assert code == 0 and "started on 127.0.1.3" in out and "started on 127.0.1.4" not in out

    # inv stop --job: TERM, verified gone, name released, logs kept
    code, doc = jobs_env.json("stop", "--job", name, "--grace", "5")
    assert code == 0, doc
    stops = jobs_env.rows(doc)
    assert all(r["result"] == "stopped" and r["how"] == "term" for r in stops.values())
    assert all(pids[h] in r["pids"] for h, r in stops.items())
    assert marked(run_id) == {}
    assert [f for f in jobs_env.files(name) if not f.endswith((".log", ".lock"))] == []
    assert len([f for f in jobs_env.files(name) if f.endswith(".log")]) == 8
    code, doc = jobs_env.json("jobs", "--job", name)
    assert code == 0 and doc["hosts"] == []
    assert not (jobs_env.state / "jobs" / f"{name}.json").exists()


def test_a_job_that_exits_on_its_own(jobs_env):
    bad, good = jobs_env.name("bad"), jobs_env.name("good")
    assert jobs_env.json("run", "--detach", bad, "echo bye; exit 3", "-H", "127.0.1.[1-2]")[0] == 0
    assert jobs_env.json("run", "--detach", good, "echo fine", "-H", "127.0.1.3")[0] == 0

    def ended():
        code, doc = jobs_env.json("jobs")
        return (code, doc) if all(r["state"] == "exited" for r in doc["hosts"]) else None

    code, doc = wait_for(ended)
    assert code == 1
    rows = {(r["job"], r["host"]): r for r in doc["hosts"]}
    assert len(rows) == 3
    for host in ("127.0.1.1", "127.0.1.2"):
        row = rows[(bad, host)]
        assert row["exit_code"] == 3 and not row["ok"] and row["error"]["kind"] == "job-exited"
        assert row["last_log"] == "bye"
    fine = rows[(good, "127.0.1.3")]
    assert fine["ok"] and fine["exit_code"] == 0 and fine["last_log"] == "fine"
    code, out, _ = jobs_env.cli("jobs", "--job", bad)
    assert code == 1 and "exited 3" in out and "job-exited" not in out.split("\n")[0]

    # the name stays held until stop: a second start there is refused, nothing runs
    code, doc = jobs_env.json("run", "--detach", bad, "sleep 300", "-H", "127.0.1.1")
    assert code == 1 and doc["hosts"][0]["error"]["kind"] == "job-exists"
    assert "ended run" in doc["hosts"][0]["error"]["message"]
    assert marked(doc["run_id"]) == {}

    code, doc = jobs_env.json("stop", "--job", bad)
    assert code == 0 and {r["result"] for r in doc["hosts"]} == {"had exited"}
    assert [r["exit_code"] for r in doc["hosts"]] == [3, 3]
    code, doc = jobs_env.json("run", "--detach", bad, "echo again", "-H", "127.0.1.1")
    assert code == 0  # released
    assert jobs_env.json("stop", "--job", bad)[0] == 0
    assert jobs_env.json("stop", "--job", good)[0] == 0


def test_a_rebooted_host_shows_vanished(jobs_env):
    name = jobs_env.name("reboot")
    code, doc = jobs_env.json("run", "--detach", name, "sleep 300", "-H", "127.0.1.[5-6]")
    assert code == 0
    run_id = doc["run_id"]
    pid = jobs_env.rows(doc)["127.0.1.5"]["pid"]
    # "reboot" 127.0.1.5: every process of the job killed, its sshd restarted
    os.killpg(pid, signal.SIGKILL)
    assert wait_for(lambda: all(h != "127.0.1.5" for h in marked(run_id).values()))
    jobs_env.fleet.restart_sshd("127.0.1.5")

    code, doc = jobs_env.json("jobs", "--job", name)
    assert code == 1
    rows = jobs_env.rows(doc)
    assert rows["127.0.1.5"]["state"] == "vanished" and rows["127.0.1.5"]["error"]["kind"] == "vanished"
    assert rows["127.0.1.5"]["exit_code"] is None
    assert rows["127.0.1.6"]["state"] == "running" and rows["127.0.1.6"]["ok"]
    code, out, _ = jobs_env.cli("jobs", "--job", name)
    assert code == 1 and "vanished" in out

    code, doc = jobs_env.json("stop", "--job", name, "--grace", "5")
    assert code == 0
    stops = jobs_env.rows(doc)
    assert stops["127.0.1.5"]["result"] == "vanished" and stops["127.0.1.6"]["result"] == "stopped"
    assert marked(run_id) == {}


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace(jobs_env):
    name = jobs_env.name("stubborn")
    code, doc = jobs_env.json("run", "--detach", name,
                              "exec python3 -c 'import signal, time; signal.signal(signal.SIGTERM, "
                              "signal.SIG_IGN); print(\"ready\", flush=True); time.sleep(300)'",
                              "-H", "127.0.1.7")
    assert code == 0
    assert wait_for(lambda: jobs_env.json("jobs", "--job", name)[1]["hosts"][0]["last_log"] == "ready")
    code, doc = jobs_env.json("stop", "--job", name, "--grace", "1")
    assert code == 0
    row = doc["hosts"][0]
    assert row["result"] == "stopped" and row["how"] == "kill" and row["survivors"] == []
    assert marked(doc["hosts"][0]["run_id"]) == {}


def test_ctrl_c_during_the_start_leaves_every_process_findable(jobs_env):
    """SIGINT to `run --detach` as soon as the controller's record exists (before the
    launches): whatever started is listed by `inv jobs` and stopped by `inv stop`."""
    name = jobs_env.name("interrupted")
    record = jobs_env.state / "jobs" / f"{name}.json"
    proc = subprocess.Popen([*CLI, "run", "--detach", name, "sleep 300", "--roles-file", str(jobs_env.roles)],
                            cwd=REPO, env={**os.environ, **jobs_env.env()},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert wait_for(record.exists, step=0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130) and b"Traceback" not in err
    run_id = json.loads(record.read_text())["hosts"][0]["run_id"]
    jobs_env.run_ids.append(run_id)

    def settled():  # launches the interrupt did not stop finish on their hosts
        doc = jobs_env.json("jobs", "--job", name)[1]
        return doc if all(r["state"] != "starting" for r in doc["hosts"]) else None

    doc = wait_for(settled)
    listed = {r["host"] for r in doc["hosts"] if r["state"] == "running"}
    assert set(marked(run_id).values()) <= listed
    assert jobs_env.json("stop", "--job", name, "--grace", "5")[0] == 0
    assert marked(run_id) == {}


def test_the_same_name_twice_on_a_host_is_refused(jobs_env):
    name = jobs_env.name("twice")
    code, first = jobs_env.json("run", "--detach", name, "sleep 300", "-H", "127.0.1.[1-3]")
    assert code == 0
    code, second = jobs_env.json("run", "--detach", name, "sleep 300", "-H", "127.0.1.[2-4]")
    assert code == 1
    rows = jobs_env.rows(second)
    assert [rows[h]["error"]["kind"] for h in ("127.0.1.2", "127.0.1.3")] == ["job-exists"] * 2
    assert rows["127.0.1.4"]["ok"]
    assert sorted(set(marked(first["run_id"]).values())) == ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
    assert set(marked(second["run_id"]).values()) == {"127.0.1.4"}  # nothing second on 2 and 3

    code, doc = jobs_env.json("jobs", "--job", name)
    assert code == 0
    runs = {h: r["run_id"] for h, r in jobs_env.rows(doc).items()}
    assert runs == {"127.0.1.1": first["run_id"], "127.0.1.2": first["run_id"],
                    "127.0.1.3": first["run_id"], "127.0.1.4": second["run_id"]}

    # two starts of one new name on one host at the same moment: one runs, one is refused
    other = jobs_env.name("race")
    argv = [*CLI, "run", "--detach", other, "sleep 300", "-H", "127.0.1.7", "--json",
            "--roles-file", str(jobs_env.roles)]
    env = {**os.environ, **jobs_env.env()}
    procs = [subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    codes = sorted(p.wait(timeout=120) for p in procs)
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    live = [pid for run in _run_ids(jobs_env, other) for pid in marked(run)]
    assert codes == [0, 1]
    assert len({os.getpgid(p) for p in live}) == 1

    assert jobs_env.json("stop", "--job", name, "--grace", "5")[0] == 0
    assert jobs_env.json("stop", "--job", other, "--grace", "5")[0] == 0
    assert marked(first["run_id"]) == {} and marked(second["run_id"]) == {}


def _run_ids(env: JobsEnv, name: str) -> list[str]:
    """Run ids in the host's file names of job ``name`` (``<slot>@<run>.<ext>``)."""
    runs = {f.split("@", 1)[1].rsplit(".", 1)[0] for f in env.files(name) if "@" in f}
    env.run_ids.extend(runs)
    return sorted(runs)


HOSTILE = ["-rf", "../etc", "a/b", "a b", "x;id", "$(id)", "`id`", "é", ".hidden", "",
           "a" * 65, "line\nbreak", "'quote'"]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_names_are_rejected_before_any_connection(jobs_env, bad):
    before = jobs_env.fleet.connection_count("127.0.1.1")
    for args in (["run", f"--detach={bad}", "true"], ["jobs", f"--job={bad}"],
                 ["stop", f"--job={bad}"], ["logs", f"--job={bad}"]):
        code, out, err = jobs_env.cli(*args, "-H", "127.0.1.1")
        assert code == 2, (args, out, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith(("error: --detach", "error: --job")), err
        assert out == ""
    assert jobs_env.fleet.connection_count("127.0.1.1") == before
    assert not (jobs_env.state / "jobs").exists() or not any((jobs_env.state / "jobs").iterdir())


def test_an_unreachable_host_fails_and_is_not_recorded(jobs_env):
    name = jobs_env.name("partial")
    refused = jobs_env.fleet.special["refused"]
    code, doc = jobs_env.json("run", "--detach", name, "sleep 300", "-H", f"127.0.1.2,{refused}")
    assert code == 1
    rows = jobs_env.rows(doc)
    assert rows["127.0.1.2"]["ok"] and rows[refused]["error"]["kind"] == "unreachable"
    code, doc = jobs_env.json("jobs", "--job", name)
    assert code == 0 and sorted(jobs_env.rows(doc)) == ["127.0.1.2"]
    assert jobs_env.json("stop", "--job", name, "--grace", "5")[0] == 0


def test_stop_needs_a_job_and_detach_no_timeout(jobs_env):
    code, _, err = jobs_env.cli("stop")
    assert code == 2 and "--job" in err
    code, _, err = jobs_env.cli("run", "--detach", jobs_env.name("x"), "true", "--timeout", "5")
    assert code == 2 and "--timeout" in err


def test_an_unwritable_state_dir_starts_nothing(jobs_env, tmp_path):
    name = jobs_env.name("nostate")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the state dir should be")
    code, out, err = jobs_env.cli("run", "--detach", name, "sleep 300", "-H", "127.0.1.1", state=blocked)
    assert code == 2 and "CLUSTER_STATE_DIR" in err
    assert jobs_env.files(name) == []


def test_the_command_reaches_the_host_verbatim_and_follow_streams_the_log(jobs_env, monkeypatch):
    name = jobs_env.name("follow")
    command = ("printf '%s\\n' \"it's \\$HOME: $((6*7))\"; "
               "i=0; while [ $i -lt 600 ]; do echo \"tick $i\"; i=$((i+1)); sleep 0.2; done")
    code, doc = jobs_env.json("run", "--detach", name, command, "-H", "127.0.1.[1-2]")
    assert code == 0
    seen: dict[str, list[str]] = {}
    stop = threading.Event()

    def on_event(event):
        if event.kind == "line":
            seen.setdefault(str(event.host), []).append(event.text)
            if all(len([t for t in seen.get(h, []) if t.startswith("tick")]) >= 2
                   for h in ("127.0.1.1", "127.0.1.2")):
                stop.set()

    monkeypatch.setenv("CLUSTER_STATE_DIR", str(jobs_env.state))
    with Cluster.from_roles(jobs_env.roles) as cluster:
        report = cluster.follow_logs(on_event, job=name, lines=50, stop=stop, duration=60)
    assert report.all_ok and stop.is_set()
    for host in ("127.0.1.1", "127.0.1.2"):
        assert seen[host][0] == "it's $HOME: 42"
    assert jobs_env.json("stop", "--job", name, "--grace", "5")[0] == 0
