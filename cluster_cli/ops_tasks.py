"""Operations tasks: logs (read, save, follow) and kill (explicit pattern).

Thin: parse options, call `cluster.logs` / `cluster.kill`, render with
`cluster.render.logs` / `cluster.render.kill`, map the outcome to the exit code.
See docs/logs.md and docs/kill.md.
"""

from __future__ import annotations

import json as jsonlib
import sys
import time

from cluster import kill as kill_op
from cluster import logs as logs_op
from cluster.errors import InputError
from cluster.render import core as render
from cluster.render import kill as kill_render
from cluster.render import logs as logs_render

from .common import cluster_task, emit, finish, opened

LOGS_HELP = {
    "lines": "Last N lines per host (default 100; with --follow 10; with --save the whole file "
             "unless given).",
    "file": "Read this path on every host instead of the deployment's server log "
            "(a leading ~/ is the remote user's home).",
    "grep": "Only lines matching this extended regex (grep -E on the host); with -n, the "
            "last N matching lines.",
    "follow": "Stream new lines from every host at once, prefixed with the host, until Ctrl-C.",
    "save": "Write each host's log to DIR/<host>.log (the whole file, or the last -n lines).",
    "deployment": "Deployment whose server logs to read (default: the one start-pd recorded "
                  "last under the default name).",
    "timeout": "Per-host read timeout in seconds (default 60; none with --save/--follow).",
}


@cluster_task(shortflags={"lines": "n"}, help=LOGS_HELP)
def logs(c, hosts=None, role=None, roles_file=None, json=False, fanout=None, lines=None,
         file=None, grep=None, follow=False, save=None, deployment=None, timeout=None):
    """Show, save or follow the server log (or any --file) of every host, grouped per host."""
    started = time.monotonic()
    count = logs_op.check_lines(lines, "-n/--lines")
    pattern = logs_op.check_grep(grep)
    if follow and save:
        raise InputError("--follow and --save do not go together: save first, then follow")
    limit = _seconds(timeout)
    with opened(roles_file, fanout) as cluster:
        if file:
            sources = logs_op.file_sources(cluster.hosts(hosts, role), file)
        else:
            manifest = logs_op.load_deployment(deployment)
            sources = logs_op.select_sources(manifest, cluster.hosts, hosts, role)
        if not sources:
            raise InputError("the recorded deployment has no server on the selected hosts")
        engine = cluster.engine
        if follow:
            _follow(engine, sources, 10 if count is None else count, pattern, json)
            return
        if save:
            with render.progress(len(sources), "logs --save") as tick:
                report = logs_op.save_logs(engine, sources, save, count, pattern, timeout=limit,
                                           on_done=tick)
            emit("logs", report, json, lambda r: logs_render.saved_view(r, save),
                 fields=logs_render.logs_fields, started=started, extra={"saved_to": str(save)})
            return
        with render.progress(len(sources), "logs") as tick:
            report = logs_op.read_logs(engine, sources,
                                       logs_op.DEFAULT_LINES if count is None else count,
                                       pattern, timeout=limit or logs_op.READ_TIMEOUT_S,
                                       on_done=tick)
    if json:
        emit("logs", report, True, None, fields=logs_render.logs_fields, started=started)
        return
    console = render.stdout_console()
    logs_render.log_groups(report, console)
    console.print(render.summary_line(report, time.monotonic() - started))
    finish(report)


def _follow(engine, sources, lines: int, pattern, as_json: bool) -> None:
    """Follow every host until Ctrl-C; exit 1 when some host's stream ended early."""
    hosts = [s.host for s in sources]
    console = render.stdout_console()
    if as_json:
        printer = logs_render.JsonFollowPrinter()
    else:
        printer = logs_render.FollowPrinter(hosts, console)
        render.stderr_console().print(logs_render.follow_header(
            hosts, [p for s in sources for p in s.paths]))
    report = logs_op.follow_logs(engine, sources, printer, lines, pattern)
    if as_json:
        doc = render.json_document("logs", report, logs_render.logs_fields)
        sys.stdout.write(jsonlib.dumps(doc, default=str) + "\n")
    else:
        console.print(render.summary_line(report))
    finish(report)


def _seconds(value) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InputError(f"--timeout must be a number of seconds, got {value!r}") from None
    if seconds <= 0:
        raise InputError(f"--timeout must be > 0, got {value!r}")
    return seconds


KILL_HELP = {
    "pattern": "Required. Extended regex matched against full command lines (pgrep -f), "
               "e.g. 'sglang::' or 'python3 -m my.server'. Quote it.",
    "signal": "Signal to send: TERM (default), KILL, INT, QUIT, HUP, USR1, USR2.",
    "dry_run": "Only list the matching processes per host; signal nothing.",
    "user": "Only processes of this user (default: the SSH login user).",
    "all_users": "Match processes of every user (signalling others' needs root).",
    "wait": "Seconds to wait for signalled processes to exit before reporting survivors "
            "(default 3).",
    "timeout": "Per-host command timeout in seconds (default 30).",
}


@cluster_task(help=KILL_HELP)
def kill(c, pattern=None, hosts=None, role=None, roles_file=None, json=False, fanout=None,
         signal=None, dry_run=False, user=None, all_users=False, wait=None, timeout=None):
    """Signal the processes matching --pattern on every host; list them first, report survivors."""
    started = time.monotonic()
    pattern = kill_op.check_pattern(pattern)
    sig = kill_op.check_signal(signal)
    who = kill_op.check_user(user)
    if who and all_users:
        raise InputError("--user and --all-users do not go together")
    grace = kill_op.check_wait(wait)
    limit = _seconds(timeout) or kill_op.LIST_TIMEOUT_S
    with opened(roles_file, fanout) as cluster:
        targets = cluster.hosts(hosts, role)
        with render.progress(len(targets), "kill") as tick:
            report = kill_op.kill(cluster.engine, targets, pattern, signal=sig, dry_run=dry_run,
                                  user=who, all_users=all_users, wait_s=grace, timeout=limit,
                                  on_done=tick)
    extra = {"pattern": pattern, "signal": sig, "dry_run": bool(dry_run)}
    if json:
        emit("kill", report, True, None, fields=kill_render.kill_fields, started=started,
             extra=extra)
        return
    console = render.stdout_console()
    console.print(kill_render.kill_table(report))
    console.print(kill_render.kill_summary(report))
    emit("kill", report, False, lambda r: None, started=started)
