"""Summary lines (issue 14, item 7): counts first, singular where one, the real exit code."""

from __future__ import annotations

from cluster.hosts import Host
from cluster.render.core import counted, summary_line
from cluster.result import Failure, Outcome, Report


def outcome(name: str, code: int | None = None, kind: str = "exit") -> Outcome:
    if code is None and kind == "exit":
        return Outcome(Host(name), True)
    return Outcome(Host(name), False, error=Failure(kind, "failed", "", exit_code=code))


def test_one_host_is_singular_and_the_exit_code_is_the_commands():
    assert summary_line(Report([outcome("a", 3)])).plain == "1 host: 0 ok, 1 failed (1 exit 3)"


def test_counts_come_first_and_exit_codes_are_told_apart():
    report = Report([outcome("a"), outcome("b", 3), outcome("c", 3), outcome("d", 1),
                     outcome("e", None, "unreachable")])
    assert summary_line(report, 1.25).plain == \
        "5 hosts: 1 ok, 4 failed (2 exit 3, 1 exit 1, 1 unreachable) in 1.2 s"
    assert summary_line(Report([outcome("a")]), noun="server").plain == "1 server: 1 ok"


def test_counted():
    assert [counted(n, "host") for n in (0, 1, 2)] == ["0 hosts", "1 host", "2 hosts"]
    assert counted(1, "process", "processes") == "1 process" and counted(3, "process", "processes") == "3 processes"
