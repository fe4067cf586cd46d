"""The lifecycle's pure parts and local pieces: planning, dry run, stop planning, parsing of
host answers, the manifest store, and the renderers.

No SSH here (tests/test_pd_lifecycle.py drives the real thing on the loopback fleet).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from cluster import detach
from cluster.errors import InputError, ParameterError
from cluster.hosts import Host
from cluster.render import serving as view
from cluster.result import Failure, Outcome, Report
from cluster.serving import plan, records, scripts, start, status, stop
from cluster.serving.config import parse_serving
from cluster.serving.plan import RouterSpec, ServerSpec
from cluster.shell import Section, parse_sections
from cluster.ssh import Engine

FIXTURES = Path(__file__).resolve().parents[1] / "cluster" / "testing" / "fixtures" / "gpu"


def config(**doc):
    doc.setdefault("model_path", "deepseek-ai/DeepSeek-V3")
    return parse_serving(doc, source="roles.yaml")


def text_of(renderable) -> str:
    console = Console(record=True, width=200)
    console.print(renderable)
    return console.export_text()


# --------------------------------------------------------------------------- planning


def test_plan_and_dry_run_show_every_process_masked():
    cfg = config(env={"HF_TOKEN": "hf_secret"}, prefill={"tp_size": 16, "nnodes": 2},
                 router={"host": "local"})
    planned = plan.plan_start(cfg, ["10.8.0.81", "10.8.0.82"], ["10.8.0.83"], deployment="prod",
                              run_id="R1", environ={})
    assert planned.deployment == "prod" and planned.run_id == "R1" and planned.router is not None
    shown = start.dry_run_scripts(planned)
    assert [(r.role, r.host, r.node_rank) for r, _ in shown] == [
        ("prefill", "10.8.0.81", 0), ("prefill", "10.8.0.82", 1), ("decode", "10.8.0.83", 0),
        ("router", "127.0.0.1", 0)]
    assert all(r.status == records.DRY_RUN for r, _ in shown)
    text = view.dry_run_text(shown)
    assert "hf_secret" not in text and "HF_TOKEN=***" in text
    assert "# ===== prefill 0 rank 1 on 10.8.0.82, port 30000" in text
    assert "# ===== router on the controller (local), port 8000" in text
    assert text.count("setsid nohup") == 4


def test_bad_plans_are_input_errors():
    with pytest.raises(InputError, match="no model path"):
        plan.plan_start(parse_serving({}, source="r"), ["10.8.0.81"], ["10.8.0.82"], environ={})
    with pytest.raises(InputError, match="no decode hosts"):
        plan.plan_start(config(), ["10.8.0.81"], [], environ={})
    planned = plan.plan_start(config(), ["10.8.0.81"], ["10.8.0.82"], environ={})
    with pytest.raises(ParameterError, match="^timeout must be > 0 seconds") as info:
        start.start_pd(Engine(), planned, timeout=0)  # refused before anything is contacted
    # The library names its parameter; the CLI shows the option (--timeout).
    assert info.value.parameter == "timeout"
    assert info.value.naming("--timeout") == "--timeout must be > 0 seconds, got 0"


def test_exit_codes_of_the_scripts_map_to_failure_kinds():
    assert start.exit_failure(3, ["env file not found: /x"]).kind == start.ENV_FILE
    assert start.exit_failure(5, ["already running: process group 7 (pid file p)"]).kind == start.ALREADY_RUNNING
    busy = start.exit_failure(6, ["port(s) in use on 10.8.0.81: 30000 "])
    assert busy.kind == stop.PORT_BUSY and "30000" in busy.message and busy.exit_code == 6
    assert start.exit_failure(7, ["python3 not found on PATH"]).kind == start.NO_LAUNCHER
    other = start.exit_failure(9, [])
    assert other.kind == start.LAUNCH and other.message == "exit code 9"


# --------------------------------------------------------------------------- stop planning


def manifest_with_router(run_id: str = "R") -> records.Manifest:
    cfg = config(router={"host": "local"}, prefill={"port": 30000}, decode={"port": 30001})
    specs = plan.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.81", "10.8.0.82"], run_id=run_id)
    router = plan.plan_router(cfg, specs)
    return records.Manifest(
        name="default", engine="sglang", run_id=run_id, model_path="m", created_at=1.0,
        servers=[records.ServerRecord(s, pid=100 + i) for i, s in enumerate(specs)],
        router=records.ServerRecord(router, pid=200))


def test_stop_work_groups_servers_per_host_and_stops_the_router_on_its_host():
    manifest = manifest_with_router()
    hosts = [Host("10.8.0.81"), Host("10.8.0.82")]
    work = stop.stop_work(hosts, manifest.servers, manifest.router, "sglang", "deployment", {})
    first = work[Host("10.8.0.81")]
    assert [i.pgid for i in first.identities] == [100, 101] and first.labels == ["prefill :30000", "decode :30001"]
    assert first.ports == [30000, 8998, 30001] and first.run_ids == ("R",)
    assert first.gpu and first.sweep_servers and not first.sweep_router
    router = work[Host("local")]
    assert [i.pgid for i in router.identities] == [200] and router.sweep_router and not router.sweep_servers
    assert not router.gpu and router.ports == [8000]
    script = router.script(5)
    assert "[s]glang_router" in script and "sglang.launch_server" not in script
    assert "nvidia-smi" not in script and "*@R.log)" in script
    # identity verified before any signal, in the same script
    assert "verdict 200 - R" in script
    # the records of gone processes on those hosts are removed afterwards
    assert "PRUNED" in script and "*-local-[0-9]*@*.json" in script


def test_stop_script_sweep_scope():
    item = stop.StopWork(host=Host("h"), identities=[detach.Identity(42, 7, "R")], engine="vllm",
                         ports=[8100], address="h", run_ids=("R",))
    assert item.sweep == "deployment"  # the default: only what carries the run id marker
    assert "*@R.log)" in item.script(1)
    item.sweep = "user"
    assert "[V]LLM::EngineCore" in item.script(1) and "@R.log" not in item.script(1)  # user scope
    item.sweep = "deployment"
    assert "*@R.log)" in item.script(1)
    item.sweep = "none"
    assert "pgrep" not in item.script(1)
    item.sweep, item.run_ids = "deployment", ()
    assert "pgrep" not in item.script(1)  # no run id known: nothing to scope by, no sweep
    with pytest.raises(ParameterError, match="^sweep must be one of deployment, user, none"):
        stop.check_sweep("all")


def test_host_stop_parsing_and_failures():
    apps = (FIXTURES / "h100-busy.txt").read_text()
    answer = "\n".join([
        "@@begin stop", "VERDICT 100 ok", "PIDS 100 100 101 102", "KILL 100 102", "DONE 100 kill 31",
        "VERDICT 200 reused", "@@end stop 0",
        "@@begin sweep", "KILLED 300 sglang::detokenizer", "@@end sweep 0",
        "@@begin ports", "30000 free", "8998 busy", "@@end ports 0",
        "@@begin gpu", apps.rstrip("\n"), "@@end gpu 0",
    ])
    item = stop.StopWork(host=Host("h"), labels=["prefill :30000"])
    host_stop = stop.parse_host_stop(item, parse_sections(answer))
    assert host_stop.stopped_pids == [100, 101, 102] and host_stop.killed_after_grace == [102]
    assert host_stop.how == "kill" and host_stop.seconds == 31 and host_stop.pid_reused == [200]
    assert host_stop.leftovers == [(300, "sglang::detokenizer")]
    assert host_stop.ports == {30000: True, 8998: False} and not host_stop.ports_free
    assert host_stop.gpu.available and host_stop.gpu.memory_used_mib > 600000 and len(host_stop.gpu.processes) == 9
    failure = stop.stop_failure(host_stop)
    assert failure.kind == stop.PORT_BUSY and "8998" in failure.message
    host_stop.survivors = [102]
    assert stop.stop_failure(host_stop).kind == stop.SURVIVORS
    none = stop.gpu_after(Section("gpu", "@@no-nvidia-smi", 0))
    assert not none.available and "no nvidia-smi" in none.note
    doc = host_stop.to_json()
    assert doc["leftovers"] == [{"pid": 300, "command": "sglang::detokenizer"}]
    assert doc["ports"] == {"30000": True, "8998": False} and doc["ports_free"] is False


def test_mark_stopped_stamps_records_and_the_whole_manifest():
    manifest = manifest_with_router()
    report = Report([Outcome(Host("10.8.0.81"), True), Outcome(Host("10.8.0.82"), False),
                     Outcome(Host("local"), True)])
    stop.mark_stopped(manifest, manifest.servers, manifest.router, report)
    assert [bool(r.stopped_at) for r in manifest.servers] == [True, True, False]
    assert manifest.router.stopped_at and manifest.stopped_at is None
    report.outcomes[1].ok = True
    stop.mark_stopped(manifest, manifest.servers, manifest.router, report)
    assert manifest.stopped_at is not None


# --------------------------------------------------------------------------- status rows


def row(role: str = "decode", host: str = "10.8.0.82", port: int = 30001, pid: int = 100,
        is_api: bool = True, **state) -> records.ServerRecord:
    """One process's record (files under /run, run id R) with observed ``state``."""
    if role == "router":
        spec = RouterSpec(engine="sglang", host="local", target="local", bind="127.0.0.1", port=port,
                          metrics_port=29000, run_dir="/run", run_id="R")
    else:
        spec = ServerSpec(engine="sglang", role=role, host=host, target=host, port=port,
                          node_rank=0 if is_api else 1, nnodes=1 if is_api else 2, run_dir="/run",
                          run_id="R")
    return records.ServerRecord(spec, pid=pid, **state)


def probe(key="k", members=0, leader=False, *rest, verdict=None) -> scripts.ProbeResult:
    """A probe answer (``verdict`` ok when anything of the group lives, else gone)."""
    verdict = verdict or ("ok" if members or leader else "gone")
    return scripts.ProbeResult(key, verdict, members, leader, *rest)


def test_status_judgement():
    healthy = row()
    assert status.judge_status(healthy, probe("k", 3, True, 60, 200, (30001,), "x")) is None
    assert healthy.status == records.HEALTHY and healthy.listening and healthy.uptime_s == 60
    loading = row()
    assert status.judge_status(loading, probe("k", 3, True, 5, 503)).kind == status.UNHEALTHY
    assert loading.status == records.LOADING
    orphans = row()
    failure = status.judge_status(orphans, probe("k", 2, False))
    assert failure.kind == status.NOT_RUNNING and "2 process(es)" in failure.message
    assert orphans.status == "dead (children left)"
    stopped = row(stopped_at=1.0)
    assert "stopped by stop-pd" in status.judge_status(stopped, probe("k")).message
    follower = row(is_api=False)
    assert status.judge_status(follower, probe("k", 4, True)) is None
    assert follower.status == records.RUNNING and follower.listening is None
    router = row(role="router")
    body = json.dumps({"workers": [{"url": "http://a:1", "is_healthy": True},
                                   {"url": "http://b:2", "is_healthy": False, "secret": "x"}]})
    failure = status.judge_status(router, probe("router", 1, True, 9, 200, (30001,), "l", body))
    assert failure.kind == status.UNHEALTHY and "http://b:2" in failure.message
    assert router.workers == [{"url": "http://a:1", "is_healthy": True},
                              {"url": "http://b:2", "is_healthy": False}]
    # the pgid now belongs to someone else: gone (pid reused), never alive
    reused = row()
    failure = status.judge_status(reused, probe("k", verdict="reused"))
    assert reused.status == records.PID_REUSED and reused.alive is False
    assert failure.kind == status.NOT_RUNNING and "pid reused" in failure.message
    # a record found on a host, not the recorded deployment's, process gone: stale
    old = row(on_host="vanished")
    assert status.judge_status(old, probe("k"), current=set()).kind == status.STALE_KIND
    assert old.status == records.STALE
    current = row(on_host="vanished")
    assert status.judge_status(current, probe("k"), current={current.uid}).kind == status.NOT_RUNNING


# --------------------------------------------------------------------------- manifest store


def test_manifest_store_uses_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTER_STATE_DIR", str(tmp_path / "state"))
    assert records.load_manifest() is None
    manifest = manifest_with_router()
    path = records.save_manifest(manifest)
    assert path == tmp_path / "state" / "default.json" == records.manifest_file()
    assert records.load_manifest("default") == manifest
    assert not list((tmp_path / "state").glob(".*tmp"))  # written atomically, no temp left


# --------------------------------------------------------------------------- rendering


def start_result(stage: str, rows_and_failures) -> start.StartResult:
    planned = plan.plan_start(config(router={"host": "local"}), ["10.8.0.81"], ["10.8.0.82"],
                              run_id="R", environ={})
    outcomes = [Outcome(Host(r.target), f is None, error=f, data=r) for r, f in rows_and_failures]
    return start.StartResult(Report(outcomes), stage, planned, manifest_file=Path("/x/default.json"))


def test_start_view_shows_failures_tails_and_next_steps():
    died = row(status="died", log_tail=["Traceback", "RuntimeError: CUDA error: out of memory"])
    assert died.log_path == "/run/sglang-decode-10.8.0.82-30001@R.log"
    ready = row(role="prefill", host="10.8.0.81", port=30000, status="ready", ready_after_s=12.34)
    result = start_result("wait", [(ready, None), (died, Failure(start.DIED, "decode died", "see below"))])
    text = text_of(view.start_view(result))
    assert "12.3 s" in text and "sglang-decode-10.8.0.82-30001@R.log" in text
    assert "RuntimeError: CUDA error: out of memory" in text and "decode died" in text
    assert "inv stop-pd" in text and "/x/default.json" in text and "Logs (and pid files)" in text
    refused = start_result("preflight", [(row(status="failed"),
                                          Failure(start.ENV_FILE, "env file not found: /e"))])
    text = text_of(view.start_view(refused))
    assert "env-file" in text and "Nothing was started on any host" in text


def test_progress_stop_and_status_tables_render():
    rows = [row(status="loading", uptime_s=150, last_log="Load weight begin"),
            row(role="prefill", status="ready", ready_after_s=30.0)]
    text = text_of(view.progress_view(rows, 95))
    assert "1/2 ready" in text and "2m30s" in text and "Load weight begin" in text
    stopped = stop.HostStop(servers=["decode :30001"], stopped_pids=[1, 2], how="kill", seconds=31,
                            leftovers=[(7, "sglang::detokenizer -c code")], ports={30001: True},
                            gpu=stop.GpuAfter(True, 1024, 81559, [{"pid": 9}]))
    text = text_of(view.stop_table(Report([Outcome(Host("10.8.0.82"), True, data=stopped)])))
    assert "7 sglang::detokenizer" in text and "yes (30001)" in text
    assert "1024 / 81559 MiB, 1 process(es)" in text and "SIGKILL after grace in 31 s" in text
    router = row(role="router", health=200, alive=True, status="ready",
                 workers=[{"is_healthy": True}, {"is_healthy": True}])
    text = text_of(view.status_table(Report([Outcome(Host("local"), True, data=router)])))
    assert "workers 2/2 healthy" in text and "ready 200" in text


def test_restart_picks_whole_servers_and_refuses_what_it_cannot_relaunch():
    cfg = config(prefill={"tp_size": 4, "nnodes": 2}, router={"host": "local"})
    specs = plan.plan_deployment(cfg, ["10.8.0.81", "10.8.0.82"], ["10.8.0.83", "10.8.0.84"], run_id="R")
    manifest = records.Manifest("d", "sglang", "R", "m", 1.0,
                                servers=[records.ServerRecord(s, pid=100 + i) for i, s in enumerate(specs)])
    # A host picks every rank of the servers with a rank there; no host: the dead ones.
    on_82 = start.select_restart(manifest, [Host("10.8.0.82")], {})
    assert [(r.role, r.host) for r in on_82] == [("prefill", "10.8.0.81"), ("prefill", "10.8.0.82")]
    dead = start.select_restart(manifest, None, {"prefill-0-0": True, "prefill-0-1": True,
                                                 "decode-0-0": False, "decode-1-0": True})
    assert [r.host for r in dead] == ["10.8.0.83"]
    with pytest.raises(ParameterError, match="no server of deployment 'd' is recorded on 10.8.0.99"):
        start.restart_pd(Engine(), manifest, hosts=[Host("10.8.0.99")])
    manifest.version = 1  # recorded before specs were: nothing to relaunch from
    with pytest.raises(InputError, match="older version .* `inv start-pd --restart`"):
        start.restart_pd(Engine(), manifest, hosts=[Host("10.8.0.83")])
    with pytest.raises(ParameterError, match="^timeout must be > 0"):
        start.restart_pd(Engine(), manifest, timeout=-1)


def test_restart_resolves_secret_values_that_were_never_recorded():
    cfg = config(env={"HF_TOKEN": "hf_x", "NCCL_SOCKET_IFNAME": "eth0"})
    spec = plan.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R")[0]
    recorded = records.ServerRecord(spec).spec
    assert dict(recorded.env) == {"HF_TOKEN": None, "NCCL_SOCKET_IFNAME": "eth0"}
    with pytest.raises(InputError, match="HF_TOKEN was recorded as a secret"):
        start.resolve_secrets(recorded, {})
    assert dict(start.resolve_secrets(recorded, {"HF_TOKEN": "hf_y"}).env)["HF_TOKEN"] == "hf_y"
    assert "hf_x" not in records.ServerRecord(spec).command and "HF_TOKEN=***" in records.ServerRecord(spec).command


def test_secret_options_are_never_recorded_and_restart_takes_them_from_the_roles_file():
    cfg = config(prefill={"extra_args": ["--api-key", "sk-1"]}, decode={"extra_args": ["--api-key", "sk-1"]})
    spec = plan.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82"], run_id="R")[0]
    record = records.ServerRecord(spec)
    assert record.spec.extra_args == ("--api-key", "***")
    assert "sk-1" not in records.record_doc(record) and "sk-1" not in json.dumps(record.to_json())
    again = start.resolve_secrets(record.spec, {}, {"prefill": ("--api-key", "sk-2")})
    assert again.extra_args == ("--api-key", "sk-2")
    with pytest.raises(InputError, match="start-pd --restart"):
        start.resolve_secrets(record.spec, {}, {"prefill": ("--other", "x")})


def test_a_failed_launch_with_nothing_started_says_so():
    failed = row(status="failed", pid=None)
    text = text_of(view.start_view(start_result("launch", [(failed, Failure(start.RUN_DIR, "cannot create run dir"))])))
    assert "No server started" in text and "left running" not in text
    launched = row(status="died")
    text = text_of(view.start_view(start_result("launch", [(launched, Failure(start.DIED, "died"))])))
    assert "left running" in text
