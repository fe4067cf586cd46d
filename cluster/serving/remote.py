"""Running serving scripts on hosts: fed on stdin, several per round trip, bounded fan-out.

Every script of the lifecycle goes through :func:`run_script`, so its text (which may
hold secrets from the environment) never becomes a command line. :func:`sections_on`
runs one :func:`cluster.serving.sections.sections_script` per host on the engine's
kept-open connections.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..errors import InputError
from ..hosts import Host, parse_hosts
from ..result import Failure, classify_exception
from ..ssh import CommandResult, Engine, HostSession
from .launch import STDIN_RUNNER
from .sections import Section, parse_sections, sections_script

STEP_TIMEOUT_S = 60.0  # preflight, launch, probe: small scripts


def run_script(session: HostSession, script: str, timeout: float | None = STEP_TIMEOUT_S) -> CommandResult:
    """Run shell ``script`` on the session's host, fed on stdin to ``bash -s`` (``sh -s``).

    The script text (which may hold secrets) never becomes a command line. It is wrapped
    in ``{ … }`` so the shell reads all of it before running any of it: a command that
    reads stdin (an env file, say) cannot swallow the rest. Non-zero exit is a result;
    transport errors raise; past ``timeout`` raises invoke's ``CommandTimedOut``.
    """
    wrapped = "{\n" + script.rstrip("\n") + "\n}\n"
    return session.run(STDIN_RUNNER, timeout=timeout, stdin=wrapped)


def each(engine: Engine, hosts: Sequence[Host], fn: Callable[[HostSession], Any],
          fanout: int | None = None) -> dict[Host, Any]:
    """``fn(session)`` on every host (bounded, connections kept open): host -> value or exception."""
    unique = list(dict.fromkeys(hosts))
    if not unique:
        return {}
    results = engine.call(unique, fn, keep_open=True, fanout=fanout)
    return {session.host: value for session, value in results.items()}


def sections_on(engine: Engine, work: dict[Host, list[tuple[str, str]]], timeout: float,
                 fanout: int | None = None) -> dict[Host, dict[str, Section] | BaseException]:
    """Run each host's sections in one round trip; host -> parsed sections or the exception."""
    def one(session: HostSession) -> dict[str, Section]:
        result = run_script(session, sections_script(work[session.host]), timeout)
        return parse_sections(result.stdout)

    return each(engine, list(work), one, fanout)


def transport_failure(engine: Engine, host: Host, exc: BaseException) -> Failure:
    port = None if host.is_local else (host.port or engine.settings.port or 22)
    return classify_exception(exc, host, port=port, key_description=engine.key_description,
                              known_hosts=engine.settings.known_hosts,
                              connect_timeout=engine.settings.connect_timeout)


def host_of(target: str) -> Host:
    """The SSH target of a recorded server (its host expression item, or ``local``)."""
    hosts = parse_hosts(target)
    if len(hosts) != 1:
        raise InputError(f"bad recorded target {target!r}")
    return hosts[0]
