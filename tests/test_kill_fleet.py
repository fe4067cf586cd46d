"""``inv kill --pattern`` on the loopback fleet: --dry-run kills nothing, a real run kills
exactly the matching processes, a SIGTERM-proof process is reported as survived, and
the listing never matches its own shell or SSH session.

Decoys are ``python3 -c 'sleep' decoy-<uuid>-<name>`` processes started as the login
user through the fleet (setsid, so they outlive the SSH session). Every fleet host
shares this machine's kernel, so the test checks them through /proc directly and
kills whatever is left by pid at the end. Each test uses its own uuid: other test
runs sharing the login user are never matched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cluster import kill
from cluster.api import Cluster
from cluster.errors import InputError

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.1.4"

_SLEEPER = "import time; time.sleep(600)"
_STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def cli(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "cluster_cli", *args], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200"}, cwd=REPO,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def cli_json(*args: str) -> tuple[int, dict]:
    code, out, err = cli(*args, "--json")
    try:
        return code, json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON (exit {code}):\n{out}\n{err}") from None


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.fixture
def decoys(fleet, tmp_path):
    """start(name, code) -> pid of a decoy on HOST whose command line ends with its marker."""
    roles = fleet.write_roles(tmp_path / "roles.yaml", {"all": [HOST]},
                              extra={"ssh": {"known_hosts": str(tmp_path / "known_hosts")}})
    tag = uuid.uuid4().hex[:10]
    started: list[int] = []
    cluster = Cluster.from_roles(roles)

    def start(name: str, code: str = _SLEEPER) -> int:
        marker = f"decoy-{tag}-{name}"
        command = (f"setsid python3 -c '{code}' {marker} </dev/null >/dev/null 2>&1 & echo $!")
        outcome = cluster.run(command, hosts=HOST, timeout=30)[0]
        assert outcome.ok, outcome.error
        pid = int(outcome.stdout.split()[-1])
        started.append(pid)
        deadline = time.monotonic() + 10  # until python has its final command line
        while time.monotonic() < deadline:
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                break
            time.sleep(0.02)
        raise AssertionError(f"decoy {marker} (pid {pid}) did not start")

    yield {"start": start, "tag": tag, "roles": str(roles)}
    cluster.close()
    for pid in started:  # clean up by pid only
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_dry_run_lists_matching_processes_and_kills_nothing(decoys):
    first, second = decoys["start"]("match-1"), decoys["start"]("match-2")
    other = decoys["start"]("other")
    code, doc = cli_json("kill", "--pattern", f"decoy-{decoys['tag']}-match", "--dry-run",
                         "--roles-file", decoys["roles"])
    assert code == 0
    assert doc["dry_run"] is True and doc["signal"] == "TERM"
    procs = doc["hosts"][0]["processes"]
    assert sorted(p["pid"] for p in procs) == sorted([first, second])
    assert all(p["result"] == "matched" and p["user"] for p in procs)
    assert all(f"decoy-{decoys['tag']}-match" in p["command"] for p in procs)
    time.sleep(0.5)
    assert alive(first) and alive(second) and alive(other)

    code, out, _ = cli("kill", "--pattern", f"decoy-{decoys['tag']}-match", "--dry-run",
                       "--roles-file", decoys["roles"])
    assert code == 0
    assert str(first) in out and str(second) in out and "would signal" in out
    assert "dry run: nothing signalled" in out


def test_kill_only_matching_processes_die(decoys):
    first, second = decoys["start"]("match-1"), decoys["start"]("match-2")
    other = decoys["start"]("other")
    code, doc = cli_json("kill", "--pattern", f"decoy-{decoys['tag']}-match",
                         "--roles-file", decoys["roles"])
    assert code == 0, doc
    results = {p["pid"]: p["result"] for p in doc["hosts"][0]["processes"]}
    assert results == {first: "killed", second: "killed"}
    assert not alive(first) and not alive(second)
    assert alive(other)


def test_survivor_fails_the_host_until_sigkill(decoys):
    stubborn = decoys["start"]("stubborn", _STUBBORN)
    pattern = f"decoy-{decoys['tag']}-stubborn"
    code, doc = cli_json("kill", "--pattern", pattern, "--wait", "1",
                         "--roles-file", decoys["roles"])
    assert code == 1
    host = doc["hosts"][0]
    assert host["error"]["kind"] == "survived" and "--signal KILL" in host["error"]["hint"]
    assert host["processes"] == [{"pid": stubborn, "user": host["processes"][0]["user"],
                                  "command": host["processes"][0]["command"],
                                  "result": "survived"}]
    assert alive(stubborn)

    code, out, _ = cli("kill", "--pattern", pattern, "--signal", "SIGKILL",
                       "--roles-file", decoys["roles"])
    assert code == 0, out
    assert "killed" in out and not alive(stubborn)


def test_never_matches_its_own_shell_or_session(decoys):
    # The pattern is on the listing shell's command line (and, for `local`, on this
    # CLI's): with no decoy running, nothing may match. (Not with --all-users here:
    # on loopback the controller's own CLI process, run by another user, is on the
    # "host" too, and is rightly listed then.)
    pattern = f"decoy-{decoys['tag']}-nobody"
    code, doc = cli_json("kill", "--pattern", pattern, "--roles-file", decoys["roles"])
    assert code == 0 and doc["hosts"][0]["processes"] == [], doc
    code, doc = cli_json("kill", "--pattern", pattern, "-H", "local", "--roles-file",
                         decoys["roles"])
    assert code == 0 and doc["hosts"][0]["processes"] == [], doc


def test_other_users_processes_are_out_of_scope_by_default(decoys):
    # This test process (root or the login user) runs a sleeper with the marker.
    marker = f"decoy-{decoys['tag']}-mine"
    mine = subprocess.Popen([sys.executable, "-c", _SLEEPER, marker])
    try:
        if os.geteuid() == 0:  # the fleet logs in as clustertest: root's process is not its own
            code, doc = cli_json("kill", "--pattern", marker, "--dry-run",
                                 "--roles-file", decoys["roles"])
            assert code == 0 and doc["hosts"][0]["processes"] == []
        code, doc = cli_json("kill", "--pattern", marker, "--dry-run", "--user", "nobody",
                             "--roles-file", decoys["roles"])
        assert code == 0 and doc["hosts"][0]["processes"] == []
        code, doc = cli_json("kill", "--pattern", marker, "--dry-run", "--all-users",
                             "--roles-file", decoys["roles"])
        listed = doc["hosts"][0]["processes"]
        # (The controller's CLI, same kernel, may be listed as well: it holds the marker.)
        assert mine.pid in [p["pid"] for p in listed]
        assert all(marker in p["command"] for p in listed)
        assert alive(mine.pid)
    finally:
        mine.kill()
        mine.wait()


@pytest.mark.parametrize("args,message", [
    ([], "--pattern is required"),
    (["--pattern", " "], "--pattern is required"),
    (["--pattern", "x", "--signal", "BOGUS"], "--signal"),
    (["--pattern", "a(b"], "bad regular expression"),
    (["--pattern", "x", "--wait", "-1"], "--wait"),
])
def test_bad_input_exits_2(args, message, tmp_path):
    # Host 10.8.0.81 would never be contacted: input is checked before connecting.
    roles = tmp_path / "roles.yaml"
    roles.write_text("roles:\n  decode: 10.8.0.81\n")
    code, _, err = cli("kill", *args, "--roles-file", str(roles))
    assert code == 2 and message in err


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("given,expected", [
    (None, "TERM"), ("term", "TERM"), ("SIGKILL", "KILL"), ("9", "KILL"), (" hup ", "HUP"),
])
def test_check_signal(given, expected):
    assert kill.check_signal(given) == expected


@pytest.mark.parametrize("given", ["STOP", "SIGFOO", "99", ""])
def test_check_signal_rejects(given):
    with pytest.raises(InputError):
        kill.check_signal(given)


def test_parse_listing_and_signal_output():
    listing = ("junk\nP 12 345 alice  python3 -m srv --port 1\nP 13 346 bob   sleep 5\n"
               "P x 1 a b\nEND\n")
    procs = kill.parse_listing(listing)
    assert [(p.pid, p.start, p.user, p.command) for p in procs] == [
        (12, "345", "alice", "python3 -m srv --port 1"), (13, "346", "bob", "sleep 5")]
    out = "SENT 12\nDENIED 13\nALIVE 12\nEND\n"
    assert [p.result for p in kill.parse_signal_output(out, procs, "TERM")] == [
        "survived", "denied"]
    assert [p.result for p in kill.parse_signal_output("SENT 12\nGONE 13\n", procs, "TERM")] == [
        "killed", "gone"]
    assert kill.parse_signal_output("SENT 12\n", procs[:1], "HUP")[0].result == "signalled"


def test_commands_quote_the_pattern_and_user():
    text = kill.list_command("a'b; rm -rf /", user="svc", token="t")
    assert "-f -- 'a'\"'\"'b; rm -rf /'" in text and "-u svc " in text
    assert "# cluster-kill:t" in text
    assert "-u " not in kill.list_command("x", all_users=True, token="t")
    assert '-u "$(id -un)"' in kill.list_command("x", token="t")
