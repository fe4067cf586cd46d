"""Running preflight: one round trip per host (the probe's sections on stdin, framed),
each host judged (:mod:`.checks`), facts compared across hosts, one `Report`.

A host with a ``fail`` check is a failed outcome (kind ``preflight``, the failing checks
in its message); warnings keep it ok. Transport failures keep their own kinds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .. import shell
from ..hosts import Host
from ..result import Failure, Outcome, Report, build_report
from . import checks, probe

if TYPE_CHECKING:
    from ..serving.plan import StartPlan
    from ..ssh import Engine, HostSession

PREFLIGHT = "preflight"
TIMEOUT_S = 60.0


def preflight(engine: Engine, plan: StartPlan, *, fast: bool = False, deep: bool = False,
              fanout: int | None = None, timeout: float = TIMEOUT_S, keep_open: bool = False,
              on_done: Callable[..., None] | None = None) -> Report:
    """Check every host of ``plan`` (``fast``: start-pd's subset). ``data`` of each outcome
    is its `checks.HostResult`; ``report.extra["consistency"]`` the folded facts."""
    plans = probe.host_plans(plan)
    work = probe.work(plans, fast=fast, deep=deep)

    def one(session: HostSession) -> tuple[Mapping[str, shell.Section], float, float]:
        before = time.time()
        result = shell.run_script(session, shell.sections_script(work[session.host]), timeout)
        return shell.parse_sections(result.stdout), before, time.time()

    results = engine.call(list(work), one, fanout=fanout, keep_open=keep_open, on_done=on_done)
    return judge(build_report(results, engine), plans, fast=fast)


def judge(report: Report, plans: Mapping[Host, probe.HostPlan], *, fast: bool = False) -> Report:
    """Judge each reached host's answers, compare facts across hosts, mark failed hosts."""
    judged: dict[str, checks.HostResult] = {}
    for outcome in report:
        if outcome.ok and isinstance(outcome.data, tuple):
            answers, before, after = outcome.data
            result = checks.judge_host(plans[outcome.host], answers, fast=fast, window=(before, after))
            judged[str(outcome.host)] = result
            outcome.data = result
        elif outcome.ok:
            outcome.data = checks.HostResult(roles=plans[outcome.host].roles)
    views = [] if fast else checks.compare(judged)
    for outcome in report:
        if outcome.ok:
            _mark(outcome)
        elif outcome.data is None:
            outcome.data = checks.HostResult(roles=plans[outcome.host].roles)
    report.task = PREFLIGHT
    report.fields = _fields
    report.extra["consistency"] = [v.to_json() for v in views]
    report.extra["fast"] = fast
    report.totals = _totals
    return report


def _mark(outcome: Outcome) -> None:
    result: checks.HostResult = outcome.data
    failed = result.by_status(checks.FAIL)
    if failed:
        names = ", ".join(dict.fromkeys(c.name for c in failed))
        outcome.fail(Failure(PREFLIGHT, f"{len(failed)} check(s) failed: {names} — {failed[0].value}",
                             failed[0].hint))


def _fields(outcome: Outcome) -> dict[str, Any]:
    data = outcome.data
    return data.to_json() if isinstance(data, checks.HostResult) else {}


def _totals(report: Report) -> dict[str, Any]:
    warned = sum(1 for o in report if o.ok and isinstance(o.data, checks.HostResult)
                 and o.data.status == checks.WARN)
    return {"warn": warned}


# The start's kinds for a failing fast check (start-pd's own preflight uses the same).
_START_KINDS = {checks.ENV_FILE: "env-file", checks.ENGINE: "no-launcher", checks.LAUNCHER: "no-launcher",
                checks.PYTHON: "no-launcher", checks.GPU_FREE: "gpu-busy", checks.MODEL: "no-model",
                checks.PORTS: "port-busy"}


def refusals(report: Report, ignore: tuple[str, ...] = ()) -> dict[Host, Failure]:
    """Per host, why start-pd must not start (every failing check but those in
    ``ignore`` in one message; the first one's kind and hint); hosts that pass are absent."""
    found: dict[Host, Failure] = {}
    for outcome in report:
        data = outcome.data
        failed = [c for c in data.by_status(checks.FAIL) if c.name not in ignore] \
            if isinstance(data, checks.HostResult) and data.checks else []
        if failed:
            message = "; ".join(f"{c.name}: {c.value}" for c in failed)
            found[outcome.host] = Failure(_START_KINDS.get(failed[0].name, PREFLIGHT), message, failed[0].hint)
        elif outcome.error is not None and not (isinstance(data, checks.HostResult) and data.checks):
            found[outcome.host] = outcome.error
    return found


def failing_checks(report: Report) -> list[tuple[Host, checks.Check | Failure]]:
    """Every failing check (or host failure) in host order: what start-pd lists when it refuses."""
    found: list[tuple[Host, checks.Check | Failure]] = []
    for outcome in report:
        data = outcome.data
        if isinstance(data, checks.HostResult) and data.checks:
            found.extend((outcome.host, c) for c in data.by_status(checks.FAIL))
        elif outcome.error is not None:
            found.append((outcome.host, outcome.error))
    return found
