"""Command-line layer: invoke tasks (thin) and the ``cluster`` console script."""

import sys

# `inv` turns bytecode caching off for everything imported after it parsed its options (its
# --write-pyc); then every start compiles each cluster module again (~70 ms of `inv run`).
# Keep the interpreter's own setting instead (PYTHONDONTWRITEBYTECODE, python -B).
sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)
