"""Status operations: GPU, system and service state of every host, and the watch loop.

Each operation runs one probe (`cluster.gpu`, `cluster.system`,
`cluster.service`: command + pure parser + classifier) on every host in one
SSH round trip and returns a `cluster.result.Report`: outcomes in host order,
``.data`` holding the parsed dataclasses (also on hosts that failed *after*
answering, e.g. a ``degraded`` GPU host keeps its GPU rows).

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
from functools import partial
from typing import Any, Callable, Iterable, Sequence

from . import gpu, service, system
from .errors import InputError
from .gpu_health import DEFAULT_LIMITS, HealthLimits
from .hosts import Host
from .options import seconds
from .probe import Probe, run_probe
from .result import Report
from .ssh import Engine, HostSession

GPU_TIMEOUT_S = 20.0
SERVICE_TIMEOUT_S = 20.0
# vmstat itself takes samples * interval seconds; this much more covers the
# connection, the shell start and a slow host without waiting forever.
SYS_TIMEOUT_MARGIN_S = 15.0

OnDone = Callable[[HostSession, Any], None]


# ---------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------


def check_timeout(timeout: float | None, option: str = "--timeout") -> float | None:
    """``timeout`` as a positive float (None stays None); `InputError` otherwise."""
    return None if timeout is None else seconds(timeout, option)


def gpu_probe(timeout: float | None = GPU_TIMEOUT_S,
              limits: HealthLimits = DEFAULT_LIMITS) -> Probe:
    """nvidia-smi GPU rows + compute processes in one round trip (see `cluster.gpu`);
    health warnings judged against ``limits`` (`cluster.gpu_health`)."""
    parse = gpu.parse if limits == DEFAULT_LIMITS else partial(gpu.parse, limits=limits)
    return Probe("gpu-status", gpu.COMMAND, parse, gpu.classify,
                 check_timeout(timeout) or GPU_TIMEOUT_S)


def sys_timeout(samples: int, interval: int) -> float:
    """Command timeout for a vmstat run: its own duration plus a margin."""
    return system.duration_s(samples, interval) + SYS_TIMEOUT_MARGIN_S


def sys_probe(samples: int = 2, interval: int = 1, timeout: float | None = None) -> Probe:
    """vmstat ``samples`` x ``interval`` s + load + memory (see `cluster.system`).

    ``timeout`` defaults to `sys_timeout` (duration + margin). Raises
    `InputError` for bad samples/interval/timeout.
    """
    command = system.command(samples, interval)  # validates samples and interval
    limit = check_timeout(timeout) or sys_timeout(samples, interval)
    return Probe("sys-status", command, system.parse, system.classify, limit)


def service_probe(names: str | Iterable[str], timeout: float | None = SERVICE_TIMEOUT_S, *,
                  systemd_dir: str = service.SYSTEMD_DIR) -> Probe:
    """systemd state or matching processes of each name (see `cluster.service`)."""
    command = service.command(names, systemd_dir=systemd_dir)  # validates the names
    return Probe("service-status", command, service.parse, service.classify,
                 check_timeout(timeout) or SERVICE_TIMEOUT_S)


# ---------------------------------------------------------------------------
# One-shot operations
# ---------------------------------------------------------------------------


def gpu_status(engine: Engine, hosts: Sequence[Host], *, timeout: float | None = GPU_TIMEOUT_S,
               fanout: int | None = None, keep_open: bool = False,
               on_done: OnDone | None = None, limits: HealthLimits = DEFAULT_LIMITS) -> Report:
    """GPU rows and compute processes of every host; ``.data`` is a `cluster.gpu.GpuStatus`.

    Failure kinds: the SSH base kinds plus `cluster.gpu.KINDS` (``no-gpu-tool``,
    ``driver``, ``nvml``, ``gpu-lost``, ``no-gpu``, ``degraded``, ``bad-output``).
    A wedged nvidia-smi is ``command-timeout`` after ``timeout`` seconds. Health
    warnings (``.data.warnings``) never fail a host.
    """
    return run_probe(engine, hosts, gpu_probe(timeout, limits), fanout=fanout,
                     keep_open=keep_open, on_done=on_done)


def sys_status(engine: Engine, hosts: Sequence[Host], *, samples: int = 2, interval: int = 1,
               timeout: float | None = None, fanout: int | None = None,
               keep_open: bool = False, on_done: OnDone | None = None) -> Report:
    """vmstat samples, load and memory of every host; ``.data`` is a `cluster.system.SystemStatus`.

    The seed's ``vmstat 2 15`` is ``samples=15, interval=2``. The since-boot
    row is dropped, so each sample covers one interval.
    """
    probe = sys_probe(samples, interval, timeout)
    return run_probe(engine, hosts, probe, fanout=fanout, keep_open=keep_open, on_done=on_done)


def service_status(engine: Engine, hosts: Sequence[Host], names: str | Iterable[str], *,
                   timeout: float | None = SERVICE_TIMEOUT_S, fanout: int | None = None,
                   keep_open: bool = False, on_done: OnDone | None = None,
                   systemd_dir: str = service.SYSTEMD_DIR) -> Report:
    """State of each named service on every host; ``.data`` is a list of `cluster.service.ServiceState`.

    A host where a service is not active fails with kind ``inactive``.
    """
    probe = service_probe(names, timeout, systemd_dir=systemd_dir)
    return run_probe(engine, hosts, probe, fanout=fanout, keep_open=keep_open, on_done=on_done)


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


def check_interval(interval: Any, option: str = "--watch") -> float:
    """A watch interval in seconds (> 0), or `InputError`."""
    return seconds(interval, option)


def check_count(count: Any, option: str = "--count") -> int | None:
    """A number of rounds (>= 1), None for "until stopped", or `InputError`."""
    if count is None:
        return None
    try:
        value = int(count)
    except (TypeError, ValueError):
        raise InputError(f"{option} must be a whole number >= 1, got {count!r}") from None
    if value < 1 or str(count).strip() not in (str(value), f"+{value}"):
        raise InputError(f"{option} must be a whole number >= 1, got {count!r}")
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
