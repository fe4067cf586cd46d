"""Rehearsal cluster tasks: sim-up, sim-down (see docs/rehearsal.md).

Thin: validate options, call `cluster.testing.sim`, print what runs and how to use it.
`cluster.testing` is imported when a rehearsal task runs, not when ``inv`` starts: only
these tasks need the test harness.
"""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING, Any

from invoke import Exit

from cluster.errors import InputError
from cluster.hosts import Host
from cluster.lazy import lazy
from cluster.result import Outcome, Report

from .common import cluster_task

if TYPE_CHECKING:
    from rich.text import Text

    from cluster.testing import sim as sim_module

render = lazy("cluster.render.core")


def _sim() -> Any:
    """`cluster.testing.sim`, imported on first use (only the rehearsal tasks need it)."""
    return importlib.import_module("cluster.testing.sim")

SIM_HELP = {
    "count": "Number of simulated GPU hosts (default 4; 127.0.5.1, 127.0.5.2, ...).",
    "hosts": "Deprecated alias of --count (a number of hosts here, not a host expression).",
    "gpus": "Stand-in GPUs per host (default 8, idle H100s).",
    "state_dir": "Where the cluster's keys, sshd configs, roles file and logs live "
                 "(default ./.sim).",
    "base": "Address prefix of the hosts (default 127.0.5.; loopback only).",
    "load_seconds": "How long the stand-in servers take to become ready (default 2).",
    "defects": "Rehearse an inv preflight failure: 'all', or comma-separated defects given to one "
               "host each (from the second host), or ADDRESS=DEFECT: model-file, sglang-version, nic, "
               "ib-down, port, gpu-busy, env-file (docs/preflight.md).",
    "json": "Print one JSON document instead of the text.",
}


@cluster_task(name="sim-up", help=SIM_HELP)
def sim_up(c, count=None, hosts=None, gpus=None, state_dir=None, base=None, load_seconds=None,
           defects=None, json=False):
    """Start a rehearsal cluster: N simulated GPU hosts on loopback (real sshd, stand-in GPUs)."""
    started = time.monotonic()
    sim = _sim()
    if count is not None and hosts is not None:
        raise InputError("--count and --hosts (its deprecated alias) do not go together: use --count")
    given = count if hosts is None else hosts
    count = sim.check_count(sim.DEFAULT_HOSTS if given is None else given,
                            "--count" if hosts is None else "--hosts", 1, sim.MAX_HOSTS)
    state_dir = state_dir or sim.DEFAULT_STATE_DIR
    base = base or sim.DEFAULT_BASE
    seconds = _seconds(load_seconds)
    current = sim.status(state_dir)
    try:
        state = current or sim.up(state_dir, hosts=count,
                                  gpus=sim.DEFAULT_GPUS if gpus is None else gpus, base=base,
                                  load_seconds=seconds, defects=defects)
    except sim.SimError as exc:
        raise Exit(f"error: {exc}", code=1) from None
    report = _report(state)
    if json:
        render.print_json(render.json_document(
            "sim-up", report, lambda o: {"roles": _roles_of(state, o.host), "gpus": state.gpus},
            extra={"already_running": current is not None, "state": state.to_json(),
                   "exports": state.exports()}))
        return
    console = render.stdout_console()
    for line in up_text(state, already=current is not None, elapsed=time.monotonic() - started):
        console.print(line, soft_wrap=True)


@cluster_task(name="sim-down", help={"state_dir": SIM_HELP["state_dir"], "json": SIM_HELP["json"]})
def sim_down(c, state_dir=None, json=False):
    """Stop the rehearsal cluster and remove its files (sshd, sessions, stand-in servers)."""
    sim = _sim()
    result = sim.down(state_dir or sim.DEFAULT_STATE_DIR)
    if json:
        render.print_json({"task": "sim-down", **result.to_json()})
        return
    console = render.stdout_console()
    for line in down_text(result):
        console.print(line, soft_wrap=True)


def _seconds(value):
    from cluster.options import seconds

    if value is None:
        return _sim().DEFAULT_LOAD_SECONDS
    return seconds(value, "--load-seconds", maximum=3600, allow_minimum=True)


def _report(state: sim_module.SimState) -> Report:
    return Report([Outcome(Host(a), True) for a in state.addresses])


def _roles_of(state: sim_module.SimState, host: Host) -> list[str]:
    return [role for role, members in state.roles.items() if host.hostname in members]


def up_text(state: sim_module.SimState, *, already: bool, elapsed: float) -> list[Text]:
    """What sim-up prints: the hosts, the roles, the roles file and how to use it."""
    from rich.text import Text

    from cluster.hosts import fold_names

    head = "rehearsal cluster already running" if already else "rehearsal cluster up"
    lines = [Text(f"{head}: {len(state.addresses)} hosts {state.folded}, sshd port {state.port}, "
                  f"login user {state.user}, {state.gpus} stand-in GPUs each"
                  + ("" if already else f" ({elapsed:.1f} s)"), style="bold green")]
    for role, members in state.roles.items():
        lines.append(Text(f"  {role:<8} {fold_names(members)}"))
    for address, defect in state.defects.items():
        lines.append(Text(f"  defect   {address}: {defect}  (inv preflight flags it)", style="yellow"))
    lines += [
        Text(f"  roles file {state.roles_file}"),
        Text(""),
        Text("Use it from this shell (every task then targets the rehearsal cluster):",
             style="bold"),
        Text(f"  {state.exports()}"),
        Text("  inv check"),
        Text("  inv gpu-status"),
        Text("  inv preflight           # can every host serve its part? (ok / warn / fail)"),
        Text("  inv start-pd            # prefill/decode hosts from the roles file"),
        Text("  inv pd-status"),
        Text("  inv logs -r decode -n 20"),
        Text("  inv stop-pd --sweep deployment   # the hosts share one kernel: sweep only this"
             " deployment"),
        Text(f"Stop it: {stop_command(state)}", style="bold"),
    ]
    return lines


def stop_command(state: sim_module.SimState) -> str:
    """The exact command that stops this cluster (its --state-dir unless the default)."""
    import shlex
    from pathlib import Path

    default = Path(_sim().DEFAULT_STATE_DIR).resolve()
    given = Path(state.state_dir)
    if given.resolve() == default:
        return "inv sim-down"
    return f"inv sim-down --state-dir {shlex.quote(str(given))}"


def down_text(result: sim_module.DownResult) -> list[Text]:
    """What sim-down prints."""
    from rich.text import Text

    if not result.was_running and not result.removed:
        return [Text(f"no rehearsal cluster in {result.state_dir}: nothing to stop")]
    what = ("stopped the rehearsal cluster" if result.was_running
            else "cleaned up a stopped rehearsal cluster")
    lines = [Text(f"{what} in {result.state_dir}", style="bold green")]
    if result.stopped:
        pids = " ".join(map(str, result.stopped))
        lines.append(Text(f"  signalled supervisor/sshd pids: {pids}"))
    lines.append(Text(f"  leftover processes killed: {len(result.swept)}"
                      + (f" ({' '.join(map(str, result.swept))})" if result.swept else "")))
    lines.append(Text(f"  removed: {', '.join(result.removed) if result.removed else 'nothing'}"))
    return lines
