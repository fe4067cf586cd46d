"""SGLang/vLLM prefill/decode serving.

Pure (no connection): ``config`` parses the roles.yaml ``serving:`` section; ``plan``
turns it and the host lists into per-host server specs (and the router's); ``argv`` gives
their argument vectors, environment and :class:`Launch`; ``launch`` the launch and
preflight scripts; ``probe`` the health/port/process probes; ``terminate`` the stop and
sweep scripts; ``sections`` runs several scripts in one round trip; ``manifest`` records
what was started; ``shellcmd`` quotes and ``text`` holds small shared helpers.
``commands`` re-exports all of that as one namespace.

Over SSH: ``remote`` runs those scripts (fed on stdin), ``store`` keeps the manifest on
the controller and finds the per-host records; the lifecycle is ``start`` (steps in
``start_run``), ``stop`` and ``status`` over the data in ``model``, re-exported together
by ``lifecycle`` (start-pd / stop-pd / pd-status).
"""

from __future__ import annotations

from .argv import Launch, router_argv, router_launch, server_argv, server_launch
from .config import RoleConfig, RouterConfig, ServingConfig, parse_serving
from .launch import launch_script, render_for_display
from .manifest import Manifest, RouterRecord, ServerRecord
from .plan import RouterSpec, ServerSpec, new_run_id, plan_deployment, plan_router
from .probe import health_command, ports_free_command
from .terminate import stop_command, sweep_command

__all__ = [
    "Launch", "Manifest", "RoleConfig", "RouterConfig", "RouterRecord", "RouterSpec",
    "ServerRecord", "ServerSpec", "ServingConfig", "health_command", "launch_script",
    "new_run_id", "parse_serving", "plan_deployment", "plan_router", "ports_free_command",
    "render_for_display", "router_argv", "router_launch", "server_argv", "server_launch",
    "stop_command", "sweep_command",
]
