"""Detached processes on a host: launch, identify, check, stop. Shell text and parsers; pure.

Used by serving (start-pd / stop-pd / pd-status) and detached jobs alike; nothing here
knows what the process is. The discipline, in one place:

* **Files** (:class:`Job`): in the run dir, per slot and run id, ``<slot>@<run_id>.json``
  (the record), ``.pid`` (``PID START RUN_ID``), ``.exit`` (the exit code), ``.log``;
  ``<slot>.lock`` serialises launches into one slot. The run id in every name keeps
  runs from overwriting each other's files (run dirs are often on shared NFS homes).
  Scripts run under ``umask 077``: files 0600, a new run dir 0700 (an existing one keeps
  its mode: it may be shared on purpose).
* **Record before launch** (:func:`launch_lines`): under the slot lock (``flock``), refuse
  when a live process of the slot is recorded, write the record with state ``starting``,
  then start ``setsid`` a small ``sh`` wrapper (pgid = its pid) that writes the pid file
  itself before running the command (or exec'ing it: ``Job.exit_code``), so an interrupt of the launching shell at any
  instant leaves the process findable; then the record is rewritten ``running`` with
  the pid. The launching shell catches INT/TERM/HUP/PIPE while it works (and goes on).
* **Identity** (:class:`Identity`): process group id (= the wrapper's pid), the leader's
  start time (field 22 of ``/proc/PID/stat``, clock ticks since boot: never the same for
  two processes of one pid) and the run id, carried by every process of the run as the
  environment variable ``marker_env`` and by its stdout/stderr (the per-run log).
* **Verify before any signal** (:data:`FUNCTIONS`, ``verdict``), in the same remote script
  as the signal: the leader still runs with the recorded start time and still leads
  its group (``ok``); or the leader is gone but members of its group remain that carry
  the run id (``ok``: Linux does not hand out a pid that is still some group's id);
  otherwise ``reused`` (nothing signalled) or ``gone``.
* **Stop** (:func:`stop_script`): TERM the verified groups, one shared grace, KILL the
  groups that still have members, verify they are gone.
* **Status** (:func:`status_script`): ``running``, ``exited CODE``, ``vanished`` (gone
  without an exit code: killed), ``reused``, ``not-started`` (a record without a pid).

Linux only (``/proc``); scripts are POSIX ``sh`` (dash).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import shell

# Exit codes of the launch fragment (callers may use others for their own checks).
EXIT_RUN_DIR = 4
EXIT_ALREADY_RUNNING = 5
EXIT_MESSAGES = {
    EXIT_RUN_DIR: "cannot create the run directory",
    EXIT_ALREADY_RUNNING: "a process is already running in that slot",
}

# Verdicts of an identity check.
OK, REUSED, GONE = "ok", "reused", "gone"
# States of a recorded process (status_script).
RUNNING, EXITED, VANISHED, NOT_STARTED = "running", "exited", "vanished", "not-started"
STARTING = "starting"

_WORD = re.compile(r"^[A-Za-z0-9._-]+$")
_LAUNCH_WAIT_TICKS = 250  # x 0.02 s: how long the launch waits for the wrapper's pid file


def check_word(value: str, what: str) -> str:
    """``value`` when it is a non-empty ``[A-Za-z0-9._-]`` word (file names, globs, markers)."""
    if not _WORD.match(value or ""):
        raise ValueError(f"bad {what} {value!r}: use letters, digits, '.', '_' and '-'")
    return value


@dataclass(frozen=True)
class Identity:
    """Who a recorded process is: its group, its leader's start time, its run.

    ``start`` None = unknown (a record from before start times were kept): then the
    run-id marker on the leader must match instead.
    """

    pgid: int
    start: int | None
    run_id: str

    def __post_init__(self) -> None:
        if int(self.pgid) <= 1:
            raise ValueError(f"refusing process group {self.pgid}")
        check_word(self.run_id, "run id")

    def words(self) -> str:
        """The three shell words of a ``verdict`` call."""
        return f"{int(self.pgid)} {self.start if self.start is not None else '-'} {self.run_id}"


@dataclass(frozen=True)
class Job:
    """One detached process: where its files live, what runs, how it is marked.

    ``slot`` names the place one process at a time may occupy (e.g. a server's
    ``engine-role-host-port``); ``run_dir`` may start with ``~/`` (the host's home).
    """

    run_dir: str
    slot: str
    run_id: str
    argv: tuple[str, ...]
    marker_env: str = "CLUSTER_RUN_ID"
    log_path: str | None = None  # default <run_dir>/<slot>@<run_id>.log
    # True: a small sh wrapper leads the group and writes the exit code (``.exit``);
    # False: the wrapper execs the command (its command line alone in ps, no exit code).
    exit_code: bool = True

    def __post_init__(self) -> None:
        check_word(self.slot, "slot")
        check_word(self.run_id, "run id")
        if not shell.ENV_NAME.match(self.marker_env):
            raise ValueError(f"bad marker variable {self.marker_env!r}")
        if not self.argv:
            raise ValueError("nothing to run")

    @property
    def base(self) -> str:
        return base_path(self.run_dir, self.slot, self.run_id)

    @property
    def record_path(self) -> str:
        return self.base + ".json"

    @property
    def pid_path(self) -> str:
        return self.base + ".pid"

    @property
    def exit_path(self) -> str:
        return self.base + ".exit"

    @property
    def log(self) -> str:
        return self.log_path or self.base + ".log"

    @property
    def lock_path(self) -> str:
        return f"{self.run_dir.rstrip('/') or '/'}/{self.slot}.lock"


def base_path(run_dir: str, slot: str, run_id: str) -> str:
    """``<run_dir>/<slot>@<run_id>``: the files of one run of one slot add a suffix."""
    return f"{run_dir.rstrip('/') or '/'}/{slot}@{run_id}"


# --------------------------------------------------------------------------- shell functions


def functions(marker_env: str) -> str:
    """Shell functions every script here starts with (``verdict``, ``members``...).

    * ``members G``: the live (non-zombie) pids of group G, space separated.
    * ``marked P RUN``: P carries RUN (``marker_env=RUN`` in its environment, or its
      stdout/stderr is a file whose name holds RUN: ``setproctitle`` can wipe environ).
    * ``verdict G START RUN``: prints ``ok``, ``reused`` or ``gone`` (see module doc); a
      zombie leader with the right start time is ``ok`` only while marked members live.
    """
    if not shell.ENV_NAME.match(marker_env):
        raise ValueError(f"bad marker variable {marker_env!r}")
    return "\n".join([
        "members() { ps -eo pid=,pgid=,stat= 2>/dev/null | "
        "awk -v g=\"$1\" '$2==g && $3 !~ /^Z/ {printf \"%s \", $1}' | sed 's/ $//'; }",
        # state, pgrp, start time: fields 3, 5, 22 of /proc/PID/stat, counted after "comm)".
        "ident() { awk '{sub(/^.*\\) /, \"\"); print $1, $3, $20}' /proc/\"$1\"/stat 2>/dev/null; }",
        "marked() {",
        f'  tr "\\000" "\\n" < /proc/"$1"/environ 2>/dev/null | grep -qxF "{marker_env}=$2" && return 0',
        '  for fd in 1 2; do case "$(readlink /proc/"$1"/fd/$fd 2>/dev/null)" in *"$2"*) return 0;; esac; done',
        "  return 1",
        "}",
        "verdict() {",
        '  id=$(ident "$1")',
        '  if [ -n "$id" ]; then',
        '    set -- "$1" "$2" "$3" $id',
        '    if [ "$5" != "$1" ]; then echo reused; return; fi',
        '    if [ "$2" = - ]; then marked "$1" "$3" || { echo reused; return; }',
        '    elif [ "$6" != "$2" ]; then echo reused; return; fi',
        # A zombie leader (not reaped yet) is no proof of life: its members decide.
        '    if [ "$4" != Z ]; then echo ok; return; fi',
        "  fi",
        '  m=$(members "$1")',
        '  if [ -z "$m" ]; then echo gone; return; fi',
        '  for p in $m; do if marked "$p" "$3"; then echo ok; return; fi; done',
        "  echo reused",
        "}",
    ])


# --------------------------------------------------------------------------- launch


def run_dir_lines(run_dir: str) -> list[str]:
    """``umask 077`` and the run dir created (0700, parents too; exit 4 when it cannot be).
    An existing run dir keeps its mode: it may be shared on purpose (its files are 0600)."""
    d = shell.path(run_dir)
    no_dir = shell.quote(f"cannot create run dir: {run_dir}")
    return [
        "umask 077",
        f"mkdir -p {d} 2>/dev/null && [ -d {d} ] && [ -w {d} ] || {{ echo {no_dir} >&2; exit {EXIT_RUN_DIR}; }}",
    ]


def _write_record(job: Job, state: str, doc: str, pid: str = "null", start: str = "null") -> str:
    """Shell text writing the record atomically (temp + rename, 0600 under the umask)."""
    head = (f'{{"run_id": "{job.run_id}", "slot": "{job.slot}", "state": "{state}", '
            f'"pid": {pid}, "start": {start}, "doc": ')
    tmp = shell.path(job.record_path + ".tmp")
    # head holds only safe words and $pid/$start: double quotes keep those expanding.
    return (f'printf "%s%s}}\\n" "{head.replace(chr(34), chr(92) + chr(34))}" {shell.quote(doc)} > {tmp} '
            f"&& mv -f {tmp} {shell.path(job.record_path)}")


def _wrapper(job: Job) -> str:
    """The ``sh -c`` program the detached process starts as: write the pid file (pid,
    start time, run id), then run the command and write its exit code — or exec it
    (``exit_code=False``: the same pid, start time and group)."""
    pid_tmp, exit_tmp = shell.path(job.pid_path + ".tmp"), shell.path(job.exit_path + ".tmp")
    head = [
        "s=$(awk '{sub(/^.*\\) /, \"\"); print $20}' /proc/$$/stat 2>/dev/null)",
        f'printf "%s %s %s\\n" $$ "${{s:--}}" {job.run_id} > {pid_tmp} && mv -f {pid_tmp} {shell.path(job.pid_path)}',
    ]
    if not job.exit_code:
        return "; ".join(head + ['exec "$@"'])
    return "; ".join(head + [
        '"$@"',
        "rc=$?",
        f'printf "%s\\n" $rc > {exit_tmp} && mv -f {exit_tmp} {shell.path(job.exit_path)}',
        "exit $rc",
    ])


def launch_lines(job: Job, *, checks: Sequence[str] = (), prelude: Sequence[str] = (), doc: str = "null",
                 refuse_running: bool = True, display: bool = False) -> list[str]:
    """Shell lines that launch ``job`` detached; the last stdout line is
    ``DETACHED PID START`` (parse: :func:`parse_launch`).

    Order: run dir (exit 4), slot lock and no verified-live process of the slot (exit 5,
    naming its run id and pid), ``checks`` (the caller's, with their own exit codes), the
    record ``starting``, ``prelude`` (sourcing, exports, more checks: a failure there
    removes the record again), the marker exported, the start, the pid file awaited,
    the record ``running`` with pid and start time. ``doc`` = the caller's JSON kept in
    the record (no secrets!). ``display``: secret option values masked in argv (what a
    dry run prints). Put the text on the host's stdin (:func:`cluster.shell.run_script`):
    exports may hold secrets.
    """
    log, lock, record = shell.path(job.log), shell.path(job.lock_path), shell.path(job.record_path)
    lines = [functions(job.marker_env), *run_dir_lines(job.run_dir),
             # An interrupted controller closes the channel: finish writing what was started.
             # Caught (not ignored: an ignored signal would stay ignored in the process).
             "trap 'interrupted=1' INT TERM HUP PIPE",
             f"exec 9>>{lock}",
             "if command -v flock >/dev/null 2>&1 && ! flock -n 9; then "
             f"echo {shell.quote(f'another launch holds the slot lock {job.lock_path}')} >&2; "
             f"exit {EXIT_ALREADY_RUNNING}; fi"]
    if refuse_running:
        lines += running_lines(job.run_dir, job.slot)
    lines += list(checks)
    lines.append(_write_record(job, STARTING, doc))
    lines.append(f"trap 'rm -f {record}' EXIT")
    lines += list(prelude)
    lines.append(f"export {job.marker_env}={job.run_id}")
    lines.append(f"rm -f {shell.path(job.pid_path)} {shell.path(job.exit_path)}")
    argv = shell.display_argv(job.argv) if display else shell.join(job.argv)
    lines.append(f"setsid nohup sh -c {shell.quote(_wrapper(job))} detached {argv} >> {log} 2>&1 < /dev/null 9>&- &")
    pidfile = shell.path(job.pid_path)
    lines += [
        "trap - EXIT",
        f"i=0; while [ ! -s {pidfile} ] && [ $i -lt {_LAUNCH_WAIT_TICKS} ]; do sleep 0.02; i=$((i+1)); done",
        f"read -r pid start rid < {pidfile} 2>/dev/null || {{ pid=$!; start=null; }}",
        'case "$start" in ""|*[!0-9]*) start=null;; esac',
        _write_record(job, RUNNING, doc, pid="$pid", start="$start"),
        'echo "DETACHED $pid $start"',
    ]
    return lines


def running_lines(run_dir: str, slot: str, *, refuse: bool = True) -> list[str]:
    """Lines (after :func:`functions`) looking for a verified-live process of ``slot`` in
    any run: ``refuse`` exits 5 naming it; otherwise prints ``RUNNING PGID START RUN_ID``
    per live one and sets ``$running`` (parse: :func:`parse_running`)."""
    glob = f"{shell.path(run_dir.rstrip('/') or '/')}/{check_word(slot, 'slot')}@*.pid"
    found = (f'    echo "already running: run $orid, process group $op (pid file $f)" >&2; exit {EXIT_ALREADY_RUNNING}'
             if refuse else '    echo "RUNNING $op ${ost:--} $orid"; running=1')
    return [
        "running=''",
        f"for f in {glob}; do",
        '  [ -f "$f" ] || continue',
        '  read -r op ost orid < "$f" 2>/dev/null || continue',
        '  case "$op" in ""|*[!0-9]*) continue;; esac',
        '  [ "$op" -gt 1 ] || continue',
        '  if [ "$(verdict "$op" "${ost:--}" "${orid:-none}")" = ok ]; then',
        found,
        "  fi",
        "done",
    ]


def parse_running(stdout: str) -> list[Identity]:
    """The identities of the ``RUNNING`` lines of :func:`running_lines` (report mode)."""
    found = []
    for line in stdout.splitlines():
        if line.startswith("RUNNING "):
            ident = parse_pid_file(line[len("RUNNING "):])
            if ident is not None:
                found.append(ident)
    return found


def launch_script(job: Job, **kwargs: object) -> str:
    """:func:`launch_lines` as one script."""
    return "\n".join(launch_lines(job, **kwargs)) + "\n"  # type: ignore[arg-type]


def parse_launch(stdout: str) -> tuple[int, int | None] | None:
    """``(pid, start)`` from the ``DETACHED`` line of a launch, None when there is none."""
    for line in reversed(stdout.splitlines()):
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "DETACHED" and parts[1].isdigit():
            start = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
            return int(parts[1]), start
    return None


def parse_pid_file(text: str) -> Identity | None:
    """The identity in a pid file (``PID START RUN_ID``), None when it is not one."""
    parts = text.split()
    if len(parts) != 3 or not parts[0].isdigit() or int(parts[0]) <= 1 or not _WORD.match(parts[2]):
        return None
    return Identity(int(parts[0]), int(parts[1]) if parts[1].isdigit() else None, parts[2])


# --------------------------------------------------------------------------- check / stop


def check_lines(identities: Iterable[Identity]) -> list[str]:
    """Lines printing ``VERDICT PGID ok|reused|gone`` per identity (after :func:`functions`)."""
    return [f'echo "VERDICT {i.pgid} $(verdict {i.words()})"' for i in _unique(identities)]


def parse_verdicts(stdout: str) -> dict[int, str]:
    """``{pgid: verdict}`` from :func:`check_lines` (or :func:`stop_script`) output."""
    found: dict[int, str] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "VERDICT" and parts[1].isdigit() and parts[2] in (OK, REUSED, GONE):
            found[int(parts[1])] = parts[2]
    return found


def _unique(identities: Iterable[Identity]) -> list[Identity]:
    return list({i.pgid: i for i in identities}.values())


@dataclass(frozen=True)
class GroupStop:
    """What :func:`stop_script` did to one process group.

    ``verdict`` ``reused``: the pgid now names another process (nothing signalled).
    """

    verdict: str
    pids: tuple[int, ...] = ()
    killed: tuple[int, ...] = ()
    how: str = ""
    seconds: int | None = None
    alive: tuple[int, ...] = ()

    @property
    def was_running(self) -> bool:
        return self.verdict == OK and bool(self.pids)


def stop_script(identities: Sequence[Identity], grace_s: float = 30, marker_env: str = "CLUSTER_RUN_ID") -> str:
    """Shell text that verifies each identity and stops the verified groups: SIGTERM,
    one shared grace of ``grace_s``, SIGKILL the groups with members left, verify.

    Per group ``g`` (parse: :func:`parse_stop`): ``VERDICT g ok|reused|gone``; for ``ok``
    ``PIDS g p…``, then ``KILL g p…`` for members left after the grace, ``DONE g
    <term|kill> <seconds>`` and ``ALIVE g p…`` when members survive SIGKILL (exit 1).
    A group is verified and signalled in the same script: no race worth the name.
    """
    groups = _unique(identities)
    if not groups:
        return "true\n"
    ticks = max(0, round(grace_s * 10))
    lines = [functions(marker_env),
             'any_left() { for g in $live; do [ -n "$(members "$g")" ] && return 0; done; return 1; }',
             "live=''; hard=''"]
    for i in groups:
        lines += [f"v=$(verdict {i.words()}); echo \"VERDICT {i.pgid} $v\"",
                  f'if [ "$v" = ok ]; then m=$(members {i.pgid}); '
                  f'if [ -n "$m" ]; then echo "PIDS {i.pgid} $m"; live="$live {i.pgid}"; fi; fi']
    lines += [
        "start=$(date +%s)",
        'for g in $live; do kill -TERM -"$g" 2>/dev/null; done',
        f"t=0; while any_left && [ $t -lt {ticks} ]; do sleep 0.1; t=$((t+1)); done",
        "for g in $live; do",
        '  left=$(members "$g")',
        '  if [ -n "$left" ]; then echo "KILL $g $left"; hard="$hard $g "; kill -KILL -"$g" 2>/dev/null; fi',
        "done",
        'if [ -n "$hard" ]; then t=0; while any_left && [ $t -lt 50 ]; do sleep 0.1; t=$((t+1)); done; fi',
        "rc=0",
        "for g in $live; do",
        '  case "$hard" in *" $g "*) how=kill;; *) how=term;; esac',
        '  echo "DONE $g $how $(( $(date +%s) - start ))"',
        '  left=$(members "$g")',
        '  if [ -n "$left" ]; then echo "ALIVE $g $left"; rc=1; fi',
        "done",
        "exit $rc",
    ]
    return "\n".join(lines) + "\n"


def parse_stop(stdout: str) -> dict[int, GroupStop]:
    """``{pgid: GroupStop}`` from :func:`stop_script` output."""
    values: dict[int, dict[str, object]] = {g: {"verdict": v} for g, v in parse_verdicts(stdout).items()}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) not in values:
            continue
        word, entry, rest = parts[0], values[int(parts[1])], parts[2:]
        if word in ("PIDS", "KILL", "ALIVE"):
            entry[{"PIDS": "pids", "KILL": "killed", "ALIVE": "alive"}[word]] = _ints(rest)
        elif word == "DONE" and rest:
            entry["how"] = rest[0]
            entry["seconds"] = int(rest[1]) if len(rest) > 1 and rest[1].isdigit() else None
    return {g: GroupStop(**v) for g, v in values.items()}  # type: ignore[arg-type]


def _ints(words: Sequence[str]) -> tuple[int, ...]:
    return tuple(int(w) for w in words if w.isdigit())


# --------------------------------------------------------------------------- status / records


@dataclass(frozen=True)
class Found:
    """One record file found on a host, with the verified state of its process."""

    path: str
    record: str                # the record's JSON text ('' when unreadable)
    identity: Identity | None  # from the pid file (else the record), None = never started
    state: str                 # running / exited / vanished / reused / not-started
    code: int | None = None    # exit code (state exited)


def _each_record(run_dir: str, pattern: str, marker_env: str, body: Sequence[str]) -> str:
    """Loop over ``<run_dir>/<pattern>@*.json`` setting ``$f`` (the record), ``$b`` (its
    base), ``$pidline`` and ``$state`` (``running``, ``exited CODE``...), then ``body``."""
    if not re.match(r"^[A-Za-z0-9._*?\[\]-]+$", pattern):
        raise ValueError(f"bad slot pattern {pattern!r}")
    d = shell.path(run_dir.rstrip("/") or "/")
    return "\n".join([
        functions(marker_env),
        f"for f in {d}/{pattern}@*.json; do",
        '  [ -f "$f" ] || continue',
        '  b=${f%.json}',
        '  if read -r p s r < "$b.pid" 2>/dev/null; then',
        '    pidline="$p $s $r"',
        '    case "$p" in ""|*[!0-9]*) v=gone;; *) v=$(verdict "$p" "${s:--}" "${r:-none}");; esac',
        '    if [ "$v" = ok ]; then state=running',
        '    elif [ "$v" = reused ]; then state=reused',
        '    elif read -r c < "$b.exit" 2>/dev/null; then state="exited $c"',
        '    else state=vanished; fi',
        '  else pidline=""; state=not-started; fi',
        *("  " + line for line in body),
        "done",
        "true",
    ]) + "\n"


def status_script(run_dir: str, pattern: str = "*", marker_env: str = "CLUSTER_RUN_ID",
                  extra: Sequence[str] = ()) -> str:
    """Shell text reporting every record ``<run_dir>/<pattern>@*.json`` with the state of
    its process, verified (parse: :func:`parse_status`). ``pattern`` is a glob over slot
    names (``[A-Za-z0-9._*?-]`` and brackets only). ``extra``: the caller's lines run
    per record after its block (``$f`` the record, ``$b`` its base, ``$state``); their
    output lines belong to that record's block (:func:`parse_status` skips them)."""
    return _each_record(run_dir, pattern, marker_env, [
        'echo "@@record $f"',
        'printf "json %s\\n" "$(tr -d "\\n" < "$f" 2>/dev/null)"',
        'if [ -n "$pidline" ]; then echo "pid $pidline"; fi',
        'echo "state $state"',
        *extra,
    ])


def prune_script(run_dir: str, pattern: str = "*", marker_env: str = "CLUSTER_RUN_ID",
                 keep: Iterable[str] = (), unstarted_after_min: int = 10) -> str:
    """Shell text removing the record, pid and exit files (logs are kept) of every record
    ``<run_dir>/<pattern>@*.json`` whose process is not running (exited, vanished, pid
    reused), and of records that never got a pid once older than ``unstarted_after_min``
    minutes (younger ones may be a launch in progress). ``keep``: record paths left alone.
    Prints ``PRUNED <record path>`` per record removed (parse: :func:`parse_pruned`)."""
    skip = " | ".join(shell.quote(k) for k in keep)
    body = [f'case "$f" in {skip}) continue;; esac'] if skip else []
    body += [
        'case "$state" in',
        "  running) continue;;",
        f'  not-started) [ -n "$(find "$f" -mmin +{int(unstarted_after_min)} 2>/dev/null)" ] || continue;;',
        "esac",
        'rm -f "$f" "$b.pid" "$b.exit" && echo "PRUNED $f"',
    ]
    return _each_record(run_dir, pattern, marker_env, body)


def parse_pruned(stdout: str) -> list[str]:
    """The record paths :func:`prune_script` removed."""
    return [line[len("PRUNED "):].strip() for line in stdout.splitlines() if line.startswith("PRUNED ")]


def parse_status(stdout: str) -> list[Found]:
    """:class:`Found` per record from :func:`status_script` output (broken blocks: state
    ``vanished`` with what could be read)."""
    blocks: list[dict[str, object]] = []
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "@@record":
            blocks.append({"path": rest.strip(), "record": "", "identity": None, "state": VANISHED})
        elif blocks and word == "json":
            blocks[-1]["record"] = rest.strip()
        elif blocks and word == "pid":
            blocks[-1]["identity"] = parse_pid_file(rest)
        elif blocks and word == "state":
            state, _, code = rest.strip().partition(" ")
            blocks[-1]["state"] = state if state in (RUNNING, EXITED, VANISHED, REUSED, NOT_STARTED) else VANISHED
            blocks[-1]["code"] = int(code) if code.lstrip("-").isdigit() else None
    return [Found(**b) for b in blocks]  # type: ignore[arg-type]
