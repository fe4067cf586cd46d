"""`inv run` output writers (cluster.render.output): bytes unchanged when piped, host
after host; escaped on a terminal; --stream lines. Units, no SSH server."""

from __future__ import annotations

import io
import random
import threading

import pytest
from rich.console import Console

from cluster.hosts import Host
from cluster.render.output import LiveLines, OrderedStdout, RunOutput, print_groups
from cluster.result import Outcome, Report, exit_failure

HOSTS = [Host(f"10.8.0.{i}") for i in range(81, 85)]


def test_ordered_stdout_keeps_each_hosts_bytes_whole_in_host_order():
    out = io.BytesIO()
    writer = OrderedStdout(HOSTS, out)
    data = {h: bytes(random.Random(i).randrange(256) for _ in range(3000)) for i, h in enumerate(HOSTS)}
    chunks = [(h, data[h][i:i + 100]) for h in HOSTS for i in range(0, 3000, 100)]
    random.Random(7).shuffle(chunks)  # hosts' chunks interleave; each host's stay in order
    per_host = {h: [c for host, c in chunks if host == h] for h in HOSTS}
    order = [h for h, _ in chunks]
    for host in order:
        writer.write(host, per_host[host].pop(0))
    for host in reversed(HOSTS):  # the last host finishes first
        writer.done(host)
    assert out.getvalue() == b"".join(data[h] for h in HOSTS)


def test_ordered_stdout_streams_the_first_host_before_it_finishes():
    out = io.BytesIO()
    writer = OrderedStdout(HOSTS[:2], out)
    writer.write(HOSTS[1], b"second\n")
    writer.write(HOSTS[0], b"first\n")
    assert out.getvalue() == b"first\n"  # host 2 waits its turn; host 1 is not held back
    writer.done(HOSTS[0])
    assert out.getvalue() == b"first\nsecond\n"
    writer.write(HOSTS[1], b"more\n")
    assert out.getvalue().endswith(b"second\nmore\n")


def test_ordered_stdout_spools_large_waiting_output_to_disk(monkeypatch):
    monkeypatch.setattr("cluster.render.output.SPOOL_MEMORY", 1000)
    out = io.BytesIO()
    writer = OrderedStdout(HOSTS[:2], out)
    writer.write(HOSTS[1], b"x" * 5000)
    assert writer._spools[HOSTS[1]]._rolled  # on disk, not in memory
    writer.done(HOSTS[1])
    writer.done(HOSTS[0])
    assert out.getvalue() == b"x" * 5000


def test_a_closed_pipe_ends_the_writing_not_the_run():
    class Closed(io.BytesIO):
        def write(self, data):
            raise BrokenPipeError

    writer = OrderedStdout(HOSTS[:1], Closed())
    writer.write(HOSTS[0], b"data")
    writer.done(HOSTS[0])
    assert writer.broken


def test_live_lines_are_whole_prefixed_and_marked_for_stderr():
    out = io.BytesIO()
    live = LiveLines(HOSTS[:2], out, terminal=False)
    threads = [threading.Thread(target=lambda h=h: [live.write(h, "out", f"{h} {i}\n".encode())
                                                    for i in range(200)]) for h in HOSTS[:2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    live.write(HOSTS[0], "err", b"warning\nno newline")
    live.write(HOSTS[0], "out", b"tab\tkept\x1b[2J")
    live.done(HOSTS[0])
    lines = out.getvalue().split(b"\n")
    for host in HOSTS[:2]:  # per host, the lines come in the order the host printed them
        mine = [line for line in lines if line.startswith(f"{host}: {host} ".encode())]
        assert mine == [f"{host}: {host} {i}".encode() for i in range(200)]
    assert b"10.8.0.81: stderr\xe2\x94\x82 warning" in lines
    assert b"10.8.0.81: stderr\xe2\x94\x82 no newline" in lines  # flushed at the end
    assert b"10.8.0.81: tab\tkept\x1b[2J" in lines  # piped: bytes unchanged


def test_live_lines_on_a_terminal_escape_control_characters():
    out = io.BytesIO()
    live = LiveLines(HOSTS[:1], out, terminal=True)
    live.write(HOSTS[0], "out", b"\x1b]0;pwned\x07title\n")
    text = out.getvalue().decode()
    assert "\\x1b]0;pwned\\x07title" in text and "\x07" not in text


def _report() -> Report:
    failed = Outcome(HOSTS[2], False, stdout="x\n", stderr="boom\n", exit_code=3,
                     error=exit_failure(3, "x\n", "boom\n"))
    return Report([Outcome(HOSTS[0], True, stdout="\x1b[2Jsame\ttab\n", exit_code=0),
                   Outcome(HOSTS[1], True, stdout="\x1b[2Jsame\ttab\n", exit_code=0),
                   failed,
                   Outcome(HOSTS[3], True, stdout="", stderr="only a warning\n", exit_code=0)])


def test_terminal_groups_escape_and_show_stderr_of_every_host():
    buffer = io.StringIO()
    print_groups(_report(), Console(file=buffer, width=40, highlight=False))
    text = buffer.getvalue()
    assert "---- 10.8.0.[81-82] (2) ok" in text
    assert "\\x1b[2Jsame\ttab" in text and "\x1b[2J" not in text  # shown, never interpreted
    assert "stderr│ boom" in text and "stderr│ only a warning" in text  # ok hosts' stderr too
    assert "see stderr above" not in text


def test_piped_finish_puts_status_and_stderr_on_stderr_only():
    out, text_out, err = io.BytesIO(), io.StringIO(), io.StringIO()
    writer = RunOutput(HOSTS, terminal=False, stream=False, out=out, text_out=text_out, err=err)
    writer.finish(_report(), 1.0)
    assert out.getvalue() == b"" and text_out.getvalue() == ""
    lines = err.getvalue()
    assert "10.8.0.81" not in lines  # ok, nothing on stderr: not mentioned
    assert "---- 10.8.0.83 (1) exit 3" in lines and "stderr│ boom" in lines
    assert "---- 10.8.0.84 (1) ok" in lines and "stderr│ only a warning" in lines
    assert "4 hosts: 3 ok, 1 failed" in lines


def test_piped_finish_of_a_clean_run_writes_rich_plain_summary_without_rich(monkeypatch):
    from cluster.render import output
    from cluster.render.core import summary_line

    clean = Report([Outcome(h, True, stdout="x\n", exit_code=0) for h in HOSTS])
    expected = io.StringIO()
    Console(file=expected, highlight=False).print(summary_line(clean, 2.25))
    monkeypatch.setattr(output, "rich_console", None)  # any use of rich here would fail
    err = io.StringIO()
    RunOutput(HOSTS, terminal=False, stream=False, out=io.BytesIO(), err=err).finish(clean, 2.25)
    assert err.getvalue() == expected.getvalue() == "4 hosts: 4 ok in 2.2 s\n"
    # With a failure, or a host's stderr, the rich path prints them as before.
    stderr_only = Report([*clean.outcomes[:3], Outcome(HOSTS[3], True, stderr="warn\n", exit_code=0)])
    with pytest.raises(AttributeError):
        RunOutput(HOSTS, terminal=False, stream=False, out=io.BytesIO(), err=io.StringIO()).finish(stderr_only, 1)
