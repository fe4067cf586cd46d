"""Invoke entry point: `inv --list` shows every task. The tasks live in cluster_cli/."""

from cluster_cli.program import adopt_running_program
from cluster_cli.tasks import ns  # noqa: F401  (invoke looks for `ns`)

# `inv` runs invoke's own Program: give it the CLI's exit codes and error lines.
adopt_running_program()
