#!/usr/bin/env python3
"""What printing the gpu-status table costs, without any SSH.

``inv gpu-status`` prints one rich table row per host; ``inv run true``
prints one folded line. This measures the difference that makes on the
controller: parse N copies of an 8-GPU fixture, then render the table (and
the JSON document) into memory, best of ``--repeat`` runs::

    python benchmarks/render_cost.py --hosts 64,1000

No connection is opened.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Callable

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's cluster package, installed or not

from cluster.gpu import probe as gpu_probe  # noqa: E402
from cluster.hosts import Host  # noqa: E402
from cluster.render import gpu as gpu_render  # noqa: E402
from cluster.result import Outcome, Report  # noqa: E402

FIXTURES = ROOT / "cluster" / "testing" / "fixtures" / "gpu"


def report_of(count: int, case: str) -> Report:
    """``count`` hosts that all printed the fixture ``case``, parsed and classified."""
    stdout = (FIXTURES / f"{case}.txt").read_text()
    probe = gpu_probe()
    outcomes = []
    for i in range(count):
        outcome = Outcome(Host(f"127.1.{i // 250}.{i % 250 + 1}"), True, stdout=stdout, exit_code=0)
        outcomes.append(probe.interpret(outcome) or outcome)
    return Report(outcomes)


def best_of(repeat: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def render_table(report: Report, show_gpus: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, width=120, color_system="truecolor", force_terminal=True)
    console.print(gpu_render.gpu_view(report, show_gpus, False))
    return out.getvalue()


def row(count: int, case: str, repeat: int) -> str:
    """One markdown row: parse, table, table with GPU rows, JSON, for ``count`` hosts."""
    parse_s = best_of(repeat, lambda: report_of(count, case))
    report = report_of(count, case)
    table_s = best_of(repeat, lambda: render_table(report, False))
    gpus_s = best_of(repeat, lambda: render_table(report, True))
    json_s = best_of(repeat, lambda: json.dumps(gpu_render.gpu_document(report)))
    return (f"| {count} | {parse_s:.3f} | {table_s:.3f} | {gpus_s:.3f} | {json_s:.3f} | "
            f"{table_s / count * 1000:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="64,1000", help="host counts (default 64,1000)")
    parser.add_argument("--case", default="h100-busy", help="fixture under cluster/testing/fixtures/gpu")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement; the best counts")
    args = parser.parse_args()
    render_table(report_of(2, args.case), False)  # rich's lazy imports and caches, outside the timing
    print("| hosts | parse+classify s | table s | table --gpus s | JSON s | table ms/host |")
    print("|---|---|---|---|---|---|")
    for count in (int(c) for c in args.hosts.split(",")):
        print(row(count, args.case, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
