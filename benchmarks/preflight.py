#!/usr/bin/env python3
"""inv preflight against inv gpu-status on the same loopback hosts (issue 17's goal:
preflight on 64 hosts costs at most 1.5x gpu-status's wall time).

    python benchmarks/preflight.py [--hosts 64] [--repeat 5]

Starts a loopback fleet (real sshd, 16 addresses per sshd on 127.3.0.1 upwards), gives
every host the stand-in nvidia-smi (8 idle H100s), a clean stand-in root
(cluster/testing/defects.py: NIC, RDMA port, model copy) and a roles file whose serving
section makes preflight run every check (env file, NCCL interface, RDMA device, path
model; a quarter of the hosts prefill, so each decode host also connects to every prefill
host's SSH port). Then, alternately, ``--repeat`` times each, times the whole commands as
a user types them (fresh interpreter, imports, table on stdout)::

    inv gpu-status --roles-file R          (every host)
    inv preflight  --roles-file R          (the same hosts, the plan of start-pd)

and prints the median walls and their ratio. Exit 1 when the ratio exceeds ``--limit``
(default 1.5). The host keys are recorded by a warm-up run first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASE = "127.3.0."
HOSTS_PER_SSHD = 16


def prepare(workdir: Path, count: int):
    """A started fleet with stand-ins and a roles file (fleet, roles path)."""
    from cluster.testing import Fleet, defects
    from cluster.testing.sim import plan_roles

    fleet = Fleet(workdir / "fleet", count=count, base=BASE, specials=False,
                  hosts_per_sshd=HOSTS_PER_SSHD, start_timeout=120).start()
    testing = ROOT / "cluster" / "testing"
    for index, address in enumerate(fleet.addresses):
        host = fleet.host_dir(address)
        (host / "bin" / "nvidia-smi").symlink_to(testing / "bin" / "nvidia-smi")
        (host / "fixtures").symlink_to(testing / "fixtures")
        defects.prepare_host(host, index)
    run_dir = workdir / "run"
    run_dir.mkdir(mode=0o777)
    env_file = defects.write_env_file(workdir / "env.sh")
    serving = {"engine": "sglang", "python": "python3", "run_dir": str(run_dir),
               "env": {"PYTHONPATH": str(testing / "standins")},
               "prefill": {"tp_size": 8}, "decode": {"tp_size": 8}}
    roles = plan_roles(fleet.addresses)
    path = fleet.write_roles(workdir / "roles.yaml", {**roles, "all": fleet.addresses},
                             extra={"serving": defects.serving_settings(serving, env_file)})
    return fleet, path


def timed(args: list[str], roles: Path) -> tuple[float, int]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("CLUSTER_ROLES", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cluster_cli", *args, "--roles-file", str(roles)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    return time.perf_counter() - started, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--limit", type=float, default=1.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-preflight-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        fleet, roles = prepare(workdir, args.hosts)
        try:
            commands = {"gpu-status": ["gpu-status", "-r", "all"], "preflight": ["preflight"]}
            for name, command in commands.items():  # warm-up: host keys recorded, caches filled
                _, code = timed(command, roles)
                print(f"warm-up {name}: exit {code}", file=sys.stderr)
            walls: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(args.repeat):
                for name, command in commands.items():
                    wall, code = timed(command, roles)
                    walls[name].append(wall)
                    print(f"{name}: {wall:.2f} s (exit {code})", file=sys.stderr)
        finally:
            fleet.stop()
    medians = {name: statistics.median(values) for name, values in walls.items()}
    ratio = medians["preflight"] / medians["gpu-status"]
    print(f"| hosts | inv gpu-status | inv preflight | ratio (limit {args.limit}) |")
    print("|---:|---:|---:|---:|")
    print(f"| {args.hosts} | {medians['gpu-status']:.2f} s ({min(walls['gpu-status']):.2f}-"
          f"{max(walls['gpu-status']):.2f}) | {medians['preflight']:.2f} s ({min(walls['preflight']):.2f}-"
          f"{max(walls['preflight']):.2f}) | {ratio:.2f} |")
    return 0 if ratio <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
