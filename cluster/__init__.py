"""GPU cluster task library: drive a fleet of GPU hosts over SSH.

    from cluster import Cluster
    with Cluster.from_roles("roles.yaml") as cluster:
        report = cluster.run("nvidia-smi -L", role="decode")

See docs/api.md. ``Cluster`` (and with it SSH, rendering and serving) is imported on
first use, so ``import cluster.gpu`` and the other pure modules load no SSH code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ClusterError, InputError, InventoryError, ParameterError
from .hosts import Host, parse_hosts
from .result import Failure, Outcome, Report

if TYPE_CHECKING:
    from .api import Cluster

__all__ = ["Cluster", "ClusterError", "InputError", "InventoryError", "ParameterError", "Host",
           "parse_hosts", "Failure", "Outcome", "Report"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Cluster":
        from .api import Cluster

        return Cluster
    raise AttributeError(f"module 'cluster' has no attribute {name!r}")
