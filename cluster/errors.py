"""Errors raised by the library.

Two families matter to callers:

* ``InputError`` and its subclasses: bad input detected before any
  connection is made (inventory, arguments, missing files). The CLI maps
  these to exit code 2.
* ``ClusterError``: everything else the library raises on purpose.

Per-host failures (unreachable, auth, non-zero exit...) are *not*
exceptions: they are values (`cluster.result.Failure`) on each host's
outcome, so one bad host never hides the others.
"""

from __future__ import annotations

import reprlib

# Error messages quote a user's value at most this long: a 5,000-character role name or
# a YAML alias bomb must not become a megabyte error line.
QUOTE_LIMIT = 200
_REPR = reprlib.Repr()
_REPR.maxstring = QUOTE_LIMIT
_REPR.maxother = QUOTE_LIMIT
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


def quoted(value: object) -> str:
    """``value`` as an error message shows it: its repr (control characters escaped),
    bounded to about `QUOTE_LIMIT` characters, nested values elided with ``...``."""
    if isinstance(value, str) and len(value) > QUOTE_LIMIT:
        return repr(value[:QUOTE_LIMIT]) + f"... ({len(value):,} characters)"
    text = _REPR.repr(value)
    return text if len(text) <= QUOTE_LIMIT + 20 else text[:QUOTE_LIMIT] + "..."


class ClusterError(Exception):
    """Root of the library's own errors."""


class InputError(ClusterError):
    """Bad input found before any connection was attempted (exit code 2)."""


class InventoryError(InputError):
    """roles.yaml or a host expression is wrong; the message names file/key/value."""


class HostExpressionError(InventoryError):
    """A host expression could not be parsed (bad range, missing @file...)."""


class ParameterError(InputError):
    """A bad value of one named parameter (``timeout``, ``grace``, ``prefill_port``...).

    The message speaks of the parameter as the library names it
    (``timeout must be > 0 seconds, got 0``); the CLI rewrites it with the option a
    user typed (``--timeout must be > 0 seconds, got 0``) through :meth:`naming`.
    ``template`` holds ``{name}`` where the parameter's name goes (plain replacement:
    other braces in the value shown are left alone).
    """

    def __init__(self, parameter: str, template: str) -> None:
        self.parameter = parameter
        self.template = template
        super().__init__(template.replace("{name}", parameter))

    def naming(self, name: str) -> str:
        """The message with ``name`` (e.g. ``--timeout``) in place of the parameter."""
        return self.template.replace("{name}", name)
