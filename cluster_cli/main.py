"""The ``cluster`` console script: the same tasks as ``inv``, from any directory."""

from __future__ import annotations

from invoke import Program

from . import __doc__ as _doc  # noqa: F401  (keeps the package importable for tools)
from .tasks import ns

program = Program(namespace=ns, name="cluster", binary="cluster", version="0.1.0")


def main() -> None:
    program.run()
