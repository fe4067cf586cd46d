"""GPU health: the signals operators page on, judged per GPU against documented limits.

Pure module. nvidia-smi only fails loudly for dead GPUs; these signals are
printed as ordinary values and mean a GPU needs attention while it still works
(`cluster.gpu` queries them in the same round trip):

==========================  ===============================================  ==========================
kind                        when (default limit)                             value / limit in JSON
==========================  ===============================================  ==========================
``ecc-uncorrected``         ``ecc.errors.uncorrected.volatile.total`` above   errors / ``ecc_uncorrected_max``
                            ``ecc_uncorrected_max`` (0)
``remapped-rows-pending``   ``remapped_rows.pending`` is ``Yes``: a row      true / null
                            remap waits for a GPU reset
``retired-pages-pending``   ``retired_pages.pending`` is ``Yes``: a page     true / null
                            retirement waits for a reboot (pre-Ampere)
``temperature``             ``temperature.gpu.tlimit`` (degrees left before  temperature / the
                            the GPU's maximum operating temperature, its      temperature where it warns
                            "T.Limit") at or below ``slowdown_margin_c`` (0:
                            at or above that limit; the clocks slow down a
                            few degrees later, at T.Limit -2 on an H200);
                            or the temperature at or above
                            ``temperature_max_c`` (off by default)
``clock-slowdown``          ``clocks_event_reasons.active`` has one of       reason names / null
                            ``clock_event_reasons`` (hw_slowdown,
                            sw_thermal_slowdown, hw_thermal_slowdown,
                            hw_power_brake_slowdown); ``sw_power_cap`` and
                            ``gpu_idle`` are normal and not flagged
``recovery-action``         ``gpu_recovery_action`` is not ``None``          the action (``Reset``,
                            (``Reset``, ``Reboot``, ``Drain P2P``...)        ``Reboot``...) / null
``inforom``                 ``WARNING: infoROM is corrupted`` (exit 14)       null / null
==========================  ===============================================  ==========================

A value nvidia-smi did not report (``[N/A]``, or a field an older driver does
not know) gives no warning: unsupported means null, never a guess. The limits
come from roles.yaml's ``gpu:`` section (`parse_limits`)::

    gpu:
      ecc_uncorrected_max: 0      # warn when more uncorrected (volatile) ECC errors
      slowdown_margin_c: 0        # warn when this many degrees C or fewer are left (T.Limit)
      temperature_max_c: null     # also warn at this temperature (drivers without tlimit)
      clock_event_reasons: [hw_slowdown, sw_thermal_slowdown, hw_thermal_slowdown,
                            hw_power_brake_slowdown]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import InventoryError

ECC = "ecc-uncorrected"
REMAPPED_ROWS = "remapped-rows-pending"
RETIRED_PAGES = "retired-pages-pending"
TEMPERATURE = "temperature"
CLOCK_SLOWDOWN = "clock-slowdown"
RECOVERY_ACTION = "recovery-action"
INFOROM = "inforom"
KINDS = (ECC, REMAPPED_ROWS, RETIRED_PAGES, TEMPERATURE, CLOCK_SLOWDOWN, RECOVERY_ACTION, INFOROM)

# nvml.h nvmlClocksEventReason* bits; the names are nvidia-smi's per-reason
# query fields (clocks_event_reasons.<name>).
CLOCK_EVENT_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
_REASON_LABELS = {"hw_slowdown": "HW slowdown", "sw_thermal_slowdown": "SW thermal",
                  "hw_thermal_slowdown": "HW thermal", "hw_power_brake_slowdown": "power brake",
                  "sw_power_cap": "power cap"}
SLOWDOWN_REASONS = ("hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
                    "hw_power_brake_slowdown")


@dataclass(frozen=True)
class HealthLimits:
    """When a health value becomes a warning (roles.yaml ``gpu:``; defaults documented above)."""

    ecc_uncorrected_max: int = 0
    slowdown_margin_c: int = 0
    temperature_max_c: int | None = None
    clock_event_reasons: tuple[str, ...] = SLOWDOWN_REASONS


DEFAULT_LIMITS = HealthLimits()


@dataclass(frozen=True)
class HealthWarning:
    """One signal on one GPU (``gpu`` is its index; None when no GPU row could be named)."""

    gpu: int | None
    kind: str
    value: Any = None
    limit: Any = None

    def to_json(self) -> dict[str, Any]:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"gpu": self.gpu, "kind": self.kind, "value": value, "limit": self.limit}

    def describe(self, with_gpu: bool = True) -> str:
        """A short phrase for a table cell: ``GPU 3: 2 uncorrected ECC errors``."""
        where = f"GPU {self.gpu}: " if self.gpu is not None and with_gpu else ""
        return where + _PHRASES[self.kind](self)


_PHRASES: dict[str, Callable[[HealthWarning], str]] = {
    ECC: lambda w: f"{w.value} uncorrected ECC error{'s' if w.value != 1 else ''}",
    REMAPPED_ROWS: lambda w: "row remapping pending (needs a GPU reset)",
    RETIRED_PAGES: lambda w: "page retirement pending (needs a reboot)",
    TEMPERATURE: lambda w: (f"{_deg(w.value)} °C, limit {_deg(w.limit)} °C"
                            if w.limit is not None else "at its temperature limit"),
    CLOCK_SLOWDOWN: lambda w: "clocks slowed: " + ", ".join(_REASON_LABELS.get(r, r) for r in w.value),
    RECOVERY_ACTION: lambda w: f"recovery action {w.value}",
    INFOROM: lambda w: "infoROM corrupted",
}


def _deg(value: Any) -> str:
    return "?" if value is None else f"{value:.0f}"


# ---------------------------------------------------------------------------
# Judging one GPU
# ---------------------------------------------------------------------------


def reason_names(bits: int | None) -> tuple[str, ...]:
    """The named reasons set in a ``clocks_event_reasons.active`` bitmask."""
    if bits is None:
        return ()
    return tuple(name for bit, name in CLOCK_EVENT_REASONS.items() if bits & bit)


def judge(gpu: Any, limits: HealthLimits = DEFAULT_LIMITS) -> list[HealthWarning]:
    """The warnings of one `cluster.gpu.Gpu` (its health values and flags), in kind order."""
    found: list[HealthWarning] = []
    index = gpu.index
    if gpu.ecc_uncorrected is not None and gpu.ecc_uncorrected > limits.ecc_uncorrected_max:
        found.append(HealthWarning(index, ECC, gpu.ecc_uncorrected, limits.ecc_uncorrected_max))
    if gpu.remapped_rows_pending:
        found.append(HealthWarning(index, REMAPPED_ROWS, True))
    if gpu.retired_pages_pending:
        found.append(HealthWarning(index, RETIRED_PAGES, True))
    hot = _temperature_warning(gpu, limits)
    if hot is not None:
        found.append(hot)
    slowed = tuple(n for n in reason_names(gpu.clock_event_reasons)
                   if n in limits.clock_event_reasons)
    if slowed:
        found.append(HealthWarning(index, CLOCK_SLOWDOWN, slowed))
    action = gpu.recovery_action
    if action is not None and action.strip().lower() not in ("none", ""):
        found.append(HealthWarning(index, RECOVERY_ACTION, action))
    if "inforom" in gpu.flags:
        found.append(HealthWarning(index, INFOROM))
    return found


def _temperature_warning(gpu: Any, limits: HealthLimits) -> HealthWarning | None:
    temp, margin = gpu.temperature_c, gpu.slowdown_margin_c
    if margin is not None and margin <= limits.slowdown_margin_c:
        # The temperature at which the margin reaches the limit.
        limit = temp + margin - limits.slowdown_margin_c if temp is not None else None
        return HealthWarning(gpu.index, TEMPERATURE, temp, limit)
    if limits.temperature_max_c is not None and temp is not None and temp >= limits.temperature_max_c:
        return HealthWarning(gpu.index, TEMPERATURE, temp, limits.temperature_max_c)
    return None


# ---------------------------------------------------------------------------
# roles.yaml ``gpu:``
# ---------------------------------------------------------------------------

_INT_KEYS = ("ecc_uncorrected_max", "slowdown_margin_c", "temperature_max_c")


def parse_limits(section: Any, source: str = "roles.yaml") -> HealthLimits:
    """Validate roles.yaml's ``gpu:`` mapping; `InventoryError` (exit 2) names the key and value."""
    if section is None:
        return DEFAULT_LIMITS
    if not isinstance(section, dict):
        raise InventoryError(f"{source}: gpu: expected a mapping, got {section!r}")
    known = (*_INT_KEYS, "clock_event_reasons")
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in known:
            raise InventoryError(f"{source}: gpu.{key}: unknown key (known: {', '.join(known)})")
        if key == "clock_event_reasons":
            values[key] = _reasons(value, source)
        elif value is None and key == "temperature_max_c":
            values[key] = None
        elif isinstance(value, bool) or not isinstance(value, int):
            raise InventoryError(f"{source}: gpu.{key}: expected a whole number, got {value!r}")
        elif key != "slowdown_margin_c" and value < 0:
            raise InventoryError(f"{source}: gpu.{key}: must be >= 0, got {value}")
        else:
            values[key] = value
    return HealthLimits(**values)


def _reasons(value: Any, source: str) -> tuple[str, ...]:
    names = CLOCK_EVENT_REASONS.values()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InventoryError(f"{source}: gpu.clock_event_reasons: expected a list of reason "
                             f"names, got {value!r}")
    unknown = [v for v in value if v not in names]
    if unknown:
        raise InventoryError(f"{source}: gpu.clock_event_reasons: unknown reason {unknown[0]!r} "
                             f"(known: {', '.join(names)})")
    return tuple(value)

