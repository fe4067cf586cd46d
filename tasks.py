"""Invoke entry point: `inv --list` shows every task. The tasks live in cluster_cli/."""

from cluster_cli.tasks import ns  # noqa: F401  (invoke looks for `ns`)
