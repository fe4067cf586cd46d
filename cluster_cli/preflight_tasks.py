"""inv preflight (docs/preflight.md): check the plan start-pd would run, on every host,
before the long model load.

Thin: the same host / role / serving options as start-pd (so ``inv preflight`` can prefix
an exact start-pd command line; start-pd's run-time options are accepted and ignored),
one `cluster.api.Cluster.preflight` call, the view of `cluster.render.preflight`, exit 0
(ok or warnings) / 1 (a check failed, or a host could not be checked) / 2 (bad input).
"""

from __future__ import annotations

import time

from cluster.lazy import lazy

from .common import cluster_task, opened, show
from .serving_tasks import SERVING_FLAGS, START_HELP, env_items

render = lazy("cluster.render.core")
view = lazy("cluster.render.preflight")

IGNORED = "start-pd's option, accepted so a start-pd command line can be checked as is; ignored here."
PREFLIGHT_HELP = {
    **START_HELP,
    "deep": "Also hash the model's top-level JSON files (config, index) on every host and compare.",
    **{name: IGNORED for name in ("no_wait", "timeout", "dry_run", "restart", "grace", "skip_preflight",
                                  "deployment")},
}


@cluster_task(name="preflight", help=PREFLIGHT_HELP, flags=SERVING_FLAGS, iterable=["env"])
def preflight(c, prefill=None, decode=None, model_path=None, tp_size=None, nnodes=None,
              prefill_port=None, decode_port=None, bootstrap_port=None, env_file=None, env=None,
              extra_args=None, router=None, router_port=None, engine=None, deployment=None,
              deep=False, no_wait=False, timeout=None, dry_run=False, restart=False, grace=None,
              skip_preflight=False, roles_file=None, json=False, fanout=None):
    """Check every host of the start-pd plan: GPUs, software, model, network, system (ok/warn/fail)."""
    started = time.monotonic()
    overrides = dict(model_path=model_path, tp_size=tp_size, nnodes=nnodes, prefill_port=prefill_port,
                     decode_port=decode_port, bootstrap_port=bootstrap_port, env_file=env_file,
                     extra_args=extra_args, router_port=router_port, engine=engine, env=env_items(env))
    with opened(roles_file, fanout) as cluster:
        plan = cluster.plan_pd(prefill, decode, router=router, deployment=deployment, **overrides)
        count = len({s.target for s in plan.processes})
        with render.progress(count, "preflight") as tick:
            report = cluster.preflight(plan, deep=deep, on_done=tick)
    show(report, json, view.preflight_view, started, view.summary)
