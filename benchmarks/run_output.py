#!/usr/bin/env python3
"""`inv run` output and `local` scripts against their OpenSSH / bash floors (issue 14).

    python benchmarks/run_output.py [--repeat 5] [--lines 1000000]

Two tables, each a ratio measured in the same run, methods in alternation:

* **1M lines**: ``inv run -H HOST "seq 1 N" > /dev/null`` (a fresh interpreter,
  imports, connection, host-key check, output streamed to stdout) against
  ``ssh HOST seq 1 N > /dev/null`` on a loopback sshd. Also checks that the
  bytes are the same (sha256 of both through a pipe). Goal: <= 1.5x.
* **local 1 kB script**: `cluster.localrun.run_local` feeding a 1 kB stdin
  script to ``bash -s`` against ``bash -s < script`` started by
  ``subprocess.run`` (both from an already running Python), and against
  ``bash -c 'bash -s'`` (what any command given as shell text costs; sshd
  does the same). Goal: <= 1.2x.

Starts its own one-host fleet on ``127.0.39.1`` (loopback only).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cluster.command import Capture  # noqa: E402
from cluster.hosts import Host  # noqa: E402
from cluster.localrun import run_local  # noqa: E402
from cluster.testing import Fleet  # noqa: E402

SCRIPT = "".join(f"x{i}=$(( {i} * 2 ))  # padding padding\n" for i in range(40))[:1000] + "\necho done\n"


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def alternate(methods: dict, repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeat):
        for name, fn in methods.items():
            times[name].append(timed(fn))
    return times


def table(title: str, times: dict[str, list[float]], reference: str) -> str:
    ref = statistics.median(times[reference])
    rows = [f"### {title}", "", "| method | median s | min-max s | ratio |", "|---|---|---|---|"]
    for name, values in times.items():
        median = statistics.median(values)
        rows.append(f"| {name} | {median:.3f} | {min(values):.3f}-{max(values):.3f} | {median / ref:.2f}x |")
    return "\n".join(rows)


def seq_methods(fleet: Fleet, roles: Path, lines: int) -> dict:
    address = fleet.addresses[0]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    inv = [sys.executable, "-m", "cluster_cli", "run", f"seq 1 {lines}", "-H", address,
           "--roles-file", str(roles)]
    ssh = [*fleet.ssh_command(address), f"seq 1 {lines}"]
    ours = subprocess.run(inv, capture_output=True, env=env, check=True).stdout
    theirs = subprocess.run(ssh, capture_output=True, check=True).stdout
    same = hashlib.sha256(ours).hexdigest() == hashlib.sha256(theirs).hexdigest()
    print(f"sha256 inv == ssh: {same} ({len(ours)} bytes)")
    inv_true = [*inv[:4], "true", *inv[5:]]
    ssh_true = [*ssh[:-1], "true"]
    return {
        "ssh > /dev/null": lambda: subprocess.run(ssh, stdout=subprocess.DEVNULL, check=True),
        "inv run > /dev/null": lambda: subprocess.run(inv, stdout=subprocess.DEVNULL, env=env, check=True),
        # The fixed costs (interpreter start and imports, ~0.25 s, against ssh's ~0.1 s):
        # what is left after subtracting them is the cost of the output itself.
        "ssh true": lambda: subprocess.run(ssh_true, stdout=subprocess.DEVNULL, check=True),
        "inv run true": lambda: subprocess.run(inv_true, stdout=subprocess.DEVNULL, env=env, check=True),
    }


def local_methods() -> dict:
    def ours() -> None:
        capture = Capture()
        assert run_local("bash -s", Host("local"), capture, stdin=SCRIPT) == 0
        assert capture.result("", 0).stdout == "done\n"

    def bash(*argv: str):
        def run() -> None:
            out = subprocess.run(argv, input=SCRIPT.encode(), capture_output=True, check=True)
            assert out.stdout == b"done\n"
        return run

    # The middle row is the floor of any command given as shell text (sshd runs
    # `$SHELL -c COMMAND` too): two bash start-ups instead of one.
    return {"bash -s < script": bash("bash", "-s"),
            "bash -c 'bash -s' < script": bash("bash", "-c", "bash -s"),
            "run_local('bash -s')": ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per method (alternating)")
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines of `seq` output")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-run-output-") as work, \
            Fleet(Path(work), count=1, base="127.0.39.", specials=False) as fleet:
        roles = fleet.write_roles(Path(work) / "roles.yaml", {"all": fleet.addresses},
                                  extra={"ssh": {"known_hosts": str(fleet.known_hosts)}})
        seq = alternate(seq_methods(fleet, roles, args.lines), args.repeat)
    print(table(f"`seq 1 {args.lines}` on one loopback host, stdout to /dev/null", seq, "ssh > /dev/null"))
    median = {name: statistics.median(values) for name, values in seq.items()}
    output_cost = {"ssh": median["ssh > /dev/null"] - median["ssh true"],
                   "inv": median["inv run > /dev/null"] - median["inv run true"]}
    print(f"\noutput alone (median minus the `true` run): ssh {output_cost['ssh']:.3f} s, "
          f"inv {output_cost['inv']:.3f} s ({output_cost['inv'] / max(output_cost['ssh'], 1e-9):.2f}x)")
    print()
    local = alternate(local_methods(), args.repeat * 10)
    print(table(f"a {len(SCRIPT)}-byte stdin script on `local`", local, "bash -s < script"))


if __name__ == "__main__":
    main()
