"""`logs` against hostile files and directories (issue 14, items 5 and 6), over real sshd:
a log holding a NUL byte is still grepped as text, and ``--save`` never follows a symlink
planted in the save directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cluster.logs import follow_command, read_command

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.1.2"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster_cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env={**os.environ, "COLUMNS": "200"})


def test_grep_treats_a_log_with_a_nul_byte_as_text(fleet, tmp_path):
    log = fleet.host_dir(HOST) / "nul.log"
    log.write_bytes(b"start ERROR one\n\x00binary junk\nlater ERROR two\n")
    log.chmod(0o644)
    roles = fleet.write_roles(tmp_path / "roles.yaml", {"all": HOST})
    proc = cli("logs", "-H", HOST, "--file", str(log), "--grep", "ERROR", "--roles-file", str(roles), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["hosts"][0]["lines"] == ["start ERROR one", "later ERROR two"]
    assert "grep -a " in read_command([str(log)], 10, "ERROR")
    assert "grep -a --line-buffered" in follow_command([str(log)], 10, "ERROR")


def test_save_never_follows_a_planted_symlink(fleet, tmp_path):
    log = fleet.host_dir(HOST) / "save.log"
    log.write_text("line 1\nline 2\n")
    log.chmod(0o644)
    roles = fleet.write_roles(tmp_path / "roles.yaml", {"all": HOST})
    out_dir = tmp_path / "saved"
    out_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for name in (f"{HOST}.log.part", f".{HOST}.log.part"):
        (out_dir / name).symlink_to(victim)
    proc = cli("logs", "-H", HOST, "--file", str(log), "--save", str(out_dir), "--roles-file", str(roles))
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "precious\n"
    saved = out_dir / f"{HOST}.log"
    assert not saved.is_symlink() and saved.read_text() == "line 1\nline 2\n"
    # Saving again replaces the file (a symlink planted at the final name included), atomically.
    saved.unlink()
    saved.symlink_to(victim)
    proc = cli("logs", "-H", HOST, "--file", str(log), "--save", str(out_dir), "--roles-file", str(roles))
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "precious\n" and not saved.is_symlink()
    assert not [p for p in out_dir.iterdir() if p.name.endswith(".part") and not p.is_symlink()]
