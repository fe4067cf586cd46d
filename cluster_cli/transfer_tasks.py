"""File tasks: put (controller -> every host) and get (every host -> LOCALDIR/<host>/).

Thin: check the paths (`cluster.transfer.plan_put` / `plan_get`, exit 2 on
bad input before any connection), call `cluster.transfer.put` / ``get``,
render with `cluster.render.transfer`. See docs/transfer.md.
"""

from __future__ import annotations

import sys
import time

from cluster import defaults, options
from cluster.lazy import lazy

from .common import cluster_task, emit, opened

transfer_op = lazy("cluster.transfer")
transfer_render = lazy("cluster.render.transfer")

SHARED_HELP = {
    "recursive": "Copy a directory and everything below it (symlinked directories and special "
                 "files are not copied).",
    "force": "Copy even files the destination already has with the same size and sha256.",
    # The default is cluster.defaults.TRANSFER_IDLE_TIMEOUT_S, written out so that the help loads no
    # SSH code (tests/test_startup.py checks the two agree).
    "timeout": "Seconds a host may go without moving a byte before it fails as `stalled` "
               "(default 60).",
}
PUT_HELP = {
    **SHARED_HELP,
    "local": "Local file (or directory, with --recursive) to copy.",
    "remote": "Destination on every host: an existing directory (the copy goes inside, also "
              "when REMOTE ends with /) or the new path. Relative paths and ~/ start in the "
              "login user's home.",
    "mkdir": "Create missing destination directories (like mkdir -p).",
}
GET_HELP = {
    **SHARED_HELP,
    "remote": "File (or directory, with --recursive) to fetch from every host. Relative paths "
              "and ~/ start in the login user's home.",
    "localdir": "Local directory; each host's copy goes to LOCALDIR/<host>/<name> "
                "(created if missing).",
}


@cluster_task(positional=["local", "remote"], shortflags={"recursive": "R"}, help=PUT_HELP)
def put(c, local, remote, hosts=None, role=None, roles_file=None, json=False, fanout=None,
        recursive=False, mkdir=False, force=False, timeout=None):
    """Copy a local file or directory to every host (temp name + rename; unchanged files skipped)."""
    started = time.monotonic()
    limit = _idle_timeout(timeout)
    plan = transfer_op.plan_put(local, remote, recursive)
    _warn_not_copied(plan.not_copied, json)
    with opened(roles_file, fanout) as cluster:
        targets = cluster.hosts(hosts, role)
        with transfer_render.progress(len(targets), "put", plan.size * len(targets)) as (
                on_progress, on_done):
            report = transfer_op.put(cluster.engine, targets, plan, mkdir=mkdir, force=force,
                                     timeout=limit, on_progress=on_progress, on_done=on_done)
    emit("put", report, json, lambda r: transfer_render.transfer_view(r, "sent"),
         fields=transfer_render.transfer_fields, started=started,
         extra={"source": plan.source, "destination": remote,
                "not_copied": list(plan.not_copied)})


@cluster_task(positional=["remote", "localdir"], shortflags={"recursive": "R"}, help=GET_HELP)
def get(c, remote, localdir, hosts=None, role=None, roles_file=None, json=False, fanout=None,
        recursive=False, force=False, timeout=None):
    """Fetch a file or directory from every host into LOCALDIR/<host>/ (one directory per host)."""
    started = time.monotonic()
    limit = _idle_timeout(timeout)
    with opened(roles_file, fanout) as cluster:
        targets = cluster.hosts(hosts, role)
        plan = transfer_op.plan_get(remote, localdir, targets, recursive)
        with transfer_render.progress(len(targets), "get") as (on_progress, on_done):
            report = transfer_op.get(cluster.engine, targets, plan, force=force, timeout=limit,
                                     on_progress=on_progress, on_done=on_done)
    emit("get", report, json, lambda r: transfer_render.transfer_view(r, "received"),
         fields=transfer_render.transfer_fields, started=started,
         extra={"source": remote, "destination": plan.directory})


def _idle_timeout(value):
    if value is None:
        return defaults.TRANSFER_IDLE_TIMEOUT_S
    return options.seconds(value, "--timeout")


def _warn_not_copied(names, as_json):
    if names and not as_json:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        print(f"put: not copied (symlinked directories, special files): {shown}", file=sys.stderr)
