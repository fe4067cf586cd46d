"""Operations tasks: logs (read, save, follow) and kill (explicit pattern).

Thin: parse options, call `cluster.logs` / `cluster.kill`, render with
`cluster.render.logs` / `cluster.render.kill`, map the outcome to the exit code.
See docs/logs.md and docs/kill.md.
"""

from __future__ import annotations

import json as jsonlib
import sys
import time

from cluster import defaults, status
from cluster.errors import InputError
from cluster.lazy import lazy

from .common import cluster_task, finish, host_task, opened, show

kill_op = lazy("cluster.kill")
logs_op = lazy("cluster.logs")
render = lazy("cluster.render.core")
kill_render = lazy("cluster.render.kill")
logs_render = lazy("cluster.render.logs")

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
    "job": "Read the log of detached job NAME on its hosts (`inv run --detach NAME`).",
}


@cluster_task(shortflags={"lines": "n"}, help=LOGS_HELP, flags={"lines": "-n/--lines"})
def logs(c, hosts=None, role=None, roles_file=None, json=False, fanout=None, lines=None,
         file=None, grep=None, follow=False, save=None, deployment=None, timeout=None, job=None):
    """Show, save or follow the server log (or any --file, or a --job's log) of every host, grouped per host."""
    started = time.monotonic()
    count = logs_op.check_lines(lines)
    pattern = logs_op.check_grep(grep)
    if follow and save:
        raise InputError("--follow and --save do not go together: save first, then follow")
    limit = status.check_timeout(timeout)
    with opened(roles_file, fanout) as cluster:
        sources = cluster.log_sources(hosts=hosts, role=role, file=file, deployment=deployment, job=job)
        where = dict(hosts=hosts, role=role, file=file, deployment=deployment, job=job)
        if follow:
            _follow(cluster, where, [s.host for s in sources], [p for s in sources for p in s.paths],
                    10 if count is None else count, pattern, json)
            return
        with render.progress(len(sources), "logs --save" if save else "logs") as tick:
            if save:
                report = cluster.save_logs(save, lines=count, grep=pattern, timeout=limit,
                                           on_done=tick, **where)
            else:
                report = cluster.logs(lines=defaults.LOG_LINES if count is None else count,
                                      grep=pattern, timeout=limit or defaults.LOG_READ_TIMEOUT_S,
                                      on_done=tick, **where)
    if save:
        show(report, json, lambda r: logs_render.saved_view(r, save), started)
    elif json:
        show(report, True, None, started)
    else:
        console = render.stdout_console()
        logs_render.log_groups(report, console)
        console.print(render.summary_line(report, time.monotonic() - started))
        finish(report)


def _follow(cluster, where, hosts, paths, lines: int, pattern, as_json: bool) -> None:
    """Follow every host until Ctrl-C; exit 1 when some host's stream ended early."""
    console = render.stdout_console()
    if as_json:
        printer = logs_render.JsonFollowPrinter()
    else:
        printer = logs_render.FollowPrinter(hosts, console)
        render.stderr_console().print(logs_render.follow_header(hosts, paths))
    report = cluster.follow_logs(printer, lines=lines, grep=pattern, **where)
    if as_json:
        sys.stdout.write(jsonlib.dumps(report.to_dict(), default=str) + "\n")
    else:
        console.print(render.summary_line(report))
    finish(report)


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
    pattern = kill_op.check_pattern(pattern)
    sig = kill_op.check_signal(signal)
    who = kill_op.check_user(user)
    if who and all_users:
        raise InputError("--user and --all-users do not go together")
    grace = kill_op.check_wait(wait)
    limit = status.check_timeout(timeout) or defaults.KILL_LIST_TIMEOUT_S

    def table(report):
        console = render.stdout_console()
        console.print(kill_render.kill_table(report))
        console.print(kill_render.kill_summary(report))

    host_task("kill", lambda cluster, tick: cluster.kill(
                  pattern, hosts=hosts, role=role, signal=sig, dry_run=dry_run, user=who,
                  all_users=all_users, wait=grace, timeout=limit, on_done=tick),
              roles_file=roles_file, fanout=fanout, hosts=hosts, role=role, as_json=json,
              table=table)
