"""A probe: a command, a pure parser for its stdout, and a classifier for its exit codes.

Probe modules (`cluster.gpu`, `cluster.system`, `cluster.service`) each build their
own `Probe` (``gpu.probe()``...): the command, the parser and the classifier live
together in the probe's module. This module runs any probe across hosts through the
engine (`run_probe`, `cluster.Cluster.probe`) and turns the outcome into
`Outcome.data` (parsed) or a probe-specific `Failure`. Importing it loads no SSH code,
so the pure probe modules can build probes without paramiko.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .result import Failure, Outcome, Report, build_report
from .shell import framed, unframed

if TYPE_CHECKING:
    from .hosts import Host
    from .ssh import Engine, HostSession

Parser = Callable[[str], Any]
Classifier = Callable[[int, str, str, Any], "Failure | None"]


@dataclass(frozen=True)
class Probe:
    """What to run on each host and how to read the answer."""

    name: str
    command: str
    parse: Parser
    classify: Classifier | None = None
    timeout: float | None = None

    def interpret(self, outcome: Outcome) -> None:
        """Parse stdout into ``outcome.data`` and let the probe judge the exit code."""
        outcome.stdout = unframed(outcome.stdout)  # rc-file banners around it dropped
        try:
            outcome.data = self.parse(outcome.stdout)
        except Exception as exc:  # a parser bug must not hide the other hosts
            outcome.data = None
            outcome.fail(Failure("parse", f"cannot parse {self.name} output: {exc}",
                                 "report this with the host's raw output (inv run)"))
            return
        if self.classify is None:
            return
        failure = self.classify(outcome.exit_code or 0, outcome.stdout, outcome.stderr, outcome.data)
        if failure is None:
            outcome.ok, outcome.error = True, None
        else:
            outcome.fail(failure)


def run_probe(engine: Engine, hosts: Sequence[Host], probe: Probe, *, timeout: float | None = None,
              fanout: int | None = None, keep_open: bool = False,
              on_done: Callable[[HostSession, Any], None] | None = None) -> Report:
    """Run ``probe`` on every host and return parsed, classified outcomes in host order."""
    results = engine.run(hosts, framed(probe.command), timeout=timeout or probe.timeout, fanout=fanout,
                         keep_open=keep_open, on_done=on_done)
    return build_report(results, engine, probe.interpret)
