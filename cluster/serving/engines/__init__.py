"""The registry of serving engines: name -> :class:`~.base.ServingEngine`.

To add an engine: write ``engines/<name>.py`` implementing the interface in
:mod:`.base` and add its ``ENGINE`` to ``_ENGINES`` below.
"""

from __future__ import annotations

from ...errors import InputError
from . import sglang, vllm
from .base import ServingEngine

_ENGINES: tuple[ServingEngine, ...] = (sglang.ENGINE, vllm.ENGINE)

REGISTRY: dict[str, ServingEngine] = {engine.name: engine for engine in _ENGINES}
NAMES: tuple[str, ...] = tuple(REGISTRY)
_REQUIRED = ("name", "package", "default_ports", "sweep_patterns", "router_sweep_patterns")


def get(name: str) -> ServingEngine:
    """The engine called ``name``; `InputError` naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown engine {name!r}: expected one of {', '.join(NAMES)}") from None


def _check(engine: ServingEngine) -> None:
    missing = [attr for attr in _REQUIRED if not getattr(engine, attr, None)]
    if missing:  # a programming error: fail on import, not at stop time
        raise TypeError(f"serving engine {type(engine).__name__} lacks {', '.join(missing)}")


for _engine in _ENGINES:
    _check(_engine)

__all__ = ["NAMES", "REGISTRY", "get"]
