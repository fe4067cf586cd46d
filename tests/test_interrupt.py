"""Stopping commands (cluster.interrupt), the local runner (cluster.localrun) and the
session close/release race: units, no SSH server."""

from __future__ import annotations

import os
import secrets
import threading
import time

import pytest

from cluster import localrun
from cluster.command import Capture, Lines
from cluster.hosts import Host
from cluster.interrupt import Interrupted, PidLine, kill_group_command, stop, wrap
from cluster.localrun import run_local
from cluster.shell import STDIN_RUNNER


def test_pid_line_is_taken_out_of_stderr_and_gives_the_group():
    command, token = wrap("echo hi")
    assert command.endswith("\necho hi") and token.decode() in command
    pids = PidLine(token)
    seen = pids.feed(b"cluster-pgid:" + token[:3]) + pids.feed(token[3:] + b":4242\nreal error\n")
    assert (pids.pgid, seen) == (4242, b"real error\n")
    assert pids.feed(b"cluster-pgid:" + token + b":1\n") == b"cluster-pgid:" + token + b":1\n"


def test_pid_line_after_rc_file_noise_is_still_found():
    pids = PidLine(b"TOKEN")
    seen = pids.feed(b"bashrc says hi\npartial ") + pids.feed(b"line\ncluster-pgid:TOKEN:99\nerr\n")
    assert (pids.pgid, seen) == (99, b"bashrc says hi\npartial line\nerr\n")


@pytest.mark.parametrize("stream", [b"cluster-pgid:0000:77\nx", b"plain\n", b"clu", b"", b"cluster-pgid:TOKEN:abc\n"])
def test_pid_line_of_another_command_or_none_passes_through(stream):
    pids = PidLine(b"TOKEN")
    assert pids.feed(stream) + pids.flush() == stream and pids.pgid is None


def test_kill_group_command_targets_the_group_only_as_a_number():
    assert "kill -TERM -- -4242" in kill_group_command(4242)
    with pytest.raises(ValueError):
        kill_group_command("1; rm -rf /")  # type: ignore[arg-type]


class Fake:
    """A command that ends after the signals in ``dies_on`` (or never)."""

    def __init__(self, name: str, dies_on: str | None, done: bool = False) -> None:
        self.host = Host(name)
        self.dies_on = dies_on
        self.done = done
        self.calls: list[str] = []

    def finished(self) -> bool:
        return self.done

    def wait(self, seconds: float) -> bool:
        return self.done

    def signal(self, name: str) -> None:
        self.calls.append(name)
        self.done = self.done or name == self.dies_on

    def kill_group(self) -> None:
        self.calls.append("kill-group")
        self.done = True

    def close(self) -> None:
        self.calls.append("close")


def test_stop_escalates_only_as_far_as_each_command_needs():
    polite, stubborn, deaf, ended = (Fake("a", "INT"), Fake("b", "TERM"), Fake("c", None),
                                     Fake("d", None, done=True))
    hosts = stop([polite, stubborn, deaf, ended], grace=0.01)
    assert hosts == [Host("a"), Host("b"), Host("c")]
    # The group kill always ends the sequence: children may outlive a shell that obeyed.
    assert polite.calls == ["INT", "kill-group", "close"]
    assert stubborn.calls == ["INT", "TERM", "kill-group", "close"]
    assert deaf.calls == ["INT", "TERM", "kill-group", "close"]
    assert ended.calls == ["close"]


def test_a_second_ctrl_c_during_stop_still_closes_every_channel():
    class Impatient(Fake):
        def signal(self, name: str) -> None:
            raise KeyboardInterrupt

    first, second = Impatient("a", None), Fake("b", None)
    assert stop([first, second], grace=0.01) == [Host("a"), Host("b")]
    assert first.calls[-1] == "close" and second.calls == ["close"]
    assert "kill-group" not in first.calls


def test_interrupted_names_the_hosts_folded():
    text = str(Interrupted([Host(f"10.8.0.{i}") for i in range(81, 85)]))
    assert text == "command stopped on 4 hosts: 10.8.0.[81-84]"
    assert isinstance(Interrupted([]), KeyboardInterrupt)


def test_lines_are_whole_and_the_last_one_is_flushed():
    seen: list[bytes] = []
    lines = Lines(seen.append)
    for chunk in (b"a", b"b\nc", b"\n\nlong", b"er", b" tail"):
        lines.feed(chunk)
    assert seen == [b"ab", b"c", b""]
    lines.flush()
    assert seen[-1] == b"longer tail"


# -- the local runner ------------------------------------------------------------

LOCAL = Host("local")


def test_local_stdin_script_exit_code_and_both_streams():
    capture = Capture()
    script = "read first\nhello\necho \"got $first\"\necho err >&2\nexit 3\n"
    code = run_local("bash -s", LOCAL, capture, stdin=script)
    result = capture.result("bash -s", code)
    assert (result.exited, result.stdout, result.stderr) == (3, "got hello\n", "err\n")


@pytest.mark.parametrize("runner", ["bash -s", STDIN_RUNNER, "sh -s"])
def test_local_stdin_shells_started_directly_behave_as_through_a_shell(runner):
    """The stdin runners skip the outer `bash -c` (one shell start less); the script must
    see exactly what it would through it: stdin left to read, exit code, both streams."""
    script = "read first\nhello\necho \"got $first\"\necho err >&2\nexit 7\n"
    direct, shelled = Capture(), Capture()
    code = run_local(runner, LOCAL, direct, stdin=script)
    code_shelled = run_local(f"{runner} ", LOCAL, shelled, stdin=script)  # not a known runner: via bash -c
    seen = (code, direct.result(runner, code).stdout, direct.result(runner, code).stderr)
    assert seen == (code_shelled, shelled.result(runner, code_shelled).stdout, shelled.result(runner, code_shelled).stderr)
    if runner != "sh -s":  # dash reads its script ahead: `read` gets nothing, both ways
        assert seen == (7, "got hello\n", "err\n")
    assert code == 7
    assert localrun._STDIN_SHELLS[runner][-1] == "-s"


def test_local_large_stdin_and_output_do_not_deadlock():
    capture = Capture()
    blob = "x" * 300_000
    code = run_local("cat; cat /dev/null", LOCAL, capture, stdin=blob)
    assert code == 0 and capture.result("cat", code).stdout == blob


def test_local_output_is_streamed_to_a_consumer_not_kept():
    chunks: list[tuple[str, bytes]] = []
    capture = Capture(lambda stream, chunk: chunks.append((stream, chunk)))
    code = run_local("printf 'a\\tb\\x1b[2J'; printf e >&2", LOCAL, capture)
    result = capture.result("x", code)
    assert b"".join(c for s, c in chunks if s == "out") == b"a\tb\x1b[2J"
    assert result.stdout == "" and result.stderr == "e"


def _alive(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(int(pid))
        except (OSError, ValueError):
            continue
    return found


def _gone(marker: str, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_local_timeout_stops_the_whole_process_group():
    marker = f"300.{secrets.randbelow(10**6):06d}"
    capture = Capture()
    with pytest.raises(Exception) as caught:
        run_local(f"sleep {marker} & sleep {marker}; wait", LOCAL, capture, timeout=0.5)
    assert type(caught.value).__name__ == "CommandTimedOut"
    assert _gone(marker), "a sleep of the timed-out command survived"


def test_local_background_child_does_not_hold_the_call():
    # `sleep N &` keeps stdout open; the call returns once the shell has exited
    # (cluster.command.AFTER_EXIT_S), while the child still runs.
    marker = f"301.{secrets.randbelow(10**6):06d}"
    capture = Capture()
    try:
        code = run_local(f"sleep {marker} & echo started", LOCAL, capture)
        assert code == 0 and capture.result("x", code).stdout == "started\n"
        assert _alive(marker), "the background child should still be running"
    finally:
        for pid in _alive(marker):
            os.kill(pid, 9)


def test_local_halt_stops_the_command():
    marker = f"302.{secrets.randbelow(10**6):06d}"
    halt = threading.Event()
    threading.Timer(0.3, halt.set).start()
    assert run_local(f"sleep {marker}", LOCAL, Capture(), halt=halt) == -1
    assert _gone(marker)


# -- the Ctrl-C race between close() and release() -------------------------------

def test_close_from_another_thread_while_the_runner_releases_is_safe():
    """Before the fix: close() checked the connection, release() set it to None, and
    close() went on with None (AttributeError: 'NoneType' object has no attribute 'close')."""
    from cluster.ssh import HostSession

    entered, go_on = threading.Event(), threading.Event()

    class Client:
        calls = 0

        def get_transport(self):
            Client.calls += 1
            if Client.calls == 1:  # the main thread's close(): hold it between check and use
                entered.set()
                go_on.wait(5)
            return None

    class Connection:
        client = Client()

        def close(self):
            pass

    session = HostSession(Host("10.8.0.81"), engine=None)  # type: ignore[arg-type]
    session._connection = Connection()  # type: ignore[assignment]
    errors: list[BaseException] = []

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                errors.append(exc)
        return run

    closer = threading.Thread(target=guarded(session.close))
    closer.start()
    assert entered.wait(5)
    releaser = threading.Thread(target=guarded(session.release))
    releaser.start()
    releaser.join(0.5)  # with the fix it waits for close(); before, it finished here
    go_on.set()
    closer.join(5)
    releaser.join(5)
    assert not errors, errors
    assert session._connection is None
