"""``inv logs`` on the loopback fleet: the deployment's logs per role, -n, --grep, --file
(quoted), --save, a missing file, and --follow on a dedicated small fleet (lines from
several hosts, a file that disappears, a host whose sshd dies).

Log files live in the fleet's host directories (the login user can read them there);
the deployment manifest is written in a private HOME for the CLI subprocess.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from cluster import defaults, logs
from cluster.errors import InputError
from cluster.hosts import Host
from cluster.serving.plan import ServerSpec
from cluster.serving.records import Manifest, ServerRecord, log_sources
from cluster.testing import Fleet
from cluster.testing.fleet import descendants

REPO = Path(__file__).resolve().parent.parent
PREFILL = "127.0.1.1"
DECODE = ["127.0.1.2", "127.0.1.3"]


# --------------------------------------------------------------------------- helpers


def cli(*args: str, home: Path | None = None, timeout: float = 120) -> tuple[int, str, str]:
    env = {**os.environ, "COLUMNS": "200"}
    if home is not None:
        env["HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-m", "cluster_cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def cli_json(*args: str, **kwargs) -> tuple[int, dict]:
    code, out, err = cli(*args, "--json", **kwargs)
    try:
        return code, json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON (exit {code}):\n{out}\n{err}") from None


def record(address: str, role: str, port: int, run_dir: Path, run_id: str = "run1") -> ServerRecord:
    """A recorded server; its log is ``record.log_path`` (in ``run_dir``, named as start-pd names it)."""
    return ServerRecord(ServerSpec(engine="sglang", role=role, host=address, target=address,
                                   port=port, run_dir=str(run_dir), run_id=run_id))


def write_manifest(home: Path, servers: list[ServerRecord], name: str = "default") -> Path:
    path = home / ".cluster" / "deployments" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(Manifest(name, "sglang", "run1", "standin/model", time.time(), servers).dumps())
    return path


def log_lines(address: str, count: int, tag: str) -> list[str]:
    """Distinct lines naming their host; every 7th is an ERROR line."""
    return [f"{address} {tag} line {i}" + (" ERROR boom" if i % 7 == 0 else "")
            for i in range(1, count + 1)]


@pytest.fixture
def deployment(fleet: Fleet, tmp_path: Path):
    """A prefill + two decode servers' logs on the session fleet, a manifest and a roles file."""
    tag = uuid.uuid4().hex[:8]
    files: dict[str, Path] = {}
    content: dict[str, list[str]] = {}
    servers = []
    for address, role, port in [(PREFILL, "prefill", 30000)] + [(d, "decode", 30001)
                                                                for d in DECODE]:
        server = record(address, role, port, fleet.host_dir(address), run_id=tag)
        path = Path(server.log_path)
        content[address] = log_lines(address, 150, tag)
        path.write_text("\n".join(content[address]) + "\n")
        path.chmod(0o644)
        files[address] = path
        servers.append(server)
    home = tmp_path / "home"
    write_manifest(home, servers)
    roles = fleet.write_roles(tmp_path / "roles.yaml", {"prefill": PREFILL, "decode": DECODE},
                              extra={"ssh": {"known_hosts": str(tmp_path / "known_hosts")}})
    yield {"files": files, "content": content, "home": home, "roles": str(roles), "tag": tag}
    for path in files.values():
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- read


def test_role_decode_shows_each_decode_hosts_last_20_lines(deployment):
    code, doc = cli_json("logs", "--role", "decode", "-n", "20", "--roles-file",
                         deployment["roles"], home=deployment["home"])
    assert code == 0, doc
    assert [h["host"] for h in doc["hosts"]] == DECODE
    for entry in doc["hosts"]:
        assert entry["ok"] and entry["lines"] == deployment["content"][entry["host"]][-20:]
        assert entry["files"] == [str(deployment["files"][entry["host"]])]

    code, out, _ = cli("logs", "-r", "decode", "--lines", "20", "--roles-file",
                       deployment["roles"], home=deployment["home"])
    assert code == 0
    for address in DECODE:
        assert f"---- {address} (1) ok" in out
        block = out.split(f"---- {address} (1) ok", 1)[1].splitlines()[1:21]
        assert block == deployment["content"][address][-20:]
    assert PREFILL not in out
    assert "2 hosts: 2 ok" in out


def test_default_is_every_server_of_the_deployment_and_100_lines(deployment):
    code, doc = cli_json("logs", "--roles-file", deployment["roles"], home=deployment["home"])
    assert code == 0
    assert [h["host"] for h in doc["hosts"]] == [PREFILL, *DECODE]
    assert all(len(h["lines"]) == defaults.LOG_LINES for h in doc["hosts"])


def test_grep_keeps_the_last_matching_lines(deployment):
    code, doc = cli_json("logs", "-H", DECODE[0], "--grep", "ERROR b[o]+m$", "-n", "3",
                         "--roles-file", deployment["roles"], home=deployment["home"])
    assert code == 0
    wanted = [line for line in deployment["content"][DECODE[0]] if line.endswith("ERROR boom")]
    assert doc["hosts"][0]["lines"] == wanted[-3:]


def test_missing_file_fails_that_host_only(deployment):
    deployment["files"][DECODE[1]].unlink()
    code, doc = cli_json("logs", "-r", "decode", "-n", "5", "--roles-file", deployment["roles"],
                         home=deployment["home"])
    assert code == 1
    by_host = {h["host"]: h for h in doc["hosts"]}
    assert by_host[DECODE[0]]["ok"] and len(by_host[DECODE[0]]["lines"]) == 5
    failed = by_host[DECODE[1]]
    assert not failed["ok"] and failed["error"]["kind"] == "no-log"
    assert str(deployment["files"][DECODE[1]]) in failed["error"]["message"]
    assert doc["summary"] == {"ok": 1, "failed": 1}


def test_identical_tails_are_folded(fleet, deployment):
    shared = fleet.host_dir(PREFILL) / f"shared-{deployment['tag']}.log"
    shared.write_text("same line\n")
    shared.chmod(0o644)
    try:
        code, out, _ = cli("logs", "-H", "127.0.1.[1-3]", "--file", str(shared), "--roles-file",
                           deployment["roles"], home=deployment["home"])
    finally:
        shared.unlink()
    assert code == 0
    assert "---- 127.0.1.[1-3] (3) ok" in out
    assert out.count("same line") == 1


def test_file_path_is_quoted_for_the_remote_shell(fleet, deployment):
    host_dir = fleet.host_dir(DECODE[0])
    canary = f"pwned-{deployment['tag']}"  # a remote shell would create it in the login home
    odd = host_dir / f"odd name $(touch {canary}); `touch {canary}` {deployment['tag']}.log"
    odd.write_text("quoted fine\n")
    odd.chmod(0o644)
    try:
        code, doc = cli_json("logs", "-H", DECODE[0], "--file", str(odd), "--roles-file",
                             deployment["roles"], home=deployment["home"])
    finally:
        odd.unlink()
    assert code == 0 and doc["hosts"][0]["lines"] == ["quoted fine"]
    assert not (Path(pwd.getpwnam(fleet.user).pw_dir) / canary).exists()


def test_save_writes_one_file_per_host(deployment, tmp_path):
    out_dir = tmp_path / "saved"
    code, out, _ = cli("logs", "--save", str(out_dir), "--roles-file", deployment["roles"],
                       home=deployment["home"])
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        f"{a}.log" for a in [PREFILL, *DECODE])
    for address in [PREFILL, *DECODE]:
        # Complete file by default, byte for byte.
        assert (out_dir / f"{address}.log").read_text() == deployment["files"][address].read_text()
        assert f"{address}.log" in out
    assert f"saved to {out_dir}/" in out

    code, doc = cli_json("logs", "-r", "decode", "-n", "5", "--save", str(tmp_path / "tail"),
                         "--roles-file", deployment["roles"], home=deployment["home"])
    assert code == 0
    for entry in doc["hosts"]:
        saved = Path(entry["saved_to"])
        assert saved.read_text().splitlines() == deployment["content"][entry["host"]][-5:]
        assert entry["saved_lines"] == 5


def test_save_leaves_no_file_for_a_failed_host(deployment, tmp_path):
    deployment["files"][DECODE[0]].unlink()
    out_dir = tmp_path / "saved"
    code, doc = cli_json("logs", "-r", "decode", "--save", str(out_dir), "--roles-file",
                         deployment["roles"], home=deployment["home"])
    assert code == 1
    assert [p.name for p in out_dir.iterdir()] == [f"{DECODE[1]}.log"]
    assert doc["hosts"][0]["saved_to"] is None and doc["hosts"][0]["error"]["kind"] == "no-log"


def test_no_recorded_deployment_is_bad_input(fleet, tmp_path):
    roles = fleet.write_roles(tmp_path / "roles.yaml", {"all": DECODE})
    code, out, err = cli("logs", "--roles-file", str(roles), home=tmp_path / "empty-home")
    assert code == 2
    assert "no recorded deployment" in err and "--file" in err


@pytest.mark.parametrize("args", [["-n", "ten"], ["--grep", "("], ["--follow", "--save", "x"]])
def test_bad_options_exit_2_before_connecting(deployment, args):
    code, _, err = cli("logs", *args, "--roles-file", deployment["roles"],
                       home=deployment["home"])
    assert code == 2, err


# --------------------------------------------------------------------------- follow


@pytest.fixture
def small_fleet(fleet_dir):
    """Three hosts, one sshd each, so one host's sshd can be killed without the others."""
    with Fleet(fleet_dir("follow-fleet"), count=3, base="127.0.6.", specials=False) as running:
        yield running


class Follower:
    """``inv logs --follow`` in a subprocess; stdout lines collected by a thread."""

    def __init__(self, *args: str, home: Path) -> None:
        env = {**os.environ, "HOME": str(home), "COLUMNS": "200"}
        self.proc = subprocess.Popen([sys.executable, "-m", "cluster_cli", "logs", "--follow",
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, cwd=REPO)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(line) for line in list(self.lines)):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"never saw {what}; output so far:\n" + "\n".join(self.lines))

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=20)
        self.reader.join(5)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()


def prefixed(address: str, text: str):
    """A follow line: the host, padded, then ' │ ', then the log text."""
    return lambda line: line.startswith(address) and line.split(" │ ", 1)[-1] == text


def test_follow_streams_new_lines_from_several_hosts_and_survives_hosts_going_away(
        small_fleet, tmp_path):
    a, b, c = small_fleet.addresses
    files = {}
    servers = [record(address, "decode", 30001, small_fleet.host_dir(address)) for address in (a, b, c)]
    for address, server in zip((a, b, c), servers):
        files[address] = Path(server.log_path)
        files[address].write_text(f"{address} before\n")
        files[address].chmod(0o644)
    home = tmp_path / "home"
    write_manifest(home, servers)
    roles = small_fleet.write_roles(tmp_path / "roles.yaml", {"decode": [a, b, c]})

    follower = Follower("-n", "1", "--roles-file", str(roles), home=home)
    try:
        for address in (a, b, c):  # the last line of each file comes first
            follower.wait_for(prefixed(address, f"{address} before"), f"{address}'s old line")
        for address in (a, b):
            with open(files[address], "a") as handle:
                handle.write(f"{address} written after start\n")
        for address in (a, b):
            follower.wait_for(prefixed(address, f"{address} written after start"),
                              f"{address}'s new line")

        files[a].unlink()  # host a's file disappears
        follower.wait_for(lambda line: line.startswith(a) and "has become inaccessible" in line,
                          "the notice that a's file is gone")

        server = small_fleet._server_of[b]  # host b goes away: its sshd and sessions die
        for pid in [server.proc.pid, *descendants([server.proc.pid])]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        follower.wait_for(lambda line: line.startswith(b) and "stream ended" in line,
                          "b marked as disconnected")

        with open(files[c], "a") as handle:  # c keeps streaming through all of it
            handle.write(f"{c} still streaming\n")
        follower.wait_for(prefixed(c, f"{c} still streaming"), "c's line after the failures")
    finally:
        code, err = follower.interrupt()

    assert code == 1, err  # b failed
    assert "3 hosts: 2 ok, 1 failed (1 disconnected)" in follower.lines[-1]
    # Never a line from one host under another's prefix, never a partial line.
    for line in follower.lines[:-1]:
        host, _, text = line.partition(" │ ")
        assert host.strip() in (a, b, c), line
        if text.startswith("127.0.6."):  # a log line: it names the host that wrote it
            assert text.split()[0] == host.strip(), line


def test_follow_leaves_no_tail_behind_and_json_lines(small_fleet, tmp_path):
    a = small_fleet.addresses[0]
    path = small_fleet.host_dir(a) / "json.log"
    path.write_text("first\n")
    path.chmod(0o644)
    home = tmp_path / "home"
    roles = small_fleet.write_roles(tmp_path / "roles.yaml", {"all": [a]})
    follower = Follower("--json", "-H", a, "--file", str(path), "--roles-file", str(roles),
                        home=home)
    try:
        follower.wait_for(lambda line: '"line": "first"' in line, "the JSON line")
    finally:
        code, err = follower.interrupt()
    assert code == 0, err
    assert json.loads(follower.lines[0]) == {"host": a, "line": "first"}
    final = json.loads(follower.lines[-1])
    assert final["task"] == "logs" and final["summary"] == {"ok": 1, "failed": 0}
    assert final["hosts"][0]["followed_lines"] == 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _tails_of(path):
        time.sleep(0.2)
    assert not _tails_of(path), "tail -F still running on the host after the follow ended"


def _tails_of(path: Path) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"tail") and str(path).encode() in cmd:
                found.append(int(entry))
    return found


# --------------------------------------------------------------------------- pure parts


def test_deployment_sources_match_hosts_by_name_and_filter_roles():
    servers = [record("10.8.0.81", "prefill", 30000, Path("/l")),
               record("10.8.0.82", "decode", 30001, Path("/l")),
               record("10.8.0.82", "prefill", 30000, Path("/l"))]
    p, d82, p82 = (s.log_path for s in servers)
    assert p82 == "/l/sglang-prefill-10.8.0.82-30000@run1.log"
    manifest = Manifest("d", "sglang", "r", "m", 0.0, servers)
    everything = log_sources(manifest)
    assert [(s.host.hostname, s.paths) for s in everything] == [
        ("10.8.0.81", (p,)), ("10.8.0.82", (d82, p82))]
    decode = log_sources(manifest, roles=["decode"])
    assert [(s.host.hostname, s.paths) for s in decode] == [("10.8.0.82", (d82,))]
    chosen = log_sources(manifest, [Host("10.8.0.82", "ubuntu", 22), Host("10.8.0.99")])
    assert [s.paths for s in chosen] == [(d82, p82), ()]


def test_read_command_quotes_paths_and_patterns_and_keeps_home_expandable():
    command = logs.read_command(["~/run/a b.log", "/x/$(reboot).log"], 20, "a'b|c")
    assert '"$HOME"/\'run/a b.log\'' in command
    assert "'/x/$(reboot).log'" in command
    assert "grep -a -E -e 'a'\"'\"'b|c'" in command and "tail -n 20" in command
    assert "cat -- /x.log" in logs.read_command(["/x.log"], None, None)


@pytest.mark.parametrize("value,expected", [(None, None), ("0", 0), (" 25 ", 25), (7, 7)])
def test_check_lines(value, expected):
    assert logs.check_lines(value) == expected


@pytest.mark.parametrize("value", ["-1", "ten", "1.5", ""])
def test_check_lines_rejects(value):
    with pytest.raises(InputError):
        logs.check_lines(value)
