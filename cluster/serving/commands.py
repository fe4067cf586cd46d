"""PD deployment commands built from data, as one namespace. Pure: nothing here opens a
connection or runs. The code lives in the modules named below; this module only
re-exports their public names (for callers that want the whole pure layer at once).

The flow a lifecycle follows:

1. :func:`plan_deployment` (:mod:`.plan`) turns a
   :class:`~cluster.serving.config.ServingConfig` and the prefill/decode host lists into
   one :class:`ServerSpec` per host (multi-node servers span ``nnodes`` consecutive
   hosts; only node-rank 0 serves the API); :func:`plan_router` the router.
2. :func:`server_launch` / :func:`router_launch` (:mod:`.argv`) give a :class:`Launch`
   (argv, env, files, ports) and :func:`launch_script` (:mod:`.launch`) the POSIX shell
   text that starts it in its own session (``setsid nohup``) and prints its pid.
   :func:`render_for_display` is the only form ever shown to people (``--dry-run``):
   secrets masked.
3. :func:`health_command`, :func:`ports_free_command`, :func:`probe_command`
   (:mod:`.probe`) and :func:`stop_command`, :func:`sweep_command` (:mod:`.terminate`)
   are the probes/actions used afterwards, each with a ``parse_*`` for its output;
   :func:`sections_script` (:mod:`.sections`) runs several in one round trip.
4. :class:`Manifest` (:mod:`.manifest`) records what was started (JSON) so
   stop/status/logs need no host list.

Launch-script exit codes (documented for the lifecycle's messages): see ``EXIT_*``.
"""

from __future__ import annotations

from .argv import (
    Launch,
    display_command,
    router_argv,
    router_launch,
    server_argv,
    server_env,
    server_launch,
)
from .launch import (
    EXIT_ALREADY_RUNNING,
    EXIT_ENV_FILE_MISSING,
    EXIT_LAUNCHER_MISSING,
    EXIT_MESSAGES,
    EXIT_PORT_BUSY,
    EXIT_RUN_DIR,
    STDIN_RUNNER,
    launch_script,
    preflight_script,
    render_for_display,
)
from .manifest import (
    DEFAULT_DEPLOYMENT,
    DEFAULT_STATE_DIR,
    MANIFEST_VERSION,
    STATE_DIR_ENV,
    Manifest,
    RouterRecord,
    ServerRecord,
    manifest_path,
    parse_records,
    record_write_command,
    records_command,
)
from .plan import RUN_ID_ENV, RouterSpec, ServerSpec, new_run_id, plan_deployment, plan_router
from .probe import (
    ProbeResult,
    ProbeTarget,
    clean_log_lines,
    health_command,
    parse_health,
    parse_ports_free,
    parse_probe,
    ports_free_command,
    probe_command,
    tail_command,
)
from .sections import Section, parse_sections, sections_script
from .terminate import (
    ROUTER_SWEEP_PATTERNS,
    ROUTER_TITLES,
    SWEEP_PATTERNS,
    StopResult,
    SweepResult,
    parse_stop,
    parse_stop_groups,
    parse_sweep,
    stop_command,
    stop_groups_command,
    sweep_command,
)
from .text import http_url

__all__ = [
    "DEFAULT_DEPLOYMENT", "DEFAULT_STATE_DIR", "EXIT_ALREADY_RUNNING", "EXIT_ENV_FILE_MISSING",
    "EXIT_LAUNCHER_MISSING", "EXIT_MESSAGES", "EXIT_PORT_BUSY", "EXIT_RUN_DIR", "Launch",
    "MANIFEST_VERSION", "Manifest", "ProbeResult", "ProbeTarget", "ROUTER_SWEEP_PATTERNS",
    "ROUTER_TITLES", "RUN_ID_ENV", "RouterRecord", "RouterSpec", "STATE_DIR_ENV", "STDIN_RUNNER",
    "SWEEP_PATTERNS", "Section", "ServerRecord", "ServerSpec", "StopResult", "SweepResult",
    "clean_log_lines", "display_command", "health_command", "http_url", "launch_script",
    "manifest_path", "new_run_id", "parse_health", "parse_ports_free", "parse_probe",
    "parse_records", "parse_sections", "parse_stop", "parse_stop_groups", "parse_sweep",
    "plan_deployment", "plan_router", "ports_free_command", "preflight_script", "probe_command",
    "record_write_command", "records_command", "render_for_display", "router_argv",
    "router_launch", "sections_script", "server_argv", "server_env", "server_launch",
    "stop_command", "stop_groups_command", "sweep_command", "tail_command",
]
