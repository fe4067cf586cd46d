"""Command-line layer: invoke tasks (thin) and the ``cluster`` console script."""

import atexit
import gc
import sys

# `inv` turns bytecode caching off for everything imported after it parsed its options (its
# --write-pyc); then every start compiles each cluster module again (~70 ms of `inv run`).
# Keep the interpreter's own setting instead (PYTHONDONTWRITEBYTECODE, python -B).
sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)

# Exiting, the interpreter runs full collections over every object it loaded (SSH, rich ...):
# ~25 ms of a short command. One collection here finalizes what is garbage now, as the first of
# those would; frozen, the rest is not scanned again and is freed as usual (runs after the
# atexit handlers of modules imported later, such as paramiko's).
atexit.register(lambda: (gc.collect(), gc.freeze()))
