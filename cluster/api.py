"""The Python API: ``Cluster.from_roles("roles.yaml").run("cmd", role="decode")``.

Usable without invoke. Every method returns a `cluster.result.Report`:
outcomes in host order, each with ``.ok``, ``.stdout``, ``.error`` (kind,
message, hint) and ``.data`` (what a probe parsed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from . import checks, status, transfer
from .gpu_health import HealthLimits, parse_limits
from .hosts import Host
from .inventory import Inventory, load_inventory
from .result import Report, build_report
from .serving import lifecycle
from .serving.config import ServingConfig, parse_serving
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

    def gpu_limits(self) -> HealthLimits:
        """The roles file's ``gpu:`` health limits (`cluster.gpu_health`), validated."""
        source = str(self.inventory.path) if self.inventory.path else "roles.yaml"
        return parse_limits(self.inventory.sections.get("gpu"), source)

    def gpu_status(self, *, hosts: Targets = None, role: Targets = None,
                   timeout: float | None = status.GPU_TIMEOUT_S,
                   on_done: Callable[..., None] | None = None) -> Report:
        """nvidia-smi GPUs and compute processes per host (``.data``: `cluster.gpu.GpuStatus`)."""
        limits = self.gpu_limits()
        return status.gpu_status(self.engine, self.hosts(hosts, role), timeout=timeout,
                                 on_done=on_done, limits=limits)

    def watch_gpu_status(self, interval: float, on_tick: Callable[[status.Tick], None], *,
                         hosts: Targets = None, role: Targets = None,
                         timeout: float | None = status.GPU_TIMEOUT_S,
                         max_ticks: int | None = None,
                         stop: Any = None) -> status.Tick | None:
        """`gpu_status` every ``interval`` s on the same open connections; see `cluster.status.watch`."""
        probe = status.gpu_probe(timeout, self.gpu_limits())
        return status.watch(self.engine, self.hosts(hosts, role), probe,
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

    # -- files (cluster.transfer) ----------------------------------------------------------
    def put(self, local: str, remote: str, *, hosts: Targets = None, role: Targets = None,
            recursive: bool = False, mkdir: bool = False, force: bool = False,
            timeout: float = transfer.IDLE_TIMEOUT_S) -> Report:
        """Copy a local file (or tree) to every selected host (``.data``: `cluster.transfer.HostTransfer`)."""
        plan = transfer.plan_put(local, remote, recursive)
        return transfer.put(self.engine, self.hosts(hosts, role), plan, mkdir=mkdir, force=force,
                            timeout=timeout)

    def get(self, remote: str, localdir: str, *, hosts: Targets = None, role: Targets = None,
            recursive: bool = False, force: bool = False,
            timeout: float = transfer.IDLE_TIMEOUT_S) -> Report:
        """Fetch ``remote`` from every selected host into ``localdir/<host>/``."""
        targets = self.hosts(hosts, role)
        plan = transfer.plan_get(remote, localdir, targets, recursive)
        return transfer.get(self.engine, targets, plan, force=force, timeout=timeout)

    # -- PD serving (cluster.serving.lifecycle) --------------------------------------------
    def serving_config(self, **overrides: Any) -> ServingConfig:
        """The roles file's ``serving:`` section with overrides (None = not given), validated."""
        source = str(self.inventory.path) if self.inventory.path else "roles.yaml"
        raw = self.inventory.sections.get("serving")
        return parse_serving(raw, source=source).with_overrides(**overrides)

    def plan_pd(self, prefill: Targets = None, decode: Targets = None, *, router: str | None = None,
                deployment: str | None = None, **overrides: Any) -> lifecycle.StartPlan:
        """Plan a PD deployment without connecting: hosts from the expressions, else from
        the roles ``prefill`` / ``decode``. Raises `InputError` on bad input."""
        config = self.serving_config(**overrides)
        prefill_hosts = self.hosts(prefill) if prefill else self.inventory.role_hosts("prefill")
        decode_hosts = self.hosts(decode) if decode else self.inventory.role_hosts("decode")
        return lifecycle.plan_start(config, prefill_hosts, decode_hosts, router=router,
                                    deployment=deployment)

    def start_pd(self, prefill: Targets = None, decode: Targets = None, *, router: str | None = None,
                 deployment: str | None = None, wait: bool = True,
                 timeout: float = lifecycle.DEFAULT_TIMEOUT_S, restart: bool = False,
                 grace: float = lifecycle.DEFAULT_GRACE_S,
                 on_progress: Callable[..., None] | None = None,
                 **overrides: Any) -> lifecycle.StartResult:
        """Start SGLang/vLLM prefill + decode servers (and the router) and wait until ready.

        ``overrides`` are `ServingConfig.with_overrides` keys (model_path, tp_size, engine...).
        """
        plan = self.plan_pd(prefill, decode, router=router, deployment=deployment, **overrides)
        return lifecycle.start_pd(self.engine, plan, wait=wait, timeout=timeout, restart=restart,
                                  grace=grace, fanout=self.settings.fanout, on_progress=on_progress)

    def stop_pd(self, *, hosts: Targets = None, role: Targets = None, deployment: str | None = None,
                grace: float = lifecycle.DEFAULT_GRACE_S, sweep: str = "user",
                keep_router: bool = False) -> lifecycle.StopResult:
        """Stop the recorded deployment, or what start-pd started on the selected hosts."""
        targets = self.hosts(hosts, role) if (hosts or role) else None
        return lifecycle.stop_pd(self.engine, lifecycle.load_manifest(deployment), hosts=targets,
                                 run_dir=self.serving_config().run_dir, grace=grace, sweep=sweep,
                                 keep_router=keep_router, fanout=self.settings.fanout)

    def pd_status(self, *, hosts: Targets = None, role: Targets = None,
                  deployment: str | None = None) -> lifecycle.StatusResult:
        """Health of every server of the recorded deployment (or of the selected hosts)."""
        targets = self.hosts(hosts, role) if (hosts or role) else None
        return lifecycle.pd_status(self.engine, lifecycle.load_manifest(deployment), hosts=targets,
                                   run_dir=self.serving_config().run_dir, fanout=self.settings.fanout)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

