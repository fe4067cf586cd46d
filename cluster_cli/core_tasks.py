"""Connectivity tasks: hosts, run, check, keyscan, ensure-key."""

from __future__ import annotations

import time

from invoke import Exit

from cluster.lazy import lazy
from cluster.result import Outcome, Report

from .common import VIEW_HELP, cluster_task, emit, finish, host_task, opened, view_options

checks = lazy("cluster.checks")
basic = lazy("cluster.render.basic")
render = lazy("cluster.render.core")
run_output = lazy("cluster.render.output")


@cluster_task
def hosts(c, hosts=None, role=None, roles_file=None, json=False, fanout=None):
    """List roles and the hosts a selection expands to (no connection is made)."""
    with opened(roles_file, fanout) as cluster:
        selected = cluster.hosts(hosts, role)
        report = Report([Outcome(h, True) for h in selected])
        emit("hosts", report, json,
             lambda r: _hosts_view(cluster.inventory, selected),
             fields=basic.hosts_fields(cluster.inventory),
             extra={"roles": {k: [str(h) for h in v] for k, v in cluster.inventory.roles.items()}})


def _hosts_view(inventory, selected):
    from rich.console import Group

    from cluster.hosts import fold_names

    return Group(basic.roles_table(inventory, selected),
                 f"selected ({len(selected)}): {fold_names([str(h) for h in selected])}")


@cluster_task(positional=["command"], help={
    "command": "Shell command to run on every host (quote it).",
    "timeout": "Seconds the command may run on each host; past it, it is stopped there "
               "(kind command-timeout). Default: none.",
    "stream": "Print 'host: line' as lines arrive (stderr lines marked), then the summary.",
    "detach": "Start the command as detached job NAME on every host and return at once "
              "(own session, log and pid file per host; see inv jobs, inv logs --job, "
              "inv stop --job).",
})
def run(c, command, hosts=None, role=None, roles_file=None, json=False, fanout=None, timeout=None,
        stream=False, detach=None):
    """Run a shell command on every host; piped output is the hosts' bytes, unchanged.

    Piped: stdout carries each host's stdout, host after host (status and stderr on
    stderr); on a terminal: identical outputs folded into one group."""
    if detach is not None:
        from .job_tasks import start_detached

        return start_detached(detach, command, hosts=hosts, role=role, roles_file=roles_file,
                              as_json=json, fanout=fanout, timeout=timeout, stream=stream)
    started = time.monotonic()
    with opened(roles_file, fanout) as cluster:
        targets = cluster.hosts(hosts, role)
        writer = None if json else run_output.RunOutput.for_stdout(targets, stream=stream)
        live = writer is not None and (writer.live is not None or writer.ordered is not None)
        with render.progress(len(targets), "run", enabled=False if live else None) as tick:
            report = cluster.run(command, hosts=hosts, role=role, timeout=timeout,
                                 on_done=writer.on_done(tick) if writer else tick,
                                 on_output=writer.on_output if writer else None)
    if writer is None:
        render.print_json(report.to_dict())
    else:
        writer.finish(report, time.monotonic() - started)
    finish(report)


@cluster_task(help=VIEW_HELP)
def check(c, hosts=None, role=None, roles_file=None, json=False, fanout=None, expand=False,
          fold=False, state=None):
    """Connect, authenticate and run `uname -n` on every host; show latencies."""
    options = view_options(render.stdout_console(), expand, fold, state)
    host_task("check", lambda cluster, tick: cluster.check(hosts=hosts, role=role, on_done=tick),
              roles_file=roles_file, fanout=fanout, hosts=hosts, role=role, as_json=json,
              table=lambda report: basic.check_table(report, options))


@cluster_task(help={"policy": "Host-key policy for this scan: accept-new (record unknown keys) "
                              "or strict (only verify). Default: ssh.host_key_policy."})
def keyscan(c, hosts=None, role=None, roles_file=None, json=False, fanout=None, policy=None):
    """Fetch host keys, record new ones per the policy, print fingerprints; flag changed keys."""
    host_task("keyscan", lambda cluster, tick: cluster.keyscan(hosts=hosts, role=role, on_done=tick),
              roles_file=roles_file, fanout=fanout, hosts=hosts, role=role, as_json=json,
              table=basic.keyscan_table, host_key_policy=_policy(policy))


def _policy(policy):
    from cluster.errors import InputError
    from cluster.inventory import HOST_KEY_POLICIES

    if policy is not None and policy not in HOST_KEY_POLICIES:
        raise InputError(f"--policy: {policy!r} is not one of {', '.join(HOST_KEY_POLICIES)}")
    return policy


@cluster_task(name="ensure-key")
def ensure_key(c, roles_file=None, json=False):
    """Show the SSH key in use; create ~/.ssh/google_compute_engine with gcloud if missing."""
    with opened(roles_file) as cluster:
        report = checks.ensure_key(cluster.settings)
    if json:
        render.print_json({"task": "ensure-key", **report.to_json()})
    else:
        basic.print_key_report(report, render.stdout_console())
    if not report.ok:
        raise Exit(code=1)
