"""One start-pd run (:class:`StartRun`): its rows, launches and hosts, and the steps
:func:`cluster.serving.start.start_pd` takes — preflight, stop for ``--restart``,
launch, record, wait for ``/health`` — plus the exit codes of the launch scripts turned
into failure kinds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Sequence

from ..hosts import Host
from ..result import Failure, Outcome, Report
from ..ssh import Engine
from .argv import router_launch, server_launch
from .launch import (
    EXIT_ALREADY_RUNNING,
    EXIT_ENV_FILE_MISSING,
    EXIT_LAUNCHER_MISSING,
    EXIT_MESSAGES,
    EXIT_PORT_BUSY,
    EXIT_RUN_DIR,
    launch_script,
    preflight_script,
)
from .manifest import Manifest, RouterRecord, ServerRecord, record_write_command
from .model import (
    ALREADY_RUNNING,
    DIED,
    ENV_FILE,
    FAILED,
    LAUNCH,
    LOADING,
    LOG_TAIL_LINES,
    NO_LAUNCHER,
    NOT_READY,
    NOT_STARTED,
    PLANNED,
    PORT_BUSY,
    READY,
    ROUTER,
    RUN_DIR,
    RUNNING,
    STARTING,
    SURVIVORS,
    TRANSPORT_STRIKES,
    ProgressFn,
    ServerRow,
    StartPlan,
    row_of_record,
    row_of_router,
    row_of_router_record,
    row_of_spec,
    server_key,
)
from .probe import (
    ProbeResult,
    ProbeTarget,
    clean_log_lines,
    parse_probe,
    probe_command,
    tail_command,
)
from .remote import STEP_TIMEOUT_S, host_of, sections_on, transport_failure
from .sections import Section
from .stop import StopWork, stop_hosts
from .store import load_manifest, save_manifest

_EXIT_KINDS = {
    EXIT_ENV_FILE_MISSING: (ENV_FILE, "create it on that host, or fix serving.env_file / --env-file"),
    EXIT_RUN_DIR: (RUN_DIR, "check serving.run_dir and the login user's permissions there"),
    EXIT_ALREADY_RUNNING: (ALREADY_RUNNING, "stop it first (inv stop-pd), or pass --restart"),
    EXIT_PORT_BUSY: (PORT_BUSY, "something else listens there: find it on the host "
                                "(ss -ltnp) or choose other ports"),
    EXIT_LAUNCHER_MISSING: (NO_LAUNCHER, "install it, or set serving.env_file to the file that "
                                         "activates its environment"),
}


class StartRun:
    """State of one start-pd run (rows, launches, hosts); the steps are methods."""

    def __init__(self, engine: Engine, plan: StartPlan, *, restart: bool, grace: float,
                 fanout: int | None, on_progress: ProgressFn | None, poll_s: float) -> None:
        self.engine, self.plan, self.restart, self.grace = engine, plan, restart, grace
        self.fanout, self.on_progress, self.poll_s = fanout, on_progress, poll_s
        self.started = time.monotonic()
        self.specs = {server_key(s): s for s in plan.servers}
        self.rows: dict[str, ServerRow] = {k: row_of_spec(s) for k, s in self.specs.items()}
        self.failures: dict[str, Failure] = {}
        self.launches = {k: server_launch(s) for k, s in self.specs.items()}
        self.hosts = {k: host_of(s.target) for k, s in self.specs.items()}
        self.router_host = host_of(plan.router.target) if plan.router else None
        if plan.router:
            self.rows[ROUTER] = row_of_router(plan.router)
            self.launches[ROUTER] = router_launch(plan.router)
            self.hosts[ROUTER] = self.router_host  # type: ignore[assignment]
        self.previous = load_manifest(plan.deployment)
        # Servers of the recorded deployment that still run (refused without --restart).
        self.extra: list[tuple[ServerRow, Failure]] = []
        self.manifest: Manifest | None = None
        self.started_at: dict[str, float] = {}
        self.running: dict[Host, set[int]] = {}        # live groups named by the new pid files
        self.previous_alive: dict[Host, list[int]] = {}  # live groups of the recorded deployment

    # -- helpers
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def fail(self, key: str, failure: Failure, status: str = FAILED) -> None:
        self.failures[key] = failure
        self.rows[key].status = status

    def fail_host(self, keys: Iterable[str], failure: Failure) -> None:
        for key in keys:
            self.fail(key, failure)

    def keys_on(self, host: Host, keys: Iterable[str] | None = None) -> list[str]:
        return [k for k in (keys if keys is not None else self.rows) if self.hosts.get(k) == host]

    def progress(self) -> None:
        if self.on_progress:
            self.on_progress(self.all_rows(), self.elapsed())

    def all_rows(self) -> list[ServerRow]:
        return list(self.rows.values()) + [row for row, _ in self.extra]

    def report(self) -> Report:
        pairs = [(row, self.failures.get(key)) for key, row in self.rows.items()] + [
            (row, failure) for row, failure in self.extra]
        return Report([Outcome(host_of(row.target), failure is None, error=failure, data=row)
                       for row, failure in pairs])

    # -- step 2: preflight
    def preflight(self) -> bool:
        """Check every host; True when everything may start. Changes nothing."""
        work: dict[Host, list[tuple[str, str]]] = {}
        for key, launch in self.launches.items():
            script = preflight_script(launch, running_ok=self.restart)
            work.setdefault(self.hosts[key], []).append((key, script))
        previous = self._previous_targets()
        for host, targets in previous.items():
            work.setdefault(host, []).append(("previous", probe_command(targets)))
        results = sections_on(self.engine, work, STEP_TIMEOUT_S, self.fanout)
        for host, value in results.items():
            keys = [k for k, _ in work[host] if k != "previous"]
            if isinstance(value, BaseException):
                self.fail_host(keys, transport_failure(self.engine, host, value))
                continue
            for key in keys:
                self._judge_preflight(key, host, value.get(key))
            if host in previous:
                self._judge_previous(host, previous[host], value.get("previous"))
        ok = not self.failures and not self.extra
        for key, row in self.rows.items():
            if key not in self.failures:
                row.status = PLANNED if ok else NOT_STARTED
        return ok

    def _judge_preflight(self, key: str, host: Host, section: Section | None) -> None:
        if section is None or section.rc is None:
            self.fail(key, Failure(LAUNCH, "preflight did not finish", "check the host (inv check)"))
            return
        lines = [line for line in section.output.splitlines() if line.strip()]
        for line in lines:
            if line.startswith("RUNNING ") and line.split()[1].isdigit():
                self.running.setdefault(host, set()).add(int(line.split()[1]))
        if section.rc != 0:
            self.fail(key, _exit_failure(section.rc, lines))

    def _previous_targets(self) -> dict[Host, list[ProbeTarget]]:
        """Probes of the recorded deployment of the same name, when it may still run."""
        prev = self.previous
        if prev is None or prev.stopped_at is not None or prev.run_id == self.plan.run_id:
            return {}
        out: dict[Host, list[ProbeTarget]] = {}
        for record in prev.servers:
            if record.pid and record.stopped_at is None:
                target = ProbeTarget(key=server_key(record), pgid=record.pid, host=record.host,
                                     port=record.port, log_path=record.log_path, health_path=None)
                out.setdefault(host_of(record.target), []).append(target)
        if prev.router and prev.router.pid and prev.router.stopped_at is None:
            r = prev.router
            out.setdefault(host_of(r.target), []).append(ProbeTarget(
                key=ROUTER, pgid=r.pid, host=r.bind, port=r.port, log_path=r.log_path, health_path=None))
        return out

    def _judge_previous(self, host: Host, targets: list[ProbeTarget],
                        section: Section | None) -> None:
        probes = parse_probe(section.output) if section else {}
        prev = self.previous
        assert prev is not None
        for target in targets:
            probe = probes.get(target.key)
            if probe is None or not probe.alive:
                continue
            self.previous_alive.setdefault(host, []).append(int(target.pgid or 0))
            planned = {(r.host, r.port) for r in self.rows.values()}
            if self.restart or (target.host, target.port) in planned:
                continue  # restarted, or refused already by its pid file on that host:port
            record = next((r for r in prev.servers if server_key(r) == target.key), None)
            row = (row_of_record(record) if record else
                   row_of_router_record(prev.router))  # type: ignore[arg-type]
            row.status = "running (recorded)"
            row.alive = True
            self.extra.append((row, Failure(
                ALREADY_RUNNING,
                f"deployment '{prev.name}' (run {prev.run_id}) still runs here: {row.role} "
                f"{row.host}:{row.port}, process group {target.pgid}",
                "stop it first (inv stop-pd), pass --restart, or use another --deployment name")))

    # -- step 3: restart
    def stop_running(self) -> None:
        """``--restart``: stop what the preflight found (pid files, recorded deployment)."""
        prev = self.previous
        run_ids = (prev.run_id,) if prev is not None else ()
        work: dict[Host, StopWork] = {}
        for host in set(self.running) | set(self.previous_alive):
            groups = sorted(self.running.get(host, set()) | set(self.previous_alive.get(host, [])))
            engine_name = self.plan.config.engine
            work[host] = StopWork(host=host, pgids=groups, engine=engine_name,
                                  sweep="deployment" if run_ids else "none", run_ids=run_ids,
                                  sweep_servers=True, spare_router=False, gpu=False)
        if work:
            results = stop_hosts(self.engine, work, self.grace, self.fanout)
            for host, value in results.items():
                if isinstance(value, BaseException):
                    self.fail_host(self.keys_on(host), transport_failure(self.engine, host, value))
                elif value.survivors:
                    self.fail_host(self.keys_on(host), Failure(
                        SURVIVORS, f"--restart: processes {value.survivors} survived SIGKILL",
                        "they are stuck (uninterruptible I/O?); check the host"))
        if prev is not None and prev.run_id != self.plan.run_id and prev.stopped_at is None:
            prev.stopped_at = time.time()
            save_manifest(prev)

    # -- step 4: launch
    def launch(self, keys: Sequence[str]) -> bool:
        """Start the given processes (grouped per host); True when all started."""
        work: dict[Host, list[tuple[str, str]]] = {}
        for key in keys:
            work.setdefault(self.hosts[key], []).append((key, launch_script(self.launches[key])))
        results = sections_on(self.engine, work, STEP_TIMEOUT_S, self.fanout)
        now = time.time()
        for host, value in results.items():
            mine = [k for k, _ in work[host]]
            if isinstance(value, BaseException):
                self.fail_host(mine, transport_failure(self.engine, host, value))
                continue
            for key in mine:
                section = value.get(key)
                lines = [line for line in (section.output if section else "").splitlines() if line.strip()]
                if section is None or section.rc != 0 or not lines or not lines[-1].strip().isdigit():
                    rc = section.rc if section and section.rc is not None else -1
                    self.fail(key, _exit_failure(rc, lines) if rc > 0 else Failure(
                        LAUNCH, "the launch did not report a pid", "see the log on that host"))
                    continue
                self.rows[key].pid = int(lines[-1])
                self.rows[key].status = STARTING
                self.rows[key].uptime_s = 0
                self.started_at[key] = now
        return all(k not in self.failures for k in keys)

    def record(self) -> Path:
        """Write (or update) the manifest on the controller and the per-server records."""
        started_at = self.started_at
        if self.manifest is None:
            self.manifest = Manifest(
                name=self.plan.deployment, engine=self.plan.config.engine, run_id=self.plan.run_id,
                model_path=self.plan.config.model_path or "", created_at=time.time(),
                servers=[ServerRecord.from_spec(s, pid=self.rows[k].pid, started_at=started_at.get(k))
                         for k, s in self.specs.items()])
            self._write_host_records()
        router = self.plan.router
        if router and self.rows[ROUTER].pid:
            self.manifest.router = RouterRecord.from_spec(router, pid=self.rows[ROUTER].pid,
                                                          started_at=started_at.get(ROUTER))
        return save_manifest(self.manifest)

    def _write_host_records(self) -> None:
        assert self.manifest is not None
        work: dict[Host, list[tuple[str, str]]] = {}
        for record in self.manifest.servers:
            if record.pid:
                work.setdefault(host_of(record.target), []).append(
                    (server_key(record), record_write_command(record)))
        # Best effort: the controller's manifest is the primary record.
        sections_on(self.engine, work, STEP_TIMEOUT_S, self.fanout)

    # -- step 5/6: wait
    def wait(self, keys: Sequence[str], deadline: float, health_path: str = "/health") -> bool:
        """Poll until every API process in ``keys`` answers 200 on ``health_path``.

        Returns False (with failures set) when a process dies or the deadline passes.
        """
        pending = [k for k in keys if k not in self.failures]
        strikes: dict[Host, int] = {}
        while True:
            targets = self._probe_targets(pending, health_path)
            results = sections_on(self.engine, {h: [("probe", probe_command(t))]
                                                for h, t in targets.items()}, STEP_TIMEOUT_S, self.fanout)
            dead: list[str] = []
            for host, value in results.items():
                mine = [t.key for t in targets[host]]
                if isinstance(value, BaseException):
                    strikes[host] = strikes.get(host, 0) + 1
                    if strikes[host] >= TRANSPORT_STRIKES:
                        self.fail_host(mine, transport_failure(self.engine, host, value))
                    continue
                strikes.pop(host, None)
                probes = parse_probe(value["probe"].output) if "probe" in value else {}
                for key in mine:
                    if self._update(key, probes.get(key)):
                        dead.append(key)
            self._mark_followers_ready(pending)
            if dead:
                self._fail_with_tails(dead, DIED)
            self.progress()
            if any(k in self.failures for k in pending):
                return False
            if all(self.rows[k].status == READY for k in pending):
                return True
            if time.monotonic() >= deadline:
                late = [k for k in pending if self.rows[k].status != READY]
                self._fail_with_tails(late, NOT_READY)
                self.progress()
                return False
            time.sleep(self.poll_s)

    def _probe_targets(self, keys: Sequence[str], health_path: str) -> dict[Host, list[ProbeTarget]]:
        out: dict[Host, list[ProbeTarget]] = {}
        for key in keys:
            row = self.rows[key]
            if key in self.failures or row.pid is None:
                continue
            path = health_path if row.is_api else None
            out.setdefault(self.hosts[key], []).append(ProbeTarget(
                key=key, pgid=row.pid, host=row.host, port=row.port, log_path=row.log_path,
                health_path=path))
        return out

    def _update(self, key: str, probe: ProbeResult | None) -> bool:
        """Apply one poll to a row; True when its process is gone (it died)."""
        row = self.rows[key]
        if probe is None:
            return False
        row.alive, row.members, row.health = probe.leader_alive, probe.members, probe.health
        row.uptime_s, row.last_log = probe.uptime_s, probe.last_log
        if not probe.leader_alive:
            return True
        if row.status == READY:
            return False
        if row.is_api and probe.health == 200:
            row.status = READY
            row.ready_after_s = round(time.time() - self.started_at.get(key, time.time()), 1)
        elif probe.health not in (None, 0) or probe.last_log:
            row.status = LOADING if row.is_api else RUNNING
        else:
            row.status = STARTING
        return False

    def _mark_followers_ready(self, keys: Sequence[str]) -> None:
        """A rank >= 1 is ready when the rank 0 of its server is (only rank 0 has the API)."""
        for key in keys:
            row = self.rows[key]
            if row.is_api or row.status in (READY, FAILED) or key in self.failures:
                continue
            head = self.rows.get(f"{row.role}-{row.server_index}-0")
            if head is not None and head.status == READY and row.alive:
                row.status = READY
                row.ready_after_s = head.ready_after_s

    def _fail_with_tails(self, keys: Sequence[str], kind: str) -> None:
        work: dict[Host, list[tuple[str, str]]] = {}
        for key in keys:
            work.setdefault(self.hosts[key], []).append(
                (key, tail_command(self.rows[key].log_path, LOG_TAIL_LINES)))
        results = sections_on(self.engine, work, STEP_TIMEOUT_S, self.fanout)
        for host, value in results.items():
            for key, _ in work[host]:
                row = self.rows[key]
                if not isinstance(value, BaseException) and key in value:
                    row.log_tail = clean_log_lines(value[key].output)
                last = next((line for line in reversed(row.log_tail) if line.strip()), "")
                if kind == DIED:
                    lived = time.time() - self.started_at.get(key, time.time())
                    message = (f"{row.label}: the process exited during start-up "
                               f"after {lived:.0f} s"
                               + (f"; last log line: {last}" if last else ""))
                    hint = f"see the last {LOG_TAIL_LINES} log lines below ({row.log_path})"
                else:
                    message = (f"{row.label}: not ready after {self.elapsed():.0f} s "
                               f"(status {row.status}, /health {row.health or 'no answer'})")
                    hint = (f"raise --timeout, or read {row.log_path}; the process is left running "
                            "(inv pd-status, inv stop-pd)")
                self.fail(key, Failure(kind, message, hint), status=kind)


def _exit_failure(rc: int, lines: list[str]) -> Failure:
    """A failed preflight/launch step: the documented exit codes, else a generic one."""
    message = next((line for line in reversed(lines) if not line.startswith("RUNNING ")), "")
    kind, hint = _EXIT_KINDS.get(rc, (LAUNCH, "see the message; rerun with --dry-run to see the script"))
    return Failure(kind, message or EXIT_MESSAGES.get(rc, f"exit code {rc}"), hint, exit_code=rc)
