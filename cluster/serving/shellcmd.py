"""Small helpers to build POSIX shell text from data. Pure: nothing here runs anything.

Every value that reaches a remote shell goes through :func:`quote` (``shlex.quote``).
The one exception is a leading ``~/`` in a path, which must stay unquoted for the
remote shell to expand it to *that host's* home: :func:`path` writes it as
``"$HOME"/`` followed by the quoted rest.

The scripts are meant for ``/bin/sh`` (dash on Debian), so they avoid bashisms:
``kill -TERM -PGID`` (dash's ``kill`` rejects ``--``), ``[ ]`` tests, ``$(...)``.
"""

from __future__ import annotations

import re
import shlex
from typing import Iterable, Mapping

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Substrings of environment-variable names whose values are never shown.
SECRET_NAME_PARTS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
# Command-line options whose *value* is a secret (``--api-key X``, ``--hf-token=X``).
_SECRET_OPTION = re.compile(r"^--?[A-Za-z0-9-]*(tokens?|keys?|secrets?|password|passwd)$", re.I)
MASK = "***"


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


def is_secret_name(name: str) -> bool:
    """True when an environment variable name looks like it holds a secret."""
    upper = name.upper()
    return any(part in upper for part in SECRET_NAME_PARTS)


def export_line(env: Mapping[str, str] | Iterable[tuple[str, str]], *, mask: bool = False) -> str:
    """``export A='x' B='y'`` for the given variables ('' when there are none).

    With ``mask=True`` the values of secret-looking names are replaced by ``***``.
    """
    items = list(env.items()) if isinstance(env, Mapping) else list(env)
    if not items:
        return ""
    parts = []
    for name, value in items:
        if not ENV_NAME.match(name):
            # Names are validated by the config parser; this guards direct callers.
            raise ValueError(f"bad environment variable name {name!r}")
        shown = MASK if mask and is_secret_name(name) else quote(value)
        parts.append(f"{name}={shown}")
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


def write_file(target: str, content: str) -> str:
    """Shell text that writes ``content`` (plus a newline) to ``target`` atomically.

    Writes a temp file next to the target and renames it, so a reader never
    sees half a file (homes may be shared over NFS).
    """
    tmp = path(target + ".tmp")
    return f"printf '%s\\n' {quote(content)} > {tmp} && mv -f {tmp} {path(target)}"
