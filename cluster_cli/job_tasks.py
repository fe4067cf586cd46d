"""Detached-job tasks: jobs (list with per-host state) and stop --job; ``run --detach``
starts one (`start_detached`, called from the run task). See docs/jobs.md.

Thin: check the name, call `cluster.api.Cluster.start_job` / ``jobs`` / ``stop_job``,
render with `cluster.render.jobs`, exit 0 / 1 (2 on bad input, before any connection).
"""

from __future__ import annotations

from cluster.errors import InputError
from cluster.lazy import lazy

from .common import VIEW_HELP, cluster_task, host_task, view_options

# Loaded when a task runs, not when `inv --list` imports this module (cluster/lazy.py).
jobs_op = lazy("cluster.jobs")
render = lazy("cluster.render.core")
jobs_render = lazy("cluster.render.jobs")

JOB_HELP = {
    "job": "The job's name (as given to `inv run --detach NAME`).",
    # cluster.jobs.DEFAULT_GRACE_S written out: the help loads no SSH code (tests/test_startup.py).
    "grace": "Seconds between SIGTERM and SIGKILL (default 10).",
}


def start_detached(name, command, *, hosts, role, roles_file, as_json, fanout, timeout, stream) -> None:
    """``inv run --detach NAME CMD``: start CMD on every host as job NAME, return at once."""
    if timeout is not None or stream:
        raise InputError(f"{'--timeout' if timeout is not None else '--stream'} does not apply to "
                         "--detach: a detached job runs until it ends or `inv stop --job NAME` "
                         "(follow it with `inv logs --job NAME --follow`)")
    name = jobs_op.check_name(name, "--detach")
    command = jobs_op.check_command(command)
    options = view_options(render.stdout_console())
    host_task("run", lambda cluster, tick: cluster.start_job(name, command, hosts=hosts, role=role,
                                                             on_done=tick),
              roles_file=roles_file, fanout=fanout, hosts=hosts, role=role, as_json=as_json,
              table=lambda report: jobs_render.start_table(report, options),
              summary=jobs_render.start_summary)


@cluster_task(help={**VIEW_HELP, "job": "Only this job (default: every job this controller "
                                        "recorded; with -H/-r also those found on the hosts)."})
def jobs(c, job=None, hosts=None, role=None, roles_file=None, json=False, fanout=None,
         expand=False, fold=False, state=None):
    """List detached jobs with each host's state (running / exited CODE / vanished), runtime and last log line."""
    name = jobs_op.check_name(job, "--job") if job is not None else None
    options = view_options(render.stdout_console(), expand, fold, state)
    host_task("jobs", lambda cluster, tick: cluster.jobs(name, hosts=hosts, role=role, on_done=tick),
              roles_file=roles_file, fanout=fanout, hosts=hosts, role=role, as_json=json,
              table=lambda report: jobs_render.jobs_table(report, options),
              summary=jobs_render.jobs_summary)


@cluster_task(help={**JOB_HELP, "job": "Required. The job to stop (`inv jobs` lists them); "
                                       "stop-pd stops a PD deployment."})
def stop(c, job=None, hosts=None, role=None, roles_file=None, json=False, fanout=None, grace=None):
    """Stop a detached job on its hosts: SIGTERM its process group, wait --grace, SIGKILL, check it is gone."""
    if job is None:
        raise InputError("--job NAME is required: inv stop --job NAME (stop-pd stops a deployment)")
    name = jobs_op.check_name(job, "--job")
    wait = jobs_op.check_grace(grace) if grace is not None else jobs_op.DEFAULT_GRACE_S
    host_task("stop", lambda cluster, tick: cluster.stop_job(name, hosts=hosts, role=role, grace=wait,
                                                             on_done=tick),
              roles_file=roles_file, fanout=fanout, hosts=hosts, role=role, as_json=json,
              table=jobs_render.stop_table, summary=jobs_render.stop_summary)
