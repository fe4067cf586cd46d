"""GPU cluster task library: drive a fleet of GPU hosts over SSH.

    from cluster import Cluster
    with Cluster.from_roles("roles.yaml") as cluster:
        report = cluster.run("nvidia-smi -L", role="decode")

See docs/api.md.
"""

from .api import Cluster
from .errors import ClusterError, InputError, InventoryError
from .hosts import Host, parse_hosts
from .result import Failure, Outcome, Report

__all__ = ["Cluster", "ClusterError", "InputError", "InventoryError", "Host", "parse_hosts",
           "Failure", "Outcome", "Report"]
__version__ = "0.1.0"
