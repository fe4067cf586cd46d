"""Service probe: is a service up on a host? systemd's view, else matching processes.

Pure module: command builder, parser, classification.

Command and output layout
-------------------------
``command(names)`` is one POSIX shell line (one round trip). It checks for a
running systemd once (``[ -d /run/systemd/system ]`` and ``systemctl`` on
PATH), then for every name prints::

    @@svc-ancestors PID...              (once, first: see below)
    @@svc NAME
    @@svc-systemd                       (only with systemd)
    Id=... LoadState=... ActiveState=... (systemctl show --property=..., one per line)
    @@svc-systemd-exit RC
    @@svc-pgrep
    PID CMDLINE                          (pgrep -a -f -- PATTERN)
    @@svc-pgrep-exit RC

Processes are listed even when systemd knows the unit, because operators
start SGLang by hand (``setsid``) far more often than as a unit: when systemd
has no such unit (``LoadState=not-found``) or there is no systemd, the
matching processes decide. Names are user input: each is shell-quoted
(``shlex.quote``) and, for pgrep, its regex characters are escaped so it
matches literally. The shell running the script has the script (and so the
pattern) on its own command line; the parser drops every process whose
command line holds the ``@@svc`` marker, which is exactly those shells.
Its ancestors can hold the names too when the host is ``local`` (the
controller's own ``inv service-status NAME`` process, a ``timeout``/``bash -c``
wrapper around it): the script lists its ancestor PIDs up to the first
``sshd`` (exclusive, so an sshd serving the session still counts for
``service-status sshd``) and the parser drops those as well. On a remote host
the parent is sshd; a controller sharing the host's kernel (the rehearsal
cluster) is no ancestor, so command lines running ``service-status`` itself are
dropped too.

Failure kinds (`classify`)
--------------------------
``inactive``    a requested service is not active (systemd state other than
                ``active``, or no matching process). The host counts as failed
                so ``inv service-status NAME`` exits 1 unless NAME runs
                everywhere; the states stay on the outcome for the table.
``exit``        the host could not answer (no output and a nonzero exit), or
                pgrep failed so process state is unknown.
``bad-output``  exit 0 but no service section was found.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Iterable

from .defaults import SERVICE_TIMEOUT_S
from .errors import InputError, quoted
from .options import seconds
from .probe import Probe
from .result import EXIT, Failure

INACTIVE = "inactive"
BAD_OUTPUT = "bad-output"
KINDS = (INACTIVE, BAD_OUTPUT)

SYSTEMD = "systemd"
PROCESS = "process"

MARKER = "@@svc"
_ANCESTORS = "@@svc-ancestors"
_MAX_ANCESTORS = 32
_SYSTEMD_BEGIN = "@@svc-systemd"
_SYSTEMD_EXIT = "@@svc-systemd-exit"
_PGREP_BEGIN = "@@svc-pgrep"
_PGREP_EXIT = "@@svc-pgrep-exit"

PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "MainPID", "UnitFileState",
              "ActiveEnterTimestamp", "NRestarts", "Result")
SYSTEMD_DIR = "/run/systemd/system"
MAX_NAME = 256
_ERE_SPECIAL = re.compile(r"([\\.\[\](){}*+?|^$])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A controller's own `inv service-status NAME` (or `cluster service-status NAME`) holds the
# name too: on a rehearsal cluster, or any host that is also the controller, it shares the
# kernel without being an ancestor of the script. No service's command line says this.
_OWN_TASK = re.compile(r"(?:^|\s)service-status(?:\s|$)")


# ---------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------


def validate_names(names: str | Iterable[str]) -> list[str]:
    """Service names, in order, duplicates dropped; a string is split on commas.

    Raises `InputError` for an empty list, an empty name, a control character
    (a newline would break the output markers) or a name over 256 characters.
    Shell metacharacters are fine: every name is quoted.
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    cleaned = [str(n).strip() for n in items]
    if not cleaned or any(not n for n in cleaned):
        raise InputError("service names must be non-empty (e.g. sglang or sglang,nginx)")
    for name in cleaned:
        if name.startswith("-"):  # would read as an option to systemctl / pgrep
            raise InputError(f"service name {quoted(name)} starts with '-'")
        if _CONTROL.search(name):
            raise InputError(f"service name {quoted(name)} contains a control character")
        if len(name) > MAX_NAME:
            raise InputError(f"service name too long ({len(name)} > {MAX_NAME} characters)")
    return list(dict.fromkeys(cleaned))


def pgrep_pattern(name: str) -> str:
    """``name`` as an extended regex that matches it literally (pgrep -f takes a regex)."""
    return _ERE_SPECIAL.sub(r"\\\1", name)


def command(names: str | Iterable[str], *, systemd_dir: str = SYSTEMD_DIR) -> str:
    """One shell line reporting every service in ``names``.

    ``systemd_dir`` is the directory whose presence means "systemd is PID 1"
    (tests point it elsewhere).
    """
    props = ",".join(PROPERTIES)
    parts = [
        f"if [ -d {shlex.quote(systemd_dir)} ] && command -v systemctl >/dev/null 2>&1; "
        "then sd=1; else sd=0; fi",
        _ANCESTORS_SCRIPT,
    ]
    for name in validate_names(names):
        quoted = shlex.quote(name)
        parts.append(f"printf '{MARKER} %s\\n' {quoted}")
        parts.append(
            f"if [ $sd = 1 ]; then echo '{_SYSTEMD_BEGIN}'; "
            f"systemctl show --no-pager --property={props} -- {quoted} 2>&1; "
            f'echo "{_SYSTEMD_EXIT} $?"; fi'
        )
        parts.append(
            f"echo '{_PGREP_BEGIN}'; pgrep -a -f -- {shlex.quote(pgrep_pattern(name))} 2>&1; "
            f'echo "{_PGREP_EXIT} $?"'
        )
    return "; ".join(parts)


# The script's ancestors up to the first sshd (exclusive) or PID 1, at most
# _MAX_ANCESTORS of them; stops quietly where ps is missing.
_ANCESTORS_SCRIPT = (
    "a=''; p=$PPID; n=0; "
    f'while [ "$n" -lt {_MAX_ANCESTORS} ] && [ "${{p:-0}}" -gt 1 ] 2>/dev/null; do '
    'case $(ps -o comm= -p "$p" 2>/dev/null) in sshd*|"") break;; esac; '
    'a="$a $p"; n=$((n+1)); p=$(ps -o ppid= -p "$p" 2>/dev/null | tr -d " "); done; '
    f'echo "{_ANCESTORS}$a"'
)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


@dataclass
class ServiceState:
    """One service on one host.

    ``manager`` is ``systemd`` when systemd knows the unit, else ``process``
    (state from matching processes). ``state`` is systemd's ActiveState
    (``active``, ``inactive``, ``failed``, ``activating``...) or, for
    ``process``, ``active``/``inactive`` (``unknown`` when pgrep failed).
    """

    name: str
    manager: str
    active: bool
    state: str
    sub_state: str | None = None
    main_pid: int | None = None
    processes: list[tuple[int, str]] = field(default_factory=list)
    unit: str | None = None
    load_state: str | None = None
    unit_file_state: str | None = None
    since: str | None = None
    restarts: int | None = None
    result: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def describe(self) -> str:
        """``inactive (dead)``, ``failed (failed)``, ``active (2 processes)``..."""
        if self.manager == SYSTEMD:
            return f"{self.state} ({self.sub_state})" if self.sub_state else self.state
        count = len(self.processes)
        if not count:
            return f"{self.state} (no matching process)"
        return f"{self.state} ({count} process{'es' if count != 1 else ''})"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "manager": self.manager,
            "active": self.active,
            "state": self.state,
            "sub_state": self.sub_state,
            "main_pid": self.main_pid,
            "processes": [{"pid": pid, "cmdline": cmd} for pid, cmd in self.processes],
            "unit": self.unit,
            "load_state": self.load_state,
            "unit_file_state": self.unit_file_state,
            "since": self.since,
            "restarts": self.restarts,
            "result": self.result,
            "warnings": list(self.warnings),
        }


@dataclass
class _Section:
    name: str
    systemd: dict[str, str] | None = None
    systemd_rc: int | None = None
    systemd_other: list[str] = field(default_factory=list)
    pgrep: list[str] = field(default_factory=list)
    pgrep_rc: int | None = None


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def parse(stdout: str) -> list[ServiceState]:
    """Parse the command's stdout into one `ServiceState` per requested name, in order."""
    exclude = _ancestors(stdout)
    return [_state(section, exclude) for section in _sections(stdout)]


def _ancestors(stdout: str) -> frozenset[int]:
    """PIDs of the status script's own ancestors (the ``@@svc-ancestors`` line)."""
    for line in stdout.splitlines():
        if line.startswith(_ANCESTORS):
            return frozenset(int(p) for p in line[len(_ANCESTORS):].split() if p.isdigit())
        if line.startswith(MARKER + " "):
            break
    return frozenset()


def _sections(stdout: str) -> list[_Section]:
    sections: list[_Section] = []
    current: _Section | None = None
    part = None
    for raw in stdout.splitlines():
        line = raw.rstrip("\r")
        if line.startswith(MARKER + " "):
            current = _Section(line[len(MARKER) + 1:])
            sections.append(current)
            part = None
        elif current is None or not line.strip():
            continue
        elif line == _SYSTEMD_BEGIN:
            current.systemd, part = {}, "systemd"
        elif line.startswith(_SYSTEMD_EXIT):
            current.systemd_rc, part = _code(line), None
        elif line == _PGREP_BEGIN:
            part = "pgrep"
        elif line.startswith(_PGREP_EXIT):
            current.pgrep_rc, part = _code(line), None
        elif part == "systemd":
            key, eq, value = line.partition("=")
            if eq and key in PROPERTIES:
                current.systemd[key] = value  # type: ignore[index]
            else:
                current.systemd_other.append(line.strip())
        elif part == "pgrep":
            current.pgrep.append(line)
    return sections


def _code(line: str) -> int:
    text = line.rsplit(" ", 1)[-1]
    return int(text) if text.isdigit() else 255


def _processes(lines: list[str], exclude: frozenset[int] = frozenset()) -> list[tuple[int, str]]:
    """``PID CMDLINE`` lines; our own script's shells (holding the marker) and the
    script's ancestors (``exclude``) are dropped."""
    found: list[tuple[int, str]] = []
    for line in lines:
        pid, _, cmdline = line.strip().partition(" ")
        if pid.isdigit():
            found.append((int(pid), cmdline))
        elif found:  # an argument with a newline in it: continue the previous command line
            found[-1] = (found[-1][0], f"{found[-1][1]} {line.strip()}")
    return [(pid, cmd) for pid, cmd in found
            if MARKER not in cmd and pid not in exclude and not _OWN_TASK.search(cmd)]


def _state(section: _Section, exclude: frozenset[int] = frozenset()) -> ServiceState:
    warnings: list[str] = []
    pgrep_ok = section.pgrep_rc in (0, 1)
    processes = _processes(section.pgrep, exclude) if pgrep_ok else []
    if not pgrep_ok:
        detail = section.pgrep[0].strip() if section.pgrep else "no output"
        warnings.append(f"pgrep failed (exit {section.pgrep_rc}): {detail}")
    props = section.systemd or {}
    if section.systemd is not None and section.systemd_rc not in (0, None):
        detail = section.systemd_other[0] if section.systemd_other else "no output"
        warnings.append(f"systemctl show failed (exit {section.systemd_rc}): {detail}")
    load_state = props.get("LoadState") or None
    if load_state and load_state != "not-found":
        state = _systemd_state(section.name, props, processes, warnings)
    else:
        if pgrep_ok:
            status = "active" if processes else "inactive"
        else:
            status = "unknown"
        state = ServiceState(section.name, PROCESS, bool(processes), status,
                             processes=processes, load_state=load_state, warnings=warnings)
    return state


def _systemd_state(name: str, props: dict[str, str], processes: list[tuple[int, str]],
                   warnings: list[str]) -> ServiceState:
    active_state = props.get("ActiveState") or "unknown"
    main_pid = props.get("MainPID", "")
    restarts = props.get("NRestarts", "")
    if active_state != "active" and processes:
        warnings.append(f"unit is {active_state} but {len(processes)} matching process(es) run "
                        "outside it")
    return ServiceState(
        name=name,
        manager=SYSTEMD,
        active=active_state == "active",
        state=active_state,
        sub_state=props.get("SubState") or None,
        main_pid=int(main_pid) if main_pid.isdigit() and main_pid != "0" else None,
        processes=processes,
        unit=props.get("Id") or None,
        load_state=props.get("LoadState") or None,
        unit_file_state=props.get("UnitFileState") or None,
        since=props.get("ActiveEnterTimestamp") or None,
        restarts=int(restarts) if restarts.isdigit() else None,
        result=props.get("Result") or None,
        warnings=warnings,
    )


# ---------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------


def classify(exit_code: int, stdout: str, stderr: str = "",
             parsed: list[ServiceState] | None = None) -> Failure | None:
    """The host's `Failure`, or None when every requested service is active."""
    if parsed is None:
        parsed = parse(stdout)
    if not parsed:
        if exit_code != 0:
            detail = _last_line(stderr) or _last_line(stdout)
            return Failure(EXIT, f"exit code {exit_code}" + (f": {detail}" if detail else ""),
                           "the status script could not run: is the login shell POSIX (bash/sh)?",
                           exit_code)
        return Failure(BAD_OUTPUT, "no service status in the output",
                       "unexpected shell output: run the command by hand on the host")
    unknown = [s for s in parsed if s.state == "unknown" and s.manager == PROCESS]
    if unknown:
        return Failure(EXIT, "; ".join(f"{s.name}: {s.warnings[0]}" for s in unknown if s.warnings)
                       or "process state unknown",
                       "pgrep (procps) is needed to check services without systemd")
    down = [s for s in parsed if not s.active]
    if not down:
        return None
    message = "; ".join(f"{s.name}: {s.describe}" for s in down)
    units = [s.unit for s in down if s.manager == SYSTEMD and s.unit]
    if units:
        hint = f"see `journalctl -u {units[0]} -n 50` and `systemctl status {units[0]}`"
    else:
        hint = "no matching process: start it, or check its log for why it exited"
    return Failure(INACTIVE, message, hint)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""




def probe(names: str | Iterable[str], timeout: float | None = SERVICE_TIMEOUT_S, *,
          systemd_dir: str = SYSTEMD_DIR) -> Probe:
    """This module as a `cluster.probe.Probe`: systemd state or matching processes of each
    name. Raises `InputError` for bad names, `ParameterError` for a bad timeout."""
    text = command(names, systemd_dir=systemd_dir)  # validates the names
    limit = SERVICE_TIMEOUT_S if timeout is None else seconds(timeout, "timeout")
    return Probe("service-status", text, parse, classify, limit)
