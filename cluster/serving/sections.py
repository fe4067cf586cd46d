"""Several scripts in one round trip (pure): :func:`sections_script` frames each part,
:func:`parse_sections` splits the output back."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence


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


@dataclass(frozen=True)
class Section:
    """One part of :func:`sections_script` output. ``rc`` None = it never finished."""

    key: str
    output: str
    rc: int | None


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


_KEY = re.compile(r"^[A-Za-z0-9_.:-]+$")
