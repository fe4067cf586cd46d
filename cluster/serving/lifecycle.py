"""The PD deployment lifecycle over SSH: :func:`start_pd`, :func:`stop_pd`, :func:`pd_status`.

Everything that runs on a host is built by the pure command modules (:mod:`cluster.serving.commands`
names them) and fed to the host's shell **on stdin** (:func:`run_script`), so secrets in the
environment never appear in any process's command line. Each step is one round trip
per host over connections that stay open (``keep_open``) for the next step.

start (``start_pd``)
    1. plan (pure, :func:`plan_start`): bad input raises `InputError` before any
       connection; ``dry_run`` stops here (:func:`dry_run_scripts`).
    2. preflight on every host, changing nothing: env file, a live server from the
       pid file (``already-running``), ports, launcher; plus the recorded deployment of
       the same name (still running elsewhere?). Any failure: nothing starts anywhere.
    3. ``restart``: stop what the preflight found running (and the recorded deployment).
    4. launch every server in its own session, record the manifest (controller) and a
       per-server record (on its host, in the run dir).
    5. wait (unless ``wait=False``): poll ``/health`` of each rank 0 *from its host*,
       check every rank's process; a dead server fails fast with its last 30 log lines;
       an overall deadline.
    6. the router, if asked: launch, wait for ``/readiness``.

stop (``stop_pd``): per host, one script: SIGTERM every group, a shared grace, SIGKILL,
sweep leftovers by command line (the user's, or only this deployment's by the
``CLUSTER_PD_RUN_ID`` marker), check the ports, read GPU memory via nvidia-smi.

status (``pd_status``): per server pid alive, ports listening, ``/health``, uptime,
last log line; router ``/readiness`` and ``/workers``.

Failure kinds added here (docs/pd.md): ``env-file``, ``run-dir``, ``already-running``,
``port-busy``, ``no-launcher``, ``launch``, ``died``, ``not-ready``, ``survivors``,
``not-running``, ``unhealthy``.

The code lives in :mod:`.model` (rows, results, failure kinds, defaults), :mod:`.start`
(with :mod:`.start_run`, the steps), :mod:`.stop` and :mod:`.status`; this module
re-exports the lifecycle's names as one namespace (what ``cluster.api`` and the CLI use).
"""

from __future__ import annotations

# Underscore names (noqa: F401) are internals re-exported for the unit tests
# (tests/test_serving_lifecycle.py), not part of the public surface.
from .model import (
    ALREADY_RUNNING,
    DEFAULT_GRACE_S,
    DEFAULT_TIMEOUT_S,
    DIED,
    DRY_RUN,
    ENV_FILE,
    FAILED,
    HEALTHY,
    LAUNCH,
    LOADING,
    LOG_TAIL_LINES,
    NO_LAUNCHER,
    NOT_READY,
    NOT_RUNNING,
    NOT_STARTED,
    PLANNED,
    POLL_INTERVAL_S,
    PORT_BUSY,
    READY,
    ROUTER,
    ROUTER_MIN_WAIT_S,
    RUN_DIR,
    RUNNING,
    STARTED,
    STARTING,
    STOPPED,
    SURVIVORS,
    SWEEP_SCOPES,
    TRANSPORT_STRIKES,
    UNHEALTHY,
    GpuAfter,
    HostStop,
    ProgressFn,
    ServerRow,
    StartPlan,
    StartResult,
    StatusResult,
    StopResult,
    server_key,
)
from .remote import host_of, run_script
from .start import dry_run_scripts, plan_start, start_pd
from .start_run import _exit_failure  # noqa: F401
from .status import _judge_status, pd_status  # noqa: F401
from .stop import (
    StopWork,
    _check_sweep,  # noqa: F401
    _gpu_after,  # noqa: F401
    _mark_stopped,  # noqa: F401
    _parse_host_stop,  # noqa: F401
    _stop_failure,  # noqa: F401
    _stop_work,  # noqa: F401
    stop_pd,
)
from .store import discover_records, load_manifest, manifest_file, save_manifest

__all__ = [  # the lifecycle's public names, including those it re-exports
    "ServerRow", "StartPlan", "StartResult", "GpuAfter", "HostStop", "StopResult", "StatusResult",
    "StopWork", "plan_start", "dry_run_scripts", "start_pd", "stop_pd", "pd_status",
    "discover_records", "server_key", "host_of", "run_script", "manifest_file", "load_manifest",
    "save_manifest",
    # defaults, failure kinds and phases (cluster.serving.model)
    "ALREADY_RUNNING", "DEFAULT_GRACE_S", "DEFAULT_TIMEOUT_S", "DIED", "DRY_RUN", "ENV_FILE", "FAILED",
    "HEALTHY", "LAUNCH", "LOADING", "LOG_TAIL_LINES", "NO_LAUNCHER", "NOT_READY", "NOT_RUNNING",
    "NOT_STARTED", "PLANNED", "POLL_INTERVAL_S", "PORT_BUSY", "READY", "ROUTER", "ROUTER_MIN_WAIT_S",
    "RUN_DIR", "RUNNING", "STARTED", "STARTING", "STOPPED", "SURVIVORS", "SWEEP_SCOPES",
    "TRANSPORT_STRIKES", "UNHEALTHY", "ProgressFn",
]
