"""``inv put`` / ``inv get`` against real sshd processes on loopback.

The fleet's hosts share this machine's file system, so it starts each host's
SFTP server in its own directory (``sftp_home_per_host``): relative remote
paths land in ``fleet.sftp_home(address)``, different per host, as on separate
machines. Every test works below its own subdirectory of those homes, and
reads the hosts' files straight from the local disk.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from helpers import cli_json
from helpers import run_cli as cli

from cluster import hostfiles, transfer
from cluster.hosts import Host
from cluster.inventory import load_inventory
from cluster.ssh import Engine
from cluster.testing import Fleet

REPO = Path(__file__).resolve().parent.parent
# A shell that ever saw this name unquoted would create "pwned" in its working directory.
QUOTED = """it's a "test" $(touch pwned) `touch pwned`; rm -x *.bin"""


@pytest.fixture(scope="module")
def hosts3(fleet_dir):
    """Three hosts, one sshd each, each SFTP server starting in its own home."""
    with Fleet(fleet_dir("transfer"), count=3, base="127.0.18.", specials=False,
               sftp_home_per_host=True) as running:
        yield running


@pytest.fixture
def roles(hosts3, tmp_path):
    return hosts3.write_roles(tmp_path / "roles.yaml", {"all": hosts3.addresses},
                              extra={"ssh": {"known_hosts": str(tmp_path / "known_hosts")}})


@pytest.fixture
def area(hosts3, request):
    """A subdirectory name of every host's home that only this test uses."""
    return f"t-{request.node.name}".replace("[", "-").replace("]", "")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_random(path: Path, size: int, mode: int = 0o644) -> Path:
    path.write_bytes(os.urandom(size))
    path.chmod(mode)
    return path


def leftovers(root: Path) -> list[Path]:
    """Temp files of put/get still lying around below ``root``."""
    return [p for p in root.rglob(".*.part")]


def owned_by_login_user(fleet: Fleet, path: Path, mode: int = 0o755) -> Path:
    """A directory the fleet's login user may write (when the tests run as root it is another user)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(fleet.user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(mode)
    return path


# -- put ---------------------------------------------------------------------------------------

def test_put_binary_file_with_quotes_in_its_name_then_skips_then_force_copies(
        hosts3, roles, area, tmp_path):
    source = write_random(tmp_path / QUOTED, 1_000_003, mode=0o640)
    os.utime(source, (1_700_000_000, 1_700_000_000))
    args = ("put", str(source), f"{area}/", "--mkdir", "-H", "127.0.18.[1-3]",
            "--roles-file", str(roles))
    code, doc = cli_json(*args)
    assert code == 0, doc
    assert doc["task"] == "put" and doc["summary"] == {"ok": 3, "failed": 0}
    for entry, address in zip(doc["hosts"], hosts3.addresses):
        copy = hosts3.sftp_home(address) / area / QUOTED
        assert entry["host"] == address and entry["ok"] and entry["error"] is None
        assert entry["path"] == str(copy)
        assert (entry["changed"], entry["skipped"], entry["bytes"]) == (1, 0, 1_000_003)
        assert entry["files"] == [{"path": str(copy), "size": 1_000_003, "status": "changed"}]
        assert sha(copy) == sha(source)
        assert copy.stat().st_mode & 0o777 == 0o640 and copy.stat().st_mtime == 1_700_000_000
        assert not leftovers(copy.parent)
    assert not (Path(pwd.getpwnam(hosts3.user).pw_dir) / "pwned").exists()

    code, doc = cli_json(*args)  # same size and sha256 everywhere: nothing moves
    assert code == 0
    assert [(h["changed"], h["skipped"], h["bytes"]) for h in doc["hosts"]] == [(0, 1, 0)] * 3

    code, doc = cli_json(*args, "--force")
    assert code == 0
    assert [(h["changed"], h["bytes"]) for h in doc["hosts"]] == [(1, 1_000_003)] * 3


def test_put_changed_content_of_the_same_size_is_copied(hosts3, roles, area, tmp_path):
    source = write_random(tmp_path / "same-size.bin", 4096)
    args = ("put", str(source), f"{area}/x.bin", "--mkdir", "-H", "127.0.18.1",
            "--roles-file", str(roles))
    assert cli_json(*args)[0] == 0
    write_random(source, 4096)  # new bytes, same size: only the hash tells
    code, doc = cli_json(*args)
    assert code == 0 and doc["hosts"][0]["changed"] == 1
    assert sha(hosts3.sftp_home("127.0.18.1") / area / "x.bin") == sha(source)


def test_put_zero_byte_and_50_mb_files(hosts3, roles, area, tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    big = write_random(tmp_path / "big.bin", 50 * 1024 * 1024)
    for source in (empty, big):
        code, doc = cli_json("put", str(source), f"{area}/", "--mkdir", "-H", "127.0.18.[1-2]",
                             "--roles-file", str(roles))
        assert code == 0, doc
        for address in hosts3.addresses[:2]:
            copy = hosts3.sftp_home(address) / area / source.name
            assert copy.stat().st_size == source.stat().st_size and sha(copy) == sha(source)
    assert [h["bytes"] for h in doc["hosts"]] == [50 * 1024 * 1024] * 2


def test_put_table_output(hosts3, roles, area, tmp_path):
    source = write_random(tmp_path / "table.bin", 2000)
    code, out, err = cli("put", str(source), f"{area}/", "--mkdir", "-H", "127.0.18.[1-2]",
                         "--roles-file", str(roles))
    assert code == 0, err
    lines = out.splitlines()
    rows = [line for line in lines if "127.0.18." in line]
    assert len(rows) == 2 and all("changed" in r and "2.0 kB" in r for r in rows), out
    assert "sent 4.0 kB: 2 files changed, 0 skipped" in out
    assert "2 hosts: 2 ok" in out


def test_put_recursive_tree_keeps_modes_and_get_brings_it_back(hosts3, roles, area, tmp_path):
    tree = tmp_path / "model dir"
    (tree / "sub 'one'" / "deep").mkdir(parents=True)
    write_random(tree / "weights.bin", 300_000)
    write_random(tree / "sub 'one'" / 'say "hi".txt', 10, mode=0o600)
    write_random(tree / "sub 'one'" / "deep" / "run.sh", 100, mode=0o755)
    (tree / "empty").write_bytes(b"")
    (tree / "sub 'one'" / "deep").chmod(0o750)
    (tree / "elsewhere").symlink_to(tmp_path)  # a symlinked directory is not followed
    files = sorted(p.relative_to(tree) for p in tree.rglob("*") if p.is_file() and not p.is_symlink()
                   and "elsewhere" not in p.parts)

    code, doc = cli_json("put", str(tree), f"{area}/models", "-R", "--mkdir", "-H",
                         "127.0.18.[1-3]", "--roles-file", str(roles))
    assert code == 0, doc
    assert doc["not_copied"] == ["elsewhere"]
    for entry, address in zip(doc["hosts"], hosts3.addresses):
        copy = hosts3.sftp_home(address) / area / "models"
        assert entry["changed"] == len(files) == 4
        assert sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file()) == files
        for rel in files:
            assert sha(copy / rel) == sha(tree / rel)
            assert (copy / rel).stat().st_mode & 0o777 == (tree / rel).stat().st_mode & 0o777
        assert (copy / "sub 'one'" / "deep").stat().st_mode & 0o777 == 0o750
        assert not (copy / "elsewhere").exists() and not leftovers(copy)

    out_dir = tmp_path / "fetched"
    code, doc = cli_json("get", f"{area}/models", str(out_dir), "-R", "-H", "127.0.18.[1-3]",
                         "--roles-file", str(roles))
    assert code == 0, doc
    for entry, address in zip(doc["hosts"], hosts3.addresses):
        copy = out_dir / address / "models"
        assert entry["path"] == str(copy) and entry["changed"] == 4
        for rel in files:
            assert sha(copy / rel) == sha(tree / rel)
            assert (copy / rel).stat().st_mode & 0o777 == (tree / rel).stat().st_mode & 0o777

    code, doc = cli_json("get", f"{area}/models", str(out_dir), "-R", "-H", "127.0.18.[1-3]",
                         "--roles-file", str(roles))
    assert code == 0 and [(h["changed"], h["skipped"]) for h in doc["hosts"]] == [(0, 4)] * 3


def test_put_into_a_missing_directory_needs_mkdir(hosts3, roles, area, tmp_path):
    source = write_random(tmp_path / "env.sh", 100)
    code, doc = cli_json("put", str(source), f"{area}/not/there/", "-H", "127.0.18.1",
                         "--roles-file", str(roles))
    error = doc["hosts"][0]["error"]
    assert code == 1 and error["kind"] == "no-such-dir"
    assert error["message"] == f"{area}/not/there does not exist" and "--mkdir" in error["hint"]
    assert not (hosts3.sftp_home("127.0.18.1") / area).exists()
    code, doc = cli_json("put", str(source), f"{area}/not/there/", "--mkdir", "-H", "127.0.18.1",
                         "--roles-file", str(roles))
    assert code == 0
    assert (hosts3.sftp_home("127.0.18.1") / area / "not" / "there" / "env.sh").read_bytes() == \
        source.read_bytes()


def test_a_host_whose_directory_is_not_writable_fails_alone(hosts3, roles, area, tmp_path):
    source = write_random(tmp_path / "kernel.bin", 200_000)
    for address in hosts3.addresses:
        target = hosts3.sftp_home(address) / area
        if address == "127.0.18.2":
            target.mkdir()
            target.chmod(0o555)  # not the login user's, or not writable by it
        else:
            owned_by_login_user(hosts3, target)
    code, doc = cli_json("put", str(source), f"{area}/", "-H", "127.0.18.[1-3]",
                         "--roles-file", str(roles))
    assert code == 1
    by_host = {h["host"]: h for h in doc["hosts"]}
    error = by_host["127.0.18.2"]["error"]
    assert error["kind"] == "permission-denied" and "Permission denied" in error["message"]
    assert "cannot write there" in error["hint"]
    assert by_host["127.0.18.1"]["ok"] and by_host["127.0.18.3"]["ok"]
    assert os.listdir(hosts3.sftp_home("127.0.18.2") / area) == []  # no temp, no partial file


@pytest.mark.parametrize("unnoticed", [False, True], ids=["noticed", "death-not-yet-noticed"])
def test_a_host_that_dies_mid_transfer_keeps_its_old_file(hosts3, area, tmp_path, monkeypatch, unnoticed):
    """SIGKILL the host's SSH session 5 MB into a 50 MB put: the old file stays whole, and
    the temp file is removed over a new connection — also when the transport has not yet
    noticed its peer died (it still looked alive right after the EOF: a CI run left the
    temp file behind)."""
    if unnoticed:
        monkeypatch.setattr(hostfiles.RemoteFiles, "alive", lambda self: True)  # only a round trip tells
    address = "127.0.18.3"
    settings = load_inventory(hosts3.write_roles(
        tmp_path / "roles.yaml", {"all": [address]},
        extra={"ssh": {"known_hosts": str(tmp_path / "known_hosts")}})).ssh
    old = write_random(tmp_path / "old.bin", 1000)
    new = write_random(tmp_path / "new.bin", 50 * 1024 * 1024)
    final = hosts3.sftp_home(address) / area / "model.bin"
    killed = threading.Event()

    def kill_after_5_mb(host, sent=0, **_):
        nonlocal moved
        moved += sent
        if moved >= 5 * 1024 * 1024 and not killed.is_set():
            killed.set()
            for pid in hosts3.session_pids(address):
                os.kill(pid, signal.SIGKILL)

    with Engine(settings) as engine:
        moved = 0
        first = transfer.put(engine, [Host(address)], transfer.plan_put(str(old), f"{area}/model.bin"),
                             mkdir=True)
        assert first.all_ok and final.read_bytes() == old.read_bytes()
        report = transfer.put(engine, [Host(address)], transfer.plan_put(str(new), f"{area}/model.bin"),
                              on_progress=kill_after_5_mb)
    outcome = report[0]
    assert killed.is_set()
    assert not outcome.ok and outcome.error.kind == "ssh", outcome.error
    assert outcome.error.message.startswith("connection lost after ")
    assert "temp file left" not in outcome.error.message  # removed over a fresh connection
    assert final.read_bytes() == old.read_bytes()
    assert not leftovers(final.parent)


def test_a_host_that_stops_answering_fails_as_stalled(hosts3, area, tmp_path):
    """SIGSTOP the host's SSH session 2 MB in: the put gives up after --timeout, cleans up."""
    address = "127.0.18.2"
    settings = load_inventory(hosts3.write_roles(
        tmp_path / "roles.yaml", {"all": [address]},
        extra={"ssh": {"known_hosts": str(tmp_path / "known_hosts")}})).ssh
    source = write_random(tmp_path / "big.bin", 30 * 1024 * 1024)
    stopped: list[int] = []

    def stop_after_2_mb(host, sent=0, **_):
        nonlocal moved
        moved += sent
        if moved >= 2 * 1024 * 1024 and not stopped:
            stopped.extend(hosts3.session_pids(address))
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)

    moved = 0
    try:
        with Engine(settings) as engine:
            report = transfer.put(engine, [Host(address)], transfer.plan_put(str(source), f"{area}/"),
                                  mkdir=True, timeout=2, on_progress=stop_after_2_mb)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGKILL)
    error = report[0].error
    assert stopped and error is not None and error.kind == "stalled", error
    assert error.message.startswith("no progress for 2 s after ") and "--timeout" in error.hint
    folder = hosts3.sftp_home(address) / area
    assert not (folder / "big.bin").exists() and not leftovers(folder)  # removed over a new connection


def test_get_from_several_hosts_into_one_directory_per_host(hosts3, roles, area, tmp_path):
    for address in hosts3.addresses:
        folder = hosts3.sftp_home(address) / area
        folder.mkdir()
        (folder / "crash dump.txt").write_text(f"dump of {address}\n")
    port = hosts3.port
    spelled = [f"{hosts3.user}@127.0.18.1:{port}", "127.0.18.2", f"127.0.18.3:{port}"]
    out_dir = tmp_path / "dumps"
    code, doc = cli_json("get", f"~/{area}/crash dump.txt", str(out_dir), "-H", ",".join(spelled),
                         "--roles-file", str(roles))
    assert code == 0, doc
    dirs = [f"{hosts3.user}@127.0.18.1_{port}", "127.0.18.2", f"127.0.18.3_{port}"]
    assert sorted(os.listdir(out_dir)) == sorted(dirs)
    for entry, name, address in zip(doc["hosts"], dirs, hosts3.addresses):
        copy = out_dir / name / "crash dump.txt"
        assert entry["path"] == str(copy) and entry["bytes"] == len(f"dump of {address}\n")
        assert copy.read_text() == f"dump of {address}\n"
    assert doc["destination"] == str(out_dir)


def test_get_failures_are_per_host(hosts3, roles, area, tmp_path):
    folder = hosts3.sftp_home("127.0.18.1") / area
    (folder / "dir").mkdir(parents=True)
    (folder / "only-here").write_text("x")
    code, doc = cli_json("get", f"{area}/only-here", str(tmp_path / "out"), "-H",
                         "127.0.18.[1-2]", "--roles-file", str(roles))
    assert code == 1
    assert doc["hosts"][0]["ok"] and doc["hosts"][1]["error"]["kind"] == "no-such-file"
    code, doc = cli_json("get", f"{area}/dir", str(tmp_path / "out"), "-H", "127.0.18.1",
                         "--roles-file", str(roles))
    assert code == 1 and doc["hosts"][0]["error"]["kind"] == "is-a-directory"
    assert "--recursive" in doc["hosts"][0]["error"]["hint"]


def test_get_skips_remote_symlinks(hosts3, roles, area, tmp_path):
    folder = hosts3.sftp_home("127.0.18.1") / area / "logs"
    folder.mkdir(parents=True)
    (folder / "a.log").write_text("a\n")
    (folder / "escape").symlink_to("/etc")
    code, doc = cli_json("get", f"{area}/logs", str(tmp_path / "out"), "-R", "-H", "127.0.18.1",
                         "--roles-file", str(roles))
    assert code == 0
    assert doc["hosts"][0]["not_copied"] == ["escape"] and doc["hosts"][0]["changed"] == 1
    assert sorted(os.listdir(tmp_path / "out" / "127.0.18.1" / "logs")) == ["a.log"]


def test_host_without_a_hash_tool_copies_instead_of_skipping(hosts3, roles, area, tmp_path):
    source = write_random(tmp_path / "wheel.whl", 5000)
    args = ("put", str(source), f"{area}/", "--mkdir", "-H", "127.0.18.[1-2]",
            "--roles-file", str(roles))
    assert cli_json(*args)[0] == 0
    stub = hosts3.install("127.0.18.2", "xargs", "#!/bin/sh\nexit 127\n")  # as if absent
    try:
        code, doc = cli_json(*args)
    finally:
        stub[0].unlink()
    assert code == 0
    assert [(h["changed"], h["skipped"]) for h in doc["hosts"]] == [(0, 1), (1, 0)]


def test_local_host_is_a_plain_copy(tmp_path, clean_env):
    source = write_random(tmp_path / "conf.yaml", 3000, mode=0o600)
    target = tmp_path / "dest"
    target.mkdir()
    code, doc = cli_json("put", str(source), f"{target}/", "-H", "local")
    assert code == 0 and doc["hosts"][0]["path"] == str(target / "conf.yaml")
    assert sha(target / "conf.yaml") == sha(source)
    assert (target / "conf.yaml").stat().st_mode & 0o777 == 0o600
    code, doc = cli_json("get", str(target / "conf.yaml"), str(tmp_path / "back"), "-H", "local")
    assert code == 0 and sha(tmp_path / "back" / "local" / "conf.yaml") == sha(source)
    code, doc = cli_json("put", str(source), f"{target}/", "-H", "local")
    assert doc["hosts"][0]["skipped"] == 1


def test_unreachable_host_is_one_failed_row(hosts3, roles, area, tmp_path):
    source = write_random(tmp_path / "f.bin", 100)
    code, doc = cli_json("put", str(source), f"{area}/", "--mkdir", "-H",
                         "127.0.18.1 127.0.18.250", "--roles-file", str(roles))
    assert code == 1
    assert doc["hosts"][0]["ok"] and doc["hosts"][1]["error"]["kind"] == "unreachable"
    assert doc["hosts"][1]["bytes"] == 0 and doc["hosts"][1]["files"] == []


@pytest.mark.parametrize("args, message", [
    (["put", "/no/such/file", "x"], "no such file or directory: /no/such/file"),
    (["put", str(REPO / "docs"), "x"], "is a directory: pass --recursive"),
    (["put", str(REPO / "README.md"), "x", "--timeout", "soon"], "--timeout must be a number"),
    (["get", "x", str(REPO / "README.md")], "exists and is not a directory"),
])
def test_bad_input_exits_2_before_connecting(hosts3, roles, args, message):
    before = hosts3.connection_count("127.0.18.1")
    code, out, err = cli(*args, "-H", "127.0.18.1", "--roles-file", str(roles))
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"error: {err.strip().removeprefix('error: ')}"]
    assert message in err
    assert hosts3.connection_count("127.0.18.1") == before


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_full_disk_on_the_host_is_disk_full(hosts3, roles, area, tmp_path):
    mount = owned_by_login_user(hosts3, hosts3.sftp_home("127.0.18.1") / area)
    entry = pwd.getpwnam(hosts3.user)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,uid={entry.pw_uid},mode=0755", "tmpfs",
                    str(mount)], check=True)
    try:
        source = write_random(tmp_path / "huge.bin", 3 * 1024 * 1024)
        code, doc = cli_json("put", str(source), f"{area}/", "-H", "127.0.18.1",
                             "--roles-file", str(roles))
        error = doc["hosts"][0]["error"]
        assert code == 1 and error["kind"] == "disk-full", error
        assert "df -h" in error["hint"]
        assert os.listdir(mount) == []  # the partial temp file was removed
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_python_api_put_and_get(hosts3, roles, area, tmp_path):
    from cluster.api import Cluster

    source = write_random(tmp_path / "api.bin", 70_000)
    with Cluster(load_inventory(roles)) as cluster:
        sent = cluster.put(str(source), f"{area}/", hosts="127.0.18.[1-2]", mkdir=True)
        fetched = cluster.get(f"{area}/api.bin", str(tmp_path / "back"), hosts="127.0.18.[1-2]")
    assert sent.all_ok and [o.data.changed for o in sent] == [1, 1]
    assert fetched.all_ok and [o.data.sent for o in fetched] == [70_000, 70_000]
    assert sha(tmp_path / "back" / "127.0.18.2" / "api.bin") == sha(source)
