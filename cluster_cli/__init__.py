"""Command-line layer: invoke tasks (thin) and the ``cluster`` console script."""
