"""Bad input across every task: exit 2 (1 where a host failed), exactly one line on stderr,
never a traceback (DESIGN.md "Exit codes"; issue 14, items 8-13).

Each case is a command line run the way a user runs it (a subprocess, stdout a pipe), in an
empty directory (no ./roles.yaml), with the files the case needs written first. Cases that
would need a host only ever name `local` or a loopback address where nothing listens, and
every one of them must be rejected before a connection is tried.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "cluster_cli"]
INV = [sys.executable, "-m", "invoke", "--search-root", str(REPO)]

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8)
) + "roles:\n  a: local\n"

# Files a case may refer to as {name}; written into the case's directory.
FILES: dict[str, bytes] = {
    "ok.yaml": b"roles:\n  a: 127.0.77.250\n",  # nothing listens there
    "bad-utf8.yaml": b"roles:\n  a: \xff\xfelocal\n",
    "bad-utf8.hosts": b"l\xffocal\n",
    "bomb.yaml": ALIAS_BOMB.encode(),
    "rolez.yaml": b"rolez:\n  a: local\n",
    "porrt.yaml": b"ssh:\n  porrt: 22\nroles:\n  a: local\n",
    "inf.yaml": b"ssh:\n  connect_timeout: .inf\nroles:\n  a: local\n",
    "nan.yaml": b"ssh:\n  connect_timeout: .nan\nroles:\n  a: local\n",
    "negative.yaml": b"ssh:\n  connect_timeout: -1\nroles:\n  a: local\n",
    "fanout0.yaml": b"ssh:\n  fanout: 0\nroles:\n  a: local\n",
    "policy.yaml": b"ssh:\n  host_key_policy: trust-all\nroles:\n  a: local\n",
    "list.yaml": b"- local\n",
    "broken.yaml": b"roles: [a\n",
    "rolelist.yaml": b"roles:\n  a: {x: 1}\n",
    "khdir.yaml": b"ssh:\n  known_hosts: {dir}/adir\nroles:\n  a: 127.0.5.250\n",
    "khunder.yaml": b"ssh:\n  known_hosts: {dir}/ok.yaml/known_hosts\nroles:\n  a: 127.0.5.250\n",
    "capped.yaml": b"limits:\n  max_hosts: 10\nroles:\n  a: gpu[01-11]\n",
    "badlimit.yaml": b"limits:\n  max_hosts: lots\nroles:\n  a: local\n",
    "limitkey.yaml": b"limits:\n  max_hostz: 5\nroles:\n  a: local\n",
    "emptyrole.yaml": b"roles:\n  a:\n",
    "big.hosts": b"local\n" + b"#" * (9 * 1024 * 1024) + b"\n",
    "self.hosts": b"@self.hosts\n",
}
DIRS = ("adir",)

LONG = "d" * 300
LOG = ["-H", "local", "--file", "/etc/hostname"]
NO_MATCH = "zz-cli-input-matches-no-process"
ROLES = ["--roles-file", "{dir}/ok.yaml"]

# (id, argv, expected exit code, a word the error line must hold)
CASES = [
    # item 9: invoke's own parser errors
    ("run-no-command", ["run"], 2, "COMMAND"),
    ("run-two-commands", ["run", "a", "b"], 2, "'b'"),
    ("run-timeout-no-value", ["run", "--timeout"], 2, "--timeout"),
    ("hosts-unknown-flag", ["hosts", "--bogus"], 2, "--bogus"),
    ("unknown-task", ["no-such-task"], 2, "no-such-task"),
    ("gpu-status-watch-no-value", ["gpu-status", "--watch"], 2, "--watch"),
    ("put-one-positional", ["put", "only-one"], 2, "REMOTE"),
    ("get-three-positionals", ["get", "a", "b", "c"], 2, "'c'"),
    ("help-unknown-task", ["--help", "no-such-task"], 2, "no-such-task"),
    ("list-unknown-collection", ["--list", "no-such-collection"], 2, "no-such-collection"),
    # item 10: empty selections
    ("hosts-empty-H", ["hosts", "-H", "", *ROLES], 2, "no hosts selected"),
    ("hosts-empty-r", ["hosts", "-r", "", *ROLES], 2, "no hosts selected"),
    ("kill-empty-H", ["kill", "-H", "", "--pattern", NO_MATCH, *ROLES], 2, "no hosts selected"),
    ("hosts-commas-only", ["hosts", "-H", " , ", *ROLES], 2, "no hosts selected"),
    ("empty-role", ["hosts", "-r", "a", "--roles-file", "{dir}/emptyrole.yaml"], 2, "no hosts selected"),
    # item 8/11: host expressions
    ("port-not-a-number", ["hosts", "-H", "127.0.5.1:abc", *ROLES], 2, "127.0.5.1:abc"),
    ("port-zero", ["hosts", "-H", "127.0.5.1:0", *ROLES], 2, "port"),
    ("port-too-big", ["hosts", "-H", "127.0.5.1:70000", *ROLES], 2, "port"),
    ("expansion-cap", ["hosts", "-H", "127.[0-255].[0-255].[0-255]", *ROLES], 2, "100,000"),
    ("expansion-cap-just-over", ["hosts", "-H", "10.0.[0-100000]", *ROLES], 2, "100,000"),
    ("expansion-cap-roles", ["hosts", "--roles-file", "{dir}/capped.yaml"], 2, "max_hosts"),
    ("bad-limit", ["hosts", "--roles-file", "{dir}/badlimit.yaml"], 2, "max_hosts"),
    ("hostfile-dev-zero", ["hosts", "-H", "@/dev/zero", *ROLES], 2, "/dev/zero"),
    ("hostfile-too-big", ["hosts", "-H", "@{dir}/big.hosts", *ROLES], 2, "big.hosts"),
    ("hostfile-bad-utf8", ["hosts", "-H", "@{dir}/bad-utf8.hosts", *ROLES], 2, "UTF-8"),
    ("hostfile-missing", ["hosts", "-H", "@{dir}/nope", *ROLES], 2, "nope"),
    ("hostfile-is-dir", ["hosts", "-H", "@{dir}/adir", *ROLES], 2, "adir"),
    ("hostfile-includes-itself", ["hosts", "-H", "@{dir}/self.hosts", *ROLES], 2, "itself"),
    ("at-alone", ["hosts", "-H", "@", *ROLES], 2, "@"),
    ("unclosed-range", ["hosts", "-H", "gpu[1-", *ROLES], 2, "gpu[1-"),
    ("unknown-role", ["hosts", "-r", "nosuch", *ROLES], 2, "nosuch"),
    ("long-value-quoted-short", ["hosts", "-r", "x" * 5000, *ROLES], 2, "characters"),
    # item 8/11/12: the roles file
    ("roles-bad-utf8", ["hosts", "--roles-file", "{dir}/bad-utf8.yaml"], 2, "UTF-8"),
    ("roles-missing", ["hosts", "--roles-file", "{dir}/nope.yaml"], 2, "nope.yaml"),
    ("roles-is-dir", ["hosts", "--roles-file", "{dir}/adir"], 2, "adir"),
    ("roles-alias-bomb", ["hosts", "--roles-file", "{dir}/bomb.yaml"], 2, "alias"),
    ("roles-unknown-top-key", ["hosts", "--roles-file", "{dir}/rolez.yaml"], 2, "rolez"),
    ("roles-unknown-ssh-key", ["hosts", "--roles-file", "{dir}/porrt.yaml"], 2, "porrt"),
    ("connect-timeout-inf", ["check", "--roles-file", "{dir}/inf.yaml"], 2, "connect_timeout"),
    ("connect-timeout-nan", ["check", "--roles-file", "{dir}/nan.yaml"], 2, "connect_timeout"),
    ("connect-timeout-negative", ["check", "--roles-file", "{dir}/negative.yaml"], 2, "connect_timeout"),
    ("fanout-zero-in-file", ["hosts", "--roles-file", "{dir}/fanout0.yaml"], 2, "fanout"),
    ("policy-bad-in-file", ["hosts", "--roles-file", "{dir}/policy.yaml"], 2, "host_key_policy"),
    ("roles-not-mapping", ["hosts", "--roles-file", "{dir}/list.yaml"], 2, "mapping"),
    ("roles-bad-yaml", ["hosts", "--roles-file", "{dir}/broken.yaml"], 2, "YAML"),
    ("role-bad-value", ["hosts", "--roles-file", "{dir}/rolelist.yaml"], 2, "roles.a"),
    # item 13: local file problems are one error before connecting
    ("known-hosts-is-dir", ["check", "--roles-file", "{dir}/khdir.yaml"], 2, "known_hosts"),
    ("known-hosts-under-file", ["check", "--roles-file", "{dir}/khunder.yaml"], 2, "known_hosts"),
    ("logs-save-is-file", ["logs", *LOG, "--save", "{dir}/ok.yaml", *ROLES], 2, "--save"),
    ("logs-save-under-file", ["logs", *LOG, "--save", "{dir}/ok.yaml/sub", *ROLES], 2, "--save"),
    # item 8/10: timeouts and other numbers
    ("run-timeout-abc", ["run", "--timeout", "abc", "true", *ROLES], 2, "--timeout"),
    ("run-timeout-negative", ["run", "--timeout", "-1", "true", *ROLES], 2, "--timeout"),
    ("run-timeout-zero", ["run", "--timeout", "0", "true", *ROLES], 2, "--timeout"),
    ("run-timeout-nan", ["run", "--timeout", "nan", "true", *ROLES], 2, "--timeout"),
    ("run-timeout-inf", ["run", "--timeout", "inf", "true", *ROLES], 2, "--timeout"),
    ("gpu-status-timeout-nan", ["gpu-status", "--timeout", "nan", *ROLES], 2, "--timeout"),
    ("gpu-status-watch-abc", ["gpu-status", "--watch", "abc", *ROLES], 2, "--watch"),
    ("gpu-status-count-negative", ["gpu-status", "--watch", "1", "--count", "-1", *ROLES], 2, "--count"),
    ("sys-status-samples-zero", ["sys-status", "--samples", "0", *ROLES], 2, "--samples"),
    ("sys-status-interval-inf", ["sys-status", "--interval", "inf", *ROLES], 2, "--interval"),
    ("service-status-timeout", ["service-status", "sshd", "--timeout", "-5", *ROLES], 2, "--timeout"),
    ("fanout-abc", ["run", "true", "--fanout", "abc", *ROLES], 2, "fanout"),
    ("fanout-zero", ["run", "true", "--fanout", "0", *ROLES], 2, "fanout"),
    ("kill-signal-bogus", ["kill", "--pattern", NO_MATCH, "--signal", "BOGUS", *ROLES], 2, "--signal"),
    ("kill-pattern-bad-regex", ["kill", "--pattern", "(", *ROLES], 2, "--pattern"),
    ("kill-wait-nan", ["kill", "--pattern", NO_MATCH, "--wait", "nan", *ROLES], 2, "--wait"),
    ("logs-lines-abc", ["logs", "--lines", "abc", *ROLES], 2, "--lines"),
    ("logs-grep-bad-regex", ["logs", "--grep", "(", *ROLES], 2, "--grep"),
    ("logs-deployment-too-long", ["logs", "--deployment", LONG, *ROLES], 2, "--deployment"),
    ("logs-timeout-inf", ["logs", "--follow", "--timeout", "inf", *ROLES], 2, "--timeout"),
    ("check-state-bogus", ["check", "--state", "bogus", *ROLES], 2, "--state"),
    ("keyscan-policy-bogus", ["keyscan", "--policy", "bogus", *ROLES], 2, "--policy"),
    ("put-missing-local", ["put", "{dir}/nope", "/tmp/x", "-H", "local", *ROLES], 2, "nope"),
    ("get-timeout-zero", ["get", "/etc/hostname", "{dir}/adir", "-H", "local", "--timeout", "0", *ROLES], 2, "--timeout"),
    # item 12: values that would reach a remote command as an option
    ("start-pd-model-dash", ["start-pd", "--prefill", "local", "--decode", "local", "--model-path", "-x", "--dry-run", *ROLES],
     2, "--model-path"),
    ("start-pd-deployment-dash", ["start-pd", "--prefill", "local", "--decode", "local", "--model-path", "m",
                                  "--deployment", "-x", "--dry-run", *ROLES], 2, "--deployment"),
    ("start-pd-deployment-too-long", ["start-pd", "--prefill", "local", "--decode", "local", "--model-path", "m",
                                      "--deployment", LONG, "--dry-run", *ROLES], 2, "--deployment"),
    ("start-pd-tp-abc", ["start-pd", "--prefill", "local", "--decode", "local", "--model-path", "m", "--tp-size", "abc",
                         "--dry-run", *ROLES], 2, "--tp-size"),
    ("start-pd-port-too-big", ["start-pd", "--prefill", "local", "--decode", "local", "--model-path", "m",
                               "--prefill-port", "70000", "--dry-run", *ROLES], 2, "--prefill-port"),
    ("start-pd-timeout-nan", ["start-pd", "--prefill", "local", "--decode", "local", "--model-path", "m",
                              "--timeout", "nan", "--dry-run", *ROLES], 2, "--timeout"),
    ("stop-pd-grace-nan", ["stop-pd", "--grace", "nan", *ROLES], 2, "--grace"),
    ("stop-pd-sweep-bogus", ["stop-pd", "--sweep", "bogus", *ROLES], 2, "--sweep"),
    ("stop-pd-deployment-dash", ["stop-pd", "--deployment", "-x", *ROLES], 2, "--deployment"),
    ("restart-pd-grace-negative", ["restart-pd", "--grace", "-1", *ROLES], 2, "--grace"),
    ("pd-status-deployment-slash", ["pd-status", "--deployment", "a/b", *ROLES], 2, "--deployment"),
    ("service-status-name-dash", ["service-status", "a,-x", *ROLES], 2, "-x"),
    ("kill-user-dash", ["kill", "--pattern", NO_MATCH, "--user", "-x", *ROLES], 2, "--user"),
    ("sim-up-count-and-hosts", ["sim-up", "--count", "2", "--hosts", "2", "--state-dir", "{dir}/sim"], 2, "--count"),
    ("limits-unknown-key", ["hosts", "--roles-file", "{dir}/limitkey.yaml"], 2, "max_hostz"),
    ("start-pd-prefill-empty", ["start-pd", "--prefill", "", "--decode", "local", "--model-path", "m", "--dry-run", *ROLES],
     2, "no hosts selected"),
    ("sim-up-gpus-abc", ["sim-up", "--gpus", "abc", "--state-dir", "{dir}/sim"], 2, "--gpus"),
    ("sim-up-count-zero", ["sim-up", "--count", "0", "--state-dir", "{dir}/sim"], 2, "--count"),
    ("sim-up-load-nan", ["sim-up", "--load-seconds", "nan", "--state-dir", "{dir}/sim"], 2, "--load-seconds"),
    ("sim-up-base-not-loopback", ["sim-up", "--base", "10.8.0.", "--state-dir", "{dir}/sim"], 2, "--base"),
]


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("cli-input")
    for name, data in FILES.items():
        (where / name).write_bytes(data.replace(b"{dir}", str(where).encode()))
    for name in DIRS:
        (where / name).mkdir()
    return where


def run_case(command: list[str], argv: list[str], where: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CLUSTER_ROLES", "INVOKE_DEBUG", "COLUMNS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    args = [a.replace("{dir}", str(where)) for a in argv]
    return subprocess.run([*command, *args], capture_output=True, cwd=where, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)


def assert_one_line(proc: subprocess.CompletedProcess, code: int, word: str, where: Path) -> str:
    err = proc.stderr.decode(errors="replace")
    out = proc.stdout.decode(errors="replace")
    assert "Traceback" not in err + out, err
    assert proc.returncode == code, f"exit {proc.returncode}, stderr:\n{err}\nstdout:\n{out[:2000]}"
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0], f"stderr is not one line:\n{err}"
    assert len(lines[0]) < 600, lines[0]
    assert word.replace("{dir}", str(where)) in lines[0], lines[0]
    return lines[0]


def test_the_corpus_is_large():
    assert len(CASES) >= 50
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,argv,code,word", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_code(case_dir, name, argv, code, word):
    assert_one_line(run_case(CLI, argv, case_dir), code, word, case_dir)


@pytest.mark.parametrize("argv,word", [(["run"], "COMMAND"), (["run", "a", "b"], "'b'"),
                                       (["hosts", "--bogus"], "--bogus"), (["run", "--timeout"], "--timeout")])
def test_inv_parser_errors_exit_2(case_dir, argv, word):
    """`inv` runs invoke's own Program: tasks.py switches it to the CLI's exit codes."""
    assert_one_line(run_case(INV, argv, case_dir), 2, word, case_dir)


def test_an_unexpected_exception_is_one_line_unless_debug(case_dir):
    """The top-level guard: a crash is one line + exit 1; --debug shows the traceback."""
    from cluster_cli import program

    env_crash = ["-c", "import sys; from cluster_cli import main, common; "
                 "common.open_cluster = lambda *a, **k: 1 / 0; sys.argv[0] = 'cluster'; main.main()"]
    proc = run_case([sys.executable, *env_crash], ["hosts"], case_dir)
    line = assert_one_line(proc, 1, "ZeroDivisionError", case_dir)
    assert "--debug" in line
    proc = run_case([sys.executable, *env_crash], ["--debug", "hosts"], case_dir)
    assert proc.returncode == 1 and b"Traceback" in proc.stderr
    assert program.BROKEN_PIPE_EXIT == 141


@pytest.mark.parametrize("command", [CLI, INV], ids=["cluster", "inv"])
def test_list_into_a_closed_pipe_is_silent(case_dir, command):
    """`--list | head -3` where head has gone: nothing on stderr, no BrokenPipeError."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone: every write fails with EPIPE
    try:
        proc = subprocess.run([*command, "--list"], stdout=write_end, stderr=subprocess.PIPE, cwd=case_dir,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    finally:
        os.close(write_end)
    assert proc.stderr == b"", proc.stderr
    assert proc.returncode == 141
