"""Validation of option values shared by tasks and the API (errors are `InputError`, exit 2)."""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import ParameterError, quoted

# A name that ends up in a file name, a remote command line or a pattern (a deployment):
# letters, digits, '.', '_', '-', not starting with '-' (it would read as an option).
_NAME = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")
MAX_NAME = 64


def seconds(value: Any, option: str, *, minimum: float = 0.0, maximum: float | None = None,
            allow_minimum: bool = False) -> float:
    """``value`` as seconds: a number above ``minimum`` (or equal, with ``allow_minimum``)
    and at most ``maximum``; otherwise a `ParameterError` naming ``option`` (a parameter
    name such as ``timeout``, which the CLI shows as its flag, or a flag itself)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ParameterError(option, f"{{name}} must be a number of seconds, got {quoted(value)}") from None
    if not math.isfinite(number):  # nan compares False with everything; inf never ends
        raise ParameterError(option, f"{{name}} must be a finite number of seconds, got {quoted(value)}")
    too_low = number < minimum if allow_minimum else number <= minimum
    if too_low or (maximum is not None and number > maximum):
        bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f"> {minimum:g}"
        raise ParameterError(option, f"{{name}} must be {bound} seconds, got {quoted(value)}")
    return number


def name(value: Any, option: str) -> str:
    """A name such as a deployment's: 1-64 of ``[A-Za-z0-9._-]``, not starting with ``-``
    (it reaches file names and remote command lines), or `ParameterError`."""
    text = str(value)
    if len(text) > MAX_NAME:
        raise ParameterError(option, f"{{name}}: at most {MAX_NAME} characters, got {len(text)}: {quoted(text)}")
    if not _NAME.fullmatch(text):
        raise ParameterError(option, f"{{name}}: expected letters, digits, '.', '_' or '-' (not first), "
                                     f"got {quoted(text)}")
    return text


def regex(pattern: Any, option: str) -> str:
    """A one-line regular expression for ``option`` (``grep``, ``pattern``), or `ParameterError`."""
    text = str(pattern)
    if "\n" in text or "\0" in text:
        raise ParameterError(option, "{name}: a pattern cannot hold a newline")
    try:
        re.compile(text)
    except re.error as exc:
        raise ParameterError(option, f"{{name}}: bad regular expression {quoted(text)}: {exc}") from None
    return text
