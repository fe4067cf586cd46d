"""Serving that never kills the wrong process and never loses a server (issue 16), on the
loopback fleet (real sshd, stand-in servers): pid reuse, Ctrl-C during start-pd, two
start-pd at once, an unwritable state dir, secrets, two deployments on one host, stale
records, corrupt manifests. Each test failed before the fix it names.

The PD helper (roles file, run/state dirs, ports, CLI) is test_pd_lifecycle's.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import process_alive
from test_pd_lifecycle import DECODES, PD, PREFILL, REPO, _wait, processes_of

from cluster.serving.records import Manifest

SECRET = "hf-auth-value-7c1d9e"


def run_ids_on_disk(pd: PD) -> set[str]:
    """Run ids of every per-host record and log in the run dir (what a launch writes first;
    logs are kept after stop-pd)."""
    return {p.name.rsplit("@", 1)[1].rsplit(".", 1)[0] for p in pd.run_dir.glob("*@*.*")
            if p.suffix in (".json", ".log")}


def everything(pd: PD) -> dict[int, str]:
    """Live processes of this test's deployments: by run id marker/log, or by port."""
    return processes_of(run_ids_on_disk(pd), pd.ports)


def kill_all(pd: PD) -> dict[int, str]:
    """SIGKILL every live process of ``pd``; what was found."""
    found = everything(pd)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return found


def popen(pd: PD, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    full = {**os.environ, "CLUSTER_STATE_DIR": str(pd.state_dir), "HF_HUB_OFFLINE": "1", **(env or {})}
    full.pop("CLUSTER_ROLES", None)
    return subprocess.Popen([sys.executable, "-m", "cluster_cli", *args, "--roles-file", str(pd.roles)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full, cwd=REPO)


def start_args(*extra: str) -> list[str]:
    return ["start-pd", "--prefill", PREFILL, "--decode", ",".join(DECODES), "--timeout", "90", *extra]


@pytest.fixture
def make_pd(fleet, tmp_path):
    """PD deployments of one test; whatever a failed test left is SIGKILLed at the end."""
    made: list[PD] = []

    def make(engine: str = "sglang") -> PD:
        made.append(PD(fleet, tmp_path / f"pd{len(made)}", engine))
        return made[-1]

    yield make
    for pd in made:
        for _ in range(3):
            kill_all(pd)


# --------------------------------------------------------------------------- 1 process identity


def test_a_reused_pid_is_reported_and_never_signalled(fleet, make_pd):
    pd = make_pd()
    code, doc = pd.start("--no-wait", router=False)
    assert code == 0, doc
    code, _ = pd.stop()
    assert code == 0
    # An unrelated job of the same user now holds the prefill's recorded process group id
    # (we cannot make the kernel reuse a pid on demand: the record is pointed at it).
    out = subprocess.run(fleet.ssh_command(PREFILL) + ["setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, timeout=30)
    other = int(out.stdout.split()[-1])
    try:
        path = pd.state_dir / "default.json"
        doc = json.loads(path.read_text())
        doc["stopped_at"] = None
        for server in doc["servers"]:
            server["stopped_at"] = None
            if server["spec"]["host"] == PREFILL:
                server["pid"] = server["pgid"] = other
        path.write_text(json.dumps(doc))
        code, status = pd.cli_json("pd-status")
        row = next(e for e in status["hosts"] if e["address"] == PREFILL)
        assert code == 1 and row["status"] == "gone (pid reused)" and row["alive"] is False, row
        assert "pid reused" in row["error"]["message"]
        for sweep in ("none", "deployment"):
            code, stop = pd.cli_json("stop-pd", "--grace", "1", "--sweep", sweep)
            host = next(e for e in stop["hosts"] if e["host"] == PREFILL)
            assert host["pid_reused"] == [other] and other not in host["stopped_pids"], host
            assert process_alive(other), f"stop-pd --sweep {sweep} killed an unrelated process"
    finally:
        subprocess.run(fleet.ssh_command(PREFILL) + [f"kill -9 {other}"], timeout=30)


# --------------------------------------------------------------------------- 2 records before launch


@pytest.mark.parametrize("delay", [0.2, 0.5, 1.0, "wait"])
def test_ctrl_c_during_start_leaves_every_server_findable_and_stoppable(make_pd, delay):
    pd = make_pd()
    pd.env["STANDIN_LOAD_SECONDS"] = "20"  # a long wait for "mid-wait"
    pd.write_roles()
    proc = popen(pd, *start_args())
    try:
        if delay == "wait":  # mid-wait: every server launched, none ready
            _wait(lambda: len(list(pd.run_dir.glob("*@*.pid"))) == 3, "three servers launched", 60)
        else:
            time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # (exit 130; killed by the signal when it lands before the CLI is loaded)
    assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, out, err)
    # The message names only files that exist.
    manifest = pd.state_dir / "default.json"
    if "keep running (recorded in " in err:
        assert f"recorded in {manifest} and" in err and manifest.exists(), err
    elif "nothing was recorded in " in err:
        assert not manifest.exists() or not everything(pd), err
    time.sleep(1)  # launch scripts already on their way finish their work
    running = everything(pd)
    if running:
        code, status = pd.cli_json("pd-status")
        listed = {e["pid"] for e in status["hosts"] if e.get("alive")}
        groups = {os.getpgid(p) for p in running if process_alive(p)}
        assert groups <= listed, (groups, status)
    if pd.manifest() is not None or running:
        code, _ = pd.stop()
    _wait(lambda: not everything(pd), "nothing left running", 30)


# --------------------------------------------------------------------------- 3 one deployment at a time


def test_two_start_pd_with_one_name_one_is_refused_and_nothing_is_orphaned(make_pd):
    pd = make_pd()
    first = popen(pd, *start_args("--no-wait", "--json"))
    second = popen(pd, "start-pd", "--prefill", "127.0.1.4", "--decode", "127.0.1.5", "--timeout", "90",
                   "--no-wait", "--json")
    answers = [(p.returncode, *p.communicate(timeout=120)) for p in (first, second)]
    answers = [(p.returncode, out, err) for p, (_, out, err) in zip((first, second), answers, strict=True)]
    assert sorted(code for code, _, _ in answers) == [0, 1], answers
    code, out, err = next(a for a in answers if a[0] == 1)
    refused = json.loads(out)
    assert all(e["status"] == "not started" for e in refused["hosts"]), refused
    assert any(e["error"]["kind"] == "already-running" and "deployment 'default'" in e["error"]["message"]
               for e in refused["hosts"]), refused
    for address in {e["address"] for e in refused["hosts"]} - {PREFILL, *DECODES}:
        assert not list(pd.run_dir.glob(f"*-{address}-*@*")), address  # nothing of it launched
    # Every process that runs is the recorded deployment's.
    manifest = pd.manifest()
    running = everything(pd)
    recorded = {r.pid for r in manifest.servers}
    assert {os.getpgid(p) for p in running if process_alive(p)} <= recorded
    assert pd.stop()[0] == 0
    _wait(lambda: not everything(pd), "nothing left running", 30)


# --------------------------------------------------------------------------- 4 check before launch


def test_an_unwritable_state_dir_launches_nothing(make_pd, tmp_path):
    pd = make_pd()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    pd.state_dir = blocker / "state"  # cannot be created (a file is in the way), as root too
    code, out, err = pd.cli(*start_args())
    assert code == 2 and "state dir" in err and str(pd.state_dir) in err and "Traceback" not in err
    assert not list(pd.run_dir.iterdir())
    assert processes_of(set(), pd.ports) == {}


# --------------------------------------------------------------------------- 5 secrets


def test_a_forwarded_secret_never_appears_in_outputs_manifest_or_records(make_pd):
    pd = make_pd()
    pd.serving["forward_env"] = ["HF_AUTH"]  # no TOKEN/KEY/SECRET in the name
    pd.write_roles()
    os.environ["HF_AUTH"] = SECRET  # the CLI subprocesses inherit it
    try:
        given = ("--env", f"EXTRA_AUTH={SECRET}-given")  # a value given on the command line
        outputs = [pd.cli(*start_args("--dry-run", *given)), pd.cli(*start_args("--dry-run", "--json", *given))]
        outputs.append(pd.cli(*start_args("--json", *given)))
        assert outputs[-1][0] == 0, outputs[-1]
        outputs += [pd.cli("pd-status", "--json"), pd.cli("pd-status")]
        manifest = pd.state_dir / "default.json"
        files = [manifest, *pd.run_dir.glob("*@*.json"), *pd.run_dir.glob("*@*.pid")]
        texts = [out + err for _, out, err in outputs] + [f.read_text() for f in files]
        # nor on any process's command line (the value reaches the host on stdin only)
        texts += [cmd for cmd in everything(pd).values()]
        assert not [t for t in texts if SECRET in t]
        assert "HF_AUTH=***" in outputs[0][1] and "EXTRA_AUTH=***" in outputs[0][1]
        assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
        assert stat.S_IMODE(pd.state_dir.stat().st_mode) == 0o700
        for record in files[1:]:
            assert stat.S_IMODE(record.stat().st_mode) == 0o600, record
        # the server itself got the value
        server = next(p for p, c in everything(pd).items() if "--disaggregation-mode prefill" in c)
        env = Path(f"/proc/{server}/environ").read_bytes().split(b"\0")
        assert f"HF_AUTH={SECRET}".encode() in env and f"EXTRA_AUTH={SECRET}-given".encode() in env
        code, out, err = pd.cli(*start_args("--dry-run", "--env", f"NO_EQUALS_{SECRET}"))
        assert code == 2 and "--env expects NAME=VALUE" in err and SECRET not in err
        outputs.append(pd.cli("stop-pd", "--grace", "1", "--json"))
        assert not [t for t in (o[1] + o[2] for o in outputs[-1:]) if SECRET in t]
    finally:
        os.environ.pop("HF_AUTH", None)


# --------------------------------------------------------------------------- 6 keys that cannot collide


def test_two_deployments_on_one_host_get_their_own_rows(make_pd):
    a = make_pd()
    b = make_pd()
    b.state_dir, b.run_dir = a.state_dir, a.run_dir  # one controller, one run dir on the hosts
    b.serving["run_dir"] = str(a.run_dir)
    b.write_roles()
    assert a.start("--no-wait", router=False)[0] == 0
    code, doc_b = b.cli_json(*start_args("--no-wait", "--deployment", "other"))
    assert code == 0, doc_b
    try:
        code, status = a.cli_json("pd-status", "-H", PREFILL)  # from the host's records: both
        rows = [e for e in status["hosts"] if e["address"] == PREFILL]
        by_deployment = {e["deployment"]: e for e in rows}
        assert set(by_deployment) == {"default", "other"}, rows
        manifest_a = a.manifest()
        manifest_b = Manifest.loads((a.state_dir / "other.json").read_text())
        for name, manifest in (("default", manifest_a), ("other", manifest_b)):
            row = by_deployment[name]
            mine = next(r for r in manifest.servers if r.host == PREFILL)
            assert row["pid"] == mine.pid and row["port"] == mine.port and row["alive"], row
    finally:
        a.stop()
        b.cli_json("stop-pd", "--grace", "1", "--deployment", "other")


def test_a_stale_vllm_record_and_a_live_sglang_server_get_their_own_verdicts(make_pd):
    old = make_pd("vllm")
    assert old.start("--no-wait", router=False)[0] == 0
    # The vLLM run dies without stop-pd (its records stay); children still being spawned
    # are caught by the next round.
    _wait(lambda: not kill_all(old), "the vLLM run is gone", 30)
    new = make_pd("sglang")
    new.state_dir = old.state_dir
    new.run_dir = old.run_dir
    new.serving["run_dir"] = str(old.run_dir)
    new.write_roles()
    code, doc = new.start(router=False)
    assert code == 0, doc
    (old.state_dir / "default.json").unlink()  # records mode: no manifest
    code, status = new.cli_json("pd-status", "-r", "decode")
    rows = [e for e in status["hosts"] if e.get("role") == "decode"]
    verdicts = sorted((e["engine"], e["status"]) for e in rows)
    assert verdicts == [("sglang", "healthy"), ("sglang", "healthy"), ("vllm", "stale"), ("vllm", "stale")], rows
    healthy = [e for e in rows if e["engine"] == "sglang"]
    assert all(e["health"] == 200 and e["alive"] for e in healthy)
    stale = [e for e in rows if e["engine"] == "vllm"]
    assert all(e["health"] is None and not e["alive"] and e["error"]["kind"] == "stale" for e in stale), stale
    code, pruned = new.cli_json("pd-status", "-r", "decode", "--prune")
    assert len(pruned["pruned"]) == 2 and not list(old.run_dir.glob("vllm-decode-*@*.json"))
    code, stop = new.cli_json("stop-pd", "-H", ",".join([PREFILL, *DECODES]), "--grace", "1")
    assert code == 0, stop
    _wait(lambda: not everything(new), "nothing left running", 30)
    assert not list(new.run_dir.glob("*@*.json"))  # stop-pd removed the records of what it stopped


# --------------------------------------------------------------------------- 7 messages


def test_errors_name_the_manifest_asked_for_and_corrupt_ones_never_trace(fleet, make_pd):
    pd = make_pd()
    code, out, err = pd.cli("pd-status", "--deployment", "nope")
    assert code == 2 and "nope.json" in err and "default.json" not in err
    pd.state_dir.mkdir(parents=True, exist_ok=True)
    path = pd.state_dir / "default.json"
    for content in (b"\xff\xfe not utf-8", b"{nope", b"[1, 2]", b'{"servers": 5}',
                    b'{"name": "default", "servers": [{"spec": 3}]}', b"null", b'{"name": [1]}'):
        path.write_bytes(content)
        code, out, err = pd.cli("pd-status")
        assert code == 2 and str(path) in err and "Traceback" not in err, (content, err)
        code, out, err = pd.cli("stop-pd", "--grace", "1")
        assert code == 2 and str(path) in err and "Traceback" not in err, (content, err)
    # stop-pd -H still works from the hosts' records
    path.unlink()
    assert pd.start("--no-wait", router=False)[0] == 0
    ids = pd.run_ids()
    path.write_bytes(b"\xff garbage")
    code, stop = pd.cli_json("stop-pd", "-H", ",".join([PREFILL, *DECODES]), "--grace", "1")
    assert code == 0 and "corrupt" in stop["manifest_error"], stop
    assert all(e["stopped_pids"] for e in stop["hosts"]), stop
    _wait(lambda: not processes_of(ids, pd.ports), "stopped from the host records", 30)


def test_an_interrupted_start_without_pids_in_the_manifest_still_blocks_a_new_one(make_pd):
    pd = make_pd()
    assert pd.start("--no-wait", router=False)[0] == 0
    path = pd.state_dir / "default.json"
    doc = json.loads(path.read_text())
    for server in doc["servers"]:  # as if Ctrl-C came before the launches answered
        server["pid"] = server["pgid"] = server["start"] = None
    path.write_text(json.dumps(doc))
    code, status = pd.cli_json("pd-status")
    assert all(e["alive"] and e["pid"] for e in status["hosts"]), status  # (maybe still loading)
    code, elsewhere = pd.cli_json("start-pd", "--prefill", "127.0.1.4", "--decode", "127.0.1.5", "--no-wait")
    assert code == 1 and any("still runs here" in (e["error"] or {}).get("message", "") for e in elsewhere["hosts"])
    assert not list(pd.run_dir.glob("*-127.0.1.4-*@*"))
    assert pd.stop()[0] == 0
    _wait(lambda: not everything(pd), "nothing left running", 30)
