"""put/get without a connection: hash and df parsers on captured output, host directory names,
temp names, the plans' input checks, failure classification and the table."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cluster import transfer
from cluster.errors import InputError
from cluster.hostfiles import LocalFiles, parse_df_available, parse_sha256sum, unsafe_names
from cluster.hosts import Host, parse_host
from cluster.render import transfer as transfer_render
from cluster.result import Outcome, Report

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "transfer"
NAMES = "/srv/models/names/"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode()  # not read_text(): keep carriage returns


# -- parsers ------------------------------------------------------------------------------------

def test_sha256sum_output_with_escaped_names():
    found = parse_sha256sum(fixture("sha256sum-coreutils-9.1.txt"))
    assert found == {
        NAMES + "plain.txt": "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb",
        NAMES + "with space.txt": "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d",
        NAMES + "new\nline.txt": "2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6",
        NAMES + "back\\slash.txt": "18ac3e7343f016890c510e93f935261169d9e3f565436429830faf0934f4f8e4",
        NAMES + "cr\rname": "3f79bb7b435b05321651daefd374cdc681dc06faa65e374e38337b88ca046dea",
        NAMES + "it's \"q\".bin": "b413f47d13ee2fe6c845b2ee141af81de858df4ec549a58b7970bb96645bc8d2",
    }


def test_shasum_output_matches_sha256sum():
    # perl's shasum leaves a carriage return in the name as is.
    assert parse_sha256sum(fixture("shasum-perl.txt")) == parse_sha256sum(
        fixture("sha256sum-coreutils-9.1.txt"))


def test_broken_hash_lines_are_ignored():
    found = parse_sha256sum(fixture("sha256sum-broken.txt"))
    assert found == {"/srv/ok.txt": "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"}


def test_df_available_bytes():
    assert parse_df_available(fixture("df-Pk.txt")) == 83165672 * 1024
    assert parse_df_available(fixture("df-Pk-full-spaces.txt")) == 0
    assert parse_df_available(fixture("df-error.txt")) is None
    assert parse_df_available("") is None


def test_unsafe_names_from_a_listing():
    assert unsafe_names(["ok", "..", ".", "", "a/b", "nul\0", ".hidden"]) == ["..", ".", "", "a/b",
                                                                            "nul\0"]


# -- names --------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelled, name", [
    ("10.8.0.81", "10.8.0.81"),
    ("ubuntu@10.8.0.81", "ubuntu@10.8.0.81"),
    ("10.8.0.81:2222", "10.8.0.81_2222"),
    ("ubuntu@[fe80::1]:22", "ubuntu@fe80%3A%3A1_22"),
    ("gpu_01", "gpu%5F01"),
    ("a@b@c", "a@b%40c"),
    ("local", "local"),
])
def test_host_dir_names(spelled, name):
    assert transfer.host_dir_name(parse_host(spelled)) == name


def test_host_dir_names_are_distinct_for_lookalikes():
    spelled = ["gpu1", "gpu1:22", "gpu1_22", "u@gpu1", "u_gpu1", "gpu%5F22", ".", ".."]
    names = [transfer.host_dir_name(Host(h) if h in (".", "..") else parse_host(h)) for h in spelled]
    assert len(set(names)) == len(names)
    assert not any(n in (".", "..") or "/" in n for n in names)


def test_temp_name_is_hidden_beside_the_target_and_unique():
    first, second = transfer.temp_name("/srv/a b/w.bin"), transfer.temp_name("/srv/a b/w.bin")
    assert first.startswith("/srv/a b/.w.bin.") and first.endswith(".part") and first != second
    long = transfer.temp_name("/srv/" + "é" * 200)
    assert len(os.path.basename(long).encode()) <= 255


# -- plans: bad input before connecting ------------------------------------------------------------

def test_plan_put_lists_a_tree(tmp_path):
    (tmp_path / "t" / "sub").mkdir(parents=True)
    (tmp_path / "t" / "a").write_bytes(b"12345")
    (tmp_path / "t" / "sub" / "b").write_bytes(b"1")
    os.mkfifo(tmp_path / "t" / "pipe")
    (tmp_path / "t" / "loop").symlink_to(tmp_path / "t")
    (tmp_path / "t" / "dangling").symlink_to(tmp_path / "nowhere")
    plan = transfer.plan_put(str(tmp_path / "t"), "dest", recursive=True)
    assert plan.name == "t" and plan.is_dir and plan.size == 6
    assert [(e.rel, e.is_dir) for e in plan.entries] == [
        ("", True), ("sub", True), ("a", False), ("sub/b", False)]
    assert sorted(plan.not_copied) == ["dangling", "loop", "pipe"]


@pytest.mark.parametrize("setup, recursive, message", [
    (lambda p: p / "missing", False, "no such file or directory"),
    (lambda p: p, False, "is a directory: pass --recursive"),
    (lambda p: _fifo(p / "fifo"), False, "not a regular file or directory"),
])
def test_plan_put_rejects(tmp_path, setup, recursive, message):
    with pytest.raises(InputError, match=message):
        transfer.plan_put(str(setup(tmp_path)), "dest", recursive)


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("remote", ["", "a\0b", "two\nlines"])
def test_plan_rejects_bad_remote_paths(tmp_path, remote):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError):
        transfer.plan_put(str(tmp_path / "f"), remote)
    with pytest.raises(InputError):
        transfer.plan_get(remote, str(tmp_path / "out"), [Host("h")])


def test_plan_get_makes_localdir_and_refuses_hosts_sharing_a_directory(tmp_path):
    plan = transfer.plan_get("x", str(tmp_path / "new" / "out"), [parse_host("u@h:2"), Host("h")])
    assert os.path.isdir(tmp_path / "new" / "out")
    assert plan.host_dirs == {parse_host("u@h:2"): str(tmp_path / "new" / "out" / "u@h_2"),
                              Host("h"): str(tmp_path / "new" / "out" / "h")}
    with pytest.raises(InputError, match="would share"):
        transfer.plan_get("x", str(tmp_path / "out"), [Host("GPU1"), Host("gpu1")])
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="not a directory"):
        transfer.plan_get("x", str(tmp_path / "file"), [Host("h")])


# -- classification -----------------------------------------------------------------------------

class _NoSpaceLeft(LocalFiles):
    def free_bytes(self, directory):
        return 4096


@pytest.mark.parametrize("exc, action, kind", [
    (FileNotFoundError(errno.ENOENT, "No such file"), "create", "no-such-dir"),
    (PermissionError(errno.EACCES, "Permission denied"), "create", "permission-denied"),
    (OSError(errno.EROFS, "Read-only file system"), "write", "permission-denied"),
    (OSError(errno.ENOSPC, "No space left on device"), "write", "disk-full"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "write", "disk-full"),
    (OSError(errno.ENOTDIR, "Not a directory"), "mkdir", "not-a-directory"),
    (OSError(errno.EISDIR, "Is a directory"), "rename", "is-a-directory"),
    (OSError("Failure"), "write", "disk-full"),  # SFTP's bare failure, and 4 kB free
    (OSError("Failure"), "read", "transfer"),
])
def test_file_failure_kinds(exc, action, kind):
    failure = transfer.file_failure(exc, action, _NoSpaceLeft(), "/srv/x/.f.part", needed=1 << 20)
    assert failure.kind == kind and failure.hint


def test_bare_sftp_failure_with_room_left_is_a_transfer_failure():
    class Roomy(LocalFiles):
        def free_bytes(self, directory):
            return 1 << 40

    failure = transfer.file_failure(OSError("Failure"), "write", Roomy(), "/srv/f", needed=10)
    assert failure.kind == "transfer" and "'Failure'" in failure.message and "quotas" in failure.hint


def test_controller_side_failures_say_so():
    failure = transfer.file_failure(OSError(errno.ENOSPC, "No space left on device"), "write",
                                    LocalFiles(where="the controller"), "/out/h/f")
    assert failure.kind == "disk-full" and "on the controller" in failure.message


# -- rendering ------------------------------------------------------------------------------------

def test_table_and_totals():
    done = transfer.HostTransfer("/srv/w.bin", [transfer.FileCopy("/srv/w.bin", 2_000_000, "changed")],
                                 sent=2_000_000, seconds=0.5)
    same = transfer.HostTransfer("/srv/w.bin", [transfer.FileCopy("/srv/w.bin", 2_000_000, "skipped")])
    failed = Outcome(Host("10.8.0.83"), False, data=transfer.HostTransfer(sent=1_000))
    failed.fail(transfer.Failure("disk-full", "no room", "free some"))
    report = Report([Outcome(Host("10.8.0.81"), True, data=done),
                     Outcome(Host("10.8.0.82"), True, data=same), failed])
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(transfer_render.transfer_view(report, "sent"))
    text = console.export_text()
    assert "changed" in text and "skipped" in text and "disk-full" in text and "no room" in text
    assert "2.0 MB" in text and "4.0 MB/s" in text
    assert "sent 2.0 MB: 1 file changed, 1 skipped (same size and sha256)" in text
    assert transfer_render.transfer_fields(failed)["bytes"] == 1_000
    assert transfer_render.transfer_fields(Outcome(Host("h"), False))["files"] == []
