"""Load levels: the colour of a value and the band it folds in.

nvitop's defaults: green = light, yellow = moderate, red = heavy, with
thresholds 10/75 % for utilization (and power as a share of its limit) and
10/80 % for memory; temperature turns yellow at 75 °C and red at 85 °C
(data-centre GPUs slow down in the high 80s).

The same levels are the **bands** folded views group by: hosts fold only when
each of their values is in the same band, so every cell of a folded row
carries one colour and its range (``0–5 %``) stays within that band.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

UTIL_THRESHOLDS = (10, 75)
MEM_THRESHOLDS = (10, 80)
TEMP_THRESHOLDS = (75, 85)
LEVEL_STYLES = {"light": "green", "moderate": "yellow", "heavy": "bold red"}
# Values that are not a load (temperature, I/O wait, load per CPU): no colour when low.
WARNING_STYLES = {"moderate": "yellow", "heavy": "bold red"}


def load_level(value: float | None, thresholds: Sequence[float]) -> str | None:
    """``light`` below the first threshold, ``heavy`` from the second, else ``moderate``."""
    if value is None:
        return None
    low, high = thresholds
    if value < low:
        return "light"
    return "heavy" if value >= high else "moderate"


def level_style(level: str | None) -> str:
    return LEVEL_STYLES.get(level or "", "")


def warning_style(level: str | None) -> str:
    return WARNING_STYLES.get(level or "", "")


def percent(part: float | None, whole: float | None) -> float | None:
    """``part`` as a percentage of ``whole`` (None when either is unknown or whole is 0)."""
    if part is None or not whole:
        return None
    return 100.0 * part / whole


def known(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def value_range(values: Iterable[float | None], fmt: str = "{:.0f}") -> str:
    """``"3"`` when all values print the same, ``"0–5"`` otherwise, ``"—"`` when none is known."""
    numbers = known(values)
    if not numbers:
        return "—"
    low, high = fmt.format(min(numbers)), fmt.format(max(numbers))
    return low if low == high else f"{low}–{high}"
