"""Status operations: the watch loop, and the option checks status tasks share.

The probes themselves (command + pure parser + classifier) live in their modules
(`cluster.gpu.probe`, `cluster.system.probe`, `cluster.service.probe`) and run through
`cluster.probe.run_probe` (`cluster.Cluster.probe`): one SSH round trip per host, a
`cluster.result.Report` whose ``.data`` holds the parsed dataclasses (also on hosts that
failed *after* answering, e.g. a ``degraded`` GPU host keeps its GPU rows).

`watch` re-runs a probe every few seconds on the connections it opened the
first time (``keep_open``), so a refresh costs one SSH channel per host, not a
new TCP connection, key exchange and authentication. A host whose connection
died is shown failed for that round; the next round reconnects it (the
`cluster.ssh.HostSession` reopens a dead transport before opening a channel).

No rendering here: callers (the CLI, scripts) turn reports into tables/JSON.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .errors import ParameterError
from .options import seconds
from .probe import Probe, run_probe
from .result import Report

if TYPE_CHECKING:
    from .hosts import Host
    from .ssh import Engine, HostSession

OnDone = Callable[["HostSession", Any], None]


def check_timeout(timeout: float | None, option: str = "timeout") -> float | None:
    """``timeout`` as a positive float (None stays None); `ParameterError` otherwise."""
    return None if timeout is None else seconds(timeout, option)


# ---------------------------------------------------------------------------
# Watch: the same probe again and again on open connections
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """One round of a watch."""

    number: int          # 1, 2, ...
    report: Report
    started_at: float    # wall-clock time (time.time()) the round started
    elapsed: float       # seconds the round took


def check_interval(interval: Any, option: str = "interval") -> float:
    """A watch interval in seconds (> 0), or `InputError`."""
    return seconds(interval, option)


def check_count(count: Any, option: str = "max_ticks") -> int | None:
    """A number of rounds (>= 1), None for "until stopped", or `ParameterError`."""
    if count is None:
        return None
    problem = f"{{name}} must be a whole number >= 1, got {count!r}"
    try:
        value = int(count)
    except (TypeError, ValueError):
        raise ParameterError(option, problem) from None
    if value < 1 or str(count).strip() not in (str(value), f"+{value}"):
        raise ParameterError(option, problem)
    return value


def watch(engine: Engine, hosts: Sequence[Host], probe: Probe, interval: float,
          on_tick: Callable[[Tick], None], *, max_ticks: int | None = None,
          stop: threading.Event | None = None, fanout: int | None = None,
          on_done: OnDone | None = None) -> Tick | None:
    """Run ``probe`` every ``interval`` seconds and hand each round to ``on_tick``.

    Connections opened by the first round stay open (``keep_open``) and are
    reused by every later round: no new SSH handshake per refresh. A host
    that dropped shows up failed in that round and is reconnected by the
    next one. Rounds start ``interval`` seconds apart (immediately one after
    the other when a round takes longer than that).

    Runs until ``max_ticks`` rounds are done or ``stop`` is set (``on_tick``
    may set it); Ctrl-C (KeyboardInterrupt) propagates to the caller, which
    still has the last round from ``on_tick``. Returns the last round (None
    when none ran). The connections are left open: close the engine when done.
    """
    period = check_interval(interval, "interval")
    limit = check_count(max_ticks, "max_ticks")
    stop = stop or threading.Event()
    last: Tick | None = None
    number = 0
    while not stop.is_set() and (limit is None or number < limit):
        number += 1
        started_wall, started = time.time(), time.monotonic()
        report = run_probe(engine, hosts, probe, fanout=fanout, keep_open=True, on_done=on_done)
        last = Tick(number, report, started_wall, time.monotonic() - started)
        on_tick(last)
        if limit is not None and number >= limit:
            break
        # Event.wait, not sleep: a stop request (or Ctrl-C) ends the pause at once.
        stop.wait(max(0.0, started + period - time.monotonic()))
    return last
