"""Launch and preflight scripts (pure): the POSIX shell text that starts a :class:`Launch`
in its own session, the same checks without the start, and the masked form shown by
``--dry-run``.

Launch-script exit codes (documented for the lifecycle's messages): see ``EXIT_*``.
"""

from __future__ import annotations

import re
from typing import Sequence

from . import shellcmd
from .argv import Launch, as_launch
from .plan import RouterSpec, ServerSpec
from .probe import listen_scan

# Exit codes of launch_script (and preflight_script). 1 and 2 are left to the shell
# and to tools; 126/127 mean "cannot execute" / "not found" as usual.
EXIT_ENV_FILE_MISSING = 3
EXIT_RUN_DIR = 4
EXIT_ALREADY_RUNNING = 5
EXIT_PORT_BUSY = 6
EXIT_LAUNCHER_MISSING = 7
EXIT_MESSAGES = {
    EXIT_ENV_FILE_MISSING: "env file not found",
    EXIT_RUN_DIR: "cannot create the run directory",
    EXIT_ALREADY_RUNNING: "a server is already running there",
    EXIT_PORT_BUSY: "a port it needs is already in use",
    EXIT_LAUNCHER_MISSING: "the launcher (python/vllm/router) is not on PATH",
}


# Feed launch_script() on stdin to this, so secrets never appear in any process's
# command line (``ps`` shows argv to every user on the host). bash when present,
# because env files such as /opt/deepep/unified-env.sh are often bash.
STDIN_RUNNER = "if command -v bash >/dev/null 2>&1; then exec bash -s; else exec sh -s; fi"


def launch_script(launch: Launch, *, refuse_running: bool = True, check_ports: bool = True) -> str:
    """POSIX shell text that starts ``launch`` in its own session and prints its pid.

    Steps, each failing with a documented exit code and a one-line message on stderr:
    env file present (3), run dir created (4), no live process group from the pid
    file (5), ports free on the bind address (6); then source the env file (its
    output goes to the log), export the env, check the launcher is on PATH (7), and
    ``setsid nohup ARGV >> LOG 2>&1 < /dev/null &`` — PGID = PID, so stop can kill
    the whole group; it waits (at most 1 s) until the new process leads its group.
    Prints the pid as the last line of stdout.
    Contains secrets in clear: run it (preferably via :data:`STDIN_RUNNER`), never print it.
    """
    return "\n".join(_launch_lines(launch, refuse_running, check_ports, mask=False)) + "\n"


def preflight_script(launch: Launch, *, running_ok: bool = False) -> str:
    """The checks of :func:`launch_script` without the start (changes nothing on the host).

    Run on every host before starting anything, so bad input fails before any
    server starts. Exit 0 = all clear (last line ``ok``); otherwise the same exit
    codes as the launch. Checks: env file (3), a live group from the pid file (5),
    ports (6), and — in a subshell that sources the env file and exports the env —
    that the launcher is on PATH and, for ``PY -m pkg.mod``, that ``pkg`` imports (7).
    With ``running_ok`` (``--restart``) a live group is not an error: the script
    prints ``RUNNING <pgid>`` and skips the port check (that group holds the ports).
    Contains the env in clear: run it on stdin, never print it.
    """
    lines = []
    if launch.env_file:
        lines.append(_env_file_check(launch.env_file))
    if running_ok:
        lines.append(_running_report(launch.pid_path))
        if launch.ports:
            lines.append(f'if [ -z "$running" ]; then {_ports_check(launch.bind_host, launch.ports)}; fi')
    else:
        lines.append(_running_check(launch.pid_path))
        if launch.ports:
            lines.append(_ports_check(launch.bind_host, launch.ports))
    lines.append(_launcher_check(launch))
    lines.append("echo ok")
    return "\n".join(lines) + "\n"


def render_for_display(item: ServerSpec | RouterSpec | Launch) -> str:
    """What ``--dry-run`` prints: the launch script with secret values shown as ``***``.

    Secret = env vars named like *TOKEN*, *KEY*, *SECRET*, *PASSWORD*, and the values
    of options such as ``--api-key``. Never returns the real secret.
    """
    launch = as_launch(item)
    return "\n".join(_launch_lines(launch, True, True, mask=True)) + "\n"


def _env_file_check(env_file: str) -> str:
    msg = shellcmd.quote(f"env file not found: {env_file}")
    return f"[ -f {shellcmd.path(env_file)} ] || {{ echo {msg} >&2; exit {EXIT_ENV_FILE_MISSING}; }}"


def _running_check(pid_path: str) -> str:
    """Exit 5 when the pid file names a process group that still has a live member.

    The group, not just the pid: a dead leader can leave schedulers holding the GPUs.
    Zombies do not count (``kill -0`` would).
    """
    pidfile = shellcmd.path(pid_path)
    return (
        f"if [ -f {pidfile} ]; then old=$(cat {pidfile} 2>/dev/null | tr -dc 0-9) || old=''; "
        'if [ -n "$old" ] && [ "$old" -gt 1 ] && ps -eo pgid=,stat= 2>/dev/null | '
        "awk -v g=\"$old\" '$1==g && $2 !~ /^Z/ {f=1} END {exit !f}'; then "
        f'echo "already running: process group $old (pid file {_plain(pid_path)})" >&2; '
        f"exit {EXIT_ALREADY_RUNNING}; fi; fi"
    )


def _running_report(pid_path: str) -> str:
    """Set ``running`` to the live process group of the pid file (empty when none) and
    print ``RUNNING <pgid>`` for it. Used by the ``--restart`` preflight."""
    pidfile = shellcmd.path(pid_path)
    return (
        f"running=''; if [ -f {pidfile} ]; then old=$(cat {pidfile} 2>/dev/null | tr -dc 0-9) || old=''; "
        'if [ -n "$old" ] && [ "$old" -gt 1 ] && ps -eo pgid=,stat= 2>/dev/null | '
        "awk -v g=\"$old\" '$1==g && $2 !~ /^Z/ {f=1} END {exit !f}'; then "
        'running=$old; echo "RUNNING $old"; fi; fi'
    )


_PY_FIND_SPEC = "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)"


def _launcher_check(launch: Launch) -> str:
    """Exit 7 unless the launcher is on PATH (and ``PY -m pkg`` imports) once the env
    file is sourced and the env exported — in a subshell, so nothing leaks out."""
    program = launch.argv[0]
    steps = []
    if launch.env_file:
        steps.append(f". {shellcmd.path(launch.env_file)} >/dev/null 2>&1 < /dev/null")
    exports = shellcmd.export_line(launch.env)
    if exports:
        steps.append(exports)
    missing = shellcmd.quote(f"{program} not found on PATH")
    steps.append(f"command -v {shellcmd.quote(program)} >/dev/null 2>&1 || "
                 f"{{ echo {missing} >&2; exit {EXIT_LAUNCHER_MISSING}; }}")
    if len(launch.argv) > 2 and launch.argv[1] == "-m":
        package = launch.argv[2].split(".")[0]
        cannot = shellcmd.quote(f"{program} cannot import {package} (not installed in that environment?)")
        steps.append(f"{shellcmd.quote(program)} -c {shellcmd.quote(_PY_FIND_SPEC)} "
                     f"{shellcmd.quote(package)} "
                     f"< /dev/null >/dev/null 2>&1 || {{ echo {cannot} >&2; exit {EXIT_LAUNCHER_MISSING}; }}")
    return "( " + "; ".join(steps) + " ) || exit $?"


def _ports_check(host: str, ports: Sequence[int]) -> str:
    scan = listen_scan(host, ports)
    return (
        f"busy=$({scan} | tr '\\n' ' '); "
        f'if [ -n "$busy" ]; then echo "port(s) in use on {_plain(host)}: $busy" >&2; '
        f"exit {EXIT_PORT_BUSY}; fi"
    )


def _plain(text: str) -> str:
    """Text safe inside a double-quoted shell string (for messages only)."""
    return re.sub(r'["$`\\]', "_", text)


def _launch_lines(launch: Launch, refuse_running: bool, check_ports: bool, *, mask: bool) -> list[str]:
    run_dir = shellcmd.path(launch.run_dir)
    log = shellcmd.path(launch.log_path)
    pidfile = shellcmd.path(launch.pid_path)
    lines = [f"# {launch.name}"]
    if launch.env_file:
        lines.append(_env_file_check(launch.env_file))
    no_dir = shellcmd.quote("cannot create run dir: " + launch.run_dir)
    lines.append(f"mkdir -p {run_dir} || {{ echo {no_dir} >&2; "
                 f"exit {EXIT_RUN_DIR}; }}")
    if refuse_running:
        lines.append(_running_check(launch.pid_path))
    if check_ports and launch.ports:
        lines.append(_ports_check(launch.bind_host, launch.ports))
    if launch.env_file:
        # Its chatter goes to the log; a non-zero status of its last line is common and harmless.
        lines.append(f". {shellcmd.path(launch.env_file)} >> {log} 2>&1 < /dev/null")
    exports = shellcmd.export_line(launch.env, mask=mask)
    if exports:
        lines.append(exports)
    program = shellcmd.quote(launch.argv[0])
    not_found = shellcmd.quote(launch.argv[0] + " not found on PATH")
    lines.append(f"command -v {program} >/dev/null 2>&1 || {{ echo {not_found} >&2; "
                 f"exit {EXIT_LAUNCHER_MISSING}; }}")
    argv = shellcmd.display_argv(launch.argv) if mask else shellcmd.join(launch.argv)
    lines.append(f"setsid nohup {argv} >> {log} 2>&1 < /dev/null &")
    lines.append("pid=$!")
    lines.append(f'echo "$pid" > {pidfile}')
    # The forked child calls setsid() a moment after $! is known: wait (up to 1 s) until
    # it leads its own group, so a stop right after the start signals the whole group.
    lines.append("i=0; while [ \"$(ps -o pgid= -p \"$pid\" 2>/dev/null | tr -d '[:space:]')\" != \"$pid\" ] "
                 "&& [ $i -lt 50 ]; do sleep 0.02; i=$((i+1)); done")
    lines.append('echo "$pid"')
    return lines
