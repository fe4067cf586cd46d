"""The CLI's invoke Program: one line and the right exit code for every way a command line can go wrong.

invoke's own Program exits 1 on its parser errors (unknown flag, missing value, missing or
extra positional argument), the same code as "a host failed", prints a traceback for any
unexpected exception, and one when stdout is a closed pipe (``--list | head``). DESIGN.md
asks for exit 2 and one line for bad input, and a traceback only with ``--debug``.

`ClusterProgram` is used by the ``cluster`` console script and ``python -m cluster_cli``;
``inv`` runs invoke's own Program instance, which loads ``tasks.py`` before it parses the
task arguments: `adopt_running_program` (called from ``tasks.py``) switches that running
instance to `ClusterProgram`, so both entry points behave the same from task parsing on.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from invoke import Exit, ParseError, Program, UnexpectedExit
from invoke.parser import Parser, ParserContext

from cluster.errors import QUOTE_LIMIT, quoted
from cluster.render.text import shown

# Exit status of a process killed by SIGPIPE, what `yes | head` reports for `yes`.
BROKEN_PIPE_EXIT = 141

# invoke's parser messages, said in the words of the option a user typed.
_PARSE_MESSAGES = (
    (re.compile(r"^Flag <Argument: (?P<name>[^>]+?)(?: \([^)]*\))?> needed value and was not given one!$"),
     lambda m: f"{_flag(m['name'])} needs a value"),
    (re.compile(r"^'(?P<task>[^']+)' did not receive required positional arguments: (?P<names>.+)$"),
     lambda m: f"{m['task']}: missing {m['names'].replace(chr(39), '').upper()} (see: inv {m['task']} --help)"),
    (re.compile(r"^No idea what '(?P<word>.*)' is!$", re.S),
     lambda m: f"unknown task, option or extra argument {quoted(m['word'])} (see: inv --list, inv TASK --help)"),
)


def _flag(name: str) -> str:
    name = name.split(",")[0].strip()
    return ("-" if len(name) == 1 else "--") + name.replace("_", "-")


def parse_error_line(exc: ParseError) -> str:
    """The one line shown for an invoke parser error."""
    text = str(exc)
    for pattern, say in _PARSE_MESSAGES:
        match = pattern.match(text)
        if match:
            return "error: " + say(match)
    return "error: " + shown(text)[:QUOTE_LIMIT]


@contextmanager
def _parse_errors() -> Iterator[None]:
    try:
        yield
    except ParseError as exc:
        raise Exit(parse_error_line(exc), code=2) from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null: the reader went away, and the interpreter's final
    flush must not print "Exception ignored ... BrokenPipeError"."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


@contextmanager
def _guard(debug: bool) -> Iterator[None]:
    """The top-level guard: a closed pipe ends quietly; any unexpected exception is one
    line and exit 1 (``--debug`` shows the traceback instead)."""
    try:
        yield
    except (Exit, ParseError, UnexpectedExit, KeyboardInterrupt, SystemExit):
        raise
    except BrokenPipeError:
        _silence_stdout()
        raise SystemExit(BROKEN_PIPE_EXIT) from None
    except Exception as exc:
        if debug:
            raise
        message = shown(str(exc))[:QUOTE_LIMIT] or "(no message)"
        raise Exit(f"error: unexpected {type(exc).__name__}: {message} "
                   "(a bug: rerun with --debug before the task name for the traceback)", code=1) from None


class ClusterProgram(Program):
    """invoke's Program with DESIGN.md's exit codes: 2 for bad input, 1 for a crash."""

    def _debug(self) -> bool:
        args = getattr(self, "args", None)
        flag = bool(args and "debug" in args and args.debug.value)
        return flag or os.environ.get("INVOKE_DEBUG", "").lower() in ("1", "true", "yes")

    def parse_core(self, argv: Any) -> None:
        with _parse_errors(), _guard(self._debug()):
            super().parse_core(argv)

    def _make_parser(self) -> Parser:
        """The task parser, with the contexts of the tasks this command line names.

        invoke builds a context for every task and the parser deep-copies them
        all: 5 ms of every command for 22 tasks. A word that names no task can
        only be an option value or an error, with or without the other
        contexts; shell completion lists every task, so it gets them all.
        """
        complete = bool(getattr(self, "args", None) and self.args.complete.value)
        words = set(self.argv)
        ignore = self.config.tasks.ignore_unknown_help
        contexts = [ParserContext(name=name, aliases=aliases,
                                  args=self.collection[name].get_arguments(ignore_unknown_help=ignore))
                    for name, aliases in self.collection.task_names.items()
                    if complete or name in words or words.intersection(aliases)]
        return Parser(initial=self.initial_context, contexts=contexts)

    def parse_tasks(self) -> None:
        with _parse_errors():
            try:
                super().parse_tasks()
            except ParseError:
                # `inv put --help`: --help became the first positional and the second is
                # "missing"; the user asked for help, not for a parse error.
                words = list(getattr(self.core, "unparsed", []) or [])
                if words and words[0] in self.collection and {"-h", "--help"} & set(words[1:]):
                    self.print_task_help(words[0])
                    raise Exit(code=0) from None
                raise

    def parse_cleanup(self) -> None:
        # --list and --help print here: `--list | head` must end quietly.
        with _parse_errors(), _guard(self._debug()):
            try:
                super().parse_cleanup()
            except Exit as exc:
                # `--list NAME` with no such collection: invoke's Exit(code 1) is bad input.
                if exc.code == 1 and str(exc.message or "").startswith("Sub-collection "):
                    raise Exit(f"error: {shown(str(exc.message))[:QUOTE_LIMIT]} (see: inv --list)", code=2) from None
                raise

    def execute(self) -> None:
        with _guard(self._debug()):
            super().execute()

    def print_task_help(self, name: str) -> None:
        """`inv TASK --help` in the one format every task shares (`common.print_task_help`)."""
        from .common import print_task_help

        print_task_help(self.collection[name], binary=self.binary)


def adopt_running_program() -> None:
    """Make the invoke Program that is loading ``tasks.py`` (``inv``) a `ClusterProgram`.

    invoke calls ``self.parse_tasks()``, ``self.parse_cleanup()`` and ``self.execute()``
    after loading the collection, so a class switched now governs everything from task
    parsing on. Only a plain `Program` is switched: a subclass someone wrote is left alone.
    """
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if type(candidate) is Program:
            candidate.__class__ = ClusterProgram
            return
        frame = frame.f_back
