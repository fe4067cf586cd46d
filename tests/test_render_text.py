"""cluster.render.text: remote control characters are spelled out, never passed through."""

from __future__ import annotations

import pytest

from cluster.render.text import shown, shown_lines


@pytest.mark.parametrize("raw, expected", [
    ("\x1b]0;pwned\x07title", "\\x1b]0;pwned\\x07title"),   # OSC title change
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),                     # screen clear
    ("\x1b]8;;http://x\x1b\\", "\\x1b]8;;http://x\\x1b\\"),  # unterminated hyperlink
    ("nul\x00soh\x01", "nul\\x00soh\\x01"),
    ("csi8\x9b2J", "csi8\\x9b2J"),                              # 8-bit CSI
    ("a\tb\nc\rd", "a\\tb\\nc\\rd"),                          # one cell is one line
    ("row\u2028break", "row\\u2028break"),
    ("H100 80GB HBM3 · ok ✓", "H100 80GB HBM3 · ok ✓"),       # printable text untouched
])
def test_shown_escapes_every_control_character(raw, expected):
    assert shown(raw) == expected


def test_shown_lines_keeps_newlines_and_tabs_only():
    assert shown_lines("one\ttab\ntwo\x1b[31mred\r\n") == "one\ttab\ntwo\\x1b[31mred\\r\n"


def test_no_control_character_survives():
    every = "".join(chr(c) for c in range(0x00, 0xA0)) + "\u2028\u2029"
    assert all(ch.isprintable() or ch == " " for ch in shown(every))
    assert all(ch.isprintable() or ch in " \n\t" for ch in shown_lines(every))
