"""The engine seam: every hook of every registered engine runs here, so an engine added to
the registry cannot forget one; and engine names are tested nowhere else in the code.

Pure: nothing here opens a connection.
"""

from __future__ import annotations

import inspect
import re
import subprocess
from pathlib import Path

import pytest
from helpers import serving_config

from cluster.errors import InputError
from cluster.serving import engines, plan, scripts
from cluster.serving.engines.base import HttpCall, ServingEngine

REPO = Path(__file__).resolve().parents[1]
NAMES = list(engines.NAMES)


def layout(name: str) -> list[plan.ServerSpec]:
    """Two 2-node prefill servers sharing nothing, one single-node decode: every rank kind."""
    cfg = serving_config(engine=name, prefill={"tp_size": 4, "nnodes": 2}, decode={"tp_size": 2},
                         router={"host": "10.8.0.90"})
    return plan.plan_deployment(cfg, ["10.8.0.81", "10.8.0.82"], ["10.8.0.83", "10.8.0.81"],
                                run_id="R")


def router_of(name: str) -> plan.RouterSpec:
    cfg = serving_config(engine=name, prefill={"tp_size": 4, "nnodes": 2}, decode={"tp_size": 2},
                         router={"host": "10.8.0.90"})
    spec = plan.plan_router(cfg, layout(name))
    assert spec is not None
    return spec


# Every abstract hook of the interface, and how this test exercises it.
HOOKS = {
    "server_argv": lambda engine, specs, router: [engine.server_argv(s) for s in specs],
    "server_env": lambda engine, specs, router: [engine.server_env(s) for s in specs],
    "server_ports": lambda engine, specs, router: [engine.server_ports(s) for s in specs],
    "assign_ports": lambda engine, specs, router: engine.assign_ports(specs, 5600),
    "router_launcher": lambda engine, specs, router: engine.router_launcher("python3"),
    "router_argv": lambda engine, specs, router: engine.router_argv(router),
    "router_add_worker": lambda engine, specs, router: [
        engine.router_add_worker(s.url, s.role, s.bootstrap_port) for s in specs if s.is_api],
}


def test_the_hook_table_covers_the_whole_interface():
    # A hook added to ServingEngine must be added above (and so run for every engine).
    assert set(HOOKS) == set(ServingEngine.__abstractmethods__)


def test_registry_names_its_engines_and_refuses_unknown_ones():
    assert NAMES == ["sglang", "vllm"]
    assert all(engines.get(n).name == n for n in NAMES)
    with pytest.raises(InputError, match="unknown engine 'tgi': expected one of sglang, vllm"):
        engines.get("tgi")


@pytest.mark.parametrize("name", NAMES)
def test_every_hook_of_every_engine(name):
    engine = engines.get(name)
    specs, router = layout(name), router_of(name)
    results = {hook: run(engine, specs, router) for hook, run in HOOKS.items()}
    # argv: the engine's launcher first, the model in it, each rank's own role
    for spec, argv in zip(specs, results["server_argv"]):
        assert argv and all(isinstance(a, str) for a in argv)
        assert spec.model_path in argv
    # env: pairs of valid names; ports: ints, the API rank's HTTP port among them
    for env in results["server_env"]:
        assert all(re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k) and isinstance(v, str) for k, v in env)
    for spec, ports in zip(specs, results["server_ports"]):
        assert all(isinstance(p, int) for p in ports)
        if spec.is_api:
            assert spec.port in ports
    assert len(results["assign_ports"]) == len(specs)
    assert results["router_launcher"] and results["router_argv"][: len(router.launcher)] == list(router.launcher)
    for url in router.decode:
        assert url in results["router_argv"]
    for call in results["router_add_worker"]:
        assert call is None or (isinstance(call, HttpCall) and call.path.startswith("/"))
    # attributes: default ports per role, endpoints, sweep patterns
    assert set(engine.default_ports) == {"prefill", "decode"}
    assert engine.health_path.startswith("/") and engine.router_ready_path.startswith("/")
    assert engine.router_workers_path.startswith("/") and engine.package


@pytest.mark.parametrize("name", NAMES)
def test_sweep_patterns_never_match_the_sweeping_script(name):
    engine = engines.get(name)
    for pattern in engine.sweep_patterns + engine.router_sweep_patterns:
        # [s]glang: the regex matches "sglang" but not its own text "[s]glang".
        assert re.search(r"\[[A-Za-z]\]", pattern), pattern
    text = scripts.sweep_command(name, None, spare_router=False)
    joined = "|".join(engine.sweep_patterns + engine.router_sweep_patterns)
    assert not re.search(joined, text)


@pytest.mark.parametrize("name", NAMES)
def test_a_whole_plan_of_every_engine_gives_valid_shell(name):
    specs = layout(name)
    texts = [scripts.launch_script(scripts.launch_of(s)) for s in specs + [router_of(name)]]
    texts += [scripts.preflight_script(scripts.launch_of(specs[0]))]
    for text in texts:
        result = subprocess.run(["sh", "-n"], input=text, text=True, capture_output=True)
        assert result.returncode == 0, (text, result.stderr)


def test_engine_names_are_tested_only_in_the_engine_modules():
    """No `if engine == "vllm"` outside cluster/serving/engines: an engine's differences
    live in its module (the seam), not in branches elsewhere."""
    pattern = re.compile(r"""(engine|\.engine)\s*[!=]=\s*|['"](sglang|vllm)['"]\s*[!=]=|[!=]=\s*['"](sglang|vllm)['"]""")
    offenders = []
    for path in sorted((REPO / "cluster").rglob("*.py")):
        if "engines" in path.parts or "testing" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


def test_an_engine_missing_a_hook_cannot_be_built():
    class Half(ServingEngine):
        name = "half"
        package = "half"
        default_ports = {"prefill": 1, "decode": 2}
        sweep_patterns = ("[h]alf",)
        router_sweep_patterns = ("[h]alf-router",)

        def server_argv(self, spec):  # the other hooks are missing
            return ["half"]

    with pytest.raises(TypeError, match="abstract"):
        Half()
    assert inspect.isabstract(Half)
