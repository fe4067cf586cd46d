"""Status tasks: gpu-status (with --watch), sys-status, service-status.

Thin: parse options, call one library function (`cluster.status` through
`cluster.api.Cluster`), render (`cluster.render.gpu` / `cluster.render.system`),
map the outcome to the exit code.

``gpu-status --watch N`` decisions (docs/gpu-status.md):

* Ctrl-C ends the watch cleanly; the exit code is the last completed round's
  (0 every host ok, 1 some host failed), 130 when no round completed yet.
* ``--watch`` with ``--json`` prints one JSON document per round on one line
  (JSON lines), each with ``tick`` and ``time`` added.
* ``--count N`` stops after N rounds (scripts, tests); the exit code is then
  the last round's.

Tables fold equal hosts when taller than the terminal (``--expand``/``--fold``/
``--state``: `cluster.render.fold`). GPU health warnings keep exit code 0
unless ``--strict``.
"""

from __future__ import annotations

import json as jsonlib
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from invoke import Exit

from cluster import defaults, status
from cluster.errors import InputError
from cluster.lazy import lazy
from cluster.result import Report

from .common import VIEW_HELP, cluster_task, finish, host_task, opened, view_options

if TYPE_CHECKING:
    from rich.console import Group

gpu = lazy("cluster.gpu")
service = lazy("cluster.service")
system = lazy("cluster.system")
render = lazy("cluster.render.core")
gpu_render = lazy("cluster.render.gpu")
sys_render = lazy("cluster.render.system")

GPU_HELP = {
    **VIEW_HELP,
    "strict": "Exit 1 when a GPU carries a health warning (ECC, remapped rows, temperature, "
              "clock slowdown, recovery action); without it warnings keep exit code 0.",
    "gpus": "Also show one row per GPU under each host.",
    "procs": "Also list GPU compute processes (host, GPU, pid, name, memory).",
    "timeout": "nvidia-smi timeout per host in seconds (default 20); a wedged GPU shows as "
               "command-timeout.",
    "watch": "Refresh every SECONDS on the same open connections until Ctrl-C "
             "(with --json: one JSON document per line per refresh).",
    "count": "With --watch: stop after N refreshes (default: until Ctrl-C).",
}


@cluster_task(name="gpu-status", help=GPU_HELP, flags={"interval": "--watch", "max_ticks": "--count"})
def gpu_status(c, hosts=None, role=None, roles_file=None, json=False, fanout=None, gpus=False,
               procs=False, timeout=None, watch=None, count=None, expand=False, fold=False,
               state=None, strict=False):
    """GPU state of every host: utilization, memory, temperature, power, processes, health."""
    limit = status.check_timeout(timeout) or defaults.GPU_TIMEOUT_S
    interval = status.check_interval(watch) if watch is not None else None
    rounds = status.check_count(count)
    if rounds is not None and interval is None:
        raise InputError("--count only applies with --watch SECONDS")
    options = view_options(render.stdout_console(), expand, fold, state)
    strict_warned = gpu_render.warned if strict else None
    if interval is not None:
        with opened(roles_file, fanout) as cluster:
            view = _GpuFrames(gpus, procs, options, interval, len(cluster.hosts(hosts, role)), rounds)
            last = _watch_gpus(cluster, hosts, role, view, json, limit)
        finish(last, strict_warned)
        return
    host_task("gpu-status", lambda cluster, tick: cluster.gpu_status(hosts=hosts, role=role,
                                                                    timeout=limit, on_done=tick),
              roles_file=roles_file, fanout=fanout, hosts=hosts, role=role, as_json=json,
              table=lambda report: gpu_render.gpu_view(report, gpus, procs, options),
              summary=gpu_render.gpu_summary_line, also_failed=strict_warned)


class _GpuFrames:
    """What one --watch round shows: a header line, the tables, the summary line."""

    def __init__(self, gpus: bool, procs: bool, options, interval: float, host_count: int,
                 rounds: int | None) -> None:
        self.gpus, self.procs, self.options = gpus, procs, options
        self.interval, self.host_count, self.rounds = interval, host_count, rounds

    def frame(self, tick: status.Tick) -> Group:
        from rich.console import Group
        from rich.text import Text

        when = datetime.fromtimestamp(tick.started_at).strftime("%H:%M:%S")
        header = Text(f"Every {self.interval:g} s: gpu-status on {self.host_count} hosts · "
                      f"round {tick.number} at {when}", style="bold")
        if self.rounds is None:
            header.append(" · Ctrl-C to stop", style="dim")
        return Group(header, gpu_render.gpu_view(tick.report, self.gpus, self.procs, self.options),
                     gpu_render.gpu_summary_line(tick.report, tick.elapsed))


def _watch_gpus(cluster, hosts, role, view: _GpuFrames, as_json: bool, limit: float) -> Report:
    """Run the watch loop, showing each round; return the last round's report."""
    last: list[status.Tick] = []

    def show(tick: status.Tick) -> None:
        last[:] = [tick]
        if as_json:
            stamp = datetime.fromtimestamp(tick.started_at, timezone.utc).isoformat()
            doc = gpu_render.gpu_document(tick.report, {"tick": tick.number, "time": stamp})
            sys.stdout.write(jsonlib.dumps(doc, default=str) + "\n")
            sys.stdout.flush()
        elif live is not None:
            live.update(view.frame(tick), refresh=True)
        else:  # not a terminal: one frame after the other, like `watch` into a file
            console.print(view.frame(tick), crop=False)
            console.print()

    from rich.live import Live

    console = render.stdout_console()
    live = None if as_json or not console.is_terminal else Live(console=console,
                                                                auto_refresh=False)
    def loop() -> None:
        cluster.watch_gpu_status(view.interval, show, hosts=hosts, role=role, timeout=limit,
                                 max_ticks=view.rounds)

    try:
        if live is not None:
            with live:
                loop()
        else:
            loop()
    except KeyboardInterrupt:
        # Ctrl-C is how a watch normally ends: exit with the last round's code.
        if not last:
            raise Exit("interrupted before the first refresh", code=130) from None
    return last[0].report if last else Report()


def _whole(value: Any, option: str, default: int) -> int:
    """A whole number >= 1 from an option string (exit 2 on anything else)."""
    if value is None:
        return default
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"{option} must be a whole number >= 1, got {value!r}")
    return int(text)


@cluster_task(name="sys-status", help={
    **VIEW_HELP,
    "samples": "vmstat samples to take (default 2); the seed's `vmstat 2 15` is "
               "--interval 2 --samples 15.",
    "interval": "Seconds between samples (default 1).",
    "timeout": "Command timeout per host in seconds (default: samples x interval + 15).",
})
def sys_status(c, hosts=None, role=None, roles_file=None, json=False, fanout=None, samples=None,
               interval=None, timeout=None, expand=False, fold=False, state=None):
    """System load of every host: vmstat (r, b, memory, swap, CPU) means, memory, load average."""
    options = view_options(render.stdout_console(), expand, fold, state)
    count = _whole(samples, "--samples", 2)
    every = _whole(interval, "--interval", 1)
    limit = status.check_timeout(timeout)
    system.probe(count, every, limit)  # validate everything before connecting
    host_task("sys-status", lambda cluster, tick: cluster.sys_status(
                  hosts=hosts, role=role, samples=count, interval=every, timeout=limit, on_done=tick),
              roles_file=roles_file, fanout=fanout, hosts=hosts, role=role, as_json=json,
              table=lambda report: sys_render.sys_table(report, options), delay=0.5)


@cluster_task(name="service-status", positional=["names"], help={
    **VIEW_HELP,
    "names": "Service name(s), comma-separated: a systemd unit (sglang, nginx.service) or a "
             "command-line pattern matched literally (e.g. sglang.launch_server).",
    "timeout": "Command timeout per host in seconds (default 20).",
})
def service_status(c, names, hosts=None, role=None, roles_file=None, json=False, fanout=None,
                   timeout=None, expand=False, fold=False, state=None):
    """Per host and service: systemd state, or the matching processes where there is no unit."""
    options = view_options(render.stdout_console(), expand, fold, state)
    limit = status.check_timeout(timeout) or defaults.SERVICE_TIMEOUT_S
    service.probe(names, limit)  # validate the names before connecting
    host_task("service-status", lambda cluster, tick: cluster.service_status(
                  names, hosts=hosts, role=role, timeout=limit, on_done=tick),
              roles_file=roles_file, fanout=fanout, hosts=hosts, role=role, as_json=json,
              table=lambda report: sys_render.service_table(report, options))
