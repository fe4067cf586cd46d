"""A fast host table with rich's look, that drops columns instead of cutting host names.

Why not ``rich.table.Table``: it measures and wraps every cell through its
generic layout engine, about 0.5 ms of CPU per row, so a 1,000-host
``gpu-status --gpus`` (9,000 rows) took 6-8 s to print, more than the SSH
round itself; and on a narrow terminal it squeezes every column, cutting host
names to ``127.0.…``. `TextTable` draws the same box (rich's HEAVY_HEAD: bold
header, no outer padding) from pre-measured plain cells in one pass
(benchmarks/render_cost.py), and when the terminal is too narrow it

1. wraps the columns that may wrap (notes, folded host ranges) and the
   headers (``Memory used/total`` over two lines), then
2. hides whole columns, lowest priority first, and says so under the table:
   ``hidden: Procs, Power — widen the terminal or use --json``.

The Host column is never cut or hidden (a folded range wraps after a comma);
numbers are never cut.

Cells are plain strings, ``(text, style)`` pairs or lists of them (``style``
a rich style string, "" for none); a newline starts a new line in the cell.
Cells hold text already made safe (`cluster.render.text.shown`): nothing here
interprets markup or control characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Union

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style

Span = tuple[str, str]
Cell = Union[str, Span, list[Span]]
Line = list[Span]

# Narrowest a wrapping column gets (unless its Column says otherwise) before
# columns are hidden instead.
WRAP_MIN = 16
HIDDEN_NOTE = "hidden: {} — widen the terminal or use --json"


@dataclass(frozen=True)
class Column:
    """One column: ``drop`` 0 = always shown, else hidden before lower numbers when too narrow."""

    name: str
    justify: str = "left"
    wrap: bool = False
    drop: int = 0
    breaks: str = " "   # where a wrapping cell may break (Host: also after commas)
    short: str = ""     # the name in the "hidden:" note (default: the name's first word)
    least: int = WRAP_MIN  # a wrapping column is not squeezed below this: columns hide first

    @property
    def label(self) -> str:
        return self.short or self.name.split()[0]


def host_column(name: str = "Host") -> Column:
    """The host column: never hidden, folded ranges wrap after a comma or before the count."""
    return Column(name, wrap=True, breaks=" ,")


# ---------------------------------------------------------------------------
# Cells: spans, lines, widths
# ---------------------------------------------------------------------------


def _width(text: str) -> int:
    return len(text) if text.isascii() else cell_len(text)


class _Cell:
    """A cell cut into lines of spans, with each line's width (computed once)."""

    __slots__ = ("lines", "widths", "width")

    def __init__(self, cell: Any) -> None:
        kind = cell.__class__
        if kind is str:
            text, spans = cell, [(cell, "")]
        elif kind is tuple:
            text, spans = cell[0], [cell]
        elif cell is None:
            text, spans = "", [("", "")]
        else:
            spans = list(cell)
            text = spans[0][0] if len(spans) == 1 else "\n"
        if "\n" not in text:  # the common case: one span on one line
            self.lines = [spans]
            self.width = len(text) if text.isascii() else cell_len(text)
            self.widths = [self.width]
            return
        self.lines = _split_lines(spans)
        self.widths = [sum(_width(t) for t, _ in line) for line in self.lines]
        self.width = max(self.widths)


def _split_lines(spans: list[Span]) -> list[Line]:
    lines: list[Line] = [[]]
    for text, style in spans:
        parts = text.split("\n")
        for i, part in enumerate(parts):
            if i:
                lines.append([])
            if part:
                lines[-1].append((part, style))
    return lines


def _longest_piece(cell: _Cell, breaks: str) -> int:
    """The widest run of text a wrap may not split: up to a space, or through a comma."""
    if cell.width <= 1:
        return cell.width
    longest = 0
    for line in cell.lines:
        text = "".join(t for t, _ in line)
        for piece in _pieces(breaks).findall(text):
            longest = max(longest, _width(piece))
    return longest


@lru_cache(maxsize=8)
def _pieces(breaks: str) -> re.Pattern[str]:
    """Runs between break characters; a break other than a space stays on the piece before it."""
    kept = re.escape(breaks.replace(" ", ""))
    return re.compile(f"[^{re.escape(breaks)}]*[{kept}]?" if kept else f"[^{re.escape(breaks)}]+")


def wrap_line(line: Line, width: int, breaks: str = " ") -> list[Line]:
    """Cut one line of spans into lines of at most ``width`` cells.

    Breaks at a space (dropped) or after another break character; a piece
    longer than ``width`` with no break in it is folded (never lost).
    """
    text = "".join(t for t, _ in line)
    if _width(text) <= width:
        return [line]
    styles = [style for t, style in line for _ in t]
    return [_restyle(text[a:b], styles[a:b]) for a, b in _ranges(text, max(width, 1), breaks)]


def _ranges(text: str, width: int, breaks: str) -> list[tuple[int, int]]:
    """(start, end) of each output line of ``text``."""
    ranges: list[tuple[int, int]] = []
    start, size = 0, len(text)
    while _width(text[start:]) > width:
        limit, used = start, 0
        while limit < size and used + _width(text[limit]) <= width:
            used += _width(text[limit])
            limit += 1
        limit = max(limit, start + 1)
        cut = next((p for p in range(limit, start, -1)
                    if text[p - 1] in breaks or (p < size and text[p] == " ")), limit)
        end = cut
        while end > start and text[end - 1] == " ":
            end -= 1
        ranges.append((start, end))
        start = cut
        while start < size and text[start] == " ":
            start += 1
    ranges.append((start, size))
    return ranges


def _restyle(text: str, styles: list[str]) -> Line:
    line: Line = []
    for char, style in zip(text, styles):
        if line and line[-1][1] == style:
            line[-1] = (line[-1][0] + char, style)
        else:
            line.append((char, style))
    return line


# ---------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------


@dataclass
class Layout:
    """Which columns show, how wide each is, and which were hidden."""

    shown: list[int]
    widths: list[int]
    hidden: list[str]


def _total(widths: Sequence[int]) -> int:
    # Borders (n + 1) and one space each side of every cell except the outer edges.
    return sum(widths) + 3 * len(widths) - 1 if widths else 0


def _header_min(name: str) -> int:
    return max(_width(word) for word in name.split()) if name.strip() else 0


class TextTable:
    """Columns and rows, laid out for a width when printed (rich renderable)."""

    def __init__(self, columns: Sequence[Column], rows: Iterable[Sequence[Any]],
                 title: str | None = None, notes: Sequence[Any] = ()) -> None:
        self.columns = list(columns)
        self.rows = [[_Cell(cell) for cell in row] for row in rows]
        self.title = title
        self.notes = list(notes)
        count = len(self.columns)
        self._natural = [_width(c.name) for c in self.columns]
        self._least = [0] * count
        for row in self.rows:
            for i, cell in enumerate(row[:count]):
                width = cell.width
                if width > self._natural[i]:
                    self._natural[i] = width
        for i, column in enumerate(self.columns):
            self._least[i] = self._narrowest(i, column)

    def _narrowest(self, index: int, column: Column) -> int:
        """How narrow a column may get: its header wraps at spaces, cells per the column."""
        header = _header_min(column.name)
        cells = [row[index] for row in self.rows if index < len(row)]
        widest = max((cell.width for cell in cells), default=0)
        if not column.wrap:
            return max(header, widest)
        if column.breaks != " ":  # the host column: never cut inside a piece
            return max(header, max((_longest_piece(c, column.breaks) for c in cells), default=0))
        return max(header, min(widest, column.least))

    def layout(self, width: int) -> Layout:
        """Natural widths if they fit; else wrap, then hide columns by ``drop`` priority."""
        shown = list(range(len(self.columns)))
        hidden: list[str] = []
        while True:
            widths = self._fit(shown, width)
            droppable = [i for i in shown if self.columns[i].drop]
            if _total(widths) <= width or not droppable:
                return Layout(shown, widths, hidden)
            victim = max(droppable, key=lambda i: (self.columns[i].drop, i))
            hidden.append(self.columns[victim].label)
            shown.remove(victim)

    def _fit(self, shown: list[int], width: int) -> list[int]:
        widths = [self._natural[i] for i in shown]
        excess = _total(widths) - width
        while excess > 0:
            # The host column gives up room last; others, the one with the most room first.
            slack = [(self.columns[i].breaks == " ", widths[k] - self._least[i], k)
                     for k, i in enumerate(shown) if widths[k] > self._least[i]]
            if not slack:
                break
            _, room, k = max(slack)
            step = min(room, excess, max(1, room // 2))
            widths[k] -= step
            excess -= step
        return widths

    # -- drawing ------------------------------------------------------------------

    def render_lines(self, width: int) -> list[Line]:
        """Every output line (title, box, rows, notes) as spans."""
        plan = self.layout(width)
        columns = [self.columns[i] for i in plan.shown]
        out: list[Line] = []
        if self.title:
            out.append([(self.title, "italic")])
        out.append([(_rule("┏", "━", "┳", "┓", plan.widths), "")])
        headers = [_Cell([(c.name, "bold")]) for c in columns]
        out.extend(self._row_lines(headers, columns, plan.widths, "┃", header=True))
        out.append([(_rule("┡", "━", "╇", "┩", plan.widths), "")])
        for row in self.rows:
            cells = [row[i] if i < len(row) else _Cell("") for i in plan.shown]
            out.extend(self._row_lines(cells, columns, plan.widths, "│"))
        out.append([(_rule("└", "─", "┴", "┘", plan.widths), "")])
        notes = [_Cell(note if isinstance(note, (list, tuple)) else (note, "dim"))
                 for note in self.notes]
        if plan.hidden:
            notes.append(_Cell((HIDDEN_NOTE.format(", ".join(plan.hidden)), "dim")))
        for note in notes:
            out.extend(part for line in note.lines for part in wrap_line(line, width))
        return out

    def _row_lines(self, cells: list[_Cell], columns: list[Column], widths: list[int],
                   bar: str, header: bool = False) -> list[Line]:
        blocks: list[tuple[list[Line], list[int]]] = []
        for cell, column, width in zip(cells, columns, widths):
            if cell.width <= width:
                blocks.append((cell.lines, cell.widths))
                continue
            breaks = " " if header else column.breaks
            lines = [part for line in cell.lines for part in wrap_line(line, width, breaks)]
            blocks.append((lines, [sum(_width(t) for t, _ in line) for line in lines]))
        height = max(len(lines) for lines, _ in blocks)
        last = len(columns) - 1
        out: list[Line] = []
        for n in range(height):
            line: Line = [(bar, "")]
            for k, ((lines, sizes), column, width) in enumerate(zip(blocks, columns, widths)):
                pad = width - (sizes[n] if n < len(sizes) else 0)
                left = " " if k else ""
                right = bar if k == last else " " + bar  # no padding on the outer edges
                content = lines[n] if n < len(lines) else []
                if column.justify == "right":
                    _add(line, left + " " * pad)
                    line.extend(content)
                    _add(line, right)
                else:
                    _add(line, left)
                    line.extend(content)
                    _add(line, " " * pad + right)
            out.append(line)
        return out

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Segment]:
        newline = Segment.line()
        for line in self.render_lines(options.max_width):
            for text, style in line:
                yield Segment(text, _style(style))
            yield newline

    def text(self, width: int) -> str:
        """The plain text (no styles) at ``width`` columns: for tests and pipes."""
        return "".join("".join(t for t, _ in line) + "\n" for line in self.render_lines(width))


def _add(line: Line, text: str) -> None:
    """Append unstyled text, merged into the previous unstyled span (fewer segments)."""
    if line and line[-1][1] == "":
        line[-1] = (line[-1][0] + text, "")
    else:
        line.append((text, ""))


def _rule(left: str, fill: str, cross: str, right: str, widths: Sequence[int]) -> str:
    last = len(widths) - 1
    # Each cell is padded by one space, except on the table's outer edges.
    return left + cross.join(fill * (w + (k > 0) + (k < last)) for k, w in enumerate(widths)) + right


@lru_cache(maxsize=256)
def _style(style: str) -> Style | None:
    return Style.parse(style) if style else None
