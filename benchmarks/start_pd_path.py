#!/usr/bin/env python3
"""Which project files `inv start-pd` touches (issue 15's "follow start-pd" count), mechanically.

    python benchmarks/start_pd_path.py [--ref DIR] [-- START-PD ARGS]

Runs ``inv start-pd --dry-run`` (default arguments: one prefill and two decode servers on
documentation addresses; a dry run contacts no host) in this checkout, and in ``--ref DIR``
(another checkout, e.g. ``git worktree add /tmp/old b5eeaa5~1``) when given, each in a fresh
interpreter, and prints per checkout:

* ``executed``: project files whose functions run while the task runs (from the task's
  first call; module bodies and class bodies not counted);
* ``stack``: files on the call stack when the launch-script builder (``_launch_lines`` in
  serving) is first called, plus the files of everything it calls;
* ``loaded``: project modules loaded by the whole command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARGS = ["--prefill", "10.8.0.81", "--decode", "10.8.0.82,10.8.0.83", "--model-path", "/models/x"]

PROBE = r'''
import atexit, json, os, sys, threading
root = os.path.realpath(sys.argv[1]); os.chdir(root); sys.path.insert(0, root)
executed, stack, inside, state = set(), set(), set(), {"on": False, "depth": 0}
def rel(path): return os.path.relpath(path, root)
def profile(frame, event, arg):
    code = frame.f_code
    if event == "call":
        if not state["on"] and code.co_name == "start_pd" and code.co_filename.endswith("_tasks.py"):
            state["on"] = True
        mine = code.co_filename.startswith(root)
        if state["on"] and mine and code.co_flags & 0x2:  # a function, not a module or class body
            executed.add(rel(code.co_filename))
        if state["depth"]:
            state["depth"] += 1
            if mine: inside.add(rel(code.co_filename))
        elif not stack and code.co_name == "_launch_lines" and "/serving/" in code.co_filename:
            state["depth"] = 1
            f = frame
            while f is not None:
                if f.f_code.co_filename.startswith(root): stack.add(rel(f.f_code.co_filename))
                f = f.f_back
    elif event == "return" and state["depth"]:
        state["depth"] -= 1
def report():
    sys.setprofile(None)
    loaded = sorted(n for n, m in list(sys.modules.items())
                    if getattr(m, "__file__", None) and os.path.realpath(m.__file__).startswith(root))
    print("PATH-REPORT " + json.dumps({"executed": sorted(executed), "stack": sorted(stack | inside),
                                      "loaded": loaded}), file=sys.stderr)
atexit.register(report)
sys.setprofile(profile); threading.setprofile(profile)
sys.argv = ["inv", "start-pd", "--dry-run"] + sys.argv[2:]
from invoke.main import program
program.run()
'''


def measure(checkout: Path, args: list[str]) -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", PROBE, str(checkout), *args], capture_output=True,
                          text=True, timeout=300, cwd=checkout)
    line = next((ln for ln in done.stderr.splitlines() if ln.startswith("PATH-REPORT ")), None)
    if line is None:
        sys.exit(f"{checkout}: inv start-pd --dry-run did not report:\n{done.stderr[-2000:]}")
    return json.loads(line.removeprefix("PATH-REPORT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", type=Path, help="another checkout to count the same way")
    parser.add_argument("--list", action="store_true", help="also list the files")
    parser.add_argument("args", nargs="*", help="start-pd arguments (after --)")
    options = parser.parse_args()
    args = options.args or DEFAULT_ARGS
    checkouts = [("this", ROOT)] + ([("ref", options.ref.resolve())] if options.ref else [])
    print("| checkout | executed | stack | loaded |\n|---|---|---|---|")
    results = {name: measure(path, args) for name, path in checkouts}
    for name, found in results.items():
        print(f"| {name} | {len(found['executed'])} | {len(found['stack'])} | {len(found['loaded'])} |")
    if options.list:
        for name, found in results.items():
            for kind in ("executed", "stack"):
                print(f"\n{name} {kind}: " + " ".join(found[kind]))


if __name__ == "__main__":
    main()
