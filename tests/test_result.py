"""Failure classification and output folding (no network)."""

import errno
import socket

import paramiko
import pytest
from invoke.exceptions import CommandTimedOut
from invoke.runners import Result

from cluster.hostkeys import HostKeyUnknown
from cluster.hosts import Host
from cluster.result import Outcome, Report, classify_exception, exit_failure, fold_outputs
from cluster.ssh import CommandResult, HandshakeTimeout

HOST = Host("10.8.0.81", port=2222)


def refused() -> Exception:
    return paramiko.ssh_exception.NoValidConnectionsError(
        {("10.8.0.81", 2222): OSError(errno.ECONNREFUSED, "Connection refused")})


@pytest.mark.parametrize("exc, kind, hint_word", [
    (refused(), "unreachable", "sshd running"),
    (socket.gaierror(-2, "Name or service not known"), "unreachable", "DNS"),
    (TimeoutError("timed out"), "timeout", "firewalled"),
    (HandshakeTimeout("no SSH banner/handshake within 5 s"), "timeout", "no SSH server"),
    (paramiko.SSHException("Error reading SSH protocol banner"), "timeout", "banner"),
    (paramiko.AuthenticationException("Authentication failed."), "auth", "ensure-key"),
    (paramiko.BadHostKeyException("[10.8.0.81]:2222", paramiko.Ed25519Key.generate() if hasattr(
        paramiko.Ed25519Key, "generate") else paramiko.RSAKey.generate(1024),
        paramiko.RSAKey.generate(1024)), "host-key", "ssh-keygen -R '[10.8.0.81]:2222'"),
    (HostKeyUnknown("unknown host key for [10.8.0.81]:2222 ...; the host-key policy is strict",
                    "check the fingerprint with the host's owner"), "host-key", "strict"),
    (paramiko.SSHException("Incompatible ssh peer"), "ssh", "sshd logs"),
    (CommandTimedOut(Result(command="sleep 9"), 2), "command-timeout", "--timeout"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "unreachable", "network"),
])
def test_every_failure_kind_has_a_hint(exc, kind, hint_word):
    failure = classify_exception(exc, HOST, key_description="~/.ssh/google_compute_engine")
    assert failure.kind == kind
    assert hint_word in failure.hint or hint_word in failure.message


def test_auth_failure_names_the_key():
    failure = classify_exception(paramiko.AuthenticationException("denied"), HOST,
                                 key_description="/k/google_compute_engine (ssh-ed25519 SHA256:x)")
    assert "/k/google_compute_engine" in failure.message


def test_exit_failure_carries_the_code_and_last_stderr_line():
    failure = exit_failure(127, "", "bash: nvidia-smi: command not found\n")
    assert (failure.kind, failure.exit_code) == ("exit", 127)
    assert "command not found" in failure.message


def outcome(name, stdout, code=0):
    ok = code == 0
    return Outcome(Host(name), ok, stdout=stdout, exit_code=code,
                   error=None if ok else exit_failure(code, stdout, ""))


def test_fold_identical_outputs_only_with_same_exit_code():
    outcomes = [outcome("127.0.1.1", "hi\n"), outcome("127.0.1.2", "hi\n"),
                outcome("127.0.1.3", "hi\n", code=1), outcome("127.0.1.4", "hi\n"),
                outcome("127.0.1.5", "other\n")]
    groups = fold_outputs(outcomes)
    assert [(g.folded, g.outcome.exit_code) for g in groups] == [
        ("127.0.1.[1-2,4]", 0), ("127.0.1.3", 1), ("127.0.1.5", 0)]


def test_report_order_and_exit_code():
    report = Report([outcome("b", "x"), outcome("a", "y", code=2)])
    assert [str(o.host) for o in report] == ["b", "a"]
    assert report.exit_code == 1 and len(report.ok) == 1 and report["a"].exit_code == 2
    assert Report([outcome("a", "")]).exit_code == 0


def test_command_result_ok():
    assert CommandResult("true", "", "", 0).ok and CommandResult("false", "", "", 1).failed


# ---------------------------------------------------------------------------
# Report lookup and its JSON document
# ---------------------------------------------------------------------------


def lookup_report() -> Report:
    return Report([Outcome(Host("10.8.0.81"), True), Outcome(Host("10.8.0.82", "ubuntu", 2222), True),
                   Outcome(Host("10.8.0.83", "ops"), False), Outcome(Host("10.8.0.83", "ops"), True)])


@pytest.mark.parametrize("key, index", [
    ("10.8.0.81", 0), (Host("10.8.0.81"), 0), ("ubuntu@10.8.0.81", 0), ("10.8.0.81:22", 0),
    ("ubuntu@10.8.0.81:22", 0),                        # user/port the outcome does not name
    ("ubuntu@10.8.0.82:2222", 1), ("10.8.0.82", 1), ("10.8.0.82:2222", 1), ("ubuntu@10.8.0.82", 1),
    (Host("10.8.0.82", "ubuntu", 2222), 1), (1, 1), ("ops@10.8.0.83", 2),
])
def test_report_lookup_by_host_or_any_of_its_string_forms(key, index):
    report = lookup_report()
    assert report[key] is report.outcomes[index]


@pytest.mark.parametrize("key", ["10.8.0.99", "root@10.8.0.82", "10.8.0.82:22", "bad[range", "[::1"])
def test_report_lookup_misses_are_key_errors(key):
    with pytest.raises(KeyError):
        lookup_report()[key]


def test_report_all_of_gives_every_outcome_of_a_host():
    report = lookup_report()
    assert report.all_of("10.8.0.83") == report.outcomes[2:]
    assert report.all_of("10.8.0.99") == []


def test_report_to_dict_is_the_json_contract():
    class Data:
        def to_json(self):
            return {"answer": 42}

    report = Report([Outcome(Host("a"), True, data=Data()),
                     Outcome(Host("b", "u", 2), False, error=exit_failure(3, "", "boom"))],
                    task="demo", extra={"note": "x"}, totals=lambda r: {"answers": len(r.ok)})
    assert report.to_dict() == {
        "task": "demo",
        "hosts": [{"host": "a", "ok": True, "error": None, "answer": 42},
                  {"host": "u@b:2", "ok": False,
                   "error": {"kind": "exit", "message": "exit code 3: boom",
                             "hint": "the command itself failed on the host (its last output line is "
                                     "quoted)", "exit_code": 3}}],
        "summary": {"ok": 1, "failed": 1, "answers": 1},
        "note": "x",
    }
    import json

    assert json.loads(report.to_json()) == report.to_dict()
    report.fields = lambda outcome: {"mine": str(outcome.host)}
    assert report.to_dict()["hosts"][1]["mine"] == "u@b:2"


def test_unknown_host_key_hint_names_the_host_as_the_user_wrote_it():
    exc = HostKeyUnknown("unknown host key for compute.7 ...", "check the fingerprint with the host's owner")
    failure = classify_exception(exc, Host("gpu-7.us-central1-a.proj"))
    assert failure.kind == "host-key" and failure.message == exc.message
    assert failure.hint.endswith("`inv keyscan --policy accept-new -H gpu-7.us-central1-a.proj`")
