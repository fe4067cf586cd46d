"""What was started and where it is kept: the manifest, per-host records, paths. Pure."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import run_local
from helpers import serving_config as config

from cluster import detach
from cluster.errors import InputError
from cluster.serving import plan, records, scripts

# --- manifest -------------------------------------------------------------------------------------


def test_manifest_round_trips_through_json():
    cfg = config(env={"HF_TOKEN": "hf_secret"}, router={"host": "local"},
                 prefill={"tp_size": 16, "nnodes": 2})
    specs = [dataclasses.replace(s, deployment="prod")
             for s in plan.plan_deployment(cfg, ["10.8.0.81", "10.8.0.82"], ["10.8.0.83"], run_id="R")]
    router = dataclasses.replace(plan.plan_router(cfg, specs), deployment="prod")
    manifest = records.Manifest(
        name="prod", engine="sglang", run_id="R", model_path=cfg.model_path, created_at=1.5,
        servers=[records.ServerRecord(s, pid=100 + i, started_at=2.0) for i, s in enumerate(specs)],
        router=records.ServerRecord(router, pid=200),
    )
    text = manifest.dumps()
    assert "hf_secret" not in text  # commands in records are display forms
    again = records.Manifest.loads(text)
    assert again == manifest
    assert [s.host for s in again.api_servers()] == ["10.8.0.81", "10.8.0.83"]
    assert again.servers[1].pgid == 101 and again.servers[1].is_api is False
    assert again.router.url == "http://127.0.0.1:8000" and again.router.spec.is_local


def test_manifest_rejects_garbage():
    with pytest.raises(InputError, match="not JSON"):
        records.Manifest.loads("{nope")
    with pytest.raises(InputError, match="malformed"):
        records.Manifest.from_json({"name": "x"})
    doc = {"name": "x", "engine": "sglang", "run_id": "R", "model_path": "m", "created_at": 0,
           "servers": [], "future_field": 1}
    assert records.Manifest.from_json(doc).name == "x"  # unknown keys from newer writers ignored


def test_manifest_path_is_per_name():
    assert records.manifest_path("prod") == "~/.cluster/deployments/prod.json"
    odd = records.manifest_path("../x y")
    assert odd.startswith("~/.cluster/deployments/") and "/" not in odd.split("deployments/")[1]


def test_host_records_come_from_the_launch_and_only_this_hosts_files_are_read(tmp_path):
    cfg = config(run_dir=str(tmp_path), python="true")
    specs = plan.plan_deployment(cfg, ["10.8.0.81"], ["10.8.0.82", "10.8.0.181"], run_id="R")
    for spec in specs:
        launch = scripts.launch_of(spec)
        record = records.ServerRecord(spec)
        script = scripts.launch_script(launch, doc=records.record_doc(record), check_ports=False)
        assert run_local(script).returncode == 0
    found = records.parse_records(run_local(records.records_command(str(tmp_path), "10.8.0.81")).stdout)
    assert [(r.host, r.role, r.run_id) for r in found] == [("10.8.0.81", "prefill", "R")]
    assert found[0].pid and found[0].start and found[0].on_host in ("running", "vanished")  # `true` exits
    assert records.parse_records("garbage\n{not json\n@@record /x@R.json\njson {nope\n") == []


def test_manifest_path_honours_the_state_dir_variable(monkeypatch):
    monkeypatch.setenv("CLUSTER_STATE_DIR", "/srv/state/")
    assert records.manifest_path("prod") == "/srv/state/prod.json"
    assert records.manifest_path() == "/srv/state/default.json"
    assert records.manifest_path("x", base="~/b") == "~/b/x.json"


def test_a_version_1_manifest_is_still_read_for_status_and_stop():
    # What start-pd wrote before records held their spec (flat records, no "spec").
    doc = {"version": 1, "name": "old", "engine": "sglang", "run_id": "R0", "model_path": "m",
           "created_at": 1.0, "stopped_at": None,
           "servers": [{"engine": "sglang", "role": "prefill", "host": "10.8.0.81", "target": "ops@10.8.0.81",
                        "port": 30000, "server_index": 0, "node_rank": 0, "nnodes": 2, "is_api": True,
                        "run_id": "R0", "log_path": "/run/sglang-prefill-10.8.0.81-30000-R0.log",
                        "pid_path": "/run/sglang-prefill-10.8.0.81-30000.pid",
                        "record_path": "/run/sglang-prefill-10.8.0.81-30000.json",
                        "ports": [30000, 9000, 5001], "pid": 42, "pgid": 42, "started_at": 2.0,
                        "stopped_at": None, "command": "python3 -m sglang.launch_server ..."}],
           "router": {"engine": "sglang", "host": "local", "target": "local", "bind": "127.0.0.1",
                      "port": 8000, "url": "http://127.0.0.1:8000", "run_id": "R0",
                      "log_path": "/run/sglang-router-local-8000-R0.log",
                      "pid_path": "/run/sglang-router-local-8000.pid", "pid": 43, "pgid": 43}}
    import json

    manifest = records.Manifest.loads(json.dumps(doc))
    server, router = manifest.servers[0], manifest.router
    assert manifest.version == 1 and server.pid == 42 and server.ssh_host.user == "ops"
    assert server.record_path.endswith("30000@R0.json")
    assert server.identity == detach.Identity(42, None, "R0")  # no start time: the run id marker decides
    assert server.ports == (30000, 9000, 5001)  # port, bootstrap, dist-init: checked after a stop
    assert router.is_router and router.pid == 43 and router.url == "http://127.0.0.1:8000"
