"""Modules named at import time but loaded on first use: what keeps ``inv`` starting fast.

``inv --list`` and ``inv TASK --help`` import every task module (invoke builds every task's
options before it parses the command line), and every task run imports ``cluster.api``; what
those modules import at their top is paid by every command. So they name heavy modules (SSH,
rich, serving, the code of other tasks) with ``lazy``::

    render = lazy("cluster.render.core")     # rich: loaded on the first render.<name>

and import names from rich or other packages inside the function that uses them.
docs/architecture.md ("Adding a task without slowing start-up"); tests/test_startup.py checks
that ``inv --list`` loads no paramiko, fabric, rich or cluster.serving.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for module ``name``; the first attribute read imports it (thread-safe: the
    import system locks each module), later reads cost one ``sys.modules`` lookup more."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy(name: str) -> Any:
    """Module ``name`` (absolute), imported when one of its attributes is first read."""
    return LazyModule(name)
