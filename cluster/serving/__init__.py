"""SGLang/vLLM prefill/decode serving.

Pure (no connection): ``config`` parses the roles.yaml ``serving:`` section; ``commands``
turns it and the host lists into per-host server specs, launch scripts, stop/sweep/
health/probe/port commands and the deployment manifest; ``shellcmd`` quotes.

Over SSH: ``remote`` runs those scripts (fed on stdin), ``store`` keeps the manifest on
the controller, and ``lifecycle`` is start-pd / stop-pd / pd-status.
"""

from __future__ import annotations

from .commands import (
    Launch,
    Manifest,
    RouterRecord,
    RouterSpec,
    ServerRecord,
    ServerSpec,
    health_command,
    launch_script,
    new_run_id,
    plan_deployment,
    plan_router,
    ports_free_command,
    render_for_display,
    router_argv,
    router_launch,
    server_argv,
    server_launch,
    stop_command,
    sweep_command,
)
from .config import RoleConfig, RouterConfig, ServingConfig, parse_serving

__all__ = [
    "Launch", "Manifest", "RoleConfig", "RouterConfig", "RouterRecord", "RouterSpec",
    "ServerRecord", "ServerSpec", "ServingConfig", "health_command", "launch_script",
    "new_run_id", "parse_serving", "plan_deployment", "plan_router", "ports_free_command",
    "render_for_display", "router_argv", "router_launch", "server_argv", "server_launch",
    "stop_command", "sweep_command",
]
