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
