"""`inv demo` run the way CI's fresh machine runs it (issue 14): a new directory, no roles
file, the console script's module; it walks through the main job on a rehearsal cluster and
leaves nothing behind. Without sshd it says how to install it and runs what works on `local`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def demo(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("CLUSTER_ROLES", "CLUSTER_STATE_DIR")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), clean.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "cluster_cli", "demo"], capture_output=True, text=True,
                          cwd=tmp_path, env={**clean, "COLUMNS": "200", **env}, timeout=600)


def processes_mentioning(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_demo_walks_through_the_main_job_and_leaves_nothing(tmp_path):
    proc = demo(tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr
    for step in ("$ inv sim-up --count 4", "$ inv gpu-status", "$ inv start-pd --router local",
                 "/generate", "$ inv pd-status", "$ inv stop-pd --sweep deployment", "$ inv sim-down"):
        assert step in out, step
    assert "4 hosts: 4 ok" in out and "32 GPUs" in out  # gpu-status
    assert re.search(r"-> HTTP 200: .*stand-in decode", out)  # the request went through the router
    assert "5 servers: 5 ok" in out  # start-pd and pd-status: 4 servers + the router
    assert "demo: 5 steps, 5 ok" in out
    state_dir = re.search(r"--state-dir (\S+)", out).group(1)
    assert not Path(state_dir).exists()
    assert processes_mentioning(state_dir) == []
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran


def test_demo_without_sshd_says_how_to_install_it_and_runs_local(tmp_path):
    proc = demo(tmp_path, CLUSTER_SIM_SSHD=str(tmp_path / "no-sshd"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "apt-get install openssh-server" in proc.stdout
    assert "$ inv check -H local" in proc.stdout and "1 host: 1 ok" in proc.stdout
    assert "demo: 2 steps, 2 ok" in proc.stdout
