"""The ``cluster`` console script: the same tasks as ``inv``, from any directory."""

from __future__ import annotations

from . import __doc__ as _doc  # noqa: F401  (keeps the package importable for tools)
from .program import ClusterProgram
from .tasks import ns

program = ClusterProgram(namespace=ns, name="cluster", binary="cluster", version="0.1.0")


def main() -> None:
    program.run()
