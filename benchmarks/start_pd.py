#!/usr/bin/env python3
"""`inv start-pd --router local` against the same start without a router (issue 14).

    python benchmarks/start_pd.py [--repeat 5] [--hosts 4] [--load-seconds 1]

A rehearsal cluster (`cluster.testing.sim`: real sshd on loopback, stand-in
SGLang servers loading for ``--load-seconds``) and the real sglang-router on
this machine. Each round runs ``start-pd`` (a fresh ``inv`` process, waiting
until every server is ready, and with the router until the router answers),
then ``stop-pd``; with and without ``--router local`` in alternation. The
figure is the ratio of the medians of start-pd's wall time. Goal: <= 1.3x.

Loopback only: the cluster's addresses are 127.0.x.y, the router binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cluster.testing import sim  # noqa: E402
from cluster.testing.fleet import pick_port  # noqa: E402


def free_base(hosts: int) -> str:
    for _ in range(50):
        base = f"127.0.{random.randint(100, 199)}."
        if not sim.listening_ports([f"{base}{i}" for i in range(1, hosts + 1)]):
            return base
    raise SystemExit("no free loopback addresses (127.0.100-199.x all in use)")


def add_router(roles_file: str) -> None:
    path = Path(roles_file)
    doc = yaml.safe_load(path.read_text())
    serving = doc.setdefault("serving", {})
    serving.setdefault("env", {})["HF_HUB_OFFLINE"] = "1"
    serving["router"] = {"port": pick_port(["127.0.0.1"]),  # no host: only --router local plans one
                         "metrics_port": pick_port(["127.0.0.1"])}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--load-seconds", type=float, default=1.0)
    args = parser.parse_args()
    sim.check_sshd()
    state_dir = tempfile.mkdtemp(prefix="bench-start-pd-")
    state = sim.up(state_dir, hosts=args.hosts, gpus=8, base=free_base(args.hosts), load_seconds=args.load_seconds)
    try:
        add_router(state.roles_file)
        env = {**os.environ, "CLUSTER_ROLES": state.roles_file, "CLUSTER_STATE_DIR": state.deployments_dir,
               "PYTHONPATH": str(REPO)}
        inv = [sys.executable, "-m", "cluster_cli"]
        times: dict[str, list[float]] = {"without router": [], "--router local": []}
        for _ in range(args.repeat):
            for label, extra in (("without router", []), ("--router local", ["--router", "local"])):
                times[label].append(timed(inv + ["start-pd", *extra], env))
                timed(inv + ["stop-pd", "--grace", "1"], env)
        base = statistics.median(times["without router"])
        print(f"start-pd on {args.hosts} rehearsal hosts (stand-in load {args.load_seconds:g} s), "
              f"{args.repeat} rounds, load average {os.getloadavg()[0]:.1f}\n")
        print("| start-pd | median s | min-max s | ratio |\n|---|---|---|---|")
        for label, values in times.items():
            print(f"| {label} | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} | "
                  f"{statistics.median(values) / base:.2f}x |")
    finally:
        sim.down(state_dir)


if __name__ == "__main__":
    main()
