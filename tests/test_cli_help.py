"""Every task has a docstring, and every option of every task has help text and docs."""

import subprocess
import sys
from pathlib import Path

import pytest

from cluster_cli.tasks import ns

DOCS = Path(__file__).resolve().parent.parent / "docs"
TASKS = sorted(ns.task_names)


def test_there_are_tasks():
    assert {"hosts", "run", "check", "keyscan", "ensure-key"} <= set(TASKS)


@pytest.mark.parametrize("name", TASKS)
def test_task_has_docstring_and_help_for_every_option(name):
    task_obj = ns[name]
    assert (task_obj.body.__doc__ or "").strip(), f"{name} has no docstring"
    missing = [a.name for a in task_obj.get_arguments() if not (a.help or "").strip()]
    assert not missing, f"{name}: options without help: {missing}"


@pytest.mark.parametrize("name", TASKS)
def test_task_is_documented(name):
    text = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    assert f"inv {name}" in text or f"`{name}`" in text, f"docs/ never mentions {name}"


def test_help_flag_after_a_positional_task_shows_help():
    out = subprocess.run([sys.executable, "-m", "cluster_cli", "run", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--timeout" in out.stdout and "Usage" in out.stdout


def test_common_short_flags():
    args = {a.name: a for a in ns["run"].get_arguments()}
    assert "H" in args["hosts"].names and "r" in args["role"].names


def _help(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "cluster_cli", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("name", TASKS)
def test_help_shows_metavars_not_string(name):
    """Issue 14, item 16: `--timeout=SECONDS`, `--fanout=N`, never invoke's `STRING`."""
    from cluster_cli.common import METAVARS

    text = _help(name, "--help")
    assert "STRING" not in text and "=VALUE" not in text, text
    assert text.startswith("Usage: ") and "\nDocstring:\n" in text and "\nOptions:\n" in text
    for arg in ns[name].get_arguments():
        if arg.kind is str and not arg.positional:
            assert f"--{arg.name.replace('_', '-')}={METAVARS[arg.name]}" in text


def test_positional_and_plain_tasks_share_one_help_format():
    """`run --help` (the positional swallows --help) looks like `check --help`."""
    run_help, check_help = _help("run", "--help"), _help("check", "--help")
    assert run_help.splitlines()[0] == "Usage: inv [--core-opts] run [--options] COMMAND"
    assert any(line.startswith("  --fanout=N ") for line in run_help.splitlines())
    assert [line[:30] for line in run_help.splitlines() if "--fanout" in line] == \
        [line[:30] for line in check_help.splitlines() if "--fanout" in line]
    assert "Shell command to run on every host" in run_help  # help texts survive the reparse
    assert _help("put", "--help").splitlines()[0].endswith("put [--options] LOCAL REMOTE")
