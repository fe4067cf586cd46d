#!/usr/bin/env python3
"""Fan-out benchmark on a loopback sshd fleet: this library vs Fabric, parallel-ssh and clush.

One command produces the tables in docs/performance.md::

    python benchmarks/fanout.py --probe gpu-status --second-round --first-contact \
        [--engine-ref DIR]

What it does
------------
* Starts a loopback fleet of as many real sshd hosts as the largest table
  needs, on ``127.1.0.1`` upwards (16 addresses per sshd), or reuses a
  running one (``--workdir DIR`` of a fleet started with ``--serve``).
* Records every host key once (a warm-up run), so the engine checks known
  keys as it would day to day.
* For each host count N, runs the methods ``--repeat`` times *in
  alternation* (engine, fabric, pssh, clush, engine, fabric, ...), each run
  in a fresh Python subprocess so CPU, peak RSS and thread counts belong to
  one method only.
* Prints a markdown table per N: median wall (and range), client CPU
  (user+sys) of the measured call, client CPU per host, CPU of the whole
  subprocess (interpreter start and imports included), peak RSS, peak thread
  count, and wall and CPU ratios to the reference measured in the same run
  (parallel-ssh; for the gpu-status table, the engine running ``true``).

Methods
-------
``engine``      this library: ``Engine(settings).run(hosts, "true")`` +
                ``build_report`` (the path of ``inv run``), host keys checked
                against the known_hosts file the warm-up recorded.
``engine-ref``  the same, with the ``cluster`` package of another checkout
                (``--engine-ref DIR``), e.g. an older commit for before/after.
``fabric``      raw ``fabric.ThreadingGroup(*hosts, user=, port=,
                connect_kwargs={"key_filename": KEY}).run("true", hide=True,
                warn=True)`` with Fabric's default AutoAddPolicy: the baseline
                of issue 6. Up to ``--baseline-max-hosts`` only.
``pssh``        ``pssh.clients.ParallelSSHClient(hosts, pool_size=fanout)``
                (libssh2 + gevent), ``run_command`` + ``join``; no host-key checks.
``clush``       ClusterShell's Task API (what ``clush -f FANOUT`` runs): one
                OpenSSH ``ssh`` process per host, ``StrictHostKeyChecking=no``,
                ``UserKnownHostsFile=/dev/null``. Its CPU includes the ssh
                processes. Up to ``--baseline-max-hosts`` only.

Tables
------
``--probe gpu-status``  every host gets the stand-in ``nvidia-smi`` (8-GPU
    ``h100-idle`` output). ``engine`` runs ``true``, ``engine-gpu-cmd`` runs
    the gpu-status command without parsing (what the stand-in itself costs),
    ``engine-gpu`` is ``run_probe(engine, hosts, cluster.gpu.probe())`` (command, parse, classify),
    ``engine-two-sh`` runs ``sh -c :; sh -c :`` (the floor of any probe that
    starts two processes, as gpu-status must: one per nvidia-smi query).
    A second table times the whole commands the way a user types them:
    ``inv-true`` is ``inv run true -H @hosts`` and ``inv-gpu-status`` is
    ``inv gpu-status -H @hosts`` (fresh interpreter, imports, table on stdout),
    each as a subprocess of the measuring child (its CPU counts as client CPU).
``--whole 64,1000``     the whole commands again (``inv-true``, ``inv-gpu-status``; with
    ``--engine-ref DIR`` also ``inv-true-ref``, DIR's own ``inv run true``) against
    ``pssh`` running ``true`` in the same run, and the issue-19 targets checked from
    those medians (``inv run true`` at 64 hosts <= 0.6x pssh's wall and <= 6 ms CPU per
    host for the whole inv process; ``inv gpu-status`` at 1,000 hosts <= 0.8x pssh).
    The project's bytecode caches are written first, as an install has them. Each host
    count checks host keys against a known_hosts of its own hosts (recorded by a warm-up
    of those hosts), as the operator of a cluster that size has it;
    ``--shared-known-hosts`` uses the file of every host of the largest table instead
    (each hashed line costs an HMAC per host, as in ssh).
``--second-round``      opens every connection in a first round, then times
    only a second ``true`` round on the open connections: ``engine``
    (``keep_open=True``) and ``pssh`` (its cached clients).
``--first-contact``     ``engine`` (and ``engine-ref``) with an empty known_hosts
    file per run: accept-new records every host key (locked appends).
``--serve``             start the fleet, print its workdir and wait (Ctrl-C
    stops it); later runs pass ``--workdir`` to skip the start.

Everything connects to 127.0.0.0/8 only.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASE = "127.1.0."
HOSTS_PER_SSHD = 16
RUN_METHODS = ("engine", "fabric", "pssh", "clush")
GPU_METHODS = ("engine", "engine-two-sh", "engine-gpu-cmd", "engine-gpu")
TWO_SH = "sh -c :; sh -c :"  # the floor of any probe that starts two processes
CLI_METHODS = ("inv-true", "inv-gpu-status")
WHOLE_METHODS = ("inv-true", "inv-gpu-status", "pssh")
# Measured only up to --baseline-max-hosts: at 1,000 hosts one raw Fabric run took
# 241 s and 380 s of CPU (1,191 threads), one clush run minutes of both cores.
SLOW_METHODS = ("fabric", "clush")
SECOND_METHODS = ("engine", "pssh")
FIRST_METHODS = ("engine",)
SAMPLE_INTERVAL_S = 0.01
ENGINE_REF: list[str] = []  # --engine-ref, for the parent's measure()


# --------------------------------------------------------------------------- fleet
@dataclass
class FleetInfo:
    """What a child needs to reach the fleet (read back from its roles.yaml)."""

    workdir: str
    user: str
    port: int
    key: str
    addresses: list[str]
    own_known_hosts: int = 0  # N: the known_hosts of the first N hosts only (--whole)

    @property
    def known_hosts(self) -> str:
        """The benchmark's own known_hosts, recorded by a warm-up run: every host of the
        largest table, or with ``own_known_hosts`` N, a file of those N hosts only."""
        suffix = f".{self.own_known_hosts}" if self.own_known_hosts else ""
        return str(Path(self.workdir) / f"bench_known_hosts{suffix}")


def fleet_info(workdir: Path) -> FleetInfo:
    """Read user/port/key/hosts of a fleet from its roles.yaml."""
    import yaml

    from cluster.hosts import parse_hosts

    doc = yaml.safe_load((workdir / "roles.yaml").read_text())
    ssh = doc["ssh"]
    addresses = [h.hostname for h in parse_hosts(doc["roles"]["all"])]
    return FleetInfo(str(workdir), ssh["user"], int(ssh["port"]), ssh["key_filename"], addresses)


def fleet_alive(info: FleetInfo) -> bool:
    """True when the fleet's first and last hosts accept TCP connections."""
    import socket

    for address in (info.addresses[0], info.addresses[-1]):
        try:
            socket.create_connection((address, info.port), timeout=1).close()
        except OSError:
            return False
    return True


def start_fleet(workdir: Path, count: int):
    """Start a fleet of ``count`` hosts on 127.1.0.1 upwards (16 per sshd)."""
    from cluster.testing import Fleet

    fleet = Fleet(workdir, count=count, base=BASE, specials=False,
                  hosts_per_sshd=HOSTS_PER_SSHD, start_timeout=120)
    return fleet.start()


def install_gpu_standin(info: FleetInfo, addresses: list[str]) -> None:
    """Symlink the stand-in nvidia-smi into each host's bin (default state: 8x H100 idle).

    Its fixtures are linked beside the bin dir too, so the stand-in finds them
    without a ``readlink`` process per call: the stand-in's own CPU lands on the
    same cores as the client here, and a real nvidia-smi would not.
    """
    testing = ROOT / "cluster" / "testing"
    for address in addresses:
        host = Path(info.workdir) / "hosts" / address
        for link, source in ((host / "bin" / "nvidia-smi", testing / "bin" / "nvidia-smi"),
                             (host / "fixtures", testing / "fixtures")):
            if not link.exists():
                link.symlink_to(source)


# --------------------------------------------------------------------------- child side
class PeakThreads:
    """Samples this process's thread count (/proc, so native threads count too)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _threads_now())
            self._stop.wait(SAMPLE_INTERVAL_S)

    def __enter__(self) -> "PeakThreads":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _threads_now())


def _threads_now() -> int:
    return _status_field("Threads:")


def _status_field(name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(name):
                return int(line.split()[1])
    return 0


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM).

    Not the parent's ``ru_maxrss`` from wait4: Linux carries the parent's peak
    RSS over fork+exec into the child's ``ru_maxrss``.
    """
    return _status_field("VmHWM:") / 1024


class ThreadProfiles:
    """cProfile in every thread (cProfile alone sees only the thread that enabled it)."""

    def __init__(self) -> None:
        import cProfile

        # Per-thread CPU time, not wall time: with 64+ threads, wall time
        # mostly measures waiting for the GIL and the network.
        self._new = lambda: cProfile.Profile(time.thread_time)
        self.profiles: list[Any] = []

    def _install(self, *_: Any) -> None:
        sys.setprofile(None)
        profile = self._new()
        self.profiles.append(profile)
        profile.enable()

    def start(self) -> None:
        threading.setprofile(self._install)
        self._install()

    def clear(self) -> None:
        """Forget what was recorded so far (e.g. a first round)."""
        for profile in self.profiles:
            profile.clear()

    def stop(self, path: str) -> None:
        import pstats

        threading.setprofile(None)
        for profile in self.profiles:
            profile.disable()  # other threads' profilers stop when those threads end
        stats = pstats.Stats(self.profiles[0])
        for profile in self.profiles[1:]:
            try:
                stats.add(profile)
            except TypeError:  # a profile with no data yet
                pass
        stats.dump_stats(path)


def machine_busy_s() -> float:
    """CPU seconds all processes on this machine have spent so far (/proc/stat, not idle/iowait).

    On loopback the sshd side and the remote commands run on the client's cores:
    this is the whole cost of a run, the number that wall time follows there.
    """
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _cpu_now() -> float:
    """User+sys CPU of this process and its waited-for children (ssh for clush)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


FIRST_CONTACT: list[str] = []  # in a child of the "first" table: its own, empty known_hosts


def engine_settings(info: FleetInfo, fanout: int):
    from cluster.inventory import SSHSettings

    known_hosts = FIRST_CONTACT[0] if FIRST_CONTACT else info.known_hosts
    return SSHSettings(user=info.user, port=info.port, key_filename=info.key,
                       known_hosts=known_hosts, fanout=fanout, connect_timeout=10.0)


def _engine_command(command: str) -> Callable[[FleetInfo, list[str], int], Callable[[], int]]:
    """``command`` on every host through the engine (the path of ``inv run``)."""

    def factory(info: FleetInfo, hosts: list[str], fanout: int) -> Callable[[], int]:
        from cluster.hosts import Host
        from cluster.result import build_report
        from cluster.ssh import Engine

        def op() -> int:
            with Engine(engine_settings(info, fanout)) as engine:
                targets = [Host(h) for h in hosts]
                report = build_report(engine.run(targets, command), engine)
            return len(report.ok)

        return op

    return factory


_engine_run = _engine_command("true")


def _engine_gpu(info: FleetInfo, hosts: list[str], fanout: int) -> Callable[[], int]:
    """``cluster.gpu.probe()``: nvidia-smi + parse + classify (what ``inv gpu-status`` runs)."""
    from cluster import gpu
    from cluster.hosts import Host
    from cluster.probe import run_probe
    from cluster.ssh import Engine

    def op() -> int:
        with Engine(engine_settings(info, fanout)) as engine:
            report = run_probe(engine, [Host(h) for h in hosts], gpu.probe())
        good = [o for o in report if o.ok and o.data is not None and len(o.data.gpus) == 8]
        if len(good) < len(report):
            bad = next(o for o in report if o not in good)
            print(f"gpu-status: {len(report) - len(good)} hosts not ok, e.g. {bad.host}: "
                  f"{bad.error}", file=sys.stderr)
        return len(good)

    return op


def _engine_gpu_command(info: FleetInfo, hosts: list[str], fanout: int) -> Callable[[], int]:
    """The gpu-status command run like `true` (no parsing): the stand-in's own cost."""
    from cluster import gpu
    from cluster.hosts import Host
    from cluster.result import build_report
    from cluster.ssh import Engine

    def op() -> int:
        with Engine(engine_settings(info, fanout)) as engine:
            report = build_report(engine.run([Host(h) for h in hosts], gpu.COMMAND), engine)
        return sum(1 for o in report if o.ok and o.stdout.count("\n") >= 10)

    return op


def _inv(*task: str, ref: bool = False) -> Callable[[FleetInfo, list[str], int], Callable[[], int]]:
    """``inv TASK -H @hosts`` as a user runs it, against the benchmark's known_hosts;
    ``ref``: the tasks and package of the ``--engine-ref`` checkout instead of this one."""

    def factory(info: FleetInfo, hosts: list[str], fanout: int) -> Callable[[], int]:
        import yaml

        scratch = Path(tempfile.mkdtemp(prefix="fanout-inv-"))
        atexit.register(shutil.rmtree, scratch, True)
        (scratch / "hosts").write_text("\n".join(hosts) + "\n")
        (scratch / "roles.yaml").write_text(yaml.safe_dump({"ssh": {
            "user": info.user, "port": info.port, "key_filename": info.key,
            "known_hosts": info.known_hosts, "connect_timeout": 10}}))
        root = ENGINE_REF[0] if ref else str(ROOT)
        argv = [sys.executable, "-m", "invoke", "--search-root", root, *task,
                "-H", f"@{scratch / 'hosts'}", "--roles-file", str(scratch / "roles.yaml"),
                "--fanout", str(fanout)]

        def op() -> int:
            with open(scratch / "stdout", "wb") as out:
                done = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            if done.returncode != 0:  # exit 0 means every host answered and parsed
                print(f"{' '.join(task)}: exit {done.returncode}: {done.stderr.decode()[-500:]}",
                      file=sys.stderr)
                return 0
            return len(hosts)

        return op

    return factory


def _fabric_run(info: FleetInfo, hosts: list[str], fanout: int) -> Callable[[], int]:
    from fabric import ThreadingGroup

    def op() -> int:
        group = ThreadingGroup(*hosts, user=info.user, port=info.port,
                               connect_kwargs={"key_filename": info.key})
        try:
            results = group.run("true", hide=True, warn=True)
        except Exception as exc:  # GroupException: some hosts raised
            results = exc.result  # type: ignore[attr-defined]
        finally:
            group.close()
        return sum(1 for r in results.values() if getattr(r, "ok", False))

    return op


def _pssh_run(info: FleetInfo, hosts: list[str], fanout: int) -> Callable[[], int]:
    from pssh.clients import ParallelSSHClient

    def op() -> int:
        client = ParallelSSHClient(hosts, user=info.user, port=info.port, pkey=info.key,
                                   pool_size=fanout, num_retries=1, timeout=10)
        output = client.run_command("true", stop_on_errors=False)
        client.join(output)
        ok = sum(1 for o in output if o.exception is None and o.exit_code == 0)
        return ok

    return op


def _clush_run(info: FleetInfo, hosts: list[str], fanout: int) -> Callable[[], int]:
    from ClusterShell.NodeSet import NodeSet
    from ClusterShell.Task import task_self

    def op() -> int:
        task = task_self()
        task.set_info("fanout", fanout)
        task.set_info("ssh_user", info.user)
        task.set_info("ssh_options", f"-p {info.port} -i {info.key} -oBatchMode=yes "
                      "-oStrictHostKeyChecking=no -oUserKnownHostsFile=/dev/null "
                      "-oLogLevel=ERROR")
        task.set_info("connect_timeout", 10)
        task.shell("true", nodes=NodeSet.fromlist(hosts))
        task.run()
        return sum(len(nodes) for rc, nodes in task.iter_retcodes() if rc == 0)

    return op


def _engine_second(info: FleetInfo, hosts: list[str], fanout: int):
    from cluster.hosts import Host
    from cluster.result import build_report
    from cluster.ssh import Engine

    engine = Engine(engine_settings(info, fanout))
    targets = [Host(h) for h in hosts]

    def setup() -> None:
        engine.run(targets, "true", keep_open=True)

    def op() -> int:
        report = build_report(engine.run(targets, "true", keep_open=True), engine)
        return len(report.ok)

    return setup, op


def _pssh_second(info: FleetInfo, hosts: list[str], fanout: int):
    from pssh.clients import ParallelSSHClient

    client = ParallelSSHClient(hosts, user=info.user, port=info.port, pkey=info.key,
                               pool_size=fanout, num_retries=1, timeout=10)

    def setup() -> None:
        client.join(client.run_command("true", stop_on_errors=False))

    def op() -> int:
        output = client.run_command("true", stop_on_errors=False)
        client.join(output)
        return sum(1 for o in output if o.exception is None and o.exit_code == 0)

    return setup, op


ONE_ROUND = {"engine": _engine_run, "engine-ref": _engine_run, "engine-gpu": _engine_gpu,
             "engine-gpu-cmd": _engine_gpu_command, "engine-two-sh": _engine_command(TWO_SH),
             "inv-true": _inv("run", "true"), "inv-true-ref": _inv("run", "true", ref=True),
             "inv-gpu-status": _inv("gpu-status"),
             "fabric": _fabric_run,
             "pssh": _pssh_run, "clush": _clush_run}
TWO_ROUNDS = {"engine": _engine_second, "pssh": _pssh_second}


def child(method: str, mode: str, info: FleetInfo, count: int, fanout: int,
          profile: str | None) -> dict[str, Any]:
    """Run one measurement in this (fresh) process; return wall/CPU/threads/ok."""
    hosts = info.addresses[:count]
    profilers = ThreadProfiles() if profile else None
    if mode == "second":
        setup, op = TWO_ROUNDS[method](info, hosts, fanout)
        if profilers:  # the transport threads start in the first round: profile them too
            profilers.start()
        setup()  # the first round opens every connection, outside the measurement
        if profilers:
            profilers.clear()
    else:
        if mode == "first":  # every host key unknown: accept-new records all of them
            FIRST_CONTACT.append(tempfile.mktemp(prefix="first-contact-known-hosts-"))
        op = ONE_ROUND[method](info, hosts, fanout)
    with PeakThreads() as threads:
        cpu0, busy0, wall0 = _cpu_now(), machine_busy_s(), time.perf_counter()
        if profilers and mode != "second":
            profilers.start()
        ok = op()
        if profilers:
            profilers.stop(profile)
        wall, cpu, busy = time.perf_counter() - wall0, _cpu_now() - cpu0, machine_busy_s() - busy0
    for path in FIRST_CONTACT:
        Path(path).unlink(missing_ok=True)
    if method in CLI_METHODS or method == "inv-true-ref":  # the work ran in the inv subprocess: no peaks
        return {"ok": ok, "wall": wall, "cpu": cpu, "busy": busy, "threads": 0, "rss_mib": 0}
    return {"ok": ok, "wall": wall, "cpu": cpu, "busy": busy, "threads": threads.peak,
            "rss_mib": peak_rss_mib()}


# --------------------------------------------------------------------------- parent side
@dataclass
class Sample:
    wall: float
    cpu: float
    proc_cpu: float
    machine_cpu: float
    rss_mib: float
    threads: int
    ok: int


@dataclass
class Row:
    method: str
    hosts: int
    samples: list[Sample] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(getattr(s, name) for s in self.samples)

    def peak(self, name: str) -> float:
        return max(getattr(s, name) for s in self.samples)


def measure(method: str, mode: str, info: FleetInfo, count: int, fanout: int,
            profile: str | None = None, timeout: float = 900) -> Sample:
    """Run one child; add the CPU of the whole subprocess (wait4 rusage) to its report."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--mode", mode,
            "--workdir", info.workdir, "--count", str(count), "--fanout", str(fanout),
            "--own-known-hosts", str(info.own_known_hosts)]
    if profile:
        argv += ["--profile-out", profile]
    if method in ("engine-ref", "inv-true-ref"):
        argv += ["--engine-ref", ENGINE_REF[0]]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, stdin=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{method} child failed (exit {proc.returncode}): {text[-2000:]}")
    report = json.loads(text.strip().splitlines()[-1])
    return Sample(report["wall"], report["cpu"], usage.ru_utime + usage.ru_stime, report["busy"],
                  report["rss_mib"], report["threads"], report["ok"])


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench(info: FleetInfo, counts: list[int], methods: list[str], mode: str, repeat: int,
          fanout: int, log: Callable[[str], None], slow_max: int = 0) -> list[list[Row]]:
    """All measurements, methods in alternation within each repetition.

    The slow baselines (`SLOW_METHODS`) run only up to ``slow_max`` hosts.
    """
    tables = []
    for count in counts:
        rows = {m: Row(m, count) for m in methods
                if m not in SLOW_METHODS or count <= slow_max}
        for rep in range(repeat):
            for method in rows:
                sample = measure(method, mode, info, count, fanout)
                rows[method].samples.append(sample)
                log(f"N={count} rep {rep + 1}/{repeat} {method:<10} wall {sample.wall:6.2f} s  "
                    f"cpu {sample.cpu:6.2f} s  ok {sample.ok}/{count}  threads {sample.threads}  "
                    f"rss {sample.rss_mib:.0f} MiB  load {load_average()}")
        tables.append(list(rows.values()))
    return tables


def render(rows: list[Row], reference: str | None, fanout: int) -> str:
    """A markdown table for one host count."""
    count = rows[0].hosts
    ref = next((r for r in rows if r.method == reference), None)
    lines = [
        f"N={count}, fanout {fanout}, {len(rows[0].samples)} runs each in alternation "
        "(medians; wall range in brackets; RSS and threads: peak)",
        "",
        "| method | ok | wall s | client CPU s | CPU ms/host | process CPU s | machine CPU s "
        f"| peak RSS MiB | peak threads | wall vs {reference or 'ref'} | CPU vs {reference or 'ref'} "
        f"| machine CPU vs {reference or 'ref'} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        wall, cpu = row.median("wall"), row.median("cpu")
        walls = [s.wall for s in row.samples]
        busy = row.median("machine_cpu")
        ratio = cpu_ratio = busy_ratio = "-"
        if ref and ref.samples:
            ratio = f"{wall / ref.median('wall'):.2f}x"
            cpu_ratio = f"{cpu / ref.median('cpu'):.2f}x"
            busy_ratio = f"{busy / ref.median('machine_cpu'):.2f}x"
        ok = min(s.ok for s in row.samples)
        rss, threads = (f"{row.peak(name):.0f}" if row.peak(name) else "-" for name in ("rss_mib", "threads"))
        lines.append(
            f"| {row.method} | {ok}/{count} | {wall:.2f} ({min(walls):.2f}-{max(walls):.2f}) | "
            f"{cpu:.2f} | {cpu / count * 1000:.1f} | {row.median('proc_cpu'):.2f} | {busy:.2f} | "
            f"{rss} | {threads} | {ratio} | {cpu_ratio} | {busy_ratio} |")
    return "\n".join(lines)


LEGEND = (
    "client CPU: user+sys of the measured call only (clush: with its ssh processes); "
    "process CPU: the whole subprocess, interpreter start and imports included; "
    "machine CPU: every process on the machine during the call (/proc/stat), sshd and remote commands "
    "included, other users' work too; "
    "peak RSS: VmHWM of the Python process (not clush's ssh processes); "
    "threads: /proc/self/status peak, main thread and the sampler included; "
    "inv-* rows: client CPU and process CPU include the inv process, RSS and threads are not sampled (-)."
)


def available_methods(wanted: list[str]) -> tuple[list[str], list[str]]:
    """Split ``wanted`` into installed and missing (with a reason)."""
    present, missing = [], []
    for method in wanted:
        module = {"pssh": "pssh.clients", "clush": "ClusterShell.Task"}.get(method)
        if module:
            try:
                __import__(module)
            except ImportError as exc:
                missing.append(f"{method} ({exc}; pip install -e '.[bench]')")
                continue
        present.append(method)
    return present, missing


def warm_up(info: FleetInfo, count: int, fanout: int) -> None:
    """Record every host key once (accept-new), so measured engine runs check known keys."""
    from cluster.hosts import Host
    from cluster.result import build_report
    from cluster.ssh import Engine

    with Engine(engine_settings(info, fanout)) as engine:
        report = build_report(engine.run([Host(h) for h in info.addresses[:count]], "true"), engine)
    if not report.all_ok:
        first = report.failed[0]
        raise SystemExit(f"warm-up failed on {len(report.failed)} hosts, e.g. {first.host}: "
                         f"{first.error}")


SECTIONS = {
    # name: (title, methods, reference for the ratio column)
    "run": ("`true` on every host", RUN_METHODS, "pssh"),
    "gpu": ("gpu-status vs `true`, both through this library (8-GPU stand-in nvidia-smi)",
            GPU_METHODS, "engine"),
    "cli": ("`inv gpu-status` vs `inv run true`: whole commands (interpreter start, imports, table)",
            CLI_METHODS, "inv-true"),
    "whole": ("whole `inv` commands (interpreter start, imports, table to a file) against "
              "parallel-ssh running `true`", WHOLE_METHODS, "pssh"),
    "second": ("second round on already-open connections (only that round is timed)",
               SECOND_METHODS, "pssh"),
    "first": ("first contact: every host key unknown (accept-new records them all)",
              FIRST_METHODS, "engine"),
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        if args.engine_ref:
            ENGINE_REF.append(str(Path(args.engine_ref).resolve()))
            # Another checkout's `cluster` package (e.g. `git archive OLD cluster | tar -x`).
            if args.child == "engine-ref":
                sys.path.insert(0, ENGINE_REF[0])
        info = replace(fleet_info(Path(args.workdir)), own_known_hosts=args.own_known_hosts)
        result = child(args.child, args.mode, info, args.count, args.fanout, args.profile_out)
        print(json.dumps(result))
        return 0
    if args.engine_ref:
        if not (Path(args.engine_ref) / "cluster" / "ssh.py").is_file():
            raise SystemExit(f"--engine-ref {args.engine_ref}: no cluster/ssh.py there")
        ENGINE_REF.append(str(Path(args.engine_ref).resolve()))
    plan = sections(args)
    needed = max(max(counts) for _, counts in plan) if plan else 1
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fanout-fleet-")).resolve()
    fleet = None
    info = fleet_info(workdir) if (workdir / "roles.yaml").exists() else None
    if info is None or not fleet_alive(info) or len(info.addresses) < needed:
        log(f"starting a fleet of {needed} hosts in {workdir} ...")
        fleet = start_fleet(workdir, needed)
        info = fleet_info(workdir)
    else:
        log(f"reusing the fleet in {workdir} ({len(info.addresses)} hosts, port {info.port})")
    try:
        if args.serve:
            log(f"fleet running: --workdir {workdir}  (Ctrl-C stops it)")
            wanted = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
            signal.sigwait(wanted)
            return 0
        return run_benchmark(args, info, plan)
    finally:
        if fleet is not None:
            fleet.stop()


def sections(args: argparse.Namespace) -> list[tuple[str, list[int]]]:
    """Which tables to produce, each with its host counts."""
    plan = []
    if not args.no_run:
        plan.append(("run", _counts(args.hosts)))
    if args.probe:
        plan.append(("gpu", _counts(args.extra_hosts)))
        plan.append(("cli", _counts(args.extra_hosts)))
    if args.whole:
        plan.append(("whole", _counts(args.whole)))
    if args.second_round:
        plan.append(("second", _counts(args.extra_hosts)))
    if args.first_contact:
        plan.append(("first", _counts(args.hosts)))
    return plan


def _counts(text: str) -> list[int]:
    counts = sorted({int(c) for c in text.split(",") if c.strip()})
    if not counts or counts[0] < 1 or counts[-1] > 4000:
        raise SystemExit(f"host counts must be between 1 and 4000: {text!r}")
    return counts


def run_benchmark(args: argparse.Namespace, info: FleetInfo,
                  plan: list[tuple[str, list[int]]]) -> int:
    needed = max(max(counts) for _, counts in plan)
    if any(mode in ("gpu", "cli", "whole") for mode, _ in plan):
        install_gpu_standin(info, info.addresses[:needed])
    if any(mode in ("cli", "whole") for mode, _ in plan):
        compile_project()
    log(f"warm-up (recording host keys) ... load {load_average()}")
    warm_up(info, needed, args.fanout)
    results: dict[str, list[list[Row]]] = {}
    for mode, counts in plan:
        title, default, reference = SECTIONS[mode]
        wanted = args.methods.split(",") if args.methods and mode == "run" else list(default)
        if args.engine_ref and mode in ("run", "first") and "engine-ref" not in wanted:
            wanted.insert(1, "engine-ref")
        if args.engine_ref and mode == "whole":
            wanted.insert(1, "inv-true-ref")  # the whole command of the other checkout
        methods, missing = available_methods(wanted)
        if args.profile:
            sample = measure(methods[0], mode, info, counts[0], args.fanout, profile=args.profile)
            log(f"profile of {methods[0]} ({mode}) N={counts[0]} in {args.profile}: {sample}")
            return 0
        before = load_average()
        if mode == "whole":
            tables = bench_whole(info, counts, methods, args)
        else:
            tables = bench(info, counts, methods, mode, args.repeat, args.fanout, log,
                           args.baseline_max_hosts)
        results[mode] = tables
        print(f"\n### {title}\n")
        print(f"{os.cpu_count()} CPUs; load average (1/5/15 min) before: {before}, "
              f"after: {load_average()}\n")
        for rows in tables:
            if mode == "whole":
                print(f"known_hosts: {known_hosts_note(info, rows[0].hosts, args)}\n")
            print(render(rows, reference if reference in methods else None, args.fanout) + "\n")
        print(LEGEND + "\n")
        if mode == "whole":
            print(whole_targets(tables) + "\n")
        skipped = [m for m in methods if m in SLOW_METHODS and counts[-1] > args.baseline_max_hosts]
        if skipped:
            missing.append(f"{', '.join(skipped)} above {args.baseline_max_hosts} hosts "
                           "(--baseline-max-hosts)")
        if missing:
            print("not measured: " + "; ".join(missing) + "\n")
        sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(
            {mode: [[{"method": r.method, "hosts": r.hosts,
                      "samples": [asdict(s) for s in r.samples]} for r in rows] for rows in tables]
             for mode, tables in results.items()}, indent=1))
    return 0


def bench_whole(info: FleetInfo, counts: list[int], methods: list[str],
                args: argparse.Namespace) -> list[list[Row]]:
    """The --whole tables: unless --shared-known-hosts, each host count checks its keys
    against a file of its own hosts, recorded by a warm-up of those hosts."""
    tables = []
    for count in counts:
        own = whole_info(info, count, args)
        if own.own_known_hosts:
            Path(own.known_hosts).unlink(missing_ok=True)
            warm_up(own, count, args.fanout)
        tables += bench(own, [count], methods, "whole", args.repeat, args.fanout, log,
                        args.baseline_max_hosts)
    return tables


def whole_info(info: FleetInfo, count: int, args: argparse.Namespace) -> FleetInfo:
    """The fleet as the --whole table of ``count`` hosts sees it (its known_hosts file)."""
    return replace(info, own_known_hosts=0 if args.shared_known_hosts else count)


def known_hosts_note(info: FleetInfo, count: int, args: argparse.Namespace) -> str:
    """Which file the table's inv commands checked host keys against, and its size."""
    own = whole_info(info, count, args)
    entries = [line for line in Path(own.known_hosts).read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    hashed = sum(line.startswith("|1|") for line in entries)
    whose = "shared by every table" if args.shared_known_hosts else "this table's own"
    return f"{whose}, {len(entries)} lines ({hashed} hashed)"


def compile_project() -> None:
    """Write the bytecode caches of cluster/ and cluster_cli/, as an install has them (a
    PYTHONDONTWRITEBYTECODE shell would otherwise compile every module in every inv run)."""
    for root in [ROOT, *map(Path, ENGINE_REF)]:
        packages = [str(root / name) for name in ("cluster", "cluster_cli") if (root / name).is_dir()]
        subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True,
                       stdout=subprocess.DEVNULL)


# (method, host count, what is compared, limit) for the "whole" table (issue 19).
WHOLE_TARGETS = (("inv-true", 64, "wall vs pssh", 0.6), ("inv-true", 64, "CPU ms/host", 6.0),
                 ("inv-gpu-status", 1000, "wall vs pssh", 0.8))


def whole_targets(tables: list[list[Row]]) -> str:
    """The issue-19 targets, checked against the medians of this run's "whole" table."""
    lines = ["| target | measured | status |", "|---|---|---|"]
    for method, count, what, limit in WHOLE_TARGETS:
        rows = next((t for t in tables if t[0].hosts == count), None)
        if rows is None:
            continue
        by = {r.method: r for r in rows}
        if what == "CPU ms/host":
            value = by[method].median("cpu") / count * 1000
            shown = f"{value:.1f} ms"
        else:
            value = by[method].median("wall") / by["pssh"].median("wall")
            shown = f"{value:.2f}x ({by[method].median('wall'):.2f} s vs {by['pssh'].median('wall'):.2f} s)"
        lines.append(f"| `{method}` N={count}: {what} <= {limit:g} | {shown} | "
                     f"{'met' if value <= limit else 'missed'} |")
    return "\n".join(lines)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="64,128,1000",
                        help="host counts of the `true` table (default 64,128,1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (default 3)")
    parser.add_argument("--fanout", type=int, default=64, help="hosts in flight (default 64)")
    parser.add_argument("--methods", help="subset for the `true` table, comma-separated: "
                        f"{','.join(RUN_METHODS)} (default: all installed)")
    parser.add_argument("--baseline-max-hosts", type=int, default=128,
                        help="largest N for the slow baselines fabric and clush (default 128)")
    parser.add_argument("--probe", choices=["gpu-status"],
                        help="add the table gpu-status vs `true` (library)")
    parser.add_argument("--second-round", action="store_true",
                        help="add the table of a second round on already-open connections")
    parser.add_argument("--first-contact", action="store_true",
                        help="add the table of a first contact (empty known_hosts, accept-new), "
                             "for the --hosts counts")
    parser.add_argument("--extra-hosts", default="64,128",
                        help="host counts of the --probe and --second-round tables "
                             "(default 64,128)")
    parser.add_argument("--whole", metavar="COUNTS",
                        help="add the table of whole inv commands against pssh `true` at these host "
                             "counts (e.g. 64,1000) with the issue-19 targets")
    parser.add_argument("--shared-known-hosts", action="store_true",
                        help="--whole: check host keys against the file of every host of the "
                             "largest table (default: each host count its own file, as the "
                             "operator of a cluster that size has it)")
    parser.add_argument("--no-run", action="store_true", help="skip the `true` table")
    parser.add_argument("--engine-ref", metavar="DIR",
                        help="also time `engine-ref`: the engine of another checkout in DIR "
                             "(DIR/cluster), e.g. from `git archive COMMIT cluster | tar -x -C DIR`; "
                             "in the --whole table `inv-true-ref`, its whole `inv run true` (DIR needs "
                             "cluster_cli and tasks.py too)")
    parser.add_argument("--workdir", help="fleet directory: reused when its fleet is running")
    parser.add_argument("--serve", action="store_true", help="start the fleet and wait")
    parser.add_argument("--json", help="also write all samples to this JSON file")
    parser.add_argument("--profile", metavar="PATH",
                        help="instead of measuring: cProfile (CPU time, all threads) one run of "
                             "the first method at the first host count into PATH")
    # Internal: one measurement in a fresh process.
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="run", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    parser.add_argument("--own-known-hosts", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
