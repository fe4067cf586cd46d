"""start-pd and restart-pd over SSH: start a planned deployment and wait until it
serves; replace some servers of a recorded one.

Everything that runs on a host is built by :mod:`.scripts` and fed to the host's shell
on stdin (:func:`cluster.shell.run_sections`), one round trip per host and step, over
connections that stay open for the next step.

start (:func:`start_pd`, the plan from :func:`cluster.serving.plan.plan_start`)
    0. the state dir is writable (a probe file created, fsynced, renamed) and the
       deployment's lock (``flock`` on ``<state dir>/<name>.lock``) is free, else nothing
       starts: one start-pd per deployment name at a time.
    1. preflight on every host: run dir creatable, env file, a live server in the slot
       (identity verified: ``already-running``), ports, launcher; plus the recorded
       deployment of the same name (still running elsewhere?). Any failure: nothing
       starts anywhere.
    2. ``restart``: stop what the preflight found running (and the recorded deployment).
    3. write the manifest (every process, no pid yet), then launch every server
       detached (:mod:`cluster.detach`: the per-host record is written before the start,
       under the slot's lock), then write the manifest again with the pids. An interrupt
       at any instant leaves every launched process findable (manifest + host records).
       The router, if planned, is launched right after the servers: it waits for them.
    4. wait (unless ``wait=False``): poll the engine's health path of each rank 0 *from
       its host*, check every rank's process; a dead server fails fast with its last 30
       log lines; an overall deadline.
    5. the router, if planned: wait for its readiness (it lists every server then).

restart (:func:`restart_pd`): the recorded servers on the chosen hosts (every rank of
each), or those whose process is gone: stop what is left of them, launch them again
from their recorded specs under a new run id, wait until ready, and make sure the router
lists them (re-register, or restart the router when it cannot add workers at run time).
Every other process is left alone.

Failure kinds: ``env-file``, ``run-dir``, ``already-running``, ``port-busy``,
``no-launcher``, ``launch``, ``died``, ``not-ready``, ``survivors``, ``router``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import detach, shell
from ..errors import InputError, ParameterError
from ..hosts import Host
from ..options import seconds
from ..result import Failure, Outcome, Report
from . import engines
from .plan import ROUTER, ProcessSpec, StartPlan, new_run_id
from .records import (
    DRY_RUN,
    FAILED,
    LOADING,
    MANIFEST_VERSION,
    NOT_STARTED,
    PLANNED,
    READY,
    RUNNING,
    STARTED,
    STARTING,
    DeploymentLock,
    Manifest,
    ServerRecord,
    ensure_state_dir,
    fill_identities,
    host_of,
    load_manifest,
    manifest_file,
    record_doc,
    save_manifest,
)
from .scripts import (
    EXIT_ALREADY_RUNNING,
    EXIT_ENV_FILE_MISSING,
    EXIT_LAUNCHER_MISSING,
    EXIT_MESSAGES,
    EXIT_PORT_BUSY,
    EXIT_RUN_DIR,
    ProbeResult,
    ProbeTarget,
    clean_log_lines,
    http_call_command,
    launch_of,
    launch_script,
    parse_http_call,
    parse_probe,
    preflight_script,
    probe_command,
    render_for_display,
    tail_command,
)
from .status import judge_status, observe, parse_workers, probe_records, probe_target, worker_urls
from .stop import PORT_BUSY, SURVIVORS, StopWork, check_grace, stop_failure, stop_hosts

if TYPE_CHECKING:
    from ..ssh import Engine

DEFAULT_TIMEOUT_S = 1800.0
POLL_INTERVAL_S = 1.0
LOG_TAIL_LINES = 30
ROUTER_POLL_S = 0.2            # the router is ready within ~1 s of its servers: poll it closer
ROUTER_MIN_WAIT_S = 60.0       # the router gets at least this long, even late in the timeout
TRANSPORT_STRIKES = 3          # consecutive failed polls of a host before its servers fail

ENV_FILE = "env-file"
RUN_DIR = "run-dir"
ALREADY_RUNNING = "already-running"
NO_LAUNCHER = "no-launcher"
LAUNCH = "launch"
DIED = "died"
NOT_READY = "not-ready"
NOT_STARTED_KIND = "not-started"
ROUTER_KIND = "router"

ProgressFn = Callable[[list[ServerRecord], float], None]

_EXIT_KINDS = {
    EXIT_ENV_FILE_MISSING: (ENV_FILE, "create it on that host, or fix serving.env_file / --env-file"),
    EXIT_RUN_DIR: (RUN_DIR, "check serving.run_dir and the login user's permissions there"),
    EXIT_ALREADY_RUNNING: (ALREADY_RUNNING, "stop it first (inv stop-pd), or pass --restart"),
    EXIT_PORT_BUSY: (PORT_BUSY, "something else listens there: find it on the host "
                                "(ss -ltnp) or choose other ports"),
    EXIT_LAUNCHER_MISSING: (NO_LAUNCHER, "install it, or set serving.env_file to the file that "
                                         "activates its environment"),
}


@dataclass
class StartResult:
    """What :func:`start_pd` did. ``stage`` = how far it got: ``preflight`` (refused,
    nothing started), ``launch``, ``wait``, ``router``, ``done`` (all ready, or
    everything started with ``wait=False``). ``report``: one outcome per server
    node-rank, then the router; ``data`` is its `ServerRecord`."""

    report: Report
    stage: str
    plan: StartPlan
    manifest: Manifest | None = None
    manifest_file: Path | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.report.all_ok

    @property
    def router_url(self) -> str | None:
        return self.plan.router.url if self.plan.router else None


@dataclass
class RestartResult:
    """What :func:`restart_pd` did: one outcome per restarted process (``data``: its new
    `ServerRecord`; the router too when it had to be re-registered or restarted).
    ``kept`` lists the labels of the processes left alone; ``router`` says what was
    done about the router (``""`` when there is none)."""

    report: Report
    stage: str
    manifest: Manifest
    manifest_file: Path | None = None
    kept: list[str] = field(default_factory=list)
    router: str = ""
    elapsed_s: float = 0.0


def dry_run_scripts(plan: StartPlan) -> list[tuple[ServerRecord, str]]:
    """Each process's launch script as start-pd runs it, secrets masked (``--dry-run``)."""
    return [(ServerRecord(spec, status=DRY_RUN), render_for_display(launch_of(spec), doc=record_doc(ServerRecord(spec))))
            for spec in plan.processes]


def check_timeout(timeout: float) -> float:
    """A wait in seconds (> 0), or `ParameterError`."""
    return seconds(timeout, "timeout")


# --------------------------------------------------------------------------- one run


class StartRun:
    """Processes being started (records, launches, hosts); the steps are methods."""

    def __init__(self, engine: Engine, specs: Sequence[ProcessSpec], *, fanout: int | None,
                 on_progress: ProgressFn | None, poll_s: float) -> None:
        self.engine, self.fanout, self.on_progress, self.poll_s = engine, fanout, on_progress, poll_s
        self.started = time.monotonic()
        self.specs = {s.key: s for s in specs}
        self.records = {k: ServerRecord(s) for k, s in self.specs.items()}
        self.launches = {k: launch_of(s) for k, s in self.specs.items()}
        self.hosts = {k: host_of(s.target) for k, s in self.specs.items()}
        self.failures: dict[str, Failure] = {}
        self.arguments: Mapping[str, Sequence[str]] = {}  # restart-pd: extra args now (secret options)
        # Processes outside this run shown in its result (a recorded deployment still running).
        self.extra: list[tuple[ServerRecord, Failure]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def fail(self, key: str, failure: Failure, status: str = FAILED) -> None:
        self.failures[key] = failure
        self.records[key].status = status

    def keys_on(self, host: Host, keys: Iterable[str] | None = None) -> list[str]:
        return [k for k in (keys if keys is not None else self.records) if self.hosts.get(k) == host]

    def progress(self) -> None:
        if self.on_progress:
            self.on_progress(self.all_records(), self.elapsed())

    def all_records(self) -> list[ServerRecord]:
        return list(self.records.values()) + [record for record, _ in self.extra]

    def settle(self) -> None:
        """Processes never launched end as ``not started``."""
        for record in self.records.values():
            if record.status == PLANNED:
                record.status = NOT_STARTED

    def report(self, task: str, keys: Iterable[str] | None = None, **extra: Any) -> Report:
        chosen = list(keys) if keys is not None else list(self.records)
        pairs = [(self.records[k], self.failures.get(k) or self._not_started(k)) for k in chosen]
        pairs += list(self.extra)
        return Report([Outcome(r.ssh_host, f is None, error=f, data=r) for r, f in pairs],
                      task=task, extra=extra)

    def _not_started(self, key: str) -> Failure | None:
        """A process never launched is a failure of its own kind, never ``ok``."""
        if self.records[key].status != NOT_STARTED:
            return None
        return Failure(NOT_STARTED_KIND, f"{self.records[key].label}: not started",
                       "nothing was launched for it: see the failures above")

    # -- preflight
    def preflight(self, *, running_ok: bool, more: Mapping[Host, list[tuple[str, str]]] | None = None
                  ) -> dict[Host, dict[str, shell.Section]]:
        """Check every host (changes nothing); returns each host's sections (also ``more``)."""
        work: dict[Host, list[tuple[str, str]]] = {}
        for key, launch in self.launches.items():
            work.setdefault(self.hosts[key], []).append((key, preflight_script(launch, running_ok=running_ok)))
        for host, parts in (more or {}).items():
            work.setdefault(host, []).extend(parts)
        answers: dict[Host, dict[str, shell.Section]] = {}
        for outcome in shell.run_sections(self.engine, work, shell.STEP_TIMEOUT_S, self.fanout):
            keys = [k for k, _ in work[outcome.host] if k in self.records]
            if outcome.error is not None:
                for key in keys:
                    self.fail(key, outcome.error)
                continue
            answers[outcome.host] = outcome.data
            for key in keys:
                self._judge_preflight(key, outcome.data.get(key))
        return answers

    def _judge_preflight(self, key: str, section: shell.Section | None) -> None:
        if section is None or section.rc is None:
            self.fail(key, Failure(LAUNCH, "preflight did not finish", "check the host (inv check)"))
        elif section.rc != 0:
            self.fail(key, exit_failure(section.rc, section.lines))

    def running_groups(self, answers: Mapping[Host, Mapping[str, shell.Section]]
                       ) -> dict[Host, list[detach.Identity]]:
        """Live processes (verified) the ``running_ok`` preflight found in the slots."""
        found: dict[Host, list[detach.Identity]] = {}
        for host, sections in answers.items():
            for key in self.keys_on(host):
                section = sections.get(key)
                found.setdefault(host, []).extend(detach.parse_running(section.output) if section else [])
        return found

    # -- launch
    def launch(self, keys: Sequence[str]) -> bool:
        """Start the given processes (grouped per host); True when all started."""
        work: dict[Host, list[tuple[str, str]]] = {}
        for key in keys:
            script = launch_script(self.launches[key], doc=record_doc(self.records[key]))
            work.setdefault(self.hosts[key], []).append((key, script))
        report = shell.run_sections(self.engine, work, shell.STEP_TIMEOUT_S, self.fanout)
        now = time.time()
        for outcome in report:
            for key, _ in work[outcome.host]:
                if outcome.error is not None:
                    self.fail(key, outcome.error)
                else:
                    self._launched(key, outcome.data.get(key), now)
        return all(k not in self.failures for k in keys)

    def _launched(self, key: str, section: shell.Section | None, now: float) -> None:
        lines = section.lines if section else []
        launched = detach.parse_launch(section.output) if section else None
        if section is None or section.rc != 0 or launched is None:
            rc = section.rc if section and section.rc is not None else -1
            self.fail(key, exit_failure(rc, lines) if rc > 0 else Failure(
                LAUNCH, "the launch did not report a pid", "see the log on that host"))
            return
        record = self.records[key]
        record.launched(launched[0], launched[1], now)
        record.status, record.uptime_s = STARTING, 0

    # -- wait
    def wait(self, keys: Sequence[str], deadline: float, poll_s: float | None = None) -> bool:
        """Poll until every API process in ``keys`` answers 200 on its engine's health
        (readiness) path. False (with failures set) when one dies or the deadline passes."""
        pending = [k for k in keys if k not in self.failures]
        strikes: dict[Host, int] = {}
        while True:
            dead = self._poll(pending, strikes)
            self._mark_followers_ready(pending)
            if dead:
                self._fail_with_tails(dead, DIED)
            self.progress()
            if any(k in self.failures for k in pending):
                return False
            if all(self.records[k].status == READY for k in pending):
                return True
            if time.monotonic() >= deadline:
                self._fail_with_tails([k for k in pending if self.records[k].status != READY], NOT_READY)
                self.progress()
                return False
            time.sleep(self.poll_s if poll_s is None else poll_s)

    def _poll(self, pending: Sequence[str], strikes: dict[Host, int]) -> list[str]:
        """One probe round; the keys whose process died."""
        live = [self.records[k] for k in pending if k not in self.failures and self.records[k].pid]
        dead: list[str] = []
        for host, answer in probe_records(self.engine, live, self.fanout).items():
            mine = [r for r in live if r.ssh_host == host]
            if answer.error is not None:
                strikes[host] = strikes.get(host, 0) + 1
                if strikes[host] >= TRANSPORT_STRIKES:
                    for record in mine:
                        self.fail(record.key, answer.error)
                continue
            strikes.pop(host, None)
            dead += [r.key for r in mine if self._update(r.key, answer.data.get(r.uid))]
        return dead

    def _update(self, key: str, probe: ProbeResult | None) -> bool:
        """Apply one poll to a record; True when its process is gone (it died)."""
        record = self.records[key]
        if probe is None:
            return False
        observe(record, probe)
        if record.is_router and probe.body:
            record.workers = parse_workers(probe.body)  # what restart-pd checks
        if not probe.leader_alive:
            return True
        if record.status == READY:
            return False
        if record.is_api and probe.health == 200:
            record.status = READY
            record.ready_after_s = round(time.time() - (record.started_at or time.time()), 1)
        elif probe.health not in (None, 0) or probe.last_log:
            record.status = LOADING if record.is_api else RUNNING
        else:
            record.status = STARTING
        return False

    def _mark_followers_ready(self, keys: Sequence[str]) -> None:
        """A rank >= 1 is ready when the rank 0 of its server is (only rank 0 has the API)."""
        for key in keys:
            record = self.records[key]
            if record.is_api or record.status in (READY, FAILED) or key in self.failures:
                continue
            head = self.records.get(f"{record.role}-{record.server_index}-0")
            if head is not None and head.status == READY and record.alive:
                record.status = READY
                record.ready_after_s = head.ready_after_s

    def _fail_with_tails(self, keys: Sequence[str], kind: str) -> None:
        work: dict[Host, list[tuple[str, str]]] = {}
        for key in keys:
            work.setdefault(self.hosts[key], []).append(
                (key, tail_command(self.records[key].log_path, LOG_TAIL_LINES)))
        for outcome in shell.run_sections(self.engine, work, shell.STEP_TIMEOUT_S, self.fanout):
            for key, _ in work[outcome.host]:
                record = self.records[key]
                if outcome.ok and key in outcome.data:
                    record.log_tail = clean_log_lines(outcome.data[key].output)
                self.fail(key, self._late_failure(record, kind), status=kind)

    def _late_failure(self, record: ServerRecord, kind: str) -> Failure:
        last = next((line for line in reversed(record.log_tail) if line.strip()), "")
        if kind == DIED:
            lived = time.time() - (record.started_at or time.time())
            return Failure(kind, f"{record.label}: the process exited during start-up after {lived:.0f} s"
                           + (f"; last log line: {last}" if last else ""),
                           f"see the last {LOG_TAIL_LINES} log lines below ({record.log_path})")
        return Failure(kind, f"{record.label}: not ready after {self.elapsed():.0f} s "
                             f"(status {record.status}, health {record.health or 'no answer'})",
                       f"raise --timeout, or read {record.log_path}; the process is left running "
                       "(inv pd-status, inv stop-pd)")


def exit_failure(rc: int, lines: Sequence[str]) -> Failure:
    """A failed preflight/launch step: the documented exit codes, else a generic one."""
    message = next((line for line in reversed(lines) if not line.startswith("RUNNING ")), "")
    kind, hint = _EXIT_KINDS.get(rc, (LAUNCH, "see the message; rerun with --dry-run to see the script"))
    return Failure(kind, message or EXIT_MESSAGES.get(rc, f"exit code {rc}"), hint, exit_code=rc)


# --------------------------------------------------------------------------- start-pd


def start_pd(engine: Engine, plan: StartPlan, *, wait: bool = True,
             timeout: float = DEFAULT_TIMEOUT_S, restart: bool = False,
             grace: float = 30.0, fanout: int | None = None,
             on_progress: ProgressFn | None = None, poll_s: float = POLL_INTERVAL_S,
             refused: Mapping[Host, Failure] | None = None) -> StartResult:
    """Start the planned deployment (the steps: this module's docstring).

    ``refused``: hosts that checks run before the start (inv preflight's fast subset)
    failed; when any is given, nothing starts anywhere (stage ``preflight``).

    Per-server results are values (``report``: one outcome per server node-rank, then
    the router), never exceptions; ``stage`` says how far it got. Only bad input
    (before any connection) raises `InputError` (``timeout``, ``grace``).
    ``on_progress(records, elapsed)`` is called after every poll round.
    """
    limit, grace = check_timeout(timeout), check_grace(grace)
    ensure_state_dir()
    run = StartRun(engine, plan.processes, fanout=fanout, on_progress=on_progress, poll_s=poll_s)
    lock = DeploymentLock(plan.deployment, plan.run_id)
    state: dict[str, Any] = {"manifest": None}

    def result(stage: str) -> StartResult:
        run.settle()
        manifest = state["manifest"]
        report = run.report("start-pd", deployment=plan.deployment, run_id=plan.run_id,
                            engine=plan.config.engine, stage=stage,
                            manifest=str(manifest_file(plan.deployment)) if manifest else None,
                            router_url=plan.router.url if plan.router else None,
                            elapsed_s=round(run.elapsed(), 1))
        return StartResult(report, stage, plan, manifest,
                           manifest_file(plan.deployment) if manifest else None, run.elapsed())

    if refused:  # nothing starts anywhere; the refused hosts' servers carry the reason
        for key, host in run.hosts.items():
            if host in refused:
                run.fail(key, refused[host])
            else:
                run.records[key].status = NOT_STARTED
        return result("preflight")
    if not lock.acquire():
        for key in run.records:
            run.fail(key, Failure(ALREADY_RUNNING, f"deployment '{plan.deployment}' is being started or "
                                                   f"restarted right now ({lock.holder}): nothing was launched",
                                  "wait for it, or use another --deployment name"), status=NOT_STARTED)
        return result("preflight")
    try:
        return _start(run, plan, state, result, wait=wait, restart=restart, grace=grace,
                      deadline=run.started + limit)
    finally:
        lock.release()


def _start(run: StartRun, plan: StartPlan, state: dict[str, Any], result: Callable[[str], StartResult], *,
           wait: bool, restart: bool, grace: float, deadline: float) -> StartResult:
    """start-pd once the deployment's lock is held (the steps: this module's docstring)."""
    previous = _Previous(run, load_manifest(plan.deployment), plan, restart)
    if previous.manifest is not None and previous.manifest.stopped_at is None:
        # An interrupted start left records without pids: the hosts' pid files have them.
        fill_identities(run.engine, [r for r in previous.manifest.records if r.stopped_at is None], run.fanout)

    def record() -> None:
        state["manifest"] = _record(run, plan, state["manifest"])

    run.progress()
    answers = run.preflight(running_ok=restart, more=previous.probes())
    previous.judge(answers)
    if run.failures or run.extra:
        for key, record_ in run.records.items():
            record_.status = FAILED if key in run.failures else NOT_STARTED
        return result("preflight")
    if restart:
        previous.stop(run.running_groups(answers), grace)
        if run.failures:
            return result("preflight")
    server_keys = [s.key for s in plan.servers]
    record()  # before the first launch: an interrupt from here on leaves it findable
    launched = run.launch(server_keys)
    record()
    if not launched:
        return result("launch")
    run.progress()
    # The router starts now, not after the servers are ready: it waits for them itself
    # (engines: router_common_args), and is ready about when they are, instead of adding its
    # own start-up (~1 s) and a poll step to every start-pd --router.
    router_launched = bool(plan.router) and run.launch([ROUTER])
    if plan.router:
        record()
    if not wait:
        if router_launched:
            run.records[ROUTER].status = STARTED
        for key in server_keys:
            run.records[key].status = STARTED
        return result("done")
    if not run.wait(server_keys, deadline):
        return result("wait")
    if plan.router:
        if not router_launched:
            return result("router")
        router_deadline = max(deadline, time.monotonic() + ROUTER_MIN_WAIT_S)
        if not run.wait([ROUTER], router_deadline, poll_s=ROUTER_POLL_S):
            return result("router")
    return result("done")


def _record(run: StartRun, plan: StartPlan, manifest: Manifest | None) -> Manifest:
    """Write (or update) the controller's manifest of this start: every planned process,
    with the pids known so far."""
    if manifest is None:
        manifest = Manifest(name=plan.deployment, engine=plan.config.engine, run_id=plan.run_id,
                            model_path=plan.config.model_path or "", created_at=time.time(),
                            servers=[run.records[s.key] for s in plan.servers],
                            router=run.records[ROUTER] if plan.router else None)
    save_manifest(manifest)
    return manifest


class _Previous:
    """The recorded deployment of the same name: refuse while it runs, or stop it (``restart``)."""

    def __init__(self, run: StartRun, manifest: Manifest | None, plan: StartPlan, restart: bool) -> None:
        self.run, self.manifest, self.plan, self.restart = run, manifest, plan, restart
        self.alive: dict[Host, list[detach.Identity]] = {}

    def candidates(self) -> list[ServerRecord]:
        prev = self.manifest
        if prev is None or prev.stopped_at is not None or prev.run_id == self.plan.run_id:
            return []
        return [r for r in prev.records if r.identity and r.stopped_at is None]

    def probes(self) -> dict[Host, list[tuple[str, str]]]:
        """A preflight section per host probing the recorded processes that may still run."""
        targets: dict[Host, list[ProbeTarget]] = {}
        for record in self.candidates():
            targets.setdefault(record.ssh_host, []).append(probe_target(record, health=False))
        return {h: [("previous", probe_command(t))] for h, t in targets.items()}

    def judge(self, answers: Mapping[Host, Mapping[str, shell.Section]]) -> None:
        """Refuse the start while the recorded deployment runs (unless ``restart``)."""
        planned = {(r.host, r.port) for r in self.run.records.values()}
        for record in self.candidates():
            section = answers.get(record.ssh_host, {}).get("previous")
            probe = parse_probe(section.output).get(record.uid) if section else None
            if probe is None or not probe.alive or record.identity is None:
                continue
            self.alive.setdefault(record.ssh_host, []).append(record.identity)
            if self.restart or (record.host, record.port) in planned:
                continue  # restarted, or refused already by its pid file on that host:port
            assert self.manifest is not None
            record.status, record.alive = "running (recorded)", True
            self.run.extra.append((record, Failure(
                ALREADY_RUNNING,
                f"deployment '{self.manifest.name}' (run {self.manifest.run_id}) still runs here: "
                f"{record.role} {record.host}:{record.port}, process group {record.pid}",
                "stop it first (inv stop-pd), pass --restart, or use another --deployment name")))

    def stop(self, running: Mapping[Host, list[detach.Identity]], grace: float) -> None:
        """``--restart``: stop what the preflight found (pid files, recorded deployment)."""
        prev = self.manifest
        run_ids = (prev.run_id,) if prev is not None else ()
        work: dict[Host, StopWork] = {}
        for host in set(running) | set(self.alive):
            groups = list(running.get(host, [])) + list(self.alive.get(host, []))
            work[host] = StopWork(host=host, identities=groups, engine=self.plan.config.engine,
                                  sweep="deployment" if run_ids else "none", run_ids=run_ids,
                                  spare_router=False, gpu=False)
        for outcome in stop_hosts(self.run.engine, work, grace, self.run.fanout) if work else ():
            failure = outcome.error or (Failure(
                SURVIVORS, f"--restart: processes {outcome.data.survivors} survived SIGKILL",
                "they are stuck (uninterruptible I/O?); check the host") if outcome.data.survivors else None)
            if failure:
                for key in self.run.keys_on(outcome.host):
                    self.run.fail(key, failure)
        if prev is not None and prev.run_id != self.plan.run_id and prev.stopped_at is None:
            prev.stopped_at = time.time()
            save_manifest(prev)


# --------------------------------------------------------------------------- restart-pd


def select_restart(manifest: Manifest, hosts: Sequence[Host] | None, alive: Mapping[str, bool]
                   ) -> list[ServerRecord]:
    """The servers to restart: every rank of each server with a rank on ``hosts``, or
    (``hosts`` None) of each server with a rank whose process group is gone (``alive``:
    key -> still alive). In manifest order."""
    if hosts is not None:
        names = {h.hostname for h in hosts}
        picked = {(r.role, r.server_index) for r in manifest.servers if r.ssh_host.hostname in names}
    else:
        picked = {(r.role, r.server_index) for r in manifest.servers if not alive.get(r.key, False)}
    return [r for r in manifest.servers if (r.role, r.server_index) in picked]


def resolve_secrets(spec: ProcessSpec, values: Mapping[str, str],
                    arguments: Mapping[str, Sequence[str]] | None = None) -> ProcessSpec:
    """``spec`` with the values of its unrecorded (secret) variables taken from ``values``,
    and masked secret options of its extra args from ``arguments`` (role -> the roles
    file's extra args now, used when they mask to what was recorded); `InputError` naming
    what is missing."""
    if shell.MASK in spec.extra_args:
        current = tuple((arguments or {}).get(spec.role, ()))
        if tuple(shell.mask_argv(current)) != spec.extra_args:
            raise InputError(f"{spec.label}: its extra args held a secret option value (never recorded) "
                             "and the roles file's extra args differ now: restart the deployment whole "
                             "with `inv start-pd --restart`")
        spec = dataclasses.replace(spec, extra_args=current)
    if all(value is not None for _, value in spec.env):
        return spec
    env = []
    for name, value in spec.env:
        if value is None and name not in values:
            raise InputError(f"{spec.label}: {name} was recorded as a secret (its value is not "
                             "kept): set it in the controller's environment or the roles file")
        env.append((name, values[name] if value is None else value))
    return dataclasses.replace(spec, env=tuple(env))  # type: ignore[arg-type]


def restart_pd(engine: Engine, manifest: Manifest, *, hosts: Sequence[Host] | None = None,
               secrets: Mapping[str, str] | None = None,
               arguments: Mapping[str, Sequence[str]] | None = None, wait: bool = True,
               timeout: float = DEFAULT_TIMEOUT_S, grace: float = 30.0, fanout: int | None = None,
               on_progress: ProgressFn | None = None, poll_s: float = POLL_INTERVAL_S) -> RestartResult:
    """Replace some servers of the recorded deployment (the steps: this module's docstring).

    ``hosts``: restart the servers with a rank there (every rank of each); None: those
    whose process group is gone. ``secrets`` supplies the values of secret variables
    and ``arguments`` (role -> extra args) those of secret options (never recorded).
    Healthy servers that are not chosen are left alone. Raises `ParameterError` when ``hosts`` name no recorded server.
    """
    limit, grace = check_timeout(timeout), check_grace(grace)
    if manifest.version < MANIFEST_VERSION:
        raise InputError(f"deployment '{manifest.name}' was recorded by an older version (manifest "
                         f"version {manifest.version}): its servers' launch specs are not recorded; "
                         "restart it whole with `inv start-pd --restart`")
    alive = {} if hosts is not None else _alive(engine, manifest, fanout)
    chosen = select_restart(manifest, hosts, alive)
    if hosts is not None and not chosen:
        raise ParameterError("hosts", f"no server of deployment '{manifest.name}' is recorded on "
                                      f"{', '.join(str(h) for h in hosts)} ({{name}})")
    run_id = new_run_id()
    specs = [dataclasses.replace(resolve_secrets(r.spec, secrets or {}, arguments), run_id=run_id)
             for r in chosen]
    kept = [r.label for r in manifest.records if r not in chosen]
    run = StartRun(engine, specs, fanout=fanout, on_progress=on_progress, poll_s=poll_s)
    run.arguments = arguments or {}
    keys = list(run.records)
    deadline = run.started + limit

    def result(stage: str, router: str = "", extra_keys: Sequence[str] = ()) -> RestartResult:
        run.settle()
        report = run.report("restart-pd", keys + list(extra_keys), deployment=manifest.name,
                            run_id=run_id, engine=manifest.engine, stage=stage, kept=kept, router=router)
        return RestartResult(report, stage, manifest, manifest_file(manifest.name), kept, router, run.elapsed())

    if not chosen:
        return result("done")
    ensure_state_dir()
    lock = DeploymentLock(manifest.name, run_id)
    if not lock.acquire():
        for key in keys:
            run.fail(key, Failure(ALREADY_RUNNING, f"deployment '{manifest.name}' is being started or "
                                                   f"restarted right now ({lock.holder}): nothing was launched",
                                  "wait for it"), status=NOT_STARTED)
        return result("stop")
    try:
        return _restart(run, manifest, chosen, keys, result, grace=grace, wait=wait, deadline=deadline)
    finally:
        lock.release()


def _restart(run: StartRun, manifest: Manifest, chosen: Sequence[ServerRecord], keys: Sequence[str],
             result: Callable[..., RestartResult], *, grace: float, wait: bool, deadline: float
             ) -> RestartResult:
    """restart-pd once the deployment's lock is held."""
    run.progress()
    if not _stop_old(run, chosen, grace):
        return result("stop")
    _replace_records(manifest, run, keys)  # before the launch: findable if interrupted
    launched = run.launch(keys)
    _replace_records(manifest, run, keys)
    if not launched:
        return result("launch")
    if not wait:
        for key in keys:
            run.records[key].status = STARTED
        return result("done")
    if not run.wait(keys, deadline):
        return result("wait")
    router = manifest.router
    if router is None:
        return result("done")
    action, extra_keys = _router_knows(run, manifest, router, [run.records[k] for k in keys], deadline)
    return result("done" if not run.failures else "router", action, extra_keys)


def _alive(engine: Engine, manifest: Manifest, fanout: int | None) -> dict[str, bool]:
    """Which recorded servers' process groups still run (one probe round)."""
    recorded = [r for r in manifest.servers if r.pid]
    answers = probe_records(engine, recorded, fanout, health=False)
    alive: dict[str, bool] = {}
    for record in recorded:
        answer = answers[record.ssh_host]
        # An unreachable host's servers are not "gone": restarting them would fail too.
        probe = answer.data.get(record.uid) if answer.ok else None
        alive[record.key] = True if probe is None and not answer.ok else bool(probe and probe.leader_alive)
    return alive


def _stop_old(run: StartRun, chosen: Sequence[ServerRecord], grace: float) -> bool:
    """Stop what is left of the chosen servers (their groups, and leftovers writing to
    their logs); False when one would not stop (its ports stay taken)."""
    work: dict[Host, StopWork] = {}
    for record in chosen:
        item = work.setdefault(record.ssh_host, StopWork(host=record.ssh_host, engine=record.engine,
                                                         sweep="deployment", gpu=False))
        item.add(record)
        if record.identity is None:
            item.ports += [p for p in record.ports if p not in item.ports]
        item.logs += (record.log_path,)
    ok = True
    for outcome in stop_hosts(run.engine, work, grace, run.fanout):
        failure = outcome.error or stop_failure(outcome.data)
        if failure is not None:
            ok = False
            for key in run.keys_on(outcome.host):
                run.fail(key, failure)
    return ok


def _replace_records(manifest: Manifest, run: StartRun, keys: Sequence[str]) -> None:
    """Put the relaunched records in the manifest in place of the old ones, and save it."""
    fresh = {k: run.records[k] for k in keys}
    manifest.servers = [fresh.get(r.key, r) for r in manifest.servers]
    manifest.stopped_at = None
    save_manifest(manifest)


def _router_knows(run: StartRun, manifest: Manifest, router: ServerRecord,
                  restarted: Sequence[ServerRecord], deadline: float) -> tuple[str, list[str]]:
    """Make sure the running router lists every restarted API server: what was done, and
    the router's key when it is part of the result."""
    answer = probe_records(run.engine, [router], run.fanout)[router.ssh_host]
    probe = answer.data.get(router.uid) if answer.ok else None
    if probe is None or not probe.leader_alive:
        return "not running (start it with inv start-pd, or stop-pd the deployment)", []
    judge_status(router, probe)
    listed = worker_urls(router)
    missing = [r for r in restarted if r.is_api and r.url not in listed]
    if not missing:
        return "lists the restarted servers", []
    engine = engines.get(router.engine)
    calls = [(r, engine.router_add_worker(r.url, r.role, getattr(r.spec, "bootstrap_port", None)))
             for r in missing]
    if all(call is not None for _, call in calls):
        return _register(run, router, calls), []
    return _restart_router(run, manifest, router, deadline)


def _register(run: StartRun, router: ServerRecord, calls: Sequence[tuple[ServerRecord, Any]]) -> str:
    work = {router.ssh_host: [(f"add{i}", http_call_command(router.host, router.port, call))
                              for i, (_, call) in enumerate(calls)]}
    outcome = next(iter(shell.run_sections(run.engine, work, shell.STEP_TIMEOUT_S, run.fanout)))
    for i, (record, _) in enumerate(calls):
        section = outcome.data.get(f"add{i}") if outcome.ok else None
        status, body = parse_http_call(section.output) if section else (0, "")
        if not 200 <= status < 300:
            run.fail(record.key, outcome.error or Failure(
                ROUTER_KIND, f"the router did not take {record.url} back (HTTP {status or 'no answer'})"
                             + (f": {body[:200]}" if body else ""),
                f"read the router's log ({router.log_path}); inv start-pd --restart restarts everything"))
    return f"re-registered {', '.join(r.url for r, _ in calls)}"


def _restart_router(run: StartRun, manifest: Manifest, router: ServerRecord,
                    deadline: float) -> tuple[str, list[str]]:
    """The router cannot add workers at run time: stop it and start it again from its
    recorded spec (it then lists every recorded server)."""
    spec = dataclasses.replace(resolve_secrets(router.spec, {}, run.arguments),
                               run_id=run.records[next(iter(run.records))].run_id)
    run.specs[ROUTER], run.records[ROUTER] = spec, ServerRecord(spec)
    run.launches[ROUTER], run.hosts[ROUTER] = launch_of(spec), router.ssh_host
    work = {router.ssh_host: StopWork(host=router.ssh_host, engine=router.engine, sweep="deployment",
                                      sweep_servers=False, sweep_router=True, gpu=False,
                                      logs=(router.log_path,))}
    work[router.ssh_host].add(router, ports=list(router.ports))
    stopped = next(iter(stop_hosts(run.engine, work, 5.0, run.fanout)))
    failure = stopped.error or stop_failure(stopped.data)
    if failure is not None:
        run.fail(ROUTER, failure)
        return "could not be restarted", [ROUTER]
    if run.launch([ROUTER]):
        manifest.router = run.records[ROUTER]
        save_manifest(manifest)
        run.wait([ROUTER], max(deadline, time.monotonic() + ROUTER_MIN_WAIT_S))
    return "restarted (it cannot add workers while running)", [ROUTER]
