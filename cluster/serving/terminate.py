"""Stopping (pure): shell text that stops process groups (SIGTERM, a grace, SIGKILL) and
sweeps leftover engine processes by command line, each with a ``parse_*`` for its output."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..errors import InputError
from . import shellcmd
from .config import SGLANG, VLLM
from .plan import RUN_ID_ENV
from .text import ints

# Command-line patterns of a deployment's processes, for the sweep. Each alternative
# starts with a one-letter bracket class ([s]glang) so the regex never matches the text
# of the sweeping shell's own command line (which contains the pattern literally).
SWEEP_PATTERNS = {
    SGLANG: (r"[s]glang::", r"[s]glang\.launch_server", r"[s]glang serve", r"[s]glang\.srt"),
    VLLM: (r"[V]LLM::EngineCore", r"[V]LLM::Worker", r"[v]llm serve"),
}
ROUTER_SWEEP_PATTERNS = {
    SGLANG: (r"[s]glang_router", r"(^|/)[s]mg "),
    VLLM: (r"[v]llm-router", r"[v]llm_router"),
}
# Titles of router processes, spared by the sweep unless the router is being stopped.
ROUTER_TITLES = {SGLANG: ("sglang::router",), VLLM: ()}


# members: non-zombie pids of process group $g, space-separated (empty when none).
_GROUP_FUNCS = (
    "members() { ps -eo pid=,pgid=,stat= 2>/dev/null | "
    "awk -v g=\"$g\" '$2==g && $3 !~ /^Z/ {printf \"%s \", $1}' | sed 's/ $//'; }"
)


def stop_command(pgid: int, grace_s: float = 30) -> str:
    """Shell text that stops process group ``pgid``: SIGTERM, wait ``grace_s``, SIGKILL.

    Output lines (parse with :func:`parse_stop`): ``GONE`` when nothing was running;
    else ``PIDS p1 p2…`` (group members at the start), then ``TERM`` or ``KILL p…``
    (members still alive after the grace), and ``DONE <term|kill> <seconds>``; if
    members survive SIGKILL (uninterruptible sleep), ``ALIVE p…`` and exit 1.
    Zombies do not count as alive.
    """
    if int(pgid) <= 1:
        raise InputError(f"refusing to signal process group {pgid}")
    ticks = max(0, round(grace_s * 10))
    return "\n".join([
        f"g={int(pgid)}",
        _GROUP_FUNCS,
        'if [ -z "$(members)" ]; then echo GONE; exit 0; fi',
        'echo "PIDS $(members)"',
        "start=$(date +%s)",
        "kill -TERM -$g 2>/dev/null",
        "t=0",
        f'while [ -n "$(members)" ] && [ $t -lt {ticks} ]; do sleep 0.1; t=$((t+1)); done',
        'how=term',
        'left=$(members)',
        'if [ -n "$left" ]; then echo "KILL $left"; how=kill; kill -KILL -$g 2>/dev/null;',
        '  t=0; while [ -n "$(members)" ] && [ $t -lt 50 ]; do sleep 0.1; t=$((t+1)); done; fi',
        'left=$(members)',
        'echo "DONE $how $(( $(date +%s) - start ))"',
        'if [ -n "$left" ]; then echo "ALIVE $left"; exit 1; fi',
    ]) + "\n"


@dataclass(frozen=True)
class StopResult:
    """Parsed :func:`stop_command` output."""

    was_running: bool
    pids: tuple[int, ...] = ()
    killed: tuple[int, ...] = ()
    how: str = ""
    seconds: int | None = None
    alive: tuple[int, ...] = ()


def parse_stop(stdout: str) -> StopResult:
    """StopResult from :func:`stop_command` output."""
    values: dict[str, Any] = {"was_running": True}
    for line in stdout.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "GONE":
            return StopResult(was_running=False)
        if word in ("PIDS", "KILL", "ALIVE"):
            key = {"PIDS": "pids", "KILL": "killed", "ALIVE": "alive"}[word]
            values[key] = ints(rest)
        elif word == "DONE":
            how, _, secs = rest.partition(" ")
            values["how"] = how
            values["seconds"] = int(secs) if secs.strip().isdigit() else None
    return StopResult(**values)


def sweep_command(engine: str, user: str | None = None, spare_router: bool = True, *,
                  servers: bool = True, run_ids: Iterable[str] = ()) -> str:
    """Shell text that SIGKILLs leftover processes of ``engine`` owned by ``user``.

    Matches command lines (``pgrep -f``: titles like ``sglang::scheduler_TP0`` are
    truncated in ``comm``), e.g. ``sglang::|sglang.launch_server|sglang serve|sglang.srt``
    or ``VLLM::EngineCore|VLLM::Worker|vllm serve``; ``sglang::router`` (and the router
    launcher) only when ``spare_router`` is False. ``servers=False`` sweeps only router
    processes (a router-only host). ``run_ids`` limits the sweep to processes whose
    environment holds ``CLUSTER_PD_RUN_ID=<one of them>`` (set by every launch and
    inherited by every child, including those that left the group): one deployment's
    leftovers, not every server of the user. Never matches the sweeping shell:
    the patterns use ``[s]glang`` and the shell's own pid and ancestors are skipped.
    ``user`` None = the remote login user. Output: ``KILLED <pid> <cmdline>`` per
    process, then ``SURVIVED <pid>…`` if any is still there (parse with :func:`parse_sweep`).
    """
    if engine not in SWEEP_PATTERNS:
        raise InputError(f"unknown engine {engine!r}")
    if servers:
        patterns = list(SWEEP_PATTERNS[engine])
        spared: tuple[str, ...] = ROUTER_TITLES[engine] if spare_router else ()
        if not spare_router:
            patterns += ROUTER_SWEEP_PATTERNS[engine]
    else:
        patterns = list(ROUTER_SWEEP_PATTERNS[engine]) + [
            "[" + t[0] + "]" + re.escape(t[1:]) for t in ROUTER_TITLES[engine]]
        spared = ()
    who = shellcmd.quote(user) if user else '"$(id -un)"'
    pattern = shellcmd.quote("|".join(patterns))
    spare_case = " | ".join(shellcmd.quote(t) + "*" for t in spared)
    skip = [f'  case "$cmd" in {spare_case}) continue;; esac'] if spared else []
    ids = list(dict.fromkeys(run_ids))
    if ids:
        skip += _run_scope_lines(ids)
    lines = [
        # $$ and its ancestors (this shell, sshd's session shell) are never candidates.
        'anc=" $$ "; a=$$',
        'while [ "${a:-1}" -gt 1 ]; do',
        '  a=$(ps -o ppid= -p "$a" 2>/dev/null | tr -d " ") || a=""',
        '  if [ -n "$a" ]; then anc="$anc$a "; fi',
        "done",
        "killed=''",
        # `|| true` everywhere: callers may run this under `set -e`, and "no match" is fine.
        f"list=$(pgrep -u {who} -a -f {pattern} 2>/dev/null) || true",
        'while read -r pid cmd; do',
        '  [ -n "$pid" ] || continue',
        '  case "$anc" in *" $pid "*) continue;; esac',
        # A zombie is already dead (its parent has not reaped it yet): nothing to kill.
        '  case "$(ps -o stat= -p "$pid" 2>/dev/null || true)" in ""|Z*) continue;; esac',
        *skip,
        '  if kill -KILL "$pid" 2>/dev/null; then echo "KILLED $pid $cmd"; killed="$killed $pid"; fi',
        "done <<EOF",
        "$list",
        "EOF",
        'if [ -n "$killed" ]; then',
        '  sleep 0.3; left=""',
        "  for p in $killed; do",
        '    st=$(ps -o stat= -p "$p" 2>/dev/null) || st=""',
        '    case "$st" in ""|Z*) ;; *) left="$left $p";; esac',
        "  done",
        '  if [ -n "$left" ]; then echo "SURVIVED$left"; fi',
        "fi",
        "true",
    ]
    return "\n".join(lines) + "\n"


def _run_scope_lines(run_ids: Sequence[str]) -> list[str]:
    """Loop-body lines of :func:`sweep_command` that skip processes of other runs.

    A process belongs to a run when its stdout or stderr is that run's per-launch log
    (``…-<run_id>.log``: inherited by every child, kept across ``setsid``, untouched by
    ``setproctitle``) or its environment holds ``CLUSTER_PD_RUN_ID=<run_id>``
    (``setproctitle`` wipes ``/proc/PID/environ``, so the log is the main key).
    """
    logs = " | ".join("*" + shellcmd.quote(f"-{r}.log") for r in run_ids)
    options = " ".join(f"-e {shellcmd.quote(f'{RUN_ID_ENV}={r}')}" for r in run_ids)
    return [
        "  mine=''",
        "  for fd in 1 2; do",
        '    l=$(readlink /proc/"$pid"/fd/$fd 2>/dev/null) || l=""',
        f'    case "$l" in {logs}) mine=1;; esac',
        "  done",
        '  if [ -z "$mine" ]; then',
        '    envs=$(tr "\\000" "\\n" < /proc/"$pid"/environ 2>/dev/null) || envs=""',
        f'    if printf "%s\\n" "$envs" | grep -qxF {options}; then mine=1; fi',
        "  fi",
        '  [ -n "$mine" ] || continue',
    ]


@dataclass(frozen=True)
class SweepResult:
    """Parsed :func:`sweep_command` output."""

    killed: tuple[tuple[int, str], ...] = ()
    survived: tuple[int, ...] = ()


def parse_sweep(stdout: str) -> SweepResult:
    """SweepResult from :func:`sweep_command` output."""
    killed: list[tuple[int, str]] = []
    survived: tuple[int, ...] = ()
    for line in stdout.splitlines():
        parts = line.strip().split(" ", 2)
        if parts[0] == "KILLED" and len(parts) >= 2 and parts[1].isdigit():
            # Command lines can be huge (python -c CODE): keep the start.
            killed.append((int(parts[1]), parts[2][:200] if len(parts) > 2 else ""))
        elif parts[0] == "SURVIVED":
            survived = ints(line.strip()[len("SURVIVED"):])
    return SweepResult(tuple(killed), survived)


def stop_groups_command(pgids: Sequence[int], grace_s: float = 30) -> str:
    """Shell text that stops several process groups at once: SIGTERM all, one shared
    grace of ``grace_s``, then SIGKILL the groups that still have members.

    Per group ``g`` (parse with :func:`parse_stop_groups`): ``GONE g`` when nothing ran;
    else ``PIDS g p…``, then ``KILL g p…`` for members left after the grace,
    ``DONE g <term|kill> <seconds>`` and, if members survive SIGKILL, ``ALIVE g p…``
    (exit 1). Zombies do not count. Refuses groups 0 and 1.
    """
    groups = list(dict.fromkeys(int(g) for g in pgids))
    for g in groups:
        if g <= 1:
            raise InputError(f"refusing to signal process group {g}")
    if not groups:
        return "true\n"
    ticks = max(0, round(grace_s * 10))
    return "\n".join([
        "members() { ps -eo pid=,pgid=,stat= 2>/dev/null | "
        "awk -v g=\"$1\" '$2==g && $3 !~ /^Z/ {printf \"%s \", $1}' | sed 's/ $//'; }",
        'any_left() { for g in $live; do [ -n "$(members "$g")" ] && return 0; done; return 1; }',
        "live=''; hard=''",
        f"for g in {' '.join(str(g) for g in groups)}; do",
        '  m=$(members "$g")',
        '  if [ -z "$m" ]; then echo "GONE $g"; else echo "PIDS $g $m"; live="$live $g"; fi',
        "done",
        "start=$(date +%s)",
        'for g in $live; do kill -TERM -"$g" 2>/dev/null; done',
        f't=0; while any_left && [ $t -lt {ticks} ]; do sleep 0.1; t=$((t+1)); done',
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
    ]) + "\n"


def parse_stop_groups(stdout: str) -> dict[int, StopResult]:
    """``{pgid: StopResult}`` from :func:`stop_groups_command` output."""
    values: dict[int, dict[str, Any]] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            continue
        word, group, rest = parts[0], int(parts[1]), parts[2:]
        if word == "GONE":
            values[group] = {"was_running": False}
        elif word in ("PIDS", "KILL", "ALIVE"):
            key = {"PIDS": "pids", "KILL": "killed", "ALIVE": "alive"}[word]
            values.setdefault(group, {"was_running": True})[key] = ints(" ".join(rest))
        elif word == "DONE" and rest:
            entry = values.setdefault(group, {"was_running": True})
            entry["how"] = rest[0]
            entry["seconds"] = int(rest[1]) if len(rest) > 1 and rest[1].isdigit() else None
    return {g: StopResult(**v) for g, v in values.items()}
