#!/usr/bin/env python3
"""Start-up cost of ``inv``: whole commands against ``python -c 'import invoke.program'``.

    python benchmarks/startup.py [--repeat 40] [--ref DIR]

Each command runs in a fresh interpreter (this one, ``sys.executable``), all commands in
alternation within each repetition (so a busy moment hits every command alike), from the
checkout's root with ``PYTHONPATH`` set to it. Printed: median wall time and CPU
(user+sys of the process, ``wait4``), the ratio of the medians to the baseline and the
median of the per-repetition ratios (paired), then, from one ``python -X importtime``
run per command, how many modules it loads, which heavy ones (paramiko, fabric, rich,
cluster.serving) and the project modules' import time.

Bytecode caches: invoke switches writing them off (``--write-pyc``); cluster_cli undoes that,
so the warm-up runs leave this checkout's caches, as its first runs do for a user. An older
checkout without that fix compiles its modules on every start; ``--compile`` writes every
tree's caches first, to compare import structures alone.

Commands: ``base`` = ``python -c 'import invoke.program'``; references ``python`` = ``python
-c pass`` and ``ssh-imports`` = ``python -c 'import invoke.program, paramiko, fabric'`` (what
any SSH task loads before its own code: the floor beneath ``run-local``); ``list`` = ``python -m invoke
--list``; ``help`` = ``python -m invoke run --help``; ``run-local`` = ``python -m invoke run
true -H local``. ``--ref DIR`` adds the same inv commands on another checkout
(``git archive COMMIT cluster cluster_cli tasks.py roles.yaml | tar -x -C DIR``): before/after
in one run. Targets (issue 19): list <= 1.4x base, run-local <= 2x base. No network.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("paramiko", "fabric", "rich", "cluster.serving")
# Reference rows, not inv commands (run once, not per tree): the interpreter alone, and
# the third-party imports every SSH task needs, the floor beneath `run-local`.
REFERENCES = {
    "python": ["-c", "pass"],
    "ssh-imports": ["-c", "import invoke.program, paramiko, fabric"],
}
COMMANDS = {
    "base": ["-c", "import invoke.program"],
    "list": ["-m", "invoke", "--list"],
    "help": ["-m", "invoke", "run", "--help"],
    "run-local": ["-m", "invoke", "run", "true", "-H", "local"],
}


def environment(cwd: Path) -> dict[str, str]:
    """``cwd`` first on the path; bytecode caching as in a user's shell (this benchmark's own
    sandbox may set PYTHONDONTWRITEBYTECODE; a user's shell does not)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(cwd)}


def compile_tree(tree: Path) -> None:
    """Write a checkout's bytecode caches, as ``pip install`` (not ``-e``) does."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "cluster"),
                    str(tree / "cluster_cli")], check=True, stdout=subprocess.DEVNULL)


def timed(argv: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user+sys) of one run of ``argv``."""
    env = environment(cwd)
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            out.seek(0)
            raise SystemExit(f"{' '.join(argv)} failed in {cwd}:\n{out.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def import_profile(argv: list[str], cwd: Path) -> dict[str, object]:
    """Modules loaded, heavy ones among them, and the project's import time (-X importtime)."""
    env = environment(cwd)
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    rows = [m.groups() for m in re.finditer(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", done.stderr)]
    names = [name for *_, name in rows]
    project_us = sum(int(cum) for _, cum, indent, name in rows
                     if name.split(".")[0] in ("cluster", "cluster_cli") and len(indent) <= 1)
    total_us = sum(int(cum) for _, cum, indent, _ in rows if len(indent) <= 1)
    heavy = [h for h in HEAVY if any(n == h or n.startswith(h + ".") for n in names)]
    return {"modules": len(names), "heavy": heavy, "project_ms": project_us / 1000,
            "imports_ms": total_us / 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=40, help="runs per command (default 40)")
    parser.add_argument("--ref", metavar="DIR", help="another checkout: its inv commands too")
    parser.add_argument("--compile", action="store_true",
                        help="write every tree's bytecode caches first (as a non-editable install); "
                             "default: what the warm-up runs leave, as in an editable checkout")
    args = parser.parse_args()
    trees = {"": ROOT}
    if args.ref:
        trees["ref "] = Path(args.ref).resolve()
    plan = [("base", ROOT)] + [(name, ROOT) for name in REFERENCES] + [
        (f"{label}{name}", tree) for label, tree in trees.items() for name in COMMANDS if name != "base"]
    every = {**REFERENCES, **COMMANDS}
    argvs = {label: [sys.executable, *every[label.removeprefix("ref ")]] for label, _ in plan}
    if args.compile:
        for tree in trees.values():
            compile_tree(tree)
    for label, tree in plan:  # warm the page cache before timing
        timed(argvs[label], tree)
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in plan}
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    for _ in range(args.repeat):
        for label, tree in plan:
            samples[label].append(timed(argvs[label], tree))
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print(f"{sys.executable} (Python {sys.version.split()[0]}), {os.cpu_count()} CPUs, "
          f"{args.repeat} runs each in alternation; load average before {' '.join(load_before)}, "
          f"after {' '.join(load_after)}\n")
    print("| command | median wall ms | median CPU ms | wall vs base | paired wall ratio | CPU vs base "
          "| modules | heavy modules loaded | project import ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    base_walls = [w for w, _ in samples["base"]]
    base_wall = statistics.median(base_walls)
    base_cpu = statistics.median(c for _, c in samples["base"])
    for label, tree in plan:
        walls = [w for w, _ in samples[label]]
        wall, cpu = statistics.median(walls), statistics.median(c for _, c in samples[label])
        paired = statistics.median(w / b for w, b in zip(walls, base_walls))
        prof = import_profile(argvs[label], tree)
        print(f"| {label} | {wall * 1000:.0f} | {cpu * 1000:.0f} | {wall / base_wall:.2f}x | {paired:.2f}x "
              f"| {cpu / base_cpu:.2f}x | {prof['modules']} | {', '.join(prof['heavy']) or 'none'} "
              f"| {prof['project_ms']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
