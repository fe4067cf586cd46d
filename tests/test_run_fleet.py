"""`inv run` output against real sshd on loopback: the hosts' bytes unchanged when piped,
host after host; stderr of every host shown; background children; --stream; --timeout."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from helpers import REPO
from test_interrupt_fleet import survivors


def roles(fleet, tmp_path: Path) -> Path:
    return fleet.write_roles(tmp_path / "roles.yaml", {"all": fleet.addresses},
                             extra={"ssh": {"known_hosts": str(fleet.known_hosts)}})


def run(fleet, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`inv run ARGS` with stdout a pipe; bytes out."""
    return subprocess.run([sys.executable, "-m", "cluster_cli", "run", *args,
                           "--roles-file", str(roles(fleet, tmp_path))],
                          capture_output=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_million_lines_piped_are_the_bytes_ssh_gives(fleet, tmp_path):
    ours = run(fleet, tmp_path, "seq 1 1000000", "-H", "127.0.1.1")
    theirs = subprocess.run([*fleet.ssh_command("127.0.1.1"), "seq 1 1000000"], capture_output=True,
                            timeout=120)
    assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr
    assert hashlib.sha256(ours.stdout).digest() == hashlib.sha256(theirs.stdout).digest()
    assert len(ours.stdout) == len(theirs.stdout) > 6_000_000


def test_long_lines_tabs_and_control_bytes_pass_unchanged(fleet, tmp_path):
    command = ("printf 'a\\tb\\r\\x1b]0;t\\x07\\x00end'; head -c 5000000 /dev/zero | tr '\\0' x; "
               "echo; echo warn >&2")
    result = run(fleet, tmp_path, command, "-H", "127.0.1.2")
    assert result.returncode == 0
    assert result.stdout == b"a\tb\r\x1b]0;t\x07\x00end" + b"x" * 5_000_000 + b"\n"
    err = result.stderr.decode()
    assert "---- 127.0.1.2 (1) ok" in err and "stderr│ warn" in err  # an ok host's stderr is shown


def test_hosts_come_whole_in_the_order_given(fleet, tmp_path):
    command = "i=0; while [ $i -lt 3000 ]; do echo $CLUSTER_SIM_HOST $i; i=$((i+1)); done"
    order = ["127.0.1.3", "127.0.1.1", "127.0.1.2"]
    result = run(fleet, tmp_path, command, "-H", " ".join(order))
    expected = "".join(f"{host} {i}\n" for host in order for i in range(3000))
    assert result.returncode == 0 and result.stdout.decode() == expected


def test_failing_host_shows_its_stderr_and_exit_code_not_a_stale_hint(fleet, tmp_path):
    result = run(fleet, tmp_path, "echo out; echo first >&2; echo last >&2; exit 3", "-H", "127.0.1.4")
    err = result.stderr.decode()
    assert result.returncode == 1 and result.stdout == b"out\n"
    assert "---- 127.0.1.4 (1) exit 3" in err
    assert "stderr│ first\nstderr│ last" in err and "see stderr above" not in err
    assert "cluster-pgid" not in err  # the wrapper's line never shows


def test_a_background_child_holding_stdout_does_not_hold_the_run(fleet, tmp_path):
    token = f"300.{secrets.randbelow(10**6):06d}"
    try:
        result = run(fleet, tmp_path, f"sleep {token} & echo started", "-H", "127.0.1.5")
        assert result.returncode == 0 and result.stdout == b"started\n"
        # `ssh` would have waited for the sleep; it still runs, detached from the call.
        assert survivors(f"sleep\x00{token}")
    finally:
        for pid in survivors(token):
            os.kill(pid, signal.SIGKILL)


def test_stream_prints_whole_lines_per_host_in_order_and_flushes_the_last(fleet, tmp_path):
    command = ("i=0; while [ $i -lt 50 ]; do echo line $i; i=$((i+1)); done; "
               "echo oops >&2; printf 'no newline'")
    result = run(fleet, tmp_path, "--stream", command, "-H", "127.0.1.[1-3]")
    lines = result.stdout.decode().splitlines()
    assert result.returncode == 0
    for host in ("127.0.1.1", "127.0.1.2", "127.0.1.3"):
        mine = [line.split(": ", 1)[1] for line in lines if line.startswith(host + ": ")]
        assert mine[:50] == [f"line {i}" for i in range(50)]
        assert set(mine[50:]) == {"stderr│ oops", "no newline"}
    assert "3 hosts: 3 ok" in result.stderr.decode()


def test_timeout_bounds_a_call_with_endless_output(fleet, tmp_path):
    result = run(fleet, tmp_path, "yes 0123456789abcdef", "-H", "127.0.1.6", "--timeout", "2")
    err = result.stderr.decode()
    assert result.returncode == 1 and "command-timeout" in err, err[-500:]
    assert not survivors("yes\x000123456789abcdef")


def test_on_a_terminal_control_characters_are_shown_escaped(fleet, tmp_path):
    master, slave = os.openpty()
    command = "printf 'title\\033]0;pwned\\007 clear\\033[2J tab\\tend\\n'; printf 'e\\033[31m\\n' >&2"
    proc = subprocess.Popen([sys.executable, "-m", "cluster_cli", "run", command, "-H", "127.0.1.7",
                             "--roles-file", str(roles(fleet, tmp_path))], cwd=REPO,
                            stdout=slave, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100"})
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(master)
    shown = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert "title\\x1b]0;pwned\\x07 clear\\x1b[2J tab" in shown, shown
    assert "\x1b]0;" not in shown and "\x07" not in shown  # never interpreted
    assert "stderr│ \x1b[0me\\x1b[31m" in shown  # our colour for the mark, the host's escaped
