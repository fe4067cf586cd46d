"""Small pure helpers shared by the serving command modules: file-name parts, directory
spelling, URLs, and integer lists in script output."""

from __future__ import annotations

import re

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """``text`` reduced to ``[A-Za-z0-9._-]`` (for file names and unquoted globs)."""
    return _SAFE_NAME.sub("_", text).strip("_") or "_"


def trim_dir(run_dir: str) -> str:
    """A directory without its trailing slash (``/`` stays ``/``)."""
    return run_dir.rstrip("/") or "/"


def ints(text: str) -> tuple[int, ...]:
    """The whitespace-separated integers of ``text`` (other words skipped)."""
    return tuple(int(t) for t in text.split() if t.isdigit())


def http_url(host: str, port: int, path: str = "") -> str:
    """``http://host:port/path`` with IPv6 literals bracketed."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}{path}"
