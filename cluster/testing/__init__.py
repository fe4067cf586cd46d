"""Test and rehearsal helpers: a loopback fleet of real sshd processes.

Never used on the code path that drives real hosts.
"""

from .fleet import Fleet, FleetError, address_range, kill_processes_of

__all__ = ["Fleet", "FleetError", "address_range", "kill_processes_of"]
