#!/usr/bin/env python3
"""What printing gpu-status costs on the controller, without any SSH.

A fleet of N parsed 8-GPU hosts (mostly idle H100 nodes, a tenth busy, and a
few outliers: a hot GPU, ECC errors, a lost GPU, a driver mismatch) is
rendered the way ``inv gpu-status`` prints it on a 120 x 50 colour terminal:

* ``default``: the default view (folded: the fleet is taller than the terminal);
* ``--expand``: one row per host;
* ``--expand --gpus``: one row per host and per GPU (9 rows a host).

Each is measured in CPU seconds (``time.process_time``, best of ``--repeat``)
for this code (`cluster.render.table`) and, as the baseline in the same run,
for rich's ``Table`` drawing the same cells (what gpu-status used before);
then parse + classify and the JSON document::

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
from rich.text import Text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's cluster package, installed or not

from cluster.gpu import probe as gpu_probe  # noqa: E402
from cluster.hosts import Host  # noqa: E402
from cluster.render import gpu as gpu_render  # noqa: E402
from cluster.render.core import host_table  # noqa: E402
from cluster.render.fold import ViewOptions  # noqa: E402
from cluster.result import Outcome, Report  # noqa: E402

FIXTURES = ROOT / "cluster" / "testing" / "fixtures" / "gpu"
WIDTH, HEIGHT = 120, 50
OUTLIERS = ("h100-hot", "h100-ecc", "lost-gpu", "driver-mismatch")


def fleet_cases(count: int) -> list[str]:
    """The GPU state of each host: outliers spread out, a tenth busy, the rest idle."""
    cases = ["h100-busy" if i % 10 == 3 else "h100-idle" for i in range(count)]
    for n, case in enumerate(OUTLIERS):
        cases[(n * 7919 + 11) % count] = case
    return cases


def report_of(cases: list[str]) -> Report:
    """One host per case, parsed and classified as the probe does."""
    probe = gpu_probe()
    texts = {}
    outcomes = []
    for i, case in enumerate(cases):
        if case not in texts:
            exit_file = FIXTURES / f"{case}.exit"
            texts[case] = ((FIXTURES / f"{case}.txt").read_text(),
                           int(exit_file.read_text()) if exit_file.exists() else 0)
        stdout, code = texts[case]
        outcome = Outcome(Host(f"127.1.{i // 250}.{i % 250 + 1}"), code == 0, stdout=stdout,
                          exit_code=code)
        probe.interpret(outcome)
        outcomes.append(outcome)
    return Report(outcomes)


def cpu_best_of(repeat: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return min(times)


def terminal() -> Console:
    return Console(file=io.StringIO(), width=WIDTH, height=HEIGHT, color_system="truecolor",
                   force_terminal=True)


def render_now(report: Report, show_gpus: bool, options: ViewOptions) -> str:
    console = terminal()
    console.print(gpu_render.gpu_view(report, show_gpus, False, options))
    return console.file.getvalue()


def render_rich(report: Report, show_gpus: bool, options: ViewOptions) -> str:
    """The same rows through rich's Table (the baseline)."""
    table = gpu_render.gpu_table(report, show_gpus, options)
    rows = [[Text.assemble(*cell.lines[0]) if len(cell.lines) == 1 else
             Text("\n".join("".join(t for t, _ in line) for line in cell.lines))
             for cell in row] for row in table.rows]
    columns = [(c.name, {"justify": c.justify}) for c in table.columns]
    console = terminal()
    console.print(host_table(columns, rows))
    return console.file.getvalue()


VIEWS = {
    "default": (False, ViewOptions(height=HEIGHT)),
    "--expand": (False, ViewOptions(fold=False)),
    "--expand --gpus": (True, ViewOptions(fold=False)),
}


def rows_for(count: int, repeat: int) -> list[str]:
    """Markdown rows for one fleet size."""
    cases = fleet_cases(count)
    parse_s = cpu_best_of(repeat, lambda: report_of(cases))
    report = report_of(cases)
    json_s = cpu_best_of(repeat, lambda: json.dumps(gpu_render.gpu_document(report)))
    out = []
    for name, (show_gpus, options) in VIEWS.items():
        now = cpu_best_of(repeat, lambda g=show_gpus, o=options: render_now(report, g, o))
        rich = cpu_best_of(max(1, repeat // 2),
                           lambda g=show_gpus, o=options: render_rich(report, g, o))
        lines = render_now(report, show_gpus, options).count("\n")
        out.append(f"| {count} | {name} | {lines} | {rich:.3f} | {now:.3f} | {now / rich:.2f} | "
                   f"{parse_s:.3f} | {json_s:.3f} |")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="64,1000", help="host counts (default 64,1000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement; the best counts")
    args = parser.parse_args()
    warm = report_of(fleet_cases(8))  # rich's lazy imports and caches, outside the timing
    render_now(warm, True, ViewOptions(fold=False))
    render_rich(warm, True, ViewOptions(fold=False))
    print(f"CPU seconds, best of {args.repeat}; terminal {WIDTH}x{HEIGHT}, colour")
    print("| hosts | view | lines | rich Table s | TextTable s | ratio | parse+classify s | JSON s |")
    print("|---|---|---|---|---|---|---|---|")
    for count in (int(c) for c in args.hosts.split(",")):
        for line in rows_for(count, args.repeat):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
