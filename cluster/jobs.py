"""Detached jobs: a command started on every host in its own session, checked and
stopped later (``inv run --detach NAME``, ``inv jobs``, ``inv logs --job``,
``inv stop --job``; docs/jobs.md).

A job is a name plus, per host, one process launched through `cluster.detach` (the
launch discipline start-pd uses: record before launch, ``setsid``, pid and start-time
identity, run-id marker, verify before signalling, exit code kept). This module adds
what is particular to jobs:

* names, checked before anything runs (:func:`check_name`); on a host a name is only
  ever part of a file name or a quoted value;
* where things are: on each host the detach files of slot ``<name>--<host>`` in
  ``~/.cluster/jobs`` (the host in the name: homes are often shared over NFS); on the
  controller one `Job` record, ``<state dir>/jobs/<name>.json`` (the state dir
  start-pd uses), written before the launch and updated after it;
* a name is held on a host from its start until ``stop`` releases it, also after the
  command ended on its own (its exit code and log stay readable): a second start of
  the name there is refused (``job-exists``), never a second process.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import detach, options, shell
from .errors import InputError, ParameterError, quoted
from .hosts import Host, parse_hosts
from .logs import LogSource
from .result import Failure, Outcome, Report, build_report

if TYPE_CHECKING:
    from .ssh import Engine, HostSession

# Names: a letter or digit first (never an option, never a hidden file), then the
# characters of a portable file name; short enough for a file name with the host in it.
_FIRST = re.compile(r"[A-Za-z0-9]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SEP = "--"  # between the name and the host in a slot

JOBS_DIR = "~/.cluster/jobs"        # on each host
CONTROLLER_SUBDIR = "jobs"           # under the state dir on the controller
MARKER_ENV = "CLUSTER_JOB_RUN_ID"    # every process of a job carries its run id
RECORD_VERSION = 1
DEFAULT_GRACE_S = 10.0
STEP_TIMEOUT_S = 60.0

# Per-host states (docs/jobs.md "States").
STARTING, RUNNING, EXITED, VANISHED = detach.STARTING, detach.RUNNING, detach.EXITED, detach.VANISHED
UNKNOWN = "unknown"  # the host could not be asked

# Failure kinds added by jobs (docs/jobs.md, docs/failures.md).
JOB_EXISTS = "job-exists"        # start: the name is held on that host
JOB_EXITED = "job-exited"        # jobs: the command ended with a non-zero code
JOB_VANISHED = "vanished"        # jobs: the process is gone and left no exit code
NO_JOB = "no-job"                # the host holds no record of the job
STILL_RUNNING = "still-running"  # stop: members survived SIGKILL
RUN_DIR = "run-dir"              # start: the jobs dir cannot be created on the host

EXIT_HELD = 6  # the launch script's "name held by an ended job" (detach uses 4 and 5)

# The command runs as `inv run` runs it: in the login shell sshd sets as $SHELL.
_LOGIN_SHELL = 'exec "${SHELL:-/bin/sh}" -c "$1"'


# --------------------------------------------------------------------------- input


def check_name(name: Any, parameter: str = "name") -> str:
    """A job name: a name as `cluster.options.name` checks it (1-64 of ``[A-Za-z0-9._-]``),
    starting with a letter or digit (never an option, never a hidden file).

    Refused before any connection (`ParameterError`, exit 2): a name becomes part of a
    file name on every host, so no ``/``, spaces, quotes or shell characters.
    """
    if name is None or str(name) == "":
        raise ParameterError(parameter, "{name}: a job name is required")
    text = options.name(name, parameter)
    if not _FIRST.match(text):
        raise ParameterError(parameter, f"{{name}}: a job name starts with a letter or digit, got {quoted(text)}")
    return text


def check_command(command: Any) -> str:
    """The command of a job: not empty, no NUL byte."""
    text = "" if command is None else str(command)
    if not text.strip():
        raise ParameterError("command", "{name}: the command to run is empty")
    if "\0" in text:
        raise ParameterError("command", "{name}: a command cannot hold a NUL byte")
    return text


def check_grace(value: Any) -> float:
    return options.seconds(value, "grace", minimum=0.0, maximum=3600.0, allow_minimum=True)


# --------------------------------------------------------------------------- records


def host_slug(host: Host) -> str:
    """The host's part of its file names: its name or address (and port when one is
    given), made safe for a file name."""
    base = _UNSAFE.sub("_", host.hostname).strip("_") or "host"
    return f"{base}-{host.port}" if host.port else base


def slot_of(name: str, host: Host) -> str:
    return f"{name}{_SEP}{host_slug(host)}"


@dataclass
class JobHost:
    """One host's process of a job: as recorded (controller and host) and as observed.

    ``pid`` = its process group (``setsid``); ``start_time`` = the leader's start in
    clock ticks since boot: with the run id, the identity checked before any signal.
    The fields from ``state`` on are observations, not written to records.
    """

    target: str                 # how the host is reached (host expression item or ``local``)
    name: str
    run_id: str
    command: str
    run_dir: str = JOBS_DIR
    pid: int | None = None
    start_time: int | None = None
    started_at: float | None = None
    state: str = STARTING
    exit_code: int | None = None
    runtime_s: float | None = None
    last_log: str | None = None

    @property
    def host(self) -> Host:
        return host_of(self.target)

    @property
    def detached(self) -> detach.Job:
        """The `cluster.detach.Job` of this process (its files, its launch)."""
        return detach.Job(self.run_dir, slot_of(self.name, self.host), self.run_id,
                          ("sh", "-c", _LOGIN_SHELL, "job", self.command), marker_env=MARKER_ENV)

    @property
    def log_path(self) -> str:
        return self.detached.log

    @property
    def record_path(self) -> str:
        return self.detached.record_path

    @property
    def identity(self) -> detach.Identity | None:
        return detach.Identity(self.pid, self.start_time, self.run_id) if self.pid and self.pid > 1 else None

    _OBSERVED = ("state", "exit_code", "runtime_s", "last_log")

    def to_doc(self) -> dict[str, Any]:
        """What the records hold."""
        doc = asdict(self)
        for name in self._OBSERVED:
            doc.pop(name)
        return doc

    def to_json(self) -> dict[str, Any]:
        """A host row of ``--json`` (the host itself is the row's ``host``)."""
        doc = asdict(self)
        doc.pop("target")
        doc["job"] = doc.pop("name")
        doc.update(log_path=self.log_path, record_path=self.record_path)
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> JobHost:
        """Inverse of :meth:`to_doc` (unknown keys ignored); `ValueError` when it is not one."""
        if not isinstance(doc, Mapping):
            raise ValueError("expected an object")
        names = {f.name for f in fields(cls)} - set(cls._OBSERVED)
        try:
            entry = cls(**{k: v for k, v in doc.items() if k in names})
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        if not all(isinstance(v, str) for v in (entry.target, entry.name, entry.run_id, entry.command)):
            raise ValueError("target, name, run_id and command must be strings")
        check_name(entry.name)
        detach.check_word(entry.run_id, "run id")
        entry.host  # noqa: B018 - a bad target raises here, not later
        return entry


def new_entry(name: str, command: str, host: Host, run_id: str, run_dir: str = JOBS_DIR) -> JobHost:
    """The record of a job's process on ``host`` before it is launched."""
    return JobHost(target=str(host), name=name, run_id=run_id, command=command, run_dir=run_dir)


@dataclass
class Job:
    """A job as the controller recorded it: its name and its processes, one per host
    (two for a moment while a host's earlier entry is being replaced)."""

    name: str
    command: str
    created_at: float
    hosts: list[JobHost] = field(default_factory=list)
    version: int = RECORD_VERSION

    def entries(self, hosts: Sequence[Host] | None = None) -> list[JobHost]:
        """The entries on ``hosts`` (matched by name or address and port; None: all)."""
        if hosts is None:
            return list(self.hosts)
        return [e for e in self.hosts if any(same_host(e.host, h) for h in hosts)]

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "name": self.name, "command": self.command,
                "created_at": self.created_at, "hosts": [e.to_doc() for e in self.hosts]}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    @classmethod
    def loads(cls, text: str, source: str = "job record") -> Job:
        """Parse a controller record; `InputError` naming ``source`` when it is not one."""
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict):
                raise ValueError("expected a JSON object")
            entries = [JobHost.from_doc(e) for e in doc.get("hosts", [])]
            return cls(name=check_name(doc["name"]), command=str(doc["command"]),
                       created_at=float(doc["created_at"]), hosts=entries,
                       version=int(doc.get("version", RECORD_VERSION)))
        except (ValueError, KeyError, TypeError, InputError) as exc:
            raise InputError(f"{source}: not a job record ({exc})") from None


def same_host(a: Host, b: Host) -> bool:
    """Same machine for records: name or address and port (the SSH user does not matter)."""
    return a.hostname == b.hostname and (a.port or 22) == (b.port or 22)


def host_of(target: str) -> Host:
    """The SSH target of a recorded entry."""
    hosts = parse_hosts(target)
    if len(hosts) != 1:
        raise ValueError(f"bad recorded target {target!r}")
    return hosts[0]


# --------------------------------------------------------------------------- controller store


def controller_dir() -> Path:
    """``<state dir>/jobs``: under start-pd's state dir (``$CLUSTER_STATE_DIR``, else
    ``~/.cluster/deployments``)."""
    from .serving.records import state_dir

    return state_dir() / CONTROLLER_SUBDIR


def job_file(name: str) -> Path:
    return controller_dir() / f"{check_name(name)}.json"


def load_job(name: str) -> Job | None:
    """The recorded job ``name``, or None when there is none."""
    path = job_file(name)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"cannot read the job record {path}: {exc.strerror}") from None
    return Job.loads(text, str(path))


def list_jobs() -> list[Job]:
    """Every recorded job, by name. A broken record is an `InputError` naming its file."""
    directory = controller_dir()
    names = sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []
    return [job for name in names if _is_name(name) for job in [load_job(name)] if job]


def _is_name(text: str) -> bool:
    try:
        return check_name(text) == text
    except ParameterError:
        return False


def save_job(job: Job) -> Path:
    """Write the record atomically (temp file + rename), 0600 in a 0700 dir; a job
    without entries is removed."""
    path = job_file(job.name)
    if not job.hosts:
        path.unlink(missing_ok=True)
        return path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(job.dumps() + "\n")
    os.replace(tmp, path)
    return path


def update_job(name: str, change: Callable[[Job | None], Job | None]) -> Job | None:
    """Read, change and write the record of job ``name`` under an exclusive lock
    (``<name>.lock`` beside it): two controllers starting or stopping one name at the
    same time never lose each other's entries. ``change`` gets the record (None: none
    yet) and returns what to write (None: leave it)."""
    lock = job_file(name).with_suffix(".lock")
    lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        job = change(load_job(name))
        if job is not None:
            save_job(job)
        return job
    finally:
        os.close(fd)  # releases the lock


def check_state_dir() -> Path:
    """The controller's jobs dir, created and proven writable, else `InputError` (exit 2):
    checked before launching, so a job never runs unrecorded."""
    from .serving.records import ensure_state_dir

    ensure_state_dir()
    directory = controller_dir()
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {directory}: {exc.strerror} (set CLUSTER_STATE_DIR to a "
                         "writable directory)") from None
    return directory


def new_run_id() -> str:
    from .serving.plan import new_run_id as make

    return make()


# --------------------------------------------------------------------------- start


def _held_check(entry: JobHost) -> str:
    """Exit 6 when a record of the slot (any run) is left: its job ended but holds the name."""
    job = entry.detached
    glob = f"{shell.path(job.run_dir.rstrip('/') or '/')}/{job.slot}@*.json"
    return "\n".join([
        f"for f in {glob}; do",
        '  [ -f "$f" ] || continue',
        f"  echo \"held by an ended run: record $f\" >&2; exit {EXIT_HELD}",
        "done",
    ])


def launch_script(entry: JobHost) -> str:
    """The host's launch: detach's (run dir, slot lock, no live process of the slot,
    record before launch, setsid, pid file), with the check that no ended run of the
    name is still recorded there."""
    doc = json.dumps(entry.to_doc(), sort_keys=True)
    return "\n".join(detach.launch_lines(entry.detached, checks=[_held_check(entry)], doc=doc)) + "\n"


def _launch_failure(name: str, outcome: Outcome) -> Failure:
    code = outcome.exit_code
    message = (outcome.stderr.strip().splitlines() or [f"exit code {code}"])[-1]
    if code in (detach.EXIT_ALREADY_RUNNING, EXIT_HELD):
        return Failure(JOB_EXISTS, f"job {name} is already on this host ({message})",
                       f"`inv jobs --job {name}` shows it; `inv stop --job {name}` ends it and "
                       "releases the name", exit_code=code)
    if code == detach.EXIT_RUN_DIR:
        return Failure(RUN_DIR, message, "the login user must be able to create ~/.cluster/jobs",
                       exit_code=code)
    return Failure("exit", f"launch failed: {message}", "run the command with `inv run` to see why",
                   exit_code=code)


def start(engine: Engine, hosts: Sequence[Host], name: str, command: str, *,
          run_dir: str = JOBS_DIR, fanout: int | None = None,
          on_done: Callable[..., None] | None = None) -> Report:
    """Start ``command`` detached on every host as job ``name``; returns once launched.

    The controller record is written first (entries ``starting``), each host writes its
    own record before its launch, and the record is rewritten with the pids after: an
    interrupt at any point leaves every launched process findable. ``Outcome.data``:
    the host's `JobHost` (``running`` with its pid, or as planned when refused).
    """
    name, command = check_name(name), check_command(command)
    if not hosts:
        raise ParameterError("hosts", "{name}: no host selected")
    check_state_dir()
    run_id = new_run_id()
    fresh = {h: new_entry(name, command, h, run_id, run_dir) for h in dict.fromkeys(hosts)}

    def record(job: Job | None) -> Job:
        job = job or Job(name, command, time.time())
        job.command = command
        job.hosts += list(fresh.values())
        return job

    update_job(name, record)  # before any launch

    def launch(session: HostSession) -> Any:
        entry = fresh[session.host]
        entry.started_at = time.time()
        return shell.run_script(session, launch_script(entry), STEP_TIMEOUT_S)

    def interpret(outcome: Outcome) -> None:
        entry = fresh[outcome.host]
        launched = detach.parse_launch(outcome.stdout)
        if outcome.exit_code == 0 and launched:
            entry.pid, entry.start_time = launched
            entry.state = RUNNING
            return
        outcome.ok = False
        outcome.error = _launch_failure(name, outcome)

    report = _call(engine, list(fresh), launch, fanout, on_done, interpret)
    for outcome in report:
        outcome.data = fresh[outcome.host]
    started = [o.host for o in report if o.ok]

    def settle(job: Job | None) -> Job | None:
        # Keep: other hosts' entries, this run's launched ones, and those of hosts whose
        # connection broke after the launch was sent (they may run: `inv jobs` asks them).
        if job is not None:
            job.hosts = [e for e in job.hosts if (e.run_id == run_id and _may_run(report[e.host]))
                         or (e.run_id != run_id and not any(same_host(e.host, h) for h in started))]
        return job

    update_job(name, settle)
    report.extra.update(job=name, run_id=run_id, command=command)
    return report


# Failures before any command reached the host: nothing can have been launched there.
_NOT_CONNECTED = ("unreachable", "timeout", "auth", "host-key")


def _may_run(outcome: Outcome) -> bool:
    """Started, or the connection broke after the launch was sent (it may run: keep the
    entry so `inv jobs` asks that host); refused or never connected: nothing runs."""
    if outcome.ok:
        return True
    return outcome.exit_code is None and (outcome.error is None or outcome.error.kind not in _NOT_CONNECTED)


def _call(engine: Engine, hosts: Sequence[Host], fn: Callable[[HostSession], Any],
          fanout: int | None, on_done: Callable[..., None] | None,
          interpret: Callable[[Outcome], None] | None = None) -> Report:
    """``fn`` on every host (bounded, connections closed after), as a `Report`."""
    unique = list(dict.fromkeys(hosts))
    if not unique:
        return Report()
    return build_report(engine.call(unique, fn, fanout=fanout, on_done=on_done), engine, interpret)


# --------------------------------------------------------------------------- status


# Per record, after detach's block: the pid and exit files' times on the host's clock
# (runtime) and the log's last line.
_STATUS_EXTRA = (
    'echo "times $(stat -c %Y "$b.pid" 2>/dev/null || echo -) $(stat -c %Y "$b.exit" 2>/dev/null || echo -)"',
    'if [ -f "$b.log" ]; then printf "log %s\\n" "$(tail -n 1 "$b.log" 2>/dev/null | tr -d "\\r" | cut -c1-500)"; fi',
)


def status_command(run_dir: str, pattern: str) -> str:
    """detach's status of the records of ``pattern`` (verified state, exit code), with
    the host's clock, each run's times and the last line of its log."""
    return 'echo "@@now $(date +%s)"\n' + detach.status_script(run_dir, pattern, MARKER_ENV, _STATUS_EXTRA)


@dataclass(frozen=True)
class Observed:
    """What a host said about one record: detach's `Found` plus runtime and last log line."""

    found: detach.Found
    entry: JobHost | None    # the record's own entry (None: unreadable record)
    runtime_s: float | None
    last_log: str | None


def parse_status(stdout: str) -> list[Observed]:
    """One `Observed` per record in :func:`status_command` output (pure)."""
    extras: dict[str, dict[str, Any]] = {}
    now: int | None = None
    current: dict[str, Any] | None = None
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "@@now" and rest.strip().isdigit():
            now = int(rest)
        elif word == "@@record":
            current = extras.setdefault(rest.strip(), {})
        elif current is not None and word == "times":
            current["times"] = [int(t) if t.isdigit() else None for t in rest.split()]
        elif current is not None and word == "log":
            current["log"] = rest.strip()
    observed = []
    for found in detach.parse_status(stdout):
        info = extras.get(found.path, {})
        began, ended = ([*info.get("times", []), None, None])[:2]
        end = ended if ended is not None else now if found.state == RUNNING else None
        runtime = float(end - began) if began is not None and end is not None and end >= began else None
        observed.append(Observed(found, _record_entry(found.record), runtime, info.get("log")))
    return observed


def _record_entry(text: str) -> JobHost | None:
    try:
        doc = json.loads(text)
        return JobHost.from_doc(doc["doc"])
    except (ValueError, KeyError, TypeError, InputError):
        return None


def observe(entry: JobHost, seen: Observed | None) -> Failure | None:
    """Fill ``entry``'s observed state from what its host said; the failure, if any."""
    if seen is None:
        entry.state = VANISHED
        if entry.pid is None:  # the controller never heard back from this host's launch
            return Failure(NO_JOB, f"job {entry.name} (run {entry.run_id}) never started on this host "
                                   "(its start was interrupted)", f"`inv stop --job {entry.name}` forgets it here")
        return Failure(NO_JOB, f"no record of job {entry.name} (run {entry.run_id}) on the host",
                       "its files in ~/.cluster/jobs are gone (removed, or a new disk): "
                       f"`inv stop --job {entry.name}` forgets it here")
    found = seen.found
    if found.identity is not None:
        entry.pid, entry.start_time = found.identity.pgid, found.identity.start
    entry.runtime_s, entry.last_log = seen.runtime_s, seen.last_log
    entry.exit_code = found.code
    if found.state == detach.NOT_STARTED:
        entry.state = STARTING
        return None
    entry.state = found.state if found.state in (RUNNING, EXITED) else VANISHED
    if entry.state == EXITED and entry.exit_code not in (0, None):
        return Failure(JOB_EXITED, f"exited with code {entry.exit_code}",
                       f"`inv logs --job {entry.name}` shows why", exit_code=entry.exit_code)
    if entry.state == VANISHED:
        why = ("its pid now belongs to another process" if found.state == detach.REUSED
               else "it left no exit code")
        return Failure(JOB_VANISHED, f"the process is gone: {why}",
                       "killed (SIGKILL, OOM killer) or the host rebooted; "
                       f"`inv stop --job {entry.name}` releases the name")
    return None


def _base_name(path: str) -> str:
    """A record's file name: the host prints its path with ``~`` expanded."""
    return path.rsplit("/", 1)[-1]


def _patterns(name: str | None, slugs: Iterable[str]) -> list[str]:
    """Slot globs of job ``name`` (None: every job) on hosts known by these slugs."""
    return list(dict.fromkeys(f"{name or '*'}{_SEP}{slug}" for slug in slugs))


def _belongs(entry: JobHost | None, host: Host, name: str | None) -> bool:
    return entry is not None and same_host(entry.host, host) and (name is None or entry.name == name)


def ask_host(session: HostSession, name: str | None, slugs: Iterable[str],
             run_dir: str = JOBS_DIR) -> list[Observed]:
    """The records of job ``name`` (None: every job) on the session's host, observed."""
    script = "".join(status_command(run_dir, p) for p in _patterns(name, slugs))
    result = shell.run_script(session, script, STEP_TIMEOUT_S)
    unique = {o.found.path: o for o in parse_status(result.stdout)}
    return [o for o in unique.values() if _belongs(o.entry, session.host, name)]


def status(engine: Engine, jobs: Sequence[Job], hosts: Sequence[Host] | None = None, *,
           name: str | None = None, fanout: int | None = None,
           on_done: Callable[..., None] | None = None) -> Report:
    """The state of the recorded jobs on their hosts, one `Outcome` per job and host:
    ``running``, ``exited`` (a non-zero code fails as ``job-exited``), ``vanished``
    (fails), or the host's failure. With ``hosts``: only those hosts, and the records
    found there are listed too (so it works from another controller); ``name``: only
    that job."""
    wanted: dict[Host, list[JobHost]] = {h: [] for h in hosts or ()}
    for job in jobs:
        for entry in job.entries(hosts):
            wanted.setdefault(_reach(entry, hosts), []).append(entry)
    slugs = {h: {host_slug(e.host) for e in listed} | ({host_slug(h)} if hosts else set())
             for h, listed in wanted.items()}
    answers = _call(engine, list(wanted), lambda s: ask_host(s, name, slugs[s.host]), fanout, on_done)
    outcomes: list[Outcome] = []
    for answer in answers:
        listed = wanted[answer.host]
        if answer.error is not None:
            for entry in listed:
                entry.state = UNKNOWN
                outcomes.append(Outcome(answer.host, False, error=answer.error, elapsed=answer.elapsed,
                                        data=entry))
            continue
        seen = {_base_name(o.found.path): o for o in answer.data}
        found = [(e, seen.pop(_base_name(e.record_path), None)) for e in listed]
        found += [(o.entry, o) for o in seen.values()]  # on the host, not in the controller's records
        for entry, observed in found:
            failure = observe(entry, observed)
            outcomes.append(Outcome(answer.host, failure is None, error=failure, elapsed=answer.elapsed,
                                    data=entry))
    names = sorted({o.data.name for o in outcomes})
    outcomes.sort(key=lambda o: names.index(o.data.name))  # by job, hosts in order (stable)
    return Report(outcomes, extra={"jobs": names})


def _reach(entry: JobHost, hosts: Sequence[Host] | None) -> Host:
    """How to reach an entry's host: as the user selected it (their user/port), else as recorded."""
    for host in hosts or ():
        if same_host(entry.host, host):
            return host
    return entry.host


# --------------------------------------------------------------------------- stop


@dataclass
class JobStop:
    """What ``stop`` did on one host (``Outcome.data``).

    ``result``: ``stopped`` (it ran; ``how`` = term or kill), ``had exited`` (code in
    ``entry.exit_code``), ``vanished``, ``not started`` or ``still running`` (members
    survived SIGKILL: nothing released).
    """

    entry: JobHost
    result: str
    how: str = ""
    seconds: float | None = None
    pids: tuple[int, ...] = ()
    survivors: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {**self.entry.to_json(), "result": self.result, "how": self.how or None,
                "seconds": self.seconds, "pids": list(self.pids), "survivors": list(self.survivors)}


STOPPED, HAD_EXITED, GONE, NOT_STARTED, SURVIVED, NO_RECORD = (
    "stopped", "had exited", "vanished", "not started", "still running", "no record on host")


def stop_command(observed: Sequence[Observed], grace_s: float) -> str:
    """Stop the verified groups (detach: TERM, grace, KILL, verify), then, only when none
    survived, prune the records of those slots (logs kept): the name is free again."""
    identities = [o.found.identity for o in observed if o.found.identity is not None]
    stop = detach.stop_script(identities, grace_s, MARKER_ENV)
    slots = sorted({(o.entry.run_dir, o.entry.detached.slot) for o in observed if o.entry is not None})
    prune = "".join(f"(\n{detach.prune_script(d, slot, MARKER_ENV)})\n" for d, slot in slots)
    return f'(\n{stop})\nrc=$?\nif [ "$rc" = 0 ]; then\n{prune}fi\nexit "$rc"\n'


def stop(engine: Engine, job: Job | None, name: str, hosts: Sequence[Host] | None = None, *,
         grace: float = DEFAULT_GRACE_S, fanout: int | None = None,
         on_done: Callable[..., None] | None = None) -> Report:
    """Stop job ``name`` on its hosts (``hosts``: only those, and records found there too):
    verify each process is the job's, TERM its group, wait ``grace``, KILL what is left,
    check nothing is; then release the name (records removed, logs kept)."""
    name, grace_s = check_name(name), check_grace(grace)
    listed = job.entries(hosts) if job else []
    targets = list(dict.fromkeys([_reach(e, hosts) for e in listed] + list(hosts or ())))
    if not targets:
        where = " on the selected hosts" if hosts else ""
        raise ParameterError("name", f"{{name}}: no job {name} recorded{where} "
                                     "(name its hosts with -H to look for it there)")
    slugs = {h: {host_slug(e.host) for e in listed if same_host(e.host, h)} | {host_slug(h)} for h in targets}

    def one(session: HostSession) -> list[JobStop]:
        seen = ask_host(session, name, slugs[session.host])
        if not seen:
            return []
        result = shell.run_script(session, stop_command(seen, grace_s), grace_s + STEP_TIMEOUT_S)
        groups = detach.parse_stop(result.stdout)
        return [_stopped(o, groups) for o in seen]

    report = _call(engine, targets, one, fanout, on_done)
    for outcome in report:
        if outcome.ok:
            _stop_outcome(outcome, name, [e for e in listed if same_host(e.host, outcome.host)])
    report.extra.update(job=name, grace_s=grace_s)
    released = [o.host for o in report if o.ok]

    def release(recorded: Job | None) -> Job | None:
        if recorded is not None:
            recorded.hosts = [e for e in recorded.hosts if not any(same_host(e.host, h) for h in released)]
        return recorded

    update_job(name, release)
    return report


def _stopped(seen: Observed, groups: Mapping[int, detach.GroupStop]) -> JobStop:
    entry = seen.entry
    assert entry is not None
    observe(entry, seen)
    identity = seen.found.identity
    group = groups.get(identity.pgid) if identity else None
    if group is not None and group.was_running:
        result = SURVIVED if group.alive else STOPPED
        return JobStop(entry, result, group.how, group.seconds, group.pids, group.alive)
    if entry.state == EXITED:
        return JobStop(entry, HAD_EXITED)
    return JobStop(entry, NOT_STARTED if entry.state == STARTING else GONE)


def _stop_outcome(outcome: Outcome, name: str, recorded: list[JobHost]) -> None:
    """A host's list of `JobStop` as its outcome: ``data`` = the (last) one. Failed when
    something survived SIGKILL, or when neither the host nor the controller knows the
    job there; a controller entry whose host lost its files is released."""
    stops: list[JobStop] = outcome.data or []
    if not stops and recorded:
        recorded[-1].state = VANISHED
        stops = [JobStop(recorded[-1], NO_RECORD)]
    outcome.data = stops[-1] if stops else None
    if not stops:
        outcome.fail(Failure(NO_JOB, f"no record of job {name} on this host",
                             "`inv jobs` lists the jobs and their hosts"))
    elif any(s.result == SURVIVED for s in stops):
        left = " ".join(str(p) for s in stops for p in s.survivors)
        outcome.fail(Failure(STILL_RUNNING, f"processes survived SIGKILL: {left}",
                             "they may be stuck in the kernel (D state); the name stays held"))


# --------------------------------------------------------------------------- logs


def log_sources(job: Job, hosts: Sequence[Host] | None = None) -> list[LogSource]:
    """One `cluster.logs.LogSource` per host of ``job``: its current run's log."""
    sources: dict[Host, list[str]] = {}
    for entry in job.entries(hosts):
        sources.setdefault(_reach(entry, hosts), []).append(entry.log_path)
    return [LogSource(h, tuple(dict.fromkeys(paths))) for h, paths in sources.items()]
