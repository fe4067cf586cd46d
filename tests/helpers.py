"""Helpers shared by several test modules (imported as ``helpers``; tests/ is on sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STAND_IN_NVIDIA_SMI = REPO / "cluster" / "testing" / "bin" / "nvidia-smi"
CLI = [sys.executable, "-c", "from cluster_cli.main import main; main()"]


def http(method: str, url: str, body: Any = None, timeout: float = 3) -> tuple[int, str]:
    """(status, text); status 0 when nothing answers. Proxies bypassed (loopback only)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def run_cli(*args: str, timeout: float = 120, columns: int = 200,
            env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the task CLI in a subprocess (stdout a pipe, COLUMNS wide); (exit code, out, err)."""
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout,
                          env={**os.environ, "COLUMNS": str(columns), **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr


def cli_json(*args: str, **kwargs: Any) -> tuple[int, dict]:
    """`run_cli` with ``--json`` added; the parsed document (AssertionError when it is not JSON)."""
    code, out, err = run_cli(*args, "--json", **kwargs)
    try:
        return code, json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON (exit {code}):\n{out}\n{err}") from None


def save_path(path: Path):
    """What is at ``path`` (a symlink, a file with its mode, or nothing), for `restore_path`."""
    if path.is_symlink():
        return ("link", os.readlink(path))
    if path.exists():
        return ("file", path.read_bytes(), path.stat().st_mode)
    return None


def restore_path(path: Path, saved) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    if saved is None:
        return
    if saved[0] == "link":
        path.symlink_to(saved[1])
    else:
        path.write_bytes(saved[1])
        path.chmod(saved[2])


def set_gpu_state(fleet: Any, address: str, state: str | None) -> None:
    """Give ``address`` the stand-in nvidia-smi in ``state``, or no nvidia-smi (None)."""
    link = fleet.host_dir(address) / "bin" / "nvidia-smi"
    state_file = fleet.host_dir(address) / "gpu-state"
    if link.is_symlink() or link.exists():
        link.unlink()
    if state is None:
        state_file.unlink(missing_ok=True)
        return
    # A symlink: the stand-in finds its fixtures next to its real path.
    link.symlink_to(STAND_IN_NVIDIA_SMI)
    state_file.write_text(state + "\n")


GPU_FIXTURES = REPO / "cluster" / "testing" / "fixtures" / "gpu"


def gpu_fixture(case: str) -> tuple[str, int]:
    """(stdout, exit code) of cluster.gpu.COMMAND in the stand-in fixture's state."""
    exit_file = GPU_FIXTURES / f"{case}.exit"
    return (GPU_FIXTURES / f"{case}.txt").read_text(), (
        int(exit_file.read_text()) if exit_file.exists() else 0)


def gpu_outcome(address: str, stdout: str, code: int = 0) -> Any:
    """What the gpu-status probe makes of a host printing ``stdout`` and exiting ``code``."""
    from cluster.gpu import probe as gpu_probe
    from cluster.hosts import Host
    from cluster.result import Outcome

    outcome = Outcome(Host(address), code == 0, stdout=stdout, exit_code=code)
    gpu_probe().interpret(outcome)
    return outcome


def serving_config(**doc: Any) -> Any:
    """A ``serving:`` section as parsed from roles.yaml (model path defaulted)."""
    from cluster.serving.config import parse_serving

    doc.setdefault("model_path", "deepseek-ai/DeepSeek-V3")
    return parse_serving(doc, source="roles.yaml")


def run_local(script: str) -> Any:
    """Run shell text on this machine (``sh -s``); the CompletedProcess."""
    return subprocess.run(["sh", "-s"], input=script, text=True, capture_output=True, timeout=30)


def process_alive(pid: int) -> bool:
    """A process with that pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
