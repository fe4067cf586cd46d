"""The fast table formatter: rich's look, wrapping, hidden columns, host names never cut.

Pure: tables are laid out for a given width and compared line by line (with
rich's own Table as the reference for the look).
"""

from __future__ import annotations

import io

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from cluster.render.core import host_table
from cluster.render.table import Column, TextTable, host_column, wrap_line


def rich_text(columns, rows, width: int, title: str | None = None) -> list[str]:
    table = host_table([(c.name, {"justify": c.justify}) for c in columns],
                       [[cell if isinstance(cell, Text) else Text(cell) for cell in row]
                        for row in rows], title=title)
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(table)
    return [line.rstrip() for line in console.export_text().splitlines()]


def ours(table: TextTable, width: int) -> list[str]:
    return [line.rstrip() for line in table.text(width).splitlines()]


COLUMNS = [host_column(), Column("Status"), Column("Temp", justify="right"),
           Column("Memory used/total", justify="right"), Column("Notes", wrap=True)]
ROWS = [["127.0.1.1", "ok", "30 °C", "0.0/637.2 GiB", ""],
        ["127.0.1.10", "degraded", "101 °C", "593.8/637.2 GiB", "first line\nsecond line"],
        ["h", "ok", "—", "—", "x"]]


def test_same_look_as_rich_when_everything_fits():
    assert ours(TextTable(COLUMNS, ROWS, title="GPU processes"), 120) == rich_text(
        COLUMNS, ROWS, 120, title="GPU processes")


def test_single_column_and_empty_table_keep_the_box():
    one = [host_column()]
    assert ours(TextTable(one, [["a"], ["bb"]]), 80) == rich_text(one, [["a"], ["bb"]], 80)
    assert ours(TextTable(COLUMNS, []), 120) == rich_text(COLUMNS, [], 120)


def test_styles_reach_the_terminal_and_header_is_bold():
    table = TextTable([host_column(), Column("Status")], [["h1", ("ok", "green")]])
    out = io.StringIO()
    Console(file=out, width=40, force_terminal=True, color_system="standard").print(table)
    text = out.getvalue()
    assert "\x1b[32mok" in text          # green
    assert "\x1b[1mHost" in text         # bold header


def test_wrapped_notes_keep_every_word_within_the_width():
    words = " ".join(f"word{i}" for i in range(40))
    table = TextTable(COLUMNS, [["127.0.1.1", "ok", "30 °C", "1/2 GiB", words]])
    lines = ours(table, 80)
    assert all(cell_len(line) <= 80 for line in lines)
    notes = " ".join(line.split("│")[-2].strip() for line in lines if line.startswith("│"))
    assert notes.split() == words.split()


def test_headers_wrap_before_columns_are_hidden():
    columns = [host_column(), Column("Memory used/total", justify="right", drop=1)]
    lines = ours(TextTable(columns, [["127.0.1.1", "0.0/1.0 GiB"]]), 28)
    assert lines[1] == "┃Host      ┃         Memory┃"
    assert lines[2] == "┃          ┃     used/total┃"
    assert lines[4] == "│127.0.1.1 │    0.0/1.0 GiB│"
    assert not any(line.startswith("hidden:") for line in lines)


def footer(lines: list[str]) -> str:
    """The notes under the table, their wrapped lines joined."""
    bottom = max(i for i, line in enumerate(lines) if line.startswith("└"))
    return " ".join(lines[bottom + 1:])


@pytest.mark.parametrize("width, hidden", [
    (120, ""),
    (60, "hidden: Notes — widen the terminal or use --json"),
    (50, "hidden: Notes, Memory — widen the terminal or use --json"),
    (40, "hidden: Notes, Memory, Temp — widen the terminal or use --json"),
])
def test_columns_are_hidden_by_priority_and_named_below(width, hidden):
    columns = [host_column(), Column("Status"), Column("Temp", justify="right", drop=1),
               Column("Memory used/total", justify="right", drop=2),
               Column("Notes", wrap=True, drop=3)]
    rows = [["gpu-node-0001.example", "degraded", "30 °C", "593.8/637.2 GiB",
             "a long failure message that needs room to be read"]]
    lines = ours(TextTable(columns, rows), width)
    assert footer(lines) == hidden
    assert any("│gpu-node-0001.example " in line for line in lines)
    assert all(cell_len(line) <= width for line in lines)


def test_host_names_are_never_cut_even_when_nothing_else_fits():
    columns = [host_column(), Column("Status"), Column("Notes", wrap=True, drop=1)]
    name = "a-very-long-host-name.with.a.domain.example.internal"
    lines = ours(TextTable(columns, [[name, "ok", "notes"]]), 30)
    assert any(f"│{name} │" in line for line in lines)


def test_folded_host_range_wraps_after_a_comma_never_inside_a_piece():
    label = "10.8.0.[81-90,92-120],10.8.1.[1-40] (79)"
    columns = [host_column(), Column("Status"), Column("GPUs", drop=1)]
    lines = ours(TextTable(columns, [[label, "ok", "8× H100 80GB HBM3"]]), 32)
    cells = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
    assert "".join(c if c.endswith(",") else c + " " for c in cells).strip() == label
    assert cells[0].endswith(",")


def test_wide_characters_are_measured_in_cells():
    columns = [host_column(), Column("Process", wrap=True)]
    lines = ours(TextTable(columns, [["h1", "训练任务 python"], ["h2", "x"]]), 80)
    assert len({cell_len(line) for line in lines}) == 1  # every line of the box lines up


def test_wrap_line_breaks_at_spaces_keeps_styles_and_folds_long_words():
    line = [("alpha ", "red"), ("beta gamma", "")]
    assert wrap_line(line, 10) == [[("alpha ", "red"), ("beta", "")], [("gamma", "")]]
    assert wrap_line(line, 8) == [[("alpha", "red")], [("beta", "")], [("gamma", "")]]
    assert wrap_line([("abcdefghij", "b")], 4) == [[("abcd", "b")], [("efgh", "b")], [("ij", "b")]]
    assert wrap_line([("a,b,c", "")], 2, breaks=" ,") == [[("a,", "")], [("b,", "")], [("c", "")]]


def test_cells_are_not_interpreted_as_markup():
    lines = ours(TextTable([host_column(), Column("Notes")], [["h", "[bold]x[/bold]"]]), 40)
    assert any("[bold]x[/bold]" in line for line in lines)


@pytest.mark.parametrize("width", [60, 80])
def test_rich_host_tables_never_cut_a_host_name(width):
    """stop-pd, kill, logs ... still draw with rich: on a narrow terminal their Host column
    kept shrinking to `127.0.6…` while the other columns had room to wrap."""
    hosts = [f"user@127.0.66.{i}:2222" for i in range(1, 5)]
    rows = [[h, "ok", "prefill", "9564 9573 9581", "none", "yes", "8 / 652472 MiB", "SIGTERM in 1 s"] for h in hosts]
    table = host_table(["Host", "Status", "Role", "Stopped pids", "Leftovers killed", "Ports free",
                        "GPU memory", "How"], rows)
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False, color_system=None).print(table)
    text = out.getvalue()
    assert all(h in text for h in hosts), text
    assert max(cell_len(line) for line in text.splitlines()) <= width
