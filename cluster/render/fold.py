"""Folded status views: equal hosts share one row, faults and outliers come first.

A status table (gpu-status, sys-status, service-status, pd-status, check)
describes each host through a `HostView`: its rows, its state and a **fold
key**, the host's values after bucketing into coarse bands
(`cluster.render.levels`). Hosts whose keys are equal fold into one row whose
Host cell is a NodeSet range and a count (``10.8.0.[81-90,92-120] (39)``)
and whose other cells show each value's range over the group (``0–5 %``).

Rules (docs/gpu-status.md "Large fleets"):

* A host that failed or carries a warning never folds with healthy hosts.
  Failed hosts fold with each other only when nothing differs but the name
  (same kind, message and hint: a rack whose sshd is down is one row); a host
  whose data shows a fault (its key is None) always gets its own row, and so
  does a warned host where a warning is a fault (gpu-status: a GPU health
  warning). Where ``warn`` is a load level (sys-status: swapping, heavy load;
  pd-status: a server still loading) warned hosts fold with each other by key.
* Order when folded: failed rows, then warned rows, then the healthy groups
  from the smallest (outliers: a host alone in its band) to the largest, ties
  in host order. Expanded (``--expand``), rows keep the host order given.
* Folding is the default when the expanded table would not fit the terminal's
  height; ``--fold`` forces it, ``--expand`` turns it off. Not on a terminal
  (a pipe, a file) the table is expanded unless ``--fold`` is given.
* ``--state ok|warn|failed`` keeps only the hosts in that state.

Presentation only: the JSON document stays one entry per host.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rich.text import Text

from ..errors import InputError
from ..hosts import fold_names
from ..result import Outcome
from .core import counted, failure_text, status_cell
from .table import Cell, Column, Span, TextTable
from .text import shown, shown_lines

OK, WARN, FAILED = "ok", "warn", "failed"
STATES = (OK, WARN, FAILED)
# Lines a table needs besides its rows: borders, header, summary, notes, prompt.
OVERHEAD_LINES = 8
_STATE_ORDER = {FAILED: 0, WARN: 1, OK: 2}


@dataclass(frozen=True)
class ViewOptions:
    """How to show a status table: ``fold`` None = automatic; ``height`` = terminal lines."""

    fold: bool | None = None
    state: str | None = None
    height: int | None = None


# Not on a terminal, no option given: one row per host.
EXPANDED_VIEW = ViewOptions()


def view_options(expand: bool = False, fold: bool = False, state: str | None = None,
                 height: int | None = None) -> ViewOptions:
    """The options of ``--expand/--fold/--state``; `InputError` (exit 2) on a bad combination."""
    if expand and fold:
        raise InputError("--expand and --fold exclude each other")
    if state is not None and state not in STATES:
        raise InputError(f"--state must be one of {', '.join(STATES)}, got {state!r}")
    return ViewOptions(True if fold else False if expand else None, state, height)


class BaseView:
    """Defaults for a `HostView`: the host in the first column, one row per outcome."""

    host_index = 0
    fold_warned = False

    def name(self, outcome: Outcome) -> str:
        return host_name(outcome)

    def lines(self, outcome: Outcome) -> int:
        return 1


class HostView(Protocol):
    """What a status table knows about its hosts (one implementation per task).

    ``host_index`` is the column holding the host (pd-status: after Role);
    ``name`` gives the host name the folded range is made of.
    """

    @property
    def columns(self) -> Sequence[Column]:
        """The table's columns (read-only here, so a view may hold them as a tuple)."""

    host_index: int
    fold_warned: bool  # whether warned hosts fold with each other (module rules)

    def name(self, outcome: Outcome) -> str:
        """The host's name in the folded range."""

    def state(self, outcome: Outcome) -> str:
        """``ok``, ``warn`` or ``failed``."""

    def key(self, outcome: Outcome) -> Hashable | None:
        """Equal keys fold together; None: this host always gets its own row."""

    def rows(self, outcome: Outcome) -> list[list[Cell]]:
        """The expanded rows of one host (its name in the first cell of the first)."""

    def folded_rows(self, outcomes: list[Outcome]) -> list[list[Cell]]:
        """The rows of a folded group; the first cell of the first is replaced by the range."""

    def lines(self, outcome: Outcome) -> int:
        """How many rows `rows` gives, cheaply (to decide on folding)."""


@dataclass
class Group:
    """Hosts shown as one row (or one host with its own rows)."""

    outcomes: list[Outcome]
    state: str
    first: int  # position of the first host in the report


def host_name(outcome: Outcome) -> str:
    return shown(str(outcome.host))


def group_label(names: Sequence[str]) -> str:
    """``10.8.0.[81-90,92-120] (39)``: the NodeSet range of the names and how many."""
    return f"{fold_names(names)} ({len(names)})"


def fold_groups(view: HostView, outcomes: Sequence[Outcome]) -> list[Group]:
    """Group equal hosts (see the module rules) and order the groups: faults first."""
    groups: dict[Hashable, Group] = {}
    singles: list[Group] = []
    for position, outcome in enumerate(outcomes):
        state = view.state(outcome)
        key = view.key(outcome)
        if key is None or (state == WARN and not view.fold_warned):
            singles.append(Group([outcome], state, position))
            continue
        group = groups.get((state, key))
        if group is None:
            groups[(state, key)] = Group([outcome], state, position)
        else:
            group.outcomes.append(outcome)
    every = singles + list(groups.values())
    return sorted(every, key=lambda g: (
        _STATE_ORDER[g.state], len(g.outcomes) if g.state == OK else 0, g.first))


def should_fold(view: HostView, outcomes: Sequence[Outcome], options: ViewOptions) -> bool:
    if options.fold is not None:
        return options.fold
    if options.height is None:
        return False
    budget = options.height - OVERHEAD_LINES
    total = 0
    for outcome in outcomes:
        total += view.lines(outcome)
        if total > budget:
            return True
    return False


def view_table(view: HostView, outcomes: Sequence[Outcome], options: ViewOptions = EXPANDED_VIEW,
               title: str | None = None, noun: str = "host") -> TextTable:
    """The task's table: filtered by ``options.state``, folded or expanded (module rules)."""
    chosen = list(outcomes)
    notes: list[Any] = []
    if options.state is not None:
        chosen = [o for o in chosen if view.state(o) == options.state]
        notes.append(f"--state {options.state}: {len(chosen)} of {counted(len(outcomes), noun)}")
    if not should_fold(view, chosen, options):
        rows = [row for outcome in chosen for row in view.rows(outcome)]
        return TextTable(view.columns, rows, title=title, notes=notes)
    rows = []
    groups = fold_groups(view, chosen)
    for group in groups:
        if len(group.outcomes) == 1:
            rows.extend(view.rows(group.outcomes[0]))
            continue
        folded = view.folded_rows(group.outcomes)
        folded[0][view.host_index] = group_label([view.name(o) for o in group.outcomes])
        rows.extend(folded)
    notes.append(f"{counted(len(chosen), noun)} in {counted(len(groups), 'row')}: "
                 f"equal {noun}s folded (--expand: one row each)")
    return TextTable(view.columns, rows, title=title, notes=notes)


# ---------------------------------------------------------------------------
# Cells shared by the views
# ---------------------------------------------------------------------------


def spans(text: Text) -> list[Span]:
    """A rich Text as table spans, remote text made safe (newlines kept, controls spelled)."""
    plain = text.plain
    if not text.spans:
        return [(shown_lines(plain), str(text.style or ""))]
    # Style per character, then merged runs: Text cells are few (failure rows).
    styles = [str(text.style or "")] * len(plain)
    for span in text.spans:
        for i in range(span.start, min(span.end, len(plain))):
            styles[i] = " ".join(s for s in (styles[i], str(span.style)) if s)
    out: list[Span] = []
    for char, style in zip(plain, styles):
        if out and out[-1][1] == style:
            out[-1] = (out[-1][0] + char, style)
        else:
            out.append((char, style))
    return [(shown_lines(t), s) for t, s in out]


def state_cell(outcome: Outcome, state: str) -> list[Span]:
    """``ok`` green, ``warn`` yellow, else the failure kind (`cluster.render.core.status_cell`)."""
    if state == WARN and outcome.ok:
        return [(WARN, "bold yellow")]
    return spans(status_cell(outcome))


def failure_cell(outcome: Outcome) -> list[Span]:
    """Message and hint of a failed host (`cluster.render.core.failure_text`), made safe."""
    return spans(failure_text(outcome))


def failure_key(outcome: Outcome) -> Hashable:
    """Failed hosts fold only when their failure reads exactly the same."""
    error = outcome.error
    return ("failed", error.kind, error.message, error.hint) if error else ("failed",)


def to_cell(value: Any) -> Cell:
    """Any table value as a cell: rich Text as safe spans, None as "—", numbers as text."""
    if isinstance(value, Text):
        return spans(value)
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.1f}"
    return shown(str(value))


def empty_row(columns: Sequence[Column], first: Cell, status: Cell, last: Cell) -> list[Cell]:
    """A host row with only its name, status and a last (notes) cell."""
    return [first, status, *[""] * (len(columns) - 3), last]
