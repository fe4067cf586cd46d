"""SGLang/vLLM prefill/decode (PD) serving: the public surface.

By concept (each module says more):

``config``   the roles.yaml ``serving:`` section, validated (pure)
``engines``  what differs by engine (sglang, vllm): one module each behind one
             interface, and the registry (pure)
``plan``     the engine-neutral :class:`ServerSpec` / :class:`RouterSpec` of every
             process and the :class:`StartPlan` start-pd shows and runs (pure)
``scripts``  the shell text run on hosts (launch, preflight, probe, stop, sweep) and
             the parsers of its output (pure)
``records``  :class:`ServerRecord`, the one record of a process everywhere; the
             :class:`Manifest` and where records are kept (controller, run dirs)
``start``    start-pd and restart-pd; ``stop`` stop-pd; ``status`` pd-status (over SSH)

Python callers normally go through :class:`cluster.Cluster` (``plan_pd``, ``start_pd``,
``restart_pd``, ``stop_pd``, ``pd_status``); the names below are what those return.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The public names and the module each lives in. They are imported on first use, so
# importing a pure part (``cluster.serving.config``, ``.plan``, ``.scripts``) loads no
# SSH code.
_PUBLIC = {
    "ServingConfig": "config", "parse_serving": "config",
    "RouterSpec": "plan", "ServerSpec": "plan", "StartPlan": "plan", "plan_start": "plan",
    "Manifest": "records", "ServerRecord": "records", "load_manifest": "records",
    "manifest_file": "records",
    "DEFAULT_TIMEOUT_S": "start", "RestartResult": "start", "StartResult": "start",
    "dry_run_scripts": "start", "restart_pd": "start", "start_pd": "start",
    "StatusResult": "status", "pd_status": "status",
    "DEFAULT_GRACE_S": "stop", "SWEEP_SCOPES": "stop", "GpuAfter": "stop", "HostStop": "stop",
    "StopResult": "stop", "stop_pd": "stop",
}

if TYPE_CHECKING:
    from .config import ServingConfig, parse_serving
    from .plan import RouterSpec, ServerSpec, StartPlan, plan_start
    from .records import Manifest, ServerRecord, load_manifest, manifest_file
    from .start import DEFAULT_TIMEOUT_S, RestartResult, StartResult, dry_run_scripts, restart_pd, start_pd
    from .status import StatusResult, pd_status
    from .stop import DEFAULT_GRACE_S, SWEEP_SCOPES, GpuAfter, HostStop, StopResult, stop_pd


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'cluster.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "DEFAULT_GRACE_S", "DEFAULT_TIMEOUT_S", "SWEEP_SCOPES", "GpuAfter", "HostStop", "Manifest",
    "RestartResult", "RouterSpec", "ServerRecord", "ServerSpec", "ServingConfig", "StartPlan",
    "StartResult", "StatusResult", "StopResult", "dry_run_scripts", "load_manifest",
    "manifest_file", "parse_serving", "pd_status", "plan_start", "restart_pd", "start_pd",
    "stop_pd",
]
