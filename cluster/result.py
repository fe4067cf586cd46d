"""Per-host outcomes: classification of failures and folding of identical output.

The SSH layer hands back, for every host, either a command result
(stdout/stderr/exit code) or the exception that stopped it. This module turns
that into `Outcome` values in the order the hosts were given, each failed one
carrying a `Failure` with a DESIGN.md kind and a one-line hint.
"""

from __future__ import annotations

import errno
import json
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError
from .hosts import Host, fold_names, parse_host

# The base failure kinds of the public contract. Probes add their own
# (documented) kinds, e.g. ``no-gpu-tool`` or ``driver``.
UNREACHABLE = "unreachable"
TIMEOUT = "timeout"
AUTH = "auth"
HOST_KEY = "host-key"
SSH = "ssh"
EXIT = "exit"
COMMAND_TIMEOUT = "command-timeout"
BASE_KINDS = (UNREACHABLE, TIMEOUT, AUTH, HOST_KEY, SSH, EXIT, COMMAND_TIMEOUT)


@dataclass(frozen=True)
class Failure:
    """Why one host did not succeed: a kind from the contract, a message, a hint."""

    kind: str
    message: str
    hint: str = ""
    exit_code: int | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "message": self.message, "hint": self.hint}
        if self.exit_code is not None:
            doc["exit_code"] = self.exit_code
        return doc


@dataclass
class Outcome:
    """What happened on one host.

    ``data`` holds whatever a probe parsed from stdout (GPU rows, vmstat
    samples...). ``error`` is None exactly when ``ok`` is True.
    """

    host: Host
    ok: bool
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    error: Failure | None = None
    elapsed: float = 0.0
    data: Any = None

    @property
    def failed(self) -> bool:
        return not self.ok

    def fail(self, failure: Failure) -> Outcome:
        """Mark this outcome failed (used by probes that reject a 0-exit output)."""
        self.ok = False
        self.error = failure
        return self


@dataclass
class Report:
    """Outcomes of one operation across hosts, in the order the hosts were given.

    ``task`` names the operation; ``fields`` gives one outcome's task fields in the JSON
    document (default: ``outcome.data.to_json()`` when the data has one); ``extra``
    holds document-level fields and ``totals`` more summary fields. :meth:`to_dict` is
    then exactly what the CLI prints with ``--json``.
    """

    outcomes: list[Outcome] = field(default_factory=list)
    task: str = ""
    fields: Callable[[Outcome], dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    totals: Callable[[Report], dict[str, Any]] | None = None

    def __iter__(self) -> Iterator[Outcome]:
        return iter(self.outcomes)

    def __len__(self) -> int:
        return len(self.outcomes)

    def __getitem__(self, key: int | str | Host) -> Outcome:
        """By index, by `Host`, or by any string form of a host: ``"10.8.0.81"``,
        ``"user@10.8.0.81"``, ``"10.8.0.81:22"``, ``"user@10.8.0.81:2222"``. A user or port
        in the key must match the outcome's when the outcome names one. Several outcomes
        of one host (one per server in pd-status): the first; :meth:`all_of` gives all."""
        if isinstance(key, int):
            return self.outcomes[key]
        found = self.all_of(key)
        if not found:
            raise KeyError(key)
        return found[0]

    def all_of(self, host: str | Host) -> list[Outcome]:
        """Every outcome of ``host`` (a `Host` or a string form of one), in order."""
        exact = [o for o in self.outcomes if o.host == host or str(o.host) == str(host)]
        if exact:
            return exact
        wanted = host if isinstance(host, Host) else _parse_key(host)
        if wanted is None:
            return []
        return [o for o in self.outcomes if _same_host(o.host, wanted)]

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def all_ok(self) -> bool:
        return all(o.ok for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        """0 when every host succeeded, 1 otherwise (the CLI contract)."""
        return 0 if self.all_ok else 1

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document of the contract: ``{"task", "hosts": [{"host", "ok",
        "error", ...task fields}], "summary": {"ok", "failed", ...}, ...extra}``."""
        hosts = []
        for outcome in self.outcomes:
            entry: dict[str, Any] = {"host": str(outcome.host), "ok": outcome.ok,
                                     "error": outcome.error.to_json() if outcome.error else None}
            entry.update(self.fields(outcome) if self.fields else _data_fields(outcome.data))
            hosts.append(entry)
        summary: dict[str, Any] = {"ok": len(self.ok), "failed": len(self.failed)}
        if self.totals is not None:
            summary.update(self.totals(self))
        doc: dict[str, Any] = {"task": self.task, "hosts": hosts, "summary": summary}
        doc.update(self.extra)
        return doc

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text (values JSON cannot hold are written as strings)."""
        return json.dumps(self.to_dict(), indent=indent, default=str)


def command_fields(outcome: Outcome) -> dict[str, Any]:
    """A command's JSON fields (``inv run``): exit code, output, seconds."""
    return {"exit_code": outcome.exit_code, "stdout": outcome.stdout, "stderr": outcome.stderr,
            "elapsed_s": round(outcome.elapsed, 3)}


def _data_fields(data: Any) -> dict[str, Any]:
    to_json = getattr(data, "to_json", None)
    doc = to_json() if callable(to_json) else None
    return doc if isinstance(doc, dict) else {}


def _parse_key(text: str) -> Host | None:
    try:
        return parse_host(text)
    except InputError:
        return None


def _same_host(have: Host, want: Host) -> bool:
    """``want`` names ``have``: same name; user and port equal where both name one."""
    return (have.hostname == want.hostname
            and (want.user is None or have.user is None or have.user == want.user)
            and (want.port is None or have.port is None or have.port == want.port))


@dataclass(frozen=True)
class OutputGroup:
    """Hosts that printed the same stdout with the same exit code (clush -b)."""

    hosts: tuple[Host, ...]
    outcome: Outcome

    @property
    def folded(self) -> str:
        return fold_names([str(h) for h in self.hosts])


def fold_outputs(outcomes: Iterable[Outcome]) -> list[OutputGroup]:
    """Group outcomes with identical (ok, exit code, stdout, failure kind).

    Like ``clush -b`` only hosts with the same return code are merged. Groups
    come out in order of their first host.
    """
    groups: dict[tuple[Any, ...], list[Outcome]] = {}
    for outcome in outcomes:
        kind = outcome.error.kind if outcome.error else None
        message = outcome.error.message if outcome.error and outcome.exit_code is None else None
        key = (outcome.ok, outcome.exit_code, outcome.stdout, kind, message)
        groups.setdefault(key, []).append(outcome)
    return [OutputGroup(tuple(o.host for o in members), members[0]) for members in groups.values()]


# ---------------------------------------------------------------------------
# Classification of transport exceptions
# ---------------------------------------------------------------------------


def classify_exception(
    exc: BaseException,
    host: Host,
    *,
    port: int | None = None,
    key_description: str = "",
    known_hosts: str = "~/.ssh/known_hosts",
    connect_timeout: float | None = None,
) -> Failure:
    """Map an exception raised while reaching/using ``host`` to a `Failure`."""
    # Imported here: paramiko/invoke are heavy and this module's pure parts
    # (folding, dataclasses) are used by tests that never touch SSH.
    import paramiko
    from invoke.exceptions import CommandTimedOut

    from .connect import ChannelOpenError, HopError, ProxyCommandError
    from .hostkeys import HostKeyError
    from .keys import AuthError
    from .ssh import HandshakeTimeout

    if isinstance(exc, HopError):  # the jump host's own failure, named after it
        cause = classify_exception(exc.cause, Host(exc.hop), connect_timeout=connect_timeout)
        return Failure(cause.kind, f"jump host {exc.hop}: {cause.message}",
                       f"{cause.hint} (on the jump host, not {host})")
    if isinstance(exc, ChannelOpenError):
        return Failure(UNREACHABLE, str(exc), f"is sshd running on {exc.target}, and may {exc.hop} reach it?")
    if isinstance(exc, ProxyCommandError):
        return Failure(UNREACHABLE, str(exc), "run the ProxyCommand by hand to see why it fails")
    if isinstance(exc, AuthError):
        return Failure(AUTH, f"authentication failed: {exc}", exc.hint)
    if isinstance(exc, HandshakeTimeout):
        return Failure(TIMEOUT, str(exc), "the port accepts TCP but no SSH server answers: overloaded "
                       "sshd, a firewall/tarpit, or not an SSH port")
    if isinstance(exc, CommandTimedOut):
        return Failure(
            COMMAND_TIMEOUT,
            f"command did not finish within {exc.timeout:g} s",
            "raise the task's --timeout, or check what hangs on that host",
        )
    if isinstance(exc, HostKeyError):  # the store's refusals name the file and entry
        return Failure(HOST_KEY, exc.message, exc.hint_for(str(host)))
    if isinstance(exc, paramiko.BadHostKeyException):
        return _host_key_failure(exc, host, port or host.port or 22, known_hosts)
    if isinstance(exc, paramiko.AuthenticationException):
        tried = f" (tried {key_description})" if key_description else ""
        return Failure(
            AUTH,
            f"authentication failed{tried}: {exc}".rstrip(": "),
            "check the user and key (inv ensure-key), and that the key is in the host's "
            "authorized_keys",
        )
    if isinstance(exc, socket.gaierror):
        return Failure(
            UNREACHABLE,
            f"cannot resolve {host.hostname}: {exc.strerror or exc}",
            "check the host name (DNS or /etc/hosts) or use the IP address",
        )
    port = port or host.port or 22
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return _refused_failure(exc, port)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        limit = f" within {connect_timeout:g} s" if connect_timeout else ""
        return Failure(
            TIMEOUT,
            f"no TCP connection{limit}",
            "host down, firewalled, or wrong address; raise ssh.connect_timeout if the "
            "network is slow",
        )
    if isinstance(exc, paramiko.SSHException):
        return _ssh_protocol_failure(exc, connect_timeout)
    if isinstance(exc, OSError):
        return _os_failure(exc, port)
    return Failure(SSH, f"{type(exc).__name__}: {exc}", "unexpected error; rerun with --json for details")


def _host_key_failure(exc: BaseException, host: Host, port: int, known_hosts: str) -> Failure:
    from .hostkeys import known_hosts_name

    entry = getattr(exc, "hostname", None) or known_hosts_name(host.hostname, port)
    return Failure(
        HOST_KEY,
        f"host key changed for {entry} (possible man-in-the-middle, or the host was rebuilt)",
        f"inspect with `ssh-keygen -F '{entry}' -f {known_hosts}`; if the change is "
        f"expected remove it with `ssh-keygen -R '{entry}' -f {known_hosts}`",
    )


def _refused_failure(exc: BaseException, port: int) -> Failure:
    codes = {getattr(e, "errno", None) for e in getattr(exc, "errors", {}).values()}
    if codes & {errno.ECONNREFUSED}:
        return Failure(
            UNREACHABLE,
            f"connection refused on port {port}",
            "is sshd running on the host and listening on that port?",
        )
    return Failure(
        UNREACHABLE,
        f"cannot connect: {exc}",
        "no route to host: check the address and the network",
    )


def _ssh_protocol_failure(exc: BaseException, connect_timeout: float | None) -> Failure:
    text = str(exc)
    lowered = text.lower()
    if "banner" in lowered or "timeout" in lowered or "timed out" in lowered:
        limit = f" within {connect_timeout:g} s" if connect_timeout else ""
        return Failure(
            TIMEOUT,
            f"SSH handshake did not complete{limit}: {text}",
            "the port answers but no SSH banner came (overloaded sshd, or not an SSH "
            "server on that port)",
        )
    if "not found in known_hosts" in lowered:
        return Failure(HOST_KEY, text, "host_key_policy is strict: record the key with `inv keyscan`")
    return Failure(SSH, f"SSH error: {text}", "protocol-level failure; check sshd logs on the host")


def _os_failure(exc: OSError, port: int) -> Failure:
    if exc.errno in (errno.ECONNREFUSED,):
        return Failure(
            UNREACHABLE,
            f"connection refused on port {port}",
            "is sshd running on the host and listening on that port?",
        )
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
        return Failure(UNREACHABLE, f"cannot connect: {exc.strerror}", "check the address and the network")
    if exc.errno in (errno.ETIMEDOUT,):
        return Failure(TIMEOUT, f"connect timed out: {exc.strerror}", "host down or firewalled")
    return Failure(SSH, f"{type(exc).__name__}: {exc}", "connection broke; retry, and check the host")


def exit_failure(exit_code: int, stdout: str, stderr: str) -> Failure:
    """The generic failure for a command that ran and exited non-zero."""
    last = _last_line(stderr) or _last_line(stdout)
    message = f"exit code {exit_code}" + (f": {last}" if last else "")
    # No "see stderr above": most tasks show no stderr; the message quotes its last line.
    hint = ("command not found on the host" if exit_code == 127
            else "the command itself failed on the host (its last output line is quoted)")
    return Failure(EXIT, message, hint, exit_code=exit_code)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def order_like(hosts: Sequence[Host], outcomes: dict[Host, Outcome]) -> list[Outcome]:
    """Outcomes in the order ``hosts`` were given."""
    return [outcomes[h] for h in hosts]


# ---------------------------------------------------------------------------
# From a Fabric GroupResult to a Report
# ---------------------------------------------------------------------------

def to_outcome(host: Host, value: Any, elapsed: float, *, port: int | None = None,
               key_description: str = "",
               known_hosts: str = "~/.ssh/known_hosts", connect_timeout: float | None = None) -> Outcome:
    """One host's command result (stdout/stderr/exited) or exception, as an `Outcome`."""
    if isinstance(value, BaseException):
        failure = classify_exception(value, host, port=port, key_description=key_description,
                                     known_hosts=known_hosts, connect_timeout=connect_timeout)
        partial = getattr(getattr(value, "result", None), "stdout", "") or ""
        return Outcome(host, False, stdout=partial if isinstance(partial, str) else "",
                       error=failure, elapsed=elapsed)
    exited = getattr(value, "exited", None)
    if exited is None:  # a plain Python value returned by a per-host function
        return Outcome(host, True, elapsed=elapsed, data=value)
    outcome = Outcome(host, exited == 0, stdout=value.stdout, stderr=value.stderr,
                      exit_code=exited, elapsed=elapsed)
    if exited != 0:
        outcome.error = exit_failure(exited, value.stdout, value.stderr)
    return outcome


def build_report(results: Any, engine: Any, interpret: Any = None) -> Report:
    """Turn a GroupResult (session -> result or exception) into a `Report` in host order.

    ``interpret(outcome)`` lets a probe parse stdout into ``outcome.data`` and
    reclassify exit codes it understands; it runs only for hosts that were reached.
    """
    settings = engine.settings
    outcomes = []
    for session, value in results.items():
        outcome = to_outcome(session.host, value, session.elapsed, port=session.port,
                             key_description=engine.key_description,
                             known_hosts=settings.known_hosts or "~/.ssh/known_hosts",
                             connect_timeout=session.connect_timeout)
        if interpret is not None and outcome.exit_code is not None:
            interpret(outcome)
        outcomes.append(outcome)
    return Report(outcomes)
