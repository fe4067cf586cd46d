#!/usr/bin/env python3
"""N hosts behind one bastion against the same N hosts reached directly, and ssh_config resolution cost.

Starts a loopback fleet of ``--hosts`` targets (16 addresses per sshd) and one
bastion sshd with OpenSSH's stock ``MaxStartups 10:30:100``, writes one
ssh_config with an alias per target (``ProxyJump`` the bastion, or not), and
runs ``true`` on every alias through the engine at the default fanout, each
repeat with a new engine (new connections, ssh -G resolution included).
Host keys are recorded by a first, untimed run. Prints a markdown table: hosts
ok, bastion logins (from its sshd log), best/median wall per route, and the
ratio. Then the cost of resolving ``--aliases`` distinct aliases (``ssh -G``
each, from ``--threads`` threads as the fan-out's workers do)::

    python benchmarks/bastion.py --hosts 200 --repeat 3 --aliases 1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.hosts import Host  # noqa: E402
from cluster.inventory import SSHSettings  # noqa: E402
from cluster.ssh import Engine  # noqa: E402
from cluster.sshconfig import Resolver  # noqa: E402
from cluster.testing import Fleet  # noqa: E402


def write_config(path: Path, targets: Fleet, bastion: Fleet, known: Path, jump: bool) -> Path:
    gate = bastion.addresses[0]
    lines = [f"Host t{i}\n  HostName {address}\n" for i, address in enumerate(targets.addresses)]
    if jump:
        lines.append(f"Host t*\n  ProxyJump {gate}\n")
    lines.append(f"Host {gate}\n  Port {bastion.port}\n  IdentityFile {bastion.key_file}\n")
    lines.append(f"Host *\n  User {targets.user}\n  Port {targets.port}\n  IdentityFile {targets.key_file}\n"
                 f"  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n"
                 "  StrictHostKeyChecking accept-new\n")
    path.write_text("".join(lines))
    return path


def one_run(config: Path, count: int) -> tuple[float, int]:
    hosts = [Host(f"t{i}") for i in range(count)]
    started = time.perf_counter()
    with Engine(SSHSettings(ssh_config=str(config))) as engine:
        results = engine.run(hosts, "true")
    wall = time.perf_counter() - started
    return wall, sum(1 for r in results.values() if getattr(r, "exited", None) == 0)


def routes(args: argparse.Namespace, work: Path) -> None:
    with Fleet(work / "targets", count=args.hosts, base="127.1.40.", specials=False, hosts_per_sshd=16) as targets, \
            Fleet(work / "bastion", count=1, base="127.0.127.", specials=False,
                  sshd_options=["MaxStartups 10:30:100"]) as bastion:
        known = work / "known_hosts"
        known.touch()
        configs = {name: write_config(work / f"{name}.conf", targets, bastion, known, jump)
                   for name, jump in (("direct", False), ("bastion", True))}
        for config in configs.values():
            one_run(config, args.hosts)  # records host keys: not timed
        gate = bastion.addresses[0]
        samples: dict[str, list[float]] = {name: [] for name in configs}
        oks: dict[str, list[int]] = {name: [] for name in configs}
        logins: list[int] = []
        for _ in range(args.repeat):
            for name, config in configs.items():
                before = bastion.connection_count(gate)
                wall, ok = one_run(config, args.hosts)
                samples[name].append(wall)
                oks[name].append(ok)
                if name == "bastion":
                    logins.append(bastion.connection_count(gate) - before)
                print(f"{name}: {wall:.2f} s, {ok}/{args.hosts} ok", file=sys.stderr)
        print(f"\n{args.hosts} hosts, `true`, default fanout, {args.repeat} runs each, new engine per run\n")
        print("| route | ok (worst run) | bastion logins per run | best wall s | median wall s |")
        print("|---|---|---|---|---|")
        for name in configs:
            login_text = ", ".join(map(str, logins)) if name == "bastion" else "-"
            print(f"| {name} | {min(oks[name])}/{args.hosts} | {login_text} | {min(samples[name]):.2f} | "
                  f"{statistics.median(samples[name]):.2f} |")
        ratio = statistics.median(samples["bastion"]) / statistics.median(samples["direct"])
        print(f"\nbastion / direct (median): {ratio:.2f}x")


def resolution(args: argparse.Namespace, work: Path) -> None:
    config = work / "aliases.conf"
    config.write_text("".join(f"Host gpu-{i}\n  HostName 10.8.{i // 250}.{i % 250 + 1}\n  User ubuntu\n"
                              for i in range(args.aliases)) + "Host *\n  ConnectTimeout 5\n")
    resolver = Resolver(str(config))
    names = [f"gpu-{i}" for i in range(args.aliases)]
    chunks = [names[i::args.threads] for i in range(args.threads)]
    started = time.perf_counter()
    threads = [threading.Thread(target=lambda c=c: [resolver.resolve(n) for n in c]) for c in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    started = time.perf_counter()
    for name in names:
        resolver.resolve(name)
    cached = time.perf_counter() - started
    print(f"\nssh_config resolution, {args.aliases} aliases in one file, {args.threads} threads (ssh -G each):")
    print(f"wall {wall:.2f} s = {wall / args.aliases * 1000:.2f} ms per host; "
          f"cached lookups {cached / args.aliases * 1e6:.1f} us per host")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=200, help="targets behind the bastion (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per route (default 3)")
    parser.add_argument("--aliases", type=int, default=1000, help="aliases for the resolution cost (default 1000)")
    parser.add_argument("--threads", type=int, default=64, help="resolving threads (default 64, the fanout)")
    parser.add_argument("--no-routes", action="store_true", help="only measure the resolution cost")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-bastion-") as tmp:
        work = Path(tmp)
        if not args.no_routes:
            routes(args, work)
        resolution(args, work)


if __name__ == "__main__":
    main()
