"""Remote shell text from data, and running it: quoting, secret masking, atomic file
writes, several framed scripts in one round trip, and the stdin script runner.

Used by every module that builds shell text for a host (serving, logs, kill). Pure
except :func:`run_script` and :func:`run_sections`, which run what the pure parts built
on sessions / an engine handed in.

Every value that reaches a remote shell goes through :func:`quote` (``shlex.quote``).
The one exception is a leading ``~/`` in a path, which must stay unquoted for the
remote shell to expand it to *that host's* home: :func:`path` writes it as
``"$HOME"/`` followed by the quoted rest. Scripts are meant for ``/bin/sh`` (dash on
Debian), so they avoid bashisms: ``kill -TERM -PGID``, ``[ ]`` tests, ``$(...)``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .result import Report, build_report

if TYPE_CHECKING:
    from .command import CommandResult
    from .hosts import Host
    from .ssh import Engine, HostSession

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Substrings of environment-variable names whose values are never shown.
SECRET_NAME_PARTS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
# Command-line options whose *value* is a secret (``--api-key X``, ``--hf-token=X``).
_SECRET_OPTION = re.compile(r"^--?[A-Za-z0-9-]*(tokens?|keys?|secrets?|password|passwd)$", re.I)
MASK = "***"

# Feed scripts on stdin to this, so secrets never appear in any process's command line
# (``ps`` shows argv to every user on the host). bash when present, because env files
# such as /opt/deepep/unified-env.sh are often bash.
STDIN_RUNNER = "if command -v bash >/dev/null 2>&1; then exec bash -s; else exec sh -s; fi"
STEP_TIMEOUT_S = 60.0  # small scripts (checks, launches, probes)


# --------------------------------------------------------------------------- quoting


def quote(value: object) -> str:
    """Shell-quote one value (``shlex.quote`` of its string form)."""
    return shlex.quote(str(value))


def path(value: str) -> str:
    """Quote a path for the remote shell, keeping a leading ``~`` expandable there.

    ``~/.cluster/run`` becomes ``"$HOME"/.cluster/run`` (quoted rest), so the
    remote user's home is used, not the controller's.
    """
    if value == "~":
        return '"$HOME"'
    if value.startswith("~/"):
        rest = value[2:]
        return '"$HOME"/' + quote(rest) if rest else '"$HOME"/'
    return quote(value)


def join(argv: Iterable[object]) -> str:
    """Quote and join an argument vector into one shell command line."""
    return " ".join(quote(arg) for arg in argv)


def plain(text: str) -> str:
    """Text safe inside a double-quoted shell string (for messages only)."""
    return re.sub(r'["$`\\]', "_", text)


# --------------------------------------------------------------------------- secrets


def is_secret_name(name: str) -> bool:
    """True when an environment variable name looks like it holds a secret."""
    upper = name.upper()
    return any(part in upper for part in SECRET_NAME_PARTS)


def export_line(env: Mapping[str, str] | Iterable[tuple[str, str]], *, mask: bool = False,
                secret: Collection[str] = ()) -> str:
    """``export A='x' B='y'`` for the given variables ('' when there are none).

    With ``mask=True`` the values of secret-looking names, and of the names in
    ``secret``, are replaced by ``***``.
    """
    items = list(env.items()) if isinstance(env, Mapping) else list(env)
    if not items:
        return ""
    parts = []
    for name, value in items:
        if not ENV_NAME.match(name):
            # Names are validated by the config parser; this guards direct callers.
            raise ValueError(f"bad environment variable name {name!r}")
        hidden = mask and (is_secret_name(name) or name in secret)
        parts.append(f"{name}={MASK if hidden else quote(value)}")
    return "export " + " ".join(parts)


def mask_argv(argv: Iterable[str]) -> list[str]:
    """Copy of argv with the values of secret-looking options replaced by ``***``."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        name, eq, _value = arg.partition("=")
        if _SECRET_OPTION.match(name):
            if eq:
                out.append(f"{name}={MASK}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(arg)
    return out


def display_argv(argv: Iterable[str]) -> str:
    """Quoted command line for humans, secret option values masked.

    The mask is inserted unquoted so ``***`` reads as a placeholder, not a value.
    """
    shown = []
    for arg in mask_argv(argv):
        if arg == MASK:
            shown.append(MASK)
        elif arg.endswith("=" + MASK) and _SECRET_OPTION.match(arg[: -len(MASK) - 1]):
            shown.append(quote(arg[: -len(MASK)]) + MASK)
        else:
            shown.append(quote(arg))
    return " ".join(shown)


# --------------------------------------------------------------------------- files


def write_file(target: str, content: str) -> str:
    """Shell text that writes ``content`` (plus a newline) to ``target`` atomically.

    Writes a temp file next to the target and renames it, so a reader never
    sees half a file (homes may be shared over NFS).
    """
    tmp = path(target + ".tmp")
    return f"printf '%s\\n' {quote(content)} > {tmp} && mv -f {tmp} {path(target)}"


# --------------------------------------------------------------------------- framing


@dataclass(frozen=True)
class Section:
    """One part of :func:`sections_script` output. ``rc`` None = it never finished."""

    key: str
    output: str
    rc: int | None

    @property
    def lines(self) -> list[str]:
        """The non-blank lines of its output."""
        return [line for line in self.output.splitlines() if line.strip()]


_KEY = re.compile(r"^[A-Za-z0-9_.:-]+$")


def sections_script(sections: Sequence[tuple[str, str]]) -> str:
    """Run each ``(key, script)`` in its own subshell, stderr folded into stdout, framed by
    ``@@begin KEY`` / ``@@end KEY RC`` lines: one round trip for all of a host's work,
    and one script's ``exit`` ends only its own part. Parse with :func:`parse_sections`.
    """
    out = []
    for key, script in sections:
        if not _KEY.match(key):
            raise ValueError(f"bad section key {key!r}")
        out.append(f"echo '@@begin {key}'")
        out.append("(\n" + script.rstrip("\n") + "\n) 2>&1")
        out.append(f"echo \"@@end {key} $?\"")
    return "\n".join(out) + "\n"


PROBE_BEGIN, PROBE_END = "@@cluster-probe-begin", "@@cluster-probe-end"


def framed(command: str) -> str:
    """``command`` between marker lines its own shell prints, exit code kept.

    Login shells may print banners from rc files (``~/.bashrc`` is read by
    ``bash -c`` under sshd) before or after the command: `unframed` keeps only
    what the command wrote. The command runs in a subshell, so its ``exit``
    still reaches the end marker.
    """
    return (f"echo '{PROBE_BEGIN}'\n(\n{command.rstrip()}\n)\n"
            f"rc=$?; printf '\\n{PROBE_END}\\n'; exit $rc")


def unframed(stdout: str) -> str:
    """What the framed command printed (no markers: the text as it is; cut off: up to the end)."""
    begin = stdout.find(PROBE_BEGIN + "\n")
    if begin < 0:
        return stdout
    body = stdout[begin + len(PROBE_BEGIN) + 1:]
    end = body.rfind("\n" + PROBE_END)
    return body[:end] if end >= 0 else body


def parse_sections(stdout: str) -> dict[str, Section]:
    """``{key: Section}`` from :func:`sections_script` output (a cut-off part has rc None)."""
    found: dict[str, Section] = {}
    key: str | None = None
    body: list[str] = []
    for line in stdout.splitlines():
        if line.startswith("@@begin "):
            key, body = line[len("@@begin "):].strip(), []
        elif line.startswith("@@end ") and key is not None:
            rc = line.rsplit(" ", 1)[-1]
            found[key] = Section(key, "\n".join(body), int(rc) if rc.lstrip("-").isdigit() else None)
            key = None
        elif key is not None:
            body.append(line)
    if key is not None:
        found[key] = Section(key, "\n".join(body), None)
    return found


# --------------------------------------------------------------------------- running


def run_script(session: HostSession, script: str,
               timeout: float | None = STEP_TIMEOUT_S) -> CommandResult:
    """Run shell ``script`` on the session's host, fed on stdin to ``bash -s`` (``sh -s``).

    The script text (which may hold secrets) never becomes a command line. It is wrapped
    in ``{ … }`` so the shell reads all of it before running any of it: a command that
    reads stdin (an env file, say) cannot swallow the rest. Non-zero exit is a result;
    transport errors raise; past ``timeout`` raises invoke's ``CommandTimedOut``.
    """
    wrapped = "{\n" + script.rstrip("\n") + "\n}\n"
    return session.run(STDIN_RUNNER, timeout=timeout, stdin=wrapped)


def call_report(engine: Engine, hosts: Sequence[Host], fn: Callable[[HostSession], Any],
                fanout: int | None = None) -> Report:
    """``fn(session)`` on every host (bounded, connections kept open for the next step):
    one `Outcome` per host, ``data`` = what ``fn`` returned, or the classified failure."""
    unique = list(dict.fromkeys(hosts))
    if not unique:
        return Report()
    return build_report(engine.call(unique, fn, keep_open=True, fanout=fanout), engine)


def run_sections(engine: Engine, work: Mapping[Host, Sequence[tuple[str, str]]],
                 timeout: float | None = STEP_TIMEOUT_S, fanout: int | None = None) -> Report:
    """Each host's ``(key, script)`` parts in one round trip, on stdin: a `Report` whose
    outcomes carry ``data`` = ``{key: Section}`` (or the host's failure)."""
    def one(session: HostSession) -> dict[str, Section]:
        result = run_script(session, sections_script(work[session.host]), timeout)
        return parse_sections(result.stdout)

    return call_report(engine, list(work), one, fanout)
