"""What every task shares: the common options, error mapping, output and exit codes.

Tasks stay thin: parse options, call one library function, render, exit.
Exit codes (DESIGN.md): 0 all hosts ok, 1 some host failed, 2 bad input
found before any connection.
"""

from __future__ import annotations

import functools
import gc
import inspect
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke import Exit, Task

from cluster.errors import InputError, ParameterError
from cluster.lazy import lazy
from cluster.render.text import shown

if TYPE_CHECKING:
    from cluster.api import Cluster
    from cluster.render.fold import ViewOptions
    from cluster.result import Report

# Loaded when a task runs, not when `inv --list` imports this module (cluster/lazy.py).
api = lazy("cluster.api")
render = lazy("cluster.render.core")
fold_view = lazy("cluster.render.fold")

COMMON_HELP = {
    "hosts": "Host expression: 'a,b c', 'user@host:port', ranges '10.8.0.[81-83]', "
             "'@file', 'local'. Added to --role hosts.",
    "role": "Role(s) from the roles file, comma-separated (e.g. 'prefill,decode'). "
            "Default: every role's hosts.",
    "roles_file": "Roles file (default: $CLUSTER_ROLES, else ./roles.yaml).",
    "json": "Print one JSON document instead of the table.",
    "fanout": "Hosts in flight at once (default: ssh.fanout in the roles file, else 64).",
}

# The folded status views (cluster.render.fold): gpu-status, sys-status, service-status,
# pd-status, check.
VIEW_HELP = {
    "expand": "One row per host, never folded (the default when the table fits the terminal "
              "or is piped).",
    "fold": "Fold equal hosts into one row (NodeSet range and count) even when the table "
            "fits or is piped.",
    "state": "Only show hosts in this state: ok, warn or failed (the exit code still "
             "covers every host).",
}

MAX_ERROR_LINE = 500

# What an option's value is, shown in --help instead of invoke's STRING (every option
# takes a string, which the library validates). Unlisted: VALUE.
METAVARS = {
    "hosts": "EXPR", "role": "NAMES", "roles_file": "PATH", "fanout": "N", "timeout": "SECONDS",
    "watch": "SECONDS", "interval": "SECONDS", "grace": "SECONDS", "wait": "SECONDS",
    "load_seconds": "SECONDS", "count": "N", "samples": "N", "lines": "N", "gpus": "N",
    "tp_size": "N", "nnodes": "N", "prefill_port": "PORT", "decode_port": "PORT",
    "bootstrap_port": "PORT", "router_port": "PORT", "state": "STATE", "policy": "POLICY",
    "pattern": "REGEX", "grep": "REGEX", "signal": "SIGNAL", "user": "USER", "file": "PATH",
    "save": "DIR", "state_dir": "DIR", "env_file": "PATH", "deployment": "NAME", "engine": "ENGINE",
    "model_path": "MODEL", "extra_args": "ARGS", "prefill": "EXPR", "decode": "EXPR", "router": "HOST",
    "base": "PREFIX", "sweep": "SCOPE", "command": "COMMAND", "names": "NAMES", "local": "PATH",
    "remote": "PATH", "localdir": "DIR", "job": "NAME", "detach": "NAME", "env": "NAME=VAL",
    "defects": "LIST",
}

# Short flags are explicit: invoke would derive -h from "hosts", clashing with --help.
COMMON_SHORTFLAGS = {"hosts": "H", "role": "r"}


class ClusterTask(Task):
    """An invoke Task with explicit short flags (``-H/--hosts``, ``-r/--role`` ...)."""

    def __init__(self, *args: Any, shortflags: dict[str, str] | None = None, **kwargs: Any) -> None:
        self.shortflags = {**COMMON_SHORTFLAGS, **(shortflags or {})}
        # invoke pops each help text when it builds the parser; --help after a positional
        # argument (print_task_help) builds the options again and needs them.
        self.help_texts = dict(kwargs.get("help") or {})
        kwargs.setdefault("auto_shortflags", False)
        super().__init__(*args, **kwargs)

    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        opts.setdefault("help", self.help_texts.get(name))
        short = self.shortflags.get(name)
        if short and short not in taken_names:
            opts["names"] = list(opts["names"]) + [short]
        return opts


def cluster_task(*args: Any, help: dict[str, str] | None = None,
                 flags: dict[str, str] | None = None, **kwargs: Any) -> Callable:
    """``@task`` with the common help texts, explicit short flags and error mapping.

    A `ParameterError` from the library names a parameter (``timeout``); the user sees
    the option they typed: ``flags[parameter]`` when given (``{"interval": "--watch"}``),
    else ``--`` + the parameter with dashes.
    """
    merged_help = {**COMMON_HELP, **(help or {})}

    def decorate(body: Callable) -> ClusterTask:
        holder: list[ClusterTask] = []
        wrapped = _map_errors(body, kwargs.get("positional") or [], holder, flags or {})
        names = set(inspect.signature(body).parameters)
        task_help = {k: v for k, v in merged_help.items() if k in names}
        task_obj = ClusterTask(wrapped, help=task_help, **kwargs)
        holder.append(task_obj)
        return task_obj

    if args and callable(args[0]):
        return decorate(args[0])
    return decorate


def flag_of(parameter: str, flags: dict[str, str]) -> str:
    """The option a user types for a library ``parameter``."""
    if parameter.startswith("-"):
        return parameter  # already an option name
    return flags.get(parameter) or "--" + parameter.replace("_", "-")


def _map_errors(body: Callable, positional: list[str], holder: list[ClusterTask],
                flags: dict[str, str]) -> Callable:
    @functools.wraps(body)
    def run(*args: Any, **kwargs: Any) -> Any:
        # invoke hands `inv run --help` to a positional argument as its value.
        if any(kwargs.get(name) in ("-h", "--help") for name in positional) or any(
                a in ("-h", "--help") for a in args[1:]):
            print_task_help(holder[0], binary="cluster" if Path(sys.argv[0]).name == "cluster" else "inv")
            return None
        try:
            return body(*args, **kwargs)
        except ParameterError as exc:
            raise Exit(error_line(exc.naming(flag_of(exc.parameter, flags))), code=2) from None
        except InputError as exc:
            raise Exit(error_line(str(exc)), code=2) from None
        except KeyboardInterrupt as exc:
            # cluster.interrupt.Interrupted names the hosts whose command was stopped.
            raise Exit(f"interrupted: {exc}" if str(exc) else "interrupted", code=130) from None

    return run


def error_line(message: str) -> str:
    """A rejected input as one line on stderr: control characters escaped (a value may
    come from a file), bounded (values are quoted short; this is the backstop)."""
    text = shown(message)
    return "error: " + (text if len(text) <= MAX_ERROR_LINE else text[:MAX_ERROR_LINE] + "...")


def print_task_help(task_obj: ClusterTask, binary: str = "inv") -> None:
    """``TASK --help``, one format for every task (ClusterProgram uses it too, and
    `_map_errors` when a positional argument swallowed ``--help``): usage with the
    positional arguments, the docstring, each option with its metavar and help."""
    import textwrap

    from invoke.parser import ParserContext

    name = task_obj.name.replace("_", "-")
    positional = "".join(f" {p.upper()}" for p in task_obj.positional)
    lines = [f"Usage: {binary} [--core-opts] {name} [--options]{positional}", "", "Docstring:"]
    lines += [f"  {line}" if line.strip() else "" for line in (inspect.getdoc(task_obj.body) or "none").splitlines()]
    lines += ["", "Options:"]
    arguments = {a.name: a for a in task_obj.get_arguments()}
    rows = [(_with_metavar(spec, arguments), help_text or "")
            for spec, help_text in ParserContext(name=name, args=arguments.values()).help_tuples()]
    width = max((len(spec) for spec, _ in rows), default=0)
    wrap = textwrap.TextWrapper(width=max(40, shutil.get_terminal_size().columns - width - 6))
    for spec, help_text in rows:
        chunks = wrap.wrap(help_text) or [""]
        lines.append(f"  {spec:<{width}}    {chunks[0]}".rstrip())
        lines += [f"  {'':<{width}}    {chunk}" for chunk in chunks[1:]]
    print("\n".join(lines))


def _with_metavar(spec: str, arguments: dict[str, Any]) -> str:
    """invoke's ``-H STRING, --hosts=STRING`` with the option's own metavar (`METAVARS`)."""
    long_name = next((part for part in spec.replace("=", " ").split() if part.startswith("--")), "")
    key = long_name[2:].replace("-", "_")
    argument = arguments.get(key) or next((a for a in arguments.values() if long_name[2:] in a.names), None)
    metavar = METAVARS.get(argument.name if argument else key, "VALUE")
    return spec.replace("STRING", metavar).replace("INT", metavar)


def open_cluster(roles_file: str | None = None, fanout: int | None = None,
                 **ssh_overrides: Any) -> Cluster:
    """Load the roles file and apply CLI overrides (raises InputError on bad input)."""
    return api.Cluster.from_roles(roles_file, fanout=fanout, **ssh_overrides)


@contextmanager
def opened(roles_file: str | None = None, fanout: int | None = None,
           **ssh_overrides: Any) -> Iterator[Cluster]:
    cluster = open_cluster(roles_file, fanout, **ssh_overrides)
    # Most of the process's objects exist by now (invoke, the tasks, paramiko, the engine) and
    # live until exit: frozen, the collections of the run and the one at exit (cluster_cli)
    # no longer walk them (about 11 ms of a 64-host `inv run`). Garbage made from here on is
    # collected and finalized as before.
    gc.freeze()
    try:
        yield cluster
    finally:
        cluster.close()


def view_options(console: Any, expand: bool = False, fold: bool = False,
                 state: str | None = None) -> ViewOptions:
    """--expand/--fold/--state for a table printed on ``console`` (exit 2 on a bad value)."""
    height = console.height if console.is_terminal else None
    return fold_view.view_options(expand, fold, state, height)


def finish(report: Report, also_failed: Callable[[Report], bool] | None = None) -> None:
    """Exit 1 when any host failed (the table or JSON was already printed), or when
    ``also_failed(report)`` says so (e.g. gpu-status --strict and a health warning)."""
    sys.stdout.flush()
    if not report.all_ok or (also_failed is not None and also_failed(report)):
        raise Exit(code=1)


def emit(task: str, report: Report, as_json: bool, render_table: Callable[[Report], Any] | None,
         fields: Callable | None = None, started: float | None = None,
         extra: dict[str, Any] | None = None) -> None:
    """`show` for a report the task names itself (its JSON fields and document extras)."""
    report.task = task
    if fields is not None:
        report.fields = fields
    report.extra.update(extra or {})
    show(report, as_json, render_table, started if started is not None else time.monotonic())


def host_task(task: str, operation: Callable[[Cluster, Callable[..., None]], Report], *,
              roles_file: str | None, fanout: Any, hosts: Any, role: Any, as_json: bool,
              table: Callable[[Report], Any] | None,
              summary: Callable[[Report, float], Any] | None = None, delay: float = 1.0,
              also_failed: Callable[[Report], bool] | None = None, **ssh_overrides: Any) -> None:
    """The skeleton of a per-host task, written once: open the cluster, run
    ``operation(cluster, tick)`` under a progress line (``tick`` = the per-host ``on_done``),
    then print the report (``--json``: its own document; else ``table`` and the summary
    line) and exit 0 / 1."""
    started = time.monotonic()
    with opened(roles_file, fanout, **ssh_overrides) as cluster:
        count = len(cluster.hosts(hosts, role))
        with render.progress(count, task, delay=delay) as tick:
            report = operation(cluster, tick)
    show(report, as_json, table, started, summary, also_failed)


def show(report: Report, as_json: bool, table: Callable[[Report], Any] | None, started: float,
         summary: Callable[[Report, float], Any] | None = None,
         also_failed: Callable[[Report], bool] | None = None) -> None:
    """Print ``report`` (its JSON document, or ``table`` + summary line) and set the exit
    code (see `finish`)."""
    if as_json:
        render.print_json(report.to_dict())
    else:
        console = render.stdout_console()
        rendered = table(report) if table is not None else None
        if rendered is not None:
            # Not cropped: a host name wider than the terminal wraps there, never cut.
            console.print(rendered, crop=False)
        elapsed = time.monotonic() - started
        console.print(summary(report, elapsed) if summary else render.summary_line(report, elapsed))
    finish(report, also_failed)
