"""Hostile remote text through the renderers (issue 14, item 3): on a terminal every control
character a host sent is spelled out (``\\x1b``), never interpreted; in a pipe, log lines
the user asked to see pass unchanged."""

from __future__ import annotations

import io

from rich.console import Console

from cluster.hosts import Host
from cluster.logs import FollowEvent
from cluster.render import core
from cluster.render import logs as logs_view
from cluster.render import serving as serving_view
from cluster.result import Failure, Outcome, Report
from cluster.serving.plan import ServerSpec
from cluster.serving.records import ServerRecord

OSC_TITLE = "\x1b]0;pwned\x07"
UNTERMINATED_OSC = "\x1b]8;;http://evil "
CLEAR = "\x1b[2J\x1b[H"
HOSTILE = f"{OSC_TITLE}{CLEAR}nul\x00soh\x01 [INFO] {UNTERMINATED_OSC}after"


def render(renderable, terminal: bool = True) -> str:
    """What reaches the terminal (no colours: every ESC left is the remote's)."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, color_system=None, width=300)
    console.print(renderable, soft_wrap=True)
    return buffer.getvalue()


def assert_spelled_out(text: str) -> None:
    assert "\x1b" not in text and "\x00" not in text and "\x01" not in text and "\x07" not in text
    assert "\\x1b]0;pwned\\x07" in text and "\\x00" in text and "\\x01" in text
    assert "after" in text  # the unterminated OSC swallowed nothing
    assert "\\[INFO]" not in text  # no stray markup escapes


def failed(message: str, hint: str = "") -> Outcome:
    return Outcome(Host("10.8.0.81"), False, error=Failure("exit", message, hint or message, exit_code=3))


def test_failure_lines_spell_out_remote_stderr():
    assert_spelled_out(render(core.failure_text(failed(HOSTILE))))


def test_plain_table_cells_spell_out_remote_text():
    table = core.host_table(["Host", "Command"], [["10.8.0.81", HOSTILE]])
    assert_spelled_out(render(table))


def test_logs_on_a_terminal_are_spelled_out_and_unchanged_in_a_pipe():
    report = Report([Outcome(Host("10.8.0.81"), True, stdout=HOSTILE + "\n")])
    buffer = io.StringIO()
    logs_view.log_groups(report, Console(file=buffer, force_terminal=True, color_system=None, width=300))
    assert_spelled_out(buffer.getvalue())
    piped = io.StringIO()
    logs_view.log_groups(report, Console(file=piped, force_terminal=False, width=300))
    assert OSC_TITLE in piped.getvalue() and UNTERMINATED_OSC in piped.getvalue()


def test_follow_lines_and_notices_are_spelled_out_on_a_terminal():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system=None, width=300)
    printer = logs_view.FollowPrinter([Host("10.8.0.81")], console)
    printer(FollowEvent(Host("10.8.0.81"), "line", HOSTILE))
    printer(FollowEvent(Host("10.8.0.81"), "notice", HOSTILE))
    for line in buffer.getvalue().splitlines():
        assert_spelled_out(line)


def test_pd_status_last_log_line_is_spelled_out():
    spec = ServerSpec(engine="sglang", role="prefill", host="10.8.0.81", target="10.8.0.81", port=30000,
                      run_dir="/tmp", run_id="r1")
    record = ServerRecord(spec, last_log=HOSTILE)
    assert_spelled_out(render(serving_view.progress_view([record], 1.0)))
    assert_spelled_out(render(serving_view._notes(Outcome(Host("10.8.0.81"), True, data=record))))
