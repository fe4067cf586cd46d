"""cluster.shell: framing several scripts in one round trip, and the stdin runner."""

from __future__ import annotations

import pytest
from helpers import run_local

from cluster.hosts import Host
from cluster.shell import Section, parse_sections, run_script, sections_script
from cluster.ssh import Engine


def test_sections_keep_each_scripts_output_and_exit_code():
    out = run_local(sections_script([("one", "echo a; echo b >&2; exit 3"), ("two", "echo c")]))
    sections = parse_sections(out.stdout)
    assert sections["one"] == Section("one", "a\nb", 3)
    assert sections["two"] == Section("two", "c", 0)
    cut = parse_sections("@@begin x\npartial")
    assert cut["x"].rc is None and cut["x"].output == "partial"
    with pytest.raises(ValueError):
        sections_script([("bad key", "true")])


def test_run_script_on_local_feeds_the_script_on_stdin():
    engine = Engine()
    session = engine.session(Host("local"))
    secret = "s3cr3t-value"
    result = run_script(session, f'X={secret}\ncat /proc/$$/cmdline | tr "\\0" " "; echo\necho "got $X"\n'
                        "read -r line || echo no-more-stdin\nexit 4")
    assert result.exited == 4
    assert secret not in result.stdout.splitlines()[0]  # not on the shell's command line
    assert "got s3cr3t-value" in result.stdout
    assert "no-more-stdin" in result.stdout  # the script was read whole before it ran
