"""``kill --pattern P``: the seed's ``pkill -f``, only explicit and with a report.

Two steps per host, on one connection:

1. **list** (:func:`list_command` + :func:`parse_listing`): ``pgrep -f`` with the
   pattern quoted, scoped to the login user unless told otherwise; for each
   match its pid, start time (``/proc/PID/stat`` field 22, to recognise the
   same process later), user and full command line. The listing shell never
   lists itself or its own SSH session: ``pgrep`` writes to a file (no
   subshell holding the pattern on its command line while it scans), and the
   shell's pid and all its ancestors are dropped. Zombies are skipped.
2. **signal** (:func:`signal_command` + :func:`parse_signal_output`): only the
   listed pids, each only if its start time is unchanged (a pid reused by a
   new process is left alone), then a short wait and a re-check: every
   process comes back ``killed``, ``survived``, ``gone`` (exited before the
   signal), ``denied`` (another user's), or ``signalled`` (a signal such as
   HUP that is not meant to end it).

``--dry-run`` stops after step 1. A host where something survived or was
denied fails (kind ``survived``); a host with no match is ok.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from .defaults import KILL_LIST_TIMEOUT_S, KILL_SIGNAL, KILL_WAIT_S
from .errors import ParameterError
from .hosts import Host
from .options import regex, seconds
from .result import Failure, Outcome, Report, build_report
from .shell import quote
from .ssh import Engine, HostSession

# Signals a user may send, and the ones that are expected to end a process
# (the others are delivered and reported as "signalled", without waiting).
SIGNALS = ("TERM", "KILL", "INT", "QUIT", "HUP", "USR1", "USR2")
ENDING = ("TERM", "KILL", "INT", "QUIT")

SURVIVED = "survived"  # failure kind: something still runs after the signal (or was denied)

# Per-process results.
KILLED, STILL_ALIVE, GONE, DENIED, SIGNALLED, MATCHED = (
    "killed", "survived", "gone", "denied", "signalled", "matched")

_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]*\$?$")


@dataclass(frozen=True)
class Proc:
    """One matching process on one host."""

    pid: int
    start: str  # start time in clock ticks since boot: identifies the process with the pid
    user: str
    command: str
    result: str = MATCHED

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "user": self.user, "command": self.command, "result": self.result}


@dataclass
class KillResult:
    """What happened on one host (``Outcome.data``)."""

    processes: list[Proc] = field(default_factory=list)
    signal: str = KILL_SIGNAL
    dry_run: bool = True

    def count(self, result: str) -> int:
        return sum(1 for p in self.processes if p.result == result)


# --------------------------------------------------------------------------- input


def check_pattern(pattern: Any) -> str:
    """The pattern as given; empty or multi-line patterns are refused (exit 2).

    pgrep reads it as an extended regex; Python's ``re`` rejects the same
    blatant mistakes (unbalanced parenthesis), so those are caught here.
    """
    if pattern is None or not str(pattern).strip():
        raise ParameterError("pattern", "{name} is required and cannot be empty: name what to kill "
                                        "(e.g. {name} 'sglang::' or {name} 'python3 -m my.server')")
    return regex(pattern, "pattern")


def check_signal(name: Any) -> str:
    """``TERM``, ``sigterm``, ``SIGKILL``, ``9``... as a canonical name from `SIGNALS`."""
    if name is None:
        return KILL_SIGNAL
    text = str(name).strip().upper()
    if text.isdigit():
        numbers = {"15": "TERM", "9": "KILL", "2": "INT", "3": "QUIT", "1": "HUP",
                   "10": "USR1", "12": "USR2"}
        text = numbers.get(text, text)
    text = text[3:] if text.startswith("SIG") else text
    if text not in SIGNALS:
        raise ParameterError("signal", f"{{name}}: {name!r} is not one of {', '.join(SIGNALS)}")
    return text


def check_user(user: Any) -> str | None:
    """A user name to scope the match to (None: the login user)."""
    if user is None:
        return None
    text = str(user).strip()
    if not _USER.match(text):
        raise ParameterError("user", f"{{name}}: {user!r} is not a user name")
    return text


def check_wait(value: Any) -> float:
    """Seconds to wait for signalled processes to exit (0-600)."""
    if value is None:
        return KILL_WAIT_S
    return seconds(value, "wait", maximum=600, allow_minimum=True)


# --------------------------------------------------------------------------- commands

# Start time of "$pid" (field 22 of /proc/PID/stat; the command name in field 2 may
# hold spaces and parentheses, so count from the last ")"), and its state (field 3).
_STAT = "awk '{sub(/.*\\) /, \"\"); print $1, $20}' /proc/\"$pid\"/stat 2>/dev/null"


def new_token() -> str:
    """A random marker shared by the scripts of one kill run (see :func:`list_command`)."""
    return secrets.token_hex(6)


def _marker(token: str) -> str:
    return f"cluster-kill:{token}"


def list_command(pattern: str, user: str | None = None, all_users: bool = False,
                 token: str = "") -> str:
    """Shell text listing processes whose command line matches ``pattern``.

    Scope: ``user``, else the login user, else (``all_users``) everyone.
    Output: ``P <pid> <start> <user> <command line>`` per match, then ``END``.
    Exit 2 (with pgrep's message) when pgrep rejects the pattern.

    Every script of one run carries ``# cluster-kill:<token>`` on its command
    line and skips processes that do: when several "hosts" share one kernel
    (a loopback rehearsal cluster), or two hosts are listed at once, no listing
    shell can match another one of the same run.
    """
    token = token or new_token()
    if all_users:
        scope = ""
    elif user:
        scope = f"-u {quote(user)} "
    else:
        scope = '-u "$(id -un)" '
    lines = [
        f"# {_marker(token)}",
        # $$ and its ancestors (this shell, the sshd session) are never candidates.
        'anc=" $$ "; a=$$',
        'while [ "${a:-1}" -gt 1 ]; do',
        '  a=$(ps -o ppid= -p "$a" 2>/dev/null | tr -d " ") || a=""',
        '  if [ -n "$a" ]; then anc="$anc$a "; fi',
        "done",
        'tmp=$(mktemp 2>/dev/null || echo "/tmp/cluster-kill.$$")',
        # No $(...) around pgrep: a subshell would carry the pattern on its command line
        # while pgrep scans, and match itself.
        f'pgrep {scope}-f -- {quote(pattern)} >"$tmp" 2>"$tmp.err"; rc=$?',
        'if [ "$rc" -gt 1 ]; then cat "$tmp.err" >&2; rm -f "$tmp" "$tmp.err"; exit "$rc"; fi',
        'while read -r pid; do',
        '  case "$anc" in *" $pid "*) continue;; esac',
        "  case \"$(tr '\\0' ' ' </proc/\"$pid\"/cmdline 2>/dev/null)\" in "
        f"*{quote(_marker(token))}*) continue;; esac",
        f"  set -- $({_STAT})",
        '  [ -n "${2:-}" ] || continue',
        '  case "$1" in Z*|X*) continue;; esac',
        '  line=$(ps -ww -o user:32=,args= -p "$pid" 2>/dev/null) || continue',
        '  echo "P $pid $2 $line"',
        'done <"$tmp"',
        'rm -f "$tmp" "$tmp.err"',
        "echo END",
    ]
    return "\n".join(lines) + "\n"


def parse_listing(stdout: str) -> list[Proc]:
    """The processes of :func:`list_command` output (lines it does not know are ignored)."""
    procs: list[Proc] = []
    for line in stdout.splitlines():
        parts = line.split(None, 4)
        if len(parts) >= 4 and parts[0] == "P" and parts[1].isdigit() and parts[2].isdigit():
            command = parts[4] if len(parts) > 4 else ""
            procs.append(Proc(int(parts[1]), parts[2], parts[3], command))
    return procs


def signal_command(procs: Sequence[Proc], signal: str = KILL_SIGNAL,
                   wait_s: float = KILL_WAIT_S, token: str = "") -> str:
    """Shell text sending ``signal`` to ``procs`` (pid + start time), then re-checking them.

    Output per process: ``SENT``/``GONE``/``DENIED <pid>``, then after the wait
    (ending signals only) ``ALIVE <pid>`` for each one still running.
    """
    signal = check_signal(signal)
    pairs = " ".join(f"{p.pid}:{p.start}" for p in procs)
    polls = max(1, int(round(wait_s / 0.2))) if signal in ENDING else 0
    lines = [
        f"# {_marker(token or new_token())}",
        "same() { set -- $(" + _STAT + '); case "${1:-Z}" in Z*|X*) return 1;; esac; '
        '[ "${2:-}" = "$want" ]; }',
        "sent=''",
        f"for item in {pairs}; do",
        '  pid=${item%%:*}; want=${item#*:}',
        '  if ! same; then echo "GONE $pid"; continue; fi',
        f'  if kill -s {signal} "$pid" 2>/dev/null; then echo "SENT $pid"; sent="$sent $item";',
        '  elif same; then echo "DENIED $pid"; else echo "GONE $pid"; fi',
        "done",
        f"i=0; while [ $i -lt {polls} ] && [ -n \"$sent\" ]; do",
        "  left=''",
        "  for item in $sent; do",
        '    pid=${item%%:*}; want=${item#*:}; if same; then left="$left $item"; fi',
        "  done",
        '  sent=$left; [ -n "$sent" ] || break',
        "  sleep 0.2; i=$((i + 1))",
        "done",
        f"if [ {polls} -gt 0 ]; then for item in $sent; do pid=${{item%%:*}}; want=${{item#*:}}; "
        'if same; then echo "ALIVE $pid"; fi; done; fi',
        "echo END",
    ]
    return "\n".join(lines) + "\n"


def parse_signal_output(stdout: str, procs: Sequence[Proc], signal: str) -> list[Proc]:
    """``procs`` with their ``result`` set from :func:`signal_command` output."""
    state: dict[int, str] = {}
    for line in stdout.splitlines():
        word, _, rest = line.strip().partition(" ")
        if rest.strip().isdigit():
            state[int(rest)] = {"SENT": "sent", "GONE": GONE, "DENIED": DENIED,
                                "ALIVE": STILL_ALIVE}.get(word, state.get(int(rest), ""))
    ending = signal in ENDING
    out = []
    for proc in procs:
        seen = state.get(proc.pid, "")
        if seen == "sent":
            result = KILLED if ending else SIGNALLED
        elif seen in (GONE, DENIED, STILL_ALIVE):
            result = seen
        else:
            result = STILL_ALIVE  # no answer about it: do not claim it died
        out.append(replace(proc, result=result))
    return out


# --------------------------------------------------------------------------- operation


def judge(outcome: Outcome, data: KillResult) -> None:
    """Fail the host when a process survived the signal or belongs to someone else."""
    survived = [p for p in data.processes if p.result in (STILL_ALIVE, DENIED)]
    if not survived:
        return
    denied = [p for p in survived if p.result == DENIED]
    pids = " ".join(str(p.pid) for p in survived)
    if denied and len(denied) == len(survived):
        hint = "owned by another user: log in as that user (or root), or narrow --pattern"
    elif data.signal == "KILL":
        hint = "unkillable (uninterruptible I/O, or a zombie's parent): check `ps -o stat` there"
    else:
        hint = "still running: rerun with --signal KILL, or a longer --wait"
    outcome.fail(Failure(SURVIVED, f"{len(survived)} still running after SIG{data.signal}: {pids}",
                         hint))


def kill(engine: Engine, hosts: Sequence[Host], pattern: str, *, signal: str = KILL_SIGNAL,
         dry_run: bool = False, user: str | None = None, all_users: bool = False,
         wait_s: float = KILL_WAIT_S, timeout: float | None = KILL_LIST_TIMEOUT_S,
         on_done: Callable[[HostSession, Any], None] | None = None) -> Report:
    """List the processes matching ``pattern`` on every host, then (unless ``dry_run``) signal them.

    ``Outcome.data`` is a `KillResult` (each process with its result).
    """
    pattern = check_pattern(pattern)
    signal = check_signal(signal)
    token = new_token()
    listing = list_command(pattern, check_user(user), all_users, token)
    step_timeout = None if timeout is None else timeout + wait_s

    def work(session: HostSession) -> Any:
        found = session.run(listing, timeout=timeout)
        if found.exited != 0 or dry_run:
            return found
        procs = parse_listing(found.stdout)
        if not procs:
            return found
        sent = session.run(signal_command(procs, signal, wait_s, token), timeout=step_timeout)
        if sent.exited != 0:
            return sent
        found.stdout += "".join(f"R {p.pid} {p.result}\n"
                                for p in parse_signal_output(sent.stdout, procs, signal))
        return found

    report = build_report(engine.call(hosts, work, on_done=on_done), engine)
    for outcome in report:
        if outcome.exit_code is None:
            continue  # never reached the host
        data = KillResult(_results(outcome.stdout), signal, dry_run)
        outcome.data = data
        if outcome.ok:
            judge(outcome, data)
    return report


def _results(stdout: str) -> list[Proc]:
    """Processes of the listing with the ``R <pid> <result>`` lines :func:`kill` appended."""
    procs = parse_listing(stdout)
    results = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "R" and parts[1].isdigit():
            results[int(parts[1])] = parts[2]
    return [replace(p, result=results.get(p.pid, p.result)) for p in procs]
