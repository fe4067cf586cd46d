"""inv preflight's pure parts: the per-host plan, the probe's shell text (run locally on
stand-in roots), the parsers on captured-format fixtures (tests/fixtures/preflight/,
broken output included), the judges and the consistency fold."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import serving_config

from cluster import shell
from cluster.gpu import COMMAND
from cluster.hosts import Host
from cluster.preflight import checks, probe
from cluster.preflight.checks import FAIL, OK, WARN
from cluster.serving.plan import plan_start
from cluster.testing import defects

FIXTURES = Path(__file__).parent / "fixtures" / "preflight"
TESTING = Path(__file__).resolve().parents[1] / "cluster" / "testing"
GPU_FIXTURES = TESTING / "fixtures" / "gpu"


def section(key: str, text: str, rc: int | None = 0) -> shell.Section:
    return shell.Section(key, text, rc)


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def plan_of(**doc):
    doc.setdefault("prefill", {"tp_size": 8})
    doc.setdefault("decode", {"tp_size": 8})
    return plan_start(serving_config(**doc), ["10.8.0.81"], ["10.8.0.82", "10.8.0.83"])


# --- the plan per host ------------------------------------------------------------------------


def test_host_plans_carry_gpus_ports_env_ib_devices_and_peers():
    plan = plan_of(model_path="/models/m", env={"NCCL_SOCKET_IFNAME": "eth0"},
                   prefill={"tp_size": 8, "extra_args": "--disaggregation-ib-device mlx5_0,mlx5_1"},
                   router={"host": "10.8.0.84"})
    plans = probe.host_plans(plan)
    prefill, decode = plans[Host("10.8.0.81")], plans[Host("10.8.0.82")]
    assert prefill.roles == ("prefill",) and prefill.gpus_needed == 8
    assert prefill.ports == (30000, 8998) and prefill.bind == "10.8.0.81"
    assert prefill.ib_devices == ("mlx5_0", "mlx5_1") and decode.ib_devices == ()
    assert ("NCCL_SOCKET_IFNAME", "eth0") in prefill.env
    assert prefill.modules == (("sglang", "sglang"),) and prefill.engine_package == "sglang"
    assert decode.peers == (("10.8.0.81", 30000),) and prefill.peers == ()  # its planned port
    router = plans[Host("10.8.0.84")]
    assert router.roles == ("router",) and not router.serves
    assert router.modules == (("sglang_router", "sglang-router"),) and router.ports == (8000, 29000)


def test_multi_node_ranks_reach_their_rank_0_and_vllm_devices_come_from_ucx():
    plan = plan_start(serving_config(engine="vllm", env={"UCX_NET_DEVICES": "mlx5_2:1,all"},
                                     prefill={"tp_size": 16, "nnodes": 2}, decode={"tp_size": 8}),
                      ["10.8.0.81", "user@10.8.0.82:2200"], ["10.8.0.83"])
    plans = probe.host_plans(plan)
    assert plans[Host("10.8.0.82", "user", 2200)].peers == (("10.8.0.81", 5000),)   # rank 0's dist-init
    assert plans[Host("10.8.0.83")].peers == (("10.8.0.81", 8100), ("10.8.0.82", 8100))  # every prefill host
    assert plans[Host("10.8.0.81")].gpus_needed == 8
    assert plans[Host("10.8.0.83")].commands == ("vllm",)
    assert plans[Host("10.8.0.81")].ib_devices == ("mlx5_2",)


def test_fast_sections_are_the_start_pd_subset_and_the_full_set_has_every_part():
    plan = probe.host_plans(plan_of(prefill={"tp_size": 8, "extra_args": "--disaggregation-ib-device mlx5_0"}))
    host = plan[Host("10.8.0.81")]
    assert [k for k, _ in probe.sections(host, fast=True)] == ["gpu", "env"]
    assert [k for k, _ in probe.sections(host)] == ["gpu", "env"]
    assert dict(probe.sections(host))["gpu"] == COMMAND


# --- parsers on fixtures ----------------------------------------------------------------------


def test_driver_and_pcie_links_and_their_judgement():
    driver, links = checks.parse_gpu_info(fixture("gpuinfo-h100-idle.txt"))
    assert driver == "550.54.15" and [r.bus for r in links][:2] == ["0000:18:00.0", "0000:2a:00.0"]
    assert links[0].gen == 1 and links[0].width_max == 16
    result = checks.HostResult()
    checks.judge_gpu_info(fixture("gpuinfo-h100-idle.txt"), result)
    assert {c.name: c.status for c in result.checks} == {"gpu.driver": OK, "gpu.pcie": OK}  # gen 1 at idle is fine
    assert result.facts["driver"] == "550.54.15"
    narrow = checks.HostResult()
    checks.judge_gpu_info(fixture("gpuinfo-narrow.txt"), narrow)
    pcie = next(c for c in narrow.checks if c.name == "gpu.pcie")
    assert pcie.status == WARN and "0000:2a:00.0 x8 of x16" in pcie.value


def test_unreadable_driver_and_links_are_warnings_never_errors():
    driver, links = checks.parse_gpu_info(fixture("gpuinfo-missing.txt"))
    assert driver is None and len(links) == 1 and links[0].width is None
    result = checks.HostResult()
    checks.judge_gpu_info(fixture("gpuinfo-missing.txt"), result)
    assert [c.status for c in result.checks] == [WARN, OK] and "driver" not in result.facts
    empty = checks.HostResult()
    checks.judge_gpu_info("", empty)
    assert [c.status for c in empty.checks] == [WARN, WARN]


def test_xid_lines_sources_and_unreadable_logs():
    source, found = checks.parse_xid(fixture("xid-dmesg.txt"))   # kmsg refused, then the journal
    assert source == "journalctl" and found == [("0000:3b:00", 79), ("0000:3b:00", 79)]
    check = checks.judge_xid(fixture("xid-kmsg.txt"))
    assert check.status == WARN and check.value == "Xid 13, Xid 31 since boot (kmsg)"
    assert "Xid 79 x2" in checks.judge_xid(fixture("xid-dmesg.txt")).value
    assert checks.judge_xid(fixture("xid-journal-clean.txt")).status == OK
    unreadable = checks.judge_xid(fixture("xid-unreadable.txt"))
    assert unreadable.status == WARN and unreadable.value == "kernel log not readable"


def test_env_section_parsed_and_judged():
    facts = checks.parse_env(fixture("env-ok.txt"))
    assert facts.modules == {"sglang": ("ok", "0.5.2")} and facts.torch == "2.8.0+cu128"
    assert facts.nics["enp0s19"] == "up" and facts.addrs["enp0s19"][0] == "10.8.0.81/32"
    assert facts.ifnames == {"NCCL_SOCKET_IFNAME": "enp0s19"}   # an empty GLOO name is no name
    host = probe.host_plans(plan_of(model_path="/models/m", env_file="/opt/env.sh"))[Host("10.8.0.82")]
    result = checks.HostResult()
    facts = checks.judge_env(section("env", fixture("env-ok.txt")), host, result)
    checks.judge_model(host.model_path, facts, result)
    assert {c.name: c.status for c in result.checks} == {
        "env.file": OK, "sw.python": OK, "sw.engine": OK, "sw.torch": OK, "sw.cuda": OK, "model.present": OK}
    assert result.facts["engine"] == "sglang 0.5.2" and result.facts["cuda"] == "12.8"
    assert checks.judge_nics(facts).status == OK
    assert checks.judge_peers(facts, host.peers).status == OK


def test_a_failing_env_file_is_reported_with_its_last_line_and_secrets_masked():
    host = probe.host_plans(plan_of(model_path="/models/m", env_file="/opt/deepep/unified-env.sh"))[Host("10.8.0.82")]
    result = checks.HostResult()
    facts = checks.judge_env(section("env", fixture("env-broken.txt")), host, result)
    checks.judge_model(host.model_path, facts, result)
    by_name = {c.name: c for c in result.checks}
    assert by_name["env.file"].status == FAIL and "exits 1" in by_name["env.file"].value
    assert "No such file" in by_name["env.file"].value
    assert by_name["sw.python"].status == FAIL and by_name["model.present"].status == FAIL
    assert checks.mask_text("export HF_TOKEN=hf_abc other", ()) == "export HF_TOKEN=*** other"
    assert "s3cr3t" not in checks.mask_text("value s3cr3t here", ["s3cr3t"])
    nic = checks.judge_nics(facts)   # =eth1 exact: down; ^docker: an exclusion, not a name
    assert nic.status == FAIL and nic.value == "eth1 is down"


def test_missing_and_broken_modules_fail_as_engine_or_launcher():
    plan = plan_of(router={"host": "10.8.0.81"})
    host = probe.host_plans(plan)[Host("10.8.0.81")]
    result = checks.HostResult()
    checks.judge_env(section("env", fixture("env-cut.txt")), host, result, fast=True)
    assert [(c.name, c.status) for c in result.checks] == [("sw.engine", FAIL), ("sw.launcher", FAIL)]
    assert "broken install" in result.checks[0].value


def test_nic_prefix_match_and_missing_interface():
    facts = checks.parse_env("ifname NCCL_SOCKET_IFNAME eth\nnic eth0 up\nnic eth1 up\naddr eth0 10.0.0.1/24\n")
    check = checks.judge_nics(facts)
    assert check.status == FAIL and check.value == "eth1 has no address"
    missing = checks.judge_nics(checks.parse_env("ifname NCCL_SOCKET_IFNAME enp0s19\nnic ens5 up\n"))
    assert missing.status == FAIL and "no interface enp0s19" in missing.value
    assert checks.judge_nics(checks.parse_env("ifname NCCL_SOCKET_IFNAME\n")) is None


def test_ib_devices_active_down_and_missing():
    found = checks.parse_ib(fixture("ib-mixed.txt"))
    assert found == {"mlx5_0": {"1": "4: ACTIVE"}, "mlx5_1": {"1": "1: DOWN", "2": "2: INIT"}, "mlx5_3": {}}
    assert checks.judge_ib(fixture("ib-mixed.txt"), ["mlx5_0"]).status == OK
    bad = checks.judge_ib(fixture("ib-mixed.txt"), ["mlx5_0", "mlx5_1", "mlx5_3"])
    assert bad.status == FAIL and bad.value == "mlx5_1 port 1 DOWN, port 2 INIT; mlx5_3 missing"
    assert checks.judge_ib("", ["mlx5_0"]).status == FAIL
    assert checks.judge_ib("", []) is None


def test_ports_busy_free_and_unknown():
    assert checks.judge_ports("30000 free\n8998 busy\n", [30000, 8998], "h").value == "in use on h: 8998"
    assert checks.judge_ports("module sglang ok 0.5\n30000 free\n", [30000], "h").status == OK
    assert checks.judge_ports("garbage", [30000], "h").status == FAIL


def test_system_facts_from_a_small_container_and_from_busybox():
    host = probe.host_plans(plan_of(prefill={"tp_size": 8, "extra_args": "--disaggregation-ib-device mlx5_0"}))[
        Host("10.8.0.81")]
    now = 1733312345.1
    judged = {c.name + ":" + c.value.split()[0]: c.status
              for c in checks.judge_system(fixture("sys-docker.txt"), host, (now - 0.1, now))}
    assert judged == {"sys.shm:/dev/shm": FAIL, "sys.memlock:ulimit": WARN, "sys.disk:run": FAIL,
                      "sys.disk:model": OK, "sys.load:load": OK, "sys.clock:offset": OK}
    busybox = checks.judge_system(fixture("sys-busybox.txt"), host, (now, now))
    assert {c.name: c.status for c in busybox} == {"sys.shm": WARN, "sys.memlock": OK, "sys.disk": WARN,
                                                  "sys.clock": WARN}


def test_clock_offset_counts_only_outside_the_round_trip():
    assert checks.judge_clock(100.5, (100.0, 101.0)).status == OK
    assert checks.judge_clock(103.5, (100.0, 101.0)).status == WARN
    late = checks.judge_clock(60.0, (100.0, 101.0))
    assert late.status == FAIL and late.value.startswith("offset -40.0 s")


def test_gpus_count_free_and_held_memory():
    busy = (GPU_FIXTURES / "h100-busy.txt").read_text()
    found, status = checks.judge_gpus(section("gpu", busy), needed=8)
    by_name = {c.name: c for c in found}
    assert by_name["gpu.free"].status == FAIL and "sglang::scheduler_TP0 pid 412301" in by_name["gpu.free"].value
    idle = (GPU_FIXTURES / "h100-idle.txt").read_text()
    found, _ = checks.judge_gpus(section("gpu", idle), needed=16)
    assert {c.name: c.status for c in found} == {"gpu.count": FAIL, "gpu.health": OK, "gpu.ecc": OK, "gpu.free": OK}
    ecc = (GPU_FIXTURES / "h100-ecc.txt").read_text()
    found, _ = checks.judge_gpus(section("gpu", ecc), needed=1)
    assert {c.name: c.status for c in found}["gpu.ecc"] == FAIL
    lost, _ = checks.judge_gpus(section("gpu", "NVIDIA-SMI has failed because it couldn't communicate "
                                               "with the NVIDIA driver.", 9), needed=8)
    assert [c.status for c in lost] == [FAIL, FAIL] and "driver" in lost[0].value
    cut, _ = checks.judge_gpus(section("gpu", idle[:200], None), needed=8)
    assert cut[0].status == FAIL


def test_one_gpu_host_reads_in_the_singular():
    # What a real single-H200 host answered (driver 580), as preflight said it there.
    real = (GPU_FIXTURES / "h200-r580-idle.txt").read_text()
    short, _ = checks.judge_gpus(section("gpu", real), needed=2)
    assert [(c.name, c.status, c.value) for c in short][:1] == [("gpu.count", FAIL, "1 GPU, the plan needs 2")]
    enough, _ = checks.judge_gpus(section("gpu", real), needed=1)
    assert {c.name: c.value for c in enough} == {"gpu.count": "1 GPU (needs 1)", "gpu.health": "1 healthy",
                                                "gpu.ecc": "no uncorrectable ECC, nothing pending",
                                                "gpu.free": "1 GPU free"}


def test_consistency_flags_the_odd_host_out_and_folds_the_rest():
    results = {f"10.8.0.{n}": checks.HostResult(roles=("decode",), facts={"engine": "sglang 0.5.23", "gpu": "H100"})
               for n in range(81, 88)}
    results["10.8.0.88"] = checks.HostResult(roles=("decode",), facts={"engine": "sglang 0.5.21", "gpu": "H100"})
    views = checks.compare(results)
    engine = next(v for v in views if v.fact == "engine")
    assert [(len(g.hosts), g.value, g.ok) for g in engine.groups] == [(7, "sglang 0.5.23", True),
                                                                       (1, "sglang 0.5.21", False)]
    assert [c.name for c in results["10.8.0.88"].checks] == ["sw.engine"]
    assert all(not results[f"10.8.0.{n}"].checks for n in range(81, 88))
    assert checks.majority({"a": "x", "b": "y"}) == "x"


# --- the shell text, run here on a stand-in root --------------------------------------------


@pytest.fixture
def root(tmp_path):
    base = tmp_path / "root"
    (base / "sys/class/net/eth0").mkdir(parents=True)
    (base / "sys/class/net/eth0/operstate").write_text("up\n")
    (base / "sys/class/net/eth0/addresses").write_text("10.9.0.5/24\n")
    (base / "sys/class/infiniband/mlx5_0/ports/1").mkdir(parents=True)
    (base / "sys/class/infiniband/mlx5_0/ports/1/state").write_text("1: DOWN\n")
    (base / "models/m").mkdir(parents=True)
    (base / "models/m/config.json").write_text("{}")
    (base / "models/m/model-00001.safetensors").write_bytes(b"x" * 4096)
    defects.add_gpus(base, driver="570.86.15", width=8)
    (base / "proc/driver/nvidia/version").write_text((FIXTURES / "proc-driver-nvidia-version-open.txt").read_text())
    return base


def run_host(host: probe.HostPlan, root: Path, tmp_path: Path) -> checks.HostResult:
    env = dict(os.environ, CLUSTER_PREFLIGHT_ROOT=str(root), CLUSTER_SIM_ROOT=str(tmp_path),
               PATH=f"{TESTING / 'bin'}:{os.environ['PATH']}")
    env.pop("CLUSTER_SIM_GPU_STATE", None)
    before = time.time()
    out = subprocess.run(["sh", "-s"], input="{\n" + shell.sections_script(probe.sections(host)) + "}\n",
                         text=True, capture_output=True, env=env, timeout=60).stdout
    return checks.judge_host(host, shell.parse_sections(out), window=(before, time.time()))


def test_the_probe_reads_nics_rdma_and_model_under_the_stand_in_root(root, tmp_path):
    env_file = tmp_path / "env.sh"
    env_file.write_text("export GLOO_SOCKET_IFNAME=eth0\necho sourced\n")
    plan = plan_of(model_path="/models/m", env_file=str(env_file),
                   env={"NCCL_SOCKET_IFNAME": "=eth0", "PYTHONPATH": str(TESTING / "standins")},
                   prefill={"tp_size": 8, "extra_args": "--disaggregation-ib-device mlx5_0"})
    result = run_host(probe.host_plans(plan)[Host("10.8.0.81")], root, tmp_path)
    status = {c.name: c.status for c in result.checks}
    assert status["net.ib"] == FAIL and status["net.nic"] == OK and status["env.file"] == OK
    assert status["model.present"] == OK and status["sw.engine"] == OK and status["gpu.free"] == OK
    assert result.facts["engine"] == "sglang 0.0.0-standin" and result.facts["driver"] == "570.86.15"
    assert status["gpu.pcie"] == WARN and status["sys.shm"] in (OK, WARN, FAIL) and status["sys.clock"] == OK
    assert result.facts["model"].startswith("2 files 4098 bytes")
    (root / "models/m/config.json").unlink()
    (root / "sys/class/net/eth0/operstate").write_text("down\n")
    env_file.write_text("echo 'HF_TOKEN=abc'; false\n")
    again = {c.name: c for c in run_host(probe.host_plans(plan)[Host("10.8.0.81")], root, tmp_path).checks}
    assert again["model.present"].status == FAIL and again["net.nic"].value == "eth0 is down"
    assert again["env.file"].status == FAIL and "abc" not in again["env.file"].value


def test_fast_mode_leaves_unreadable_gpus_and_uncached_hf_ids_to_the_full_check():
    host = probe.host_plans(plan_of(model_path="org/model"))[Host("10.8.0.82")]
    answers = {"gpu": section("gpu", "", 127), "env": section("env", "python 3.10 /p\nmodule sglang ok 0.5\n"
                                                                   "model hf-missing 1\n30001 free\n")}
    fast = checks.judge_host(host, answers, fast=True)
    assert {c.name: c.status for c in fast.checks} == {"gpu.free": WARN, "sw.engine": OK,
                                                      "model.present": WARN, "net.ports": OK}
    full = {c.name: c.status for c in checks.judge_host(host, answers).checks}
    assert full["gpu.count"] == FAIL and full["model.present"] == FAIL


def test_refusals_name_every_failing_check_with_the_start_kinds():
    from cluster.preflight import run
    from cluster.result import Outcome, Report

    bad = checks.HostResult(checks=[checks.fail("gpu.free", "GPU 3: 70 GiB", "stop it"),
                                    checks.fail("net.ports", "in use: 30001", "ss -ltnp"),
                                    checks.fail("model.present", "/m not found", "copy it")])
    report = Report([Outcome(Host("a"), False, data=bad),
                     Outcome(Host("b"), True, data=checks.HostResult(checks=[checks.ok("gpu.free", "8 free")]))])
    refused = run.refusals(report, ignore=("net.ports",))
    assert list(refused) == [Host("a")]
    assert refused[Host("a")].kind == "gpu-busy"
    assert refused[Host("a")].message == "gpu.free: GPU 3: 70 GiB; model.present: /m not found"


def test_the_views_fold_hosts_and_mark_the_odd_value():
    from cluster.render import preflight as view

    doc = [{"fact": "engine", "scope": "all", "groups": [
        {"hosts": [f"10.8.0.{n}" for n in range(81, 88)], "value": "sglang 0.5.23", "ok": True},
        {"hosts": ["10.8.0.88"], "value": "sglang 0.5.21", "ok": False}]}]
    lines = view.consistency_text(doc).plain.splitlines()
    assert lines[0].split() == ["engine", "10.8.0.[81-87]", "sglang", "0.5.23"]
    assert lines[1].split() == ["10.8.0.88", "sglang", "0.5.21", "✗"]
