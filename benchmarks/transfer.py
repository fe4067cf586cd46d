#!/usr/bin/env python3
"""Transfer benchmark on a loopback sshd fleet: ``inv put`` / ``inv get`` vs parallel-ssh.

The commands behind the tables in docs/performance.md ("Transfers")::

    python benchmarks/transfer.py --hosts 64 --size-mb 100 --repeat 3
    python benchmarks/transfer.py --get --hosts 16 --size-mb 100 --repeat 3

What it does
------------
* Starts a loopback fleet of N real sshd hosts on ``127.2.0.1`` upwards, one
  sshd per host, each host's SFTP server starting in its own directory
  (``Fleet(sftp_home_per_host=True)``): the same relative remote path is a
  different file per host, as on separate machines. Or reuses a running
  fleet (``--serve`` / ``--workdir``).
* Writes one file of ``--size-mb`` random bytes and records every host key once.
* Runs the methods ``--repeat`` times in alternation, each in a fresh Python
  subprocess, after deleting every copy (each run copies everything).
  A run counts the copies with the right size afterwards (``ok``).
* ``--get``: every host holds the file (written once, straight to its
  directory) and the methods fetch it from all of them instead.
* Prints a markdown table: median wall (range), client CPU, machine CPU
  (every process, sshd included: on loopback the receiving side runs on the
  same cores), aggregate throughput (hosts x size / wall) and ratios to
  ``pssh`` measured in the same run.

Methods
-------
``engine``   ``cluster.transfer.put`` (``get``) on a fresh ``Engine`` (what ``inv put``
             runs), host keys checked against the warm-up's known_hosts.
``inv``      the whole command ``inv put FILE bench.bin -H @hosts`` (``inv get bench.bin
             DIR``; interpreter start, imports, table on stdout).
``pssh``     parallel-ssh ``ParallelSSHClient(hosts, pool_size=fanout).copy_file(
             FILE, "bench.bin")`` (``--get``: ``copy_remote_file("bench.bin", DIR/bench.bin)``,
             one ``bench.bin_<host>`` per host) + ``joinall`` (libssh2 + gevent); no
             host-key checks.
``engine:NAME=VALUE[+NAME=VALUE]``  ``engine`` with tuning constants of ``cluster.hostfiles``
             changed for that run, e.g. ``engine:SFTP_WRITE_REQUEST=262144``.

Everything connects to 127.0.0.0/8 only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fanout import (  # noqa: E402  (the fan-out benchmark's fleet and measuring tools)
    FleetInfo,
    PeakThreads,
    Row,
    Sample,
    _cpu_now,
    _inv,
    engine_settings,
    fleet_alive,
    fleet_info,
    load_average,
    machine_busy_s,
    peak_rss_mib,
    warm_up,
)

BASE = "127.2.0."
REMOTE = "bench.bin"
METHODS = ("engine", "pssh")


# --------------------------------------------------------------------------- fleet
def copies(info: FleetInfo, hosts: list[str]) -> list[Path]:
    return [Path(info.workdir) / "hosts" / h / "home" / REMOTE for h in hosts]


def clear_copies(info: FleetInfo, hosts: list[str], fetched: Path) -> None:
    for path in copies(info, hosts):
        path.unlink(missing_ok=True)
        for temp in path.parent.glob(f".{REMOTE}.*.part"):
            temp.unlink()
    shutil.rmtree(fetched, ignore_errors=True)


def seed_copies(info: FleetInfo, hosts: list[str], source: Path) -> None:
    """--get: every host holds the file (a hard link: no 6 GB of writes before the first run)."""
    for path in copies(info, hosts):
        path.unlink(missing_ok=True)
        os.link(source, path)


def count_ok(info: FleetInfo, hosts: list[str], size: int, fetched: Path | None) -> int:
    if fetched is None:
        paths = copies(info, hosts)
    else:
        paths = [p for p in fetched.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return sum(1 for p in paths if p.exists() and p.stat().st_size == size)


# --------------------------------------------------------------------------- child side
def _engine(info: FleetInfo, hosts: list[str], fanout: int, source: str,
            tuning: dict[str, str], fetched: Path | None) -> Callable[[], int]:
    from cluster import hostfiles, transfer
    from cluster.hosts import Host
    from cluster.ssh import Engine

    for name, value in tuning.items():
        if not hasattr(hostfiles, name):
            raise SystemExit(f"cluster.hostfiles has no {name}")
        setattr(hostfiles, name, int(value))
    settings = engine_settings(info, fanout)

    def op() -> int:
        targets = [Host(h) for h in hosts]
        with Engine(settings) as engine:
            if fetched is None:
                report = transfer.put(engine, targets, transfer.plan_put(source, REMOTE))
            else:
                report = transfer.get(engine, targets, transfer.plan_get(REMOTE, str(fetched), targets))
        if not report.all_ok:
            bad = report.failed[0]
            print(f"engine: {len(report.failed)} hosts failed, e.g. {bad.host}: {bad.error}",
                  file=sys.stderr)
        return len(report.ok)

    return op


def _pssh(info: FleetInfo, hosts: list[str], fanout: int, source: str,
          tuning: dict[str, str], fetched: Path | None) -> Callable[[], int]:
    from gevent import joinall
    from pssh.clients import ParallelSSHClient

    def op() -> int:
        client = ParallelSSHClient(hosts, user=info.user, port=info.port, pkey=info.key,
                                   pool_size=fanout, num_retries=1, timeout=10)
        if fetched is None:
            greenlets = client.copy_file(source, REMOTE)
        else:
            fetched.mkdir(parents=True, exist_ok=True)
            greenlets = client.copy_remote_file(REMOTE, str(fetched / REMOTE))
        joinall(greenlets, raise_error=False)
        failed = [g.exception for g in greenlets if g.exception is not None]
        if failed:
            print(f"pssh: {len(failed)} hosts failed, e.g. {failed[0]!r}", file=sys.stderr)
        return len(hosts) - len(failed)

    return op


def _inv_transfer(info: FleetInfo, hosts: list[str], fanout: int, source: str,
                  tuning: dict[str, str], fetched: Path | None) -> Callable[[], int]:
    """The whole ``inv put`` / ``inv get`` command (fanout.py's runner of inv commands)."""
    task = ("put", source, REMOTE) if fetched is None else ("get", REMOTE, str(fetched))
    return _inv(*task)(info, hosts, fanout)


FACTORIES = {"engine": _engine, "inv": _inv_transfer, "pssh": _pssh}


def child(method: str, info: FleetInfo, count: int, fanout: int, source: str,
          fetched: Path | None) -> dict[str, Any]:
    base, _, tuning_text = method.partition(":")
    tuning = dict(item.split("=", 1) for item in tuning_text.split("+") if item)
    hosts = info.addresses[:count]
    op = FACTORIES[base](info, hosts, fanout, source, tuning, fetched)
    with PeakThreads() as threads:
        cpu0, busy0, wall0 = _cpu_now(), machine_busy_s(), time.perf_counter()
        op()
        wall, cpu, busy = time.perf_counter() - wall0, _cpu_now() - cpu0, machine_busy_s() - busy0
    ok = count_ok(info, hosts, os.path.getsize(source), fetched)
    return {"ok": ok, "wall": wall, "cpu": cpu, "busy": busy, "threads": threads.peak,
            "rss_mib": peak_rss_mib()}


# --------------------------------------------------------------------------- parent side
def measure(method: str, workdir: str, count: int, fanout: int, source: str,
            fetched: Path | None, timeout: float = 1200) -> Sample:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--workdir", workdir,
            "--hosts", str(count), "--fanout", str(fanout), "--source", source]
    if fetched is not None:
        argv += ["--fetched", str(fetched)]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT)
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} child failed (exit {proc.returncode}) after "
                           f"{time.monotonic() - started:.0f} s")
    report = json.loads(out.decode().strip().splitlines()[-1])
    # proc_cpu (the whole subprocess) is not part of this table: 0.
    return Sample(report["wall"], report["cpu"], 0.0, report["busy"], report["rss_mib"],
                  report["threads"], report["ok"])


def render(rows: list[Row], size: int, fanout: int, verb: str) -> str:
    count = rows[0].hosts
    ref = next((r for r in rows if r.method == "pssh"), None)
    lines = [
        f"{verb}, N={count} hosts x {size / 1e6:.0f} MB, fanout {fanout}, {len(rows[0].samples)} runs each "
        "in alternation (medians; wall range in brackets; RSS and threads: peak)",
        "",
        "| method | ok | wall s | aggregate MB/s | client CPU s | machine CPU s | peak RSS MiB "
        "| peak threads | wall vs pssh | client CPU vs pssh | machine CPU vs pssh |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        wall, cpu, busy = row.median("wall"), row.median("cpu"), row.median("machine_cpu")
        walls = [s.wall for s in row.samples]
        ratios = ["-"] * 3
        if ref is not None and ref.samples:
            ratios = [f"{wall / ref.median('wall'):.2f}x", f"{cpu / ref.median('cpu'):.2f}x",
                      f"{busy / ref.median('machine_cpu'):.2f}x"]
        rss = f"{row.peak('rss_mib'):.0f}" if row.peak("rss_mib") else "-"
        threads = f"{row.peak('threads'):.0f}" if row.peak("threads") else "-"
        lines.append(
            f"| {row.method} | {min(s.ok for s in row.samples)}/{count} | {wall:.2f} "
            f"({min(walls):.2f}-{max(walls):.2f}) | {count * size / 1e6 / wall:.0f} | {cpu:.2f} | "
            f"{busy:.2f} | {rss} | {threads} | {' | '.join(ratios)} |")
    return "\n".join(lines)


LEGEND = (
    "ok: hosts whose copy has the full size afterwards; aggregate MB/s: hosts x size / wall; "
    "client CPU: user+sys of the measuring process during the transfer (for `inv`: with the inv "
    "subprocess); machine CPU: every process on the machine (/proc/stat), the sshd side and other "
    "users' work included; RSS and threads: the measuring process (`inv`: that process only, "
    "without the inv subprocess that does the work)."
)


def start_fleet(workdir: Path, count: int):
    from cluster.testing import Fleet

    return Fleet(workdir, count=count, base=BASE, specials=False, sftp_home_per_host=True,
                 start_timeout=120).start()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        info = fleet_info(Path(args.workdir))
        fetched = Path(args.fetched) if args.fetched else None
        print(json.dumps(child(args.child, info, args.hosts, args.fanout, args.source, fetched)))
        return 0
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="transfer-fleet-")).resolve()
    fleet = None
    info = fleet_info(workdir) if (workdir / "roles.yaml").exists() else None
    if info is None or len(info.addresses) < args.hosts or not fleet_alive(info):
        log(f"starting a fleet of {args.hosts} hosts in {workdir} ...")
        fleet = start_fleet(workdir, args.hosts)
        info = fleet_info(workdir)
    try:
        if args.serve:
            log(f"fleet running: --workdir {workdir}  (Ctrl-C stops it)")
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
            return 0
        return run(args, info)
    finally:
        if fleet is not None:
            fleet.stop()


def run(args: argparse.Namespace, info: FleetInfo) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        if method.partition(":")[0] not in FACTORIES:
            raise SystemExit(f"unknown method {method!r}: one of {', '.join(FACTORIES)}")
    source_dir = Path(tempfile.mkdtemp(prefix="transfer-src-"))
    source = source_dir / "payload.bin"
    size = args.size_mb * 1_000_000
    with open(source, "wb") as out:
        for _ in range(args.size_mb):
            out.write(os.urandom(1_000_000))
    hosts = info.addresses[:args.hosts]
    fetched = source_dir / "fetched" if args.get else None
    verb = "get" if args.get else "put"
    try:
        log(f"warm-up (recording host keys) ... load {load_average()}")
        warm_up(info, args.hosts, args.fanout)
        before = load_average()
        rows = {m: Row(m, args.hosts) for m in methods}
        for rep in range(args.repeat):
            for method in methods:
                clear_copies(info, hosts, source_dir / "fetched")
                if args.get:
                    seed_copies(info, hosts, source)
                sample = measure(method, info.workdir, args.hosts, args.fanout, str(source),
                                 fetched)
                rows[method].samples.append(sample)
                log(f"rep {rep + 1}/{args.repeat} {method:<10} wall {sample.wall:6.2f} s  "
                    f"cpu {sample.cpu:6.2f} s  machine {sample.machine_cpu:6.2f} s  "
                    f"ok {sample.ok}/{args.hosts}  load {load_average()}")
        clear_copies(info, hosts, source_dir / "fetched")
    finally:
        shutil.rmtree(source_dir, ignore_errors=True)
    print(f"\n### {verb}: {args.hosts} hosts x {args.size_mb} MB\n")
    print(f"{os.cpu_count()} CPUs; load average (1/5/15 min) before: {before}, "
          f"after: {load_average()}\n")
    print(render(list(rows.values()), size, args.fanout, verb) + "\n")
    print(LEGEND + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {m: [vars(s) for s in r.samples] for m, r in rows.items()}, indent=1))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=64, help="hosts (default 64)")
    parser.add_argument("--size-mb", type=int, default=100, help="file size in MB (default 100)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (default 3)")
    parser.add_argument("--fanout", type=int, default=64, help="hosts in flight (default 64)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated: engine, inv, pssh, engine:NAME=VALUE "
                             "(default engine,pssh)")
    parser.add_argument("--workdir", help="fleet directory: reused when its fleet is running")
    parser.add_argument("--get", action="store_true",
                        help="measure fetching the file from every host instead of sending it")
    parser.add_argument("--serve", action="store_true", help="start the fleet and wait")
    parser.add_argument("--json", help="also write all samples to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--fetched", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
