"""Remote text made safe to show on a terminal: control characters escaped, never interpreted.

Anything a host sends (command output, a GPU or process name from nvidia-smi,
``uname -n``, a log line) may hold terminal control sequences: an OSC title
change, a screen clear, an unterminated OSC that swallows what follows. On a
terminal such text is shown with every control character spelled out
(``\\x1b``), so the operator sees what the host sent and the terminal's state
never changes. Pipes get remote bytes unchanged; that choice is the caller's
(see DESIGN.md, "Output rules"), this module only spells.

Every renderer passes remote text through `shown` (table cells, failure
lines) or `shown_lines` (multi-line output on a terminal); nothing else in
the code base escapes control characters.
"""

from __future__ import annotations

import re

# C0 controls, DEL and the C1 range (U+0080-U+009F: 8-bit CSI/OSC on some
# terminals), plus the Unicode line/paragraph separators that break table rows.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# The same without newline and tab, for multi-line text shown as lines.
_CONTROL_IN_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _spell(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char == "\t":
        return "\\t"
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def shown(text: str) -> str:
    """``text`` for one table cell or one message line: every control character escaped.

    Newlines and tabs are escaped too: a cell is one line.
    """
    return _CONTROL.sub(_spell, text)


def shown_lines(text: str) -> str:
    """Multi-line ``text`` for a terminal: newlines and tabs kept, other controls escaped."""
    return _CONTROL_IN_LINES.sub(_spell, text)

