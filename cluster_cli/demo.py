"""``inv demo``: the tool's main job in one command, on a throw-away rehearsal cluster.

A 4-host rehearsal cluster comes up (real sshd on loopback, stand-in GPUs and servers:
docs/rehearsal.md), then the tasks an operator runs are run as they would type them:
gpu-status, start-pd with the router on this machine, one request through the router,
pd-status, stop-pd; then everything is torn down, whatever happened. Without sshd it says
the one install command and runs what works on ``local``.

Thin: each step calls the task itself (same options, same output); the cluster comes from
`cluster.testing.sim`.
"""

from __future__ import annotations

import json as jsonlib
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from invoke import Context, Exit

from cluster.errors import InputError
from cluster.lazy import lazy

from .common import cluster_task

# Loaded when the demo runs, not when `inv --list` imports this module (cluster/lazy.py).
render = lazy("cluster.render.core")
rich_text = lazy("rich.text")
urllib_request = lazy("urllib.request")

DEMO_HOSTS = 4


def _console():
    return render.stdout_console()


def _step(title: str) -> None:
    _console().print(rich_text.Text(f"\n$ {title}", style="bold cyan"), soft_wrap=True)


def _run_task(name: str, **options: Any) -> bool:
    """Run task ``name`` as ``inv name --options`` would; True when it exited 0."""
    from .tasks import ns

    try:
        ns[name](Context(), **options)
    except Exit as exc:
        if exc.message:
            _console().print(rich_text.Text(str(exc.message), style="red"), soft_wrap=True)
        return exc.code == 0
    return True


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _free_base(sim: Any) -> str:
    """An address prefix whose first hosts nothing listens on (so a running rehearsal or
    test fleet is never disturbed)."""
    for _ in range(50):
        base = f"127.0.{random.randint(40, 99)}."
        if not sim.listening_ports([f"{base}{i}" for i in range(1, DEMO_HOSTS + 1)]):
            return base
    raise InputError("no free loopback addresses for the demo (127.0.40-99.x all in use)")


def _add_router(roles_file: str, router_port: int, metrics_port: int) -> None:
    """The rehearsal's roles file with the PD router on this machine (offline: the
    stand-ins advertise no tokenizer)."""
    path = Path(roles_file)
    doc = yaml.safe_load(path.read_text())
    serving = doc.setdefault("serving", {})
    serving.setdefault("env", {})["HF_HUB_OFFLINE"] = "1"
    serving["router"] = {"host": "local", "port": router_port, "metrics_port": metrics_port}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _request(url: str) -> bool:
    """One generate request through the router; prints the answer."""
    body = jsonlib.dumps({"text": "Hello from inv demo", "sampling_params": {"max_new_tokens": 8}}).encode()
    request = urllib_request.Request(url + "/generate", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib_request.urlopen(request, timeout=30) as response:
            answer = response.read().decode(errors="replace")
            _console().print(rich_text.Text(f"POST {url}/generate -> HTTP {response.status}: {answer[:200]}"),
                             soft_wrap=True)
            return response.status == 200
    except OSError as exc:
        _console().print(rich_text.Text(f"POST {url}/generate failed: {exc}", style="red"), soft_wrap=True)
        return False


def _without_sshd(hint: str) -> list[bool]:
    _console().print(rich_text.Text(f"No OpenSSH server here, so no rehearsal cluster: {hint}.\n"
                          "Meanwhile, what works on this machine alone ('local', no SSH):",
                          style="bold yellow"), soft_wrap=True)
    results = []
    for title, name, options in (("inv check -H local", "check", {"hosts": "local"}),
                                 ("inv sys-status -H local", "sys-status", {"hosts": "local"})):
        _step(title)
        results.append(_run_task(name, **options))
    return results


def _walkthrough(sim: Any, state: Any, router_port: int) -> list[bool]:
    steps: list[tuple[str, Callable[[], bool]]] = [
        ("inv gpu-status", lambda: _run_task("gpu-status")),
        ("inv start-pd --router local", lambda: _run_task("start-pd", router="local")),
        (f"curl -X POST http://127.0.0.1:{router_port}/generate   # one request through the router",
         lambda: _request(f"http://127.0.0.1:{router_port}")),
        ("inv pd-status", lambda: _run_task("pd-status")),
        ("inv stop-pd --sweep deployment", lambda: _run_task("stop-pd", sweep="deployment")),
    ]
    results = []
    for title, action in steps:
        _step(title)
        results.append(action())
        if not results[-1] and title.startswith("inv start-pd"):
            break  # nothing to route or stop cleanly; teardown still runs
    return results


@cluster_task(help={"keep": "Leave the rehearsal cluster running afterwards (stop it with the "
                            "printed sim-down command)."})
def demo(c, keep=False):
    """A 4-host rehearsal cluster: gpu-status, start-pd with router, a request, pd-status, stop-pd, teardown."""
    import importlib

    from cluster.testing.fleet import pick_port

    sim = importlib.import_module("cluster.testing.sim")
    started = time.monotonic()
    try:
        sim.check_sshd()
    except InputError:
        results = _without_sshd(sim.INSTALL_HINT)
        _finish(results, started)
        return
    state_dir = tempfile.mkdtemp(prefix="cluster-demo-")
    base = _free_base(sim)
    _step(f"inv sim-up --count {DEMO_HOSTS} --base {base} --state-dir {state_dir}")
    try:
        state = sim.up(state_dir, hosts=DEMO_HOSTS, gpus=8, base=base, load_seconds=1)
        _console().print(rich_text.Text(f"rehearsal cluster up: {DEMO_HOSTS} hosts {state.folded} "
                              f"(real sshd, stand-in GPUs and SGLang servers)"), soft_wrap=True)
        router_port = pick_port(["127.0.0.1"])
        _add_router(state.roles_file, router_port, pick_port(["127.0.0.1"]))
        with _environment(CLUSTER_ROLES=state.roles_file, CLUSTER_STATE_DIR=state.deployments_dir):
            results = _walkthrough(sim, state, router_port)
    finally:
        if keep:
            _console().print(rich_text.Text(f"\nkept running: stop it with inv sim-down --state-dir {state_dir}"))
        else:
            _step(f"inv sim-down --state-dir {state_dir}")
            result = sim.down(state_dir)
            _console().print(rich_text.Text(f"stopped; removed {len(result.removed)} paths, "
                                  f"{len(result.swept)} leftover processes"), soft_wrap=True)
            if Path(state_dir).exists() and not any(Path(state_dir).iterdir()):
                Path(state_dir).rmdir()
    _finish(results, started)


def _finish(results: list[bool], started: float) -> None:
    elapsed = time.monotonic() - started
    failed = results.count(False)
    line = rich_text.Text(f"\ndemo: {render.counted(len(results), 'step')}, {len(results) - failed} ok"
                + (f", {failed} failed" if failed else "") + f" in {elapsed:.1f} s", style="bold")
    _console().print(line, soft_wrap=True)
    if failed:
        raise Exit(code=1)
