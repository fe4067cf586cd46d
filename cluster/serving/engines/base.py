"""The engine seam: what differs between serving engines (SGLang, vLLM), as one small
interface. Everything else in :mod:`cluster.serving` is engine-neutral and asks the
engine of a spec (``engines.get(spec.engine)``) instead of testing its name.

Adding an engine = one module implementing :class:`ServingEngine` + one line in
:mod:`cluster.serving.engines` (the registry); ``tests/test_serving_engines.py`` runs
every hook of every registered engine, so a new engine cannot forget one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..plan import RouterSpec, ServerSpec


@dataclass(frozen=True)
class HttpCall:
    """One HTTP request to a running router (``body``: JSON text or None)."""

    method: str
    path: str
    body: str | None = None


class ServingEngine(ABC):
    """One serving engine's launch commands, endpoints, ports, env and process names.

    Class attributes every engine sets:

    ``name``
        the ``serving.engine`` / ``--engine`` value.
    ``package``
        the Python package whose version matters on the hosts (``sglang``, ``vllm``).
    ``default_ports``
        HTTP port per role (``prefill``, ``decode``) when the roles file sets none.
    ``health_path``
        readiness of a server's API rank (200 = ready), polled from its host.
    ``router_ready_path`` / ``router_workers_path``
        the router's readiness and worker-list endpoints.
    ``sweep_patterns``
        command-line regexes of every server process (children included) for the
        stop sweep; each alternative starts with a one-letter bracket class
        (``[s]glang``) so it never matches the sweeping shell's own text.
    ``router_sweep_patterns`` / ``router_titles``
        the same for the router; titles of router processes are spared by a
        server sweep unless the router is being stopped.
    """

    name: str
    package: str
    default_ports: Mapping[str, int]
    health_path: str = "/health"
    router_ready_path: str = "/readiness"
    router_workers_path: str = "/workers"
    sweep_patterns: tuple[str, ...]
    router_sweep_patterns: tuple[str, ...]
    router_titles: tuple[str, ...] = ()

    @abstractmethod
    def server_argv(self, spec: ServerSpec) -> list[str]:
        """The exact argument vector of one server process (one node-rank)."""

    @abstractmethod
    def server_env(self, spec: ServerSpec) -> list[tuple[str, str]]:
        """Variables the engine itself needs on top of the spec's env (e.g. NIXL's side
        channel address); exported after the spec's env, never overriding it."""

    @abstractmethod
    def server_ports(self, spec: ServerSpec) -> tuple[int, ...]:
        """TCP ports this process listens on, on its host (checked free before a start
        and after a stop)."""

    @abstractmethod
    def assign_ports(self, specs: Sequence[ServerSpec], base: int) -> list[ServerSpec]:
        """The planned specs with engine-specific per-host ports filled in (vLLM: a NIXL
        side-channel range unique on each host, from ``base``); others: unchanged."""

    def rdma_devices(self, spec: ServerSpec) -> tuple[str, ...]:
        """RDMA devices this server's KV transfer is told to use (checked by preflight under
        /sys/class/infiniband); none by default."""
        return ()

    @abstractmethod
    def router_launcher(self, python: str) -> tuple[str, ...]:
        """The router command when ``serving.router.launcher`` is not set."""

    @abstractmethod
    def router_argv(self, spec: RouterSpec) -> list[str]:
        """The router's argument vector (launcher first), fronting the spec's workers."""

    @abstractmethod
    def router_add_worker(self, url: str, role: str, bootstrap_port: int | None) -> HttpCall | None:
        """How to (re)register one worker with a running router, or None when this
        router cannot add PD workers at run time (it is then restarted instead)."""
