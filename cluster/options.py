"""Validation of option values shared by tasks and the API (errors are `InputError`, exit 2)."""

from __future__ import annotations

import re
from typing import Any

from .errors import ParameterError


def seconds(value: Any, option: str, *, minimum: float = 0.0, maximum: float | None = None,
            allow_minimum: bool = False) -> float:
    """``value`` as seconds: a number above ``minimum`` (or equal, with ``allow_minimum``)
    and at most ``maximum``; otherwise a `ParameterError` naming ``option`` (a parameter
    name such as ``timeout``, which the CLI shows as its flag, or a flag itself)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParameterError(option, f"{{name}} must be a number of seconds, got {value!r}") from None
    too_low = number < minimum if allow_minimum else number <= minimum
    if too_low or (maximum is not None and number > maximum):
        bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f"> {minimum:g}"
        raise ParameterError(option, f"{{name}} must be {bound} seconds, got {value!r}")
    return number


def regex(pattern: Any, option: str) -> str:
    """A one-line regular expression for ``option`` (``grep``, ``pattern``), or `ParameterError`."""
    text = str(pattern)
    if "\n" in text or "\0" in text:
        raise ParameterError(option, "{name}: a pattern cannot hold a newline")
    try:
        re.compile(text)
    except re.error as exc:
        raise ParameterError(option, f"{{name}}: bad regular expression {text!r}: {exc}") from None
    return text
