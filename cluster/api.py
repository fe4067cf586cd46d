"""The Python API: ``Cluster.from_roles("roles.yaml").run("cmd", role="decode")``.

Usable without invoke. Every method returns a `cluster.result.Report`:
outcomes in host order, each with ``.ok``, ``.stdout``, ``.error`` (kind,
message, hint) and ``.data`` (what a probe parsed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from . import checks, status
from .hosts import Host
from .inventory import Inventory, load_inventory
from .result import Report, build_report
from .ssh import Engine, HostSession

Targets = str | Iterable[str] | None


class Cluster:
    """A roles file plus one SSH engine (shared key, known_hosts, open connections)."""

    def __init__(self, inventory: Inventory | None = None, **ssh_overrides: Any) -> None:
        self.inventory = inventory or Inventory()
        self.settings = self.inventory.ssh.with_overrides(**ssh_overrides)
        self._engine: Engine | None = None

    @classmethod
    def from_roles(cls, path: str | os.PathLike | None = None, **ssh_overrides: Any) -> Cluster:
        """Load ``path`` (default: $CLUSTER_ROLES, then ./roles.yaml)."""
        return cls(load_inventory(path), **ssh_overrides)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(self.settings)
        return self._engine

    def hosts(self, hosts: Targets = None, role: Targets = None) -> list[Host]:
        """The selected hosts: ``role`` hosts then ``hosts``; neither means all roles."""
        return self.inventory.select(hosts=hosts, roles=role)

    def run(self, command: str, *, hosts: Targets = None, role: Targets = None,
            timeout: float | None = None, on_done: Callable[..., None] | None = None) -> Report:
        """Run a shell command on every selected host."""
        targets = self.hosts(hosts, role)
        return build_report(self.engine.run(targets, command, timeout=timeout, on_done=on_done),
                            self.engine)

    def call(self, fn: Callable[[HostSession], Any], *, hosts: Targets = None,
             role: Targets = None, keep_open: bool = False) -> Report:
        """Apply ``fn(session)`` to every selected host; its return value lands in ``.data``."""
        targets = self.hosts(hosts, role)
        return build_report(self.engine.call(targets, fn, keep_open=keep_open), self.engine)

    def check(self, *, hosts: Targets = None, role: Targets = None,
              on_done: Callable[..., None] | None = None) -> Report:
        """Connect + authenticate + ``uname -n`` everywhere."""
        return checks.check(self.engine, self.hosts(hosts, role), on_done=on_done)

    def keyscan(self, *, hosts: Targets = None, role: Targets = None,
                on_done: Callable[..., None] | None = None) -> Report:
        """Fetch host keys and record/verify them per the host-key policy."""
        return checks.keyscan(self.engine, self.hosts(hosts, role), on_done=on_done)

    def gpu_status(self, *, hosts: Targets = None, role: Targets = None,
                   timeout: float | None = status.GPU_TIMEOUT_S,
                   on_done: Callable[..., None] | None = None) -> Report:
        """nvidia-smi GPUs and compute processes per host (``.data``: `cluster.gpu.GpuStatus`)."""
        return status.gpu_status(self.engine, self.hosts(hosts, role), timeout=timeout,
                                 on_done=on_done)

    def watch_gpu_status(self, interval: float, on_tick: Callable[[status.Tick], None], *,
                         hosts: Targets = None, role: Targets = None,
                         timeout: float | None = status.GPU_TIMEOUT_S,
                         max_ticks: int | None = None,
                         stop: Any = None) -> status.Tick | None:
        """`gpu_status` every ``interval`` s on the same open connections; see `cluster.status.watch`."""
        return status.watch(self.engine, self.hosts(hosts, role), status.gpu_probe(timeout),
                            interval, on_tick, max_ticks=max_ticks, stop=stop)

    def sys_status(self, *, hosts: Targets = None, role: Targets = None, samples: int = 2,
                   interval: int = 1, timeout: float | None = None,
                   on_done: Callable[..., None] | None = None) -> Report:
        """vmstat samples, load and memory per host (``.data``: `cluster.system.SystemStatus`)."""
        return status.sys_status(self.engine, self.hosts(hosts, role), samples=samples,
                                 interval=interval, timeout=timeout, on_done=on_done)

    def service_status(self, names: str | Iterable[str], *, hosts: Targets = None,
                       role: Targets = None, timeout: float | None = status.SERVICE_TIMEOUT_S,
                       on_done: Callable[..., None] | None = None) -> Report:
        """systemd state or matching processes of each service per host (``.data``: list)."""
        return status.service_status(self.engine, self.hosts(hosts, role), names,
                                     timeout=timeout, on_done=on_done)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

