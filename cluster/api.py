"""The Python API: ``Cluster.from_roles("roles.yaml").run("cmd", role="decode")``.

Usable without invoke. Every per-host operation returns a `cluster.result.Report`:
outcomes in host order, each with ``.ok``, ``.stdout``, ``.error`` (kind, message,
hint) and ``.data`` (what a probe parsed); ``report.to_dict()`` / ``to_json()`` is the
document the matching task prints with ``--json``. Bad input raises
`cluster.errors.InputError` (a `ParameterError` names the parameter) before any host
is contacted; per-host failures never raise. See docs/api.md.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import defaults, options, status
from .errors import InputError, ParameterError
from .hostkeys import check_known_hosts_path
from .hosts import Host
from .inventory import Inventory, load_inventory
from .lazy import lazy
from .probe import Probe, run_probe
from .result import Outcome, Report, build_report, command_fields
from .ssh import Engine, HostSession

# Loaded by the first call that needs them: `inv run` loads no serving or table code
# (cluster/lazy.py); the type checker sees the modules themselves. The methods' default
# values come from cluster.defaults, so that showing them loads none of these.
if TYPE_CHECKING:
    from . import checks, gpu, gpu_health, kill, logs, service, system, transfer
    from . import jobs as jobs_op
    from .gpu_health import HealthLimits
    from .logs import LogSource
    from .preflight import checks as preflight_checks
    from .preflight import run as preflight_run
    from .render import basic as basic_view
    from .render import gpu as gpu_view
    from .render import jobs as jobs_view
    from .render import kill as kill_view
    from .render import logs as logs_view
    from .render import system as system_view
    from .serving import config as serving_cfg
    from .serving import plan as serving_plan
    from .serving import records as serving_records
    from .serving import start as serving_start
    from .serving import status as serving_status
    from .serving import stop as serving_stop
    from .serving.config import ServingConfig
    from .serving.plan import StartPlan
else:
    checks = lazy("cluster.checks")
    gpu = lazy("cluster.gpu")
    gpu_health = lazy("cluster.gpu_health")
    kill = lazy("cluster.kill")
    logs = lazy("cluster.logs")
    service = lazy("cluster.service")
    transfer = lazy("cluster.transfer")
    jobs_op = lazy("cluster.jobs")
    system = lazy("cluster.system")
    basic_view = lazy("cluster.render.basic")
    gpu_view = lazy("cluster.render.gpu")
    jobs_view = lazy("cluster.render.jobs")
    kill_view = lazy("cluster.render.kill")
    logs_view = lazy("cluster.render.logs")
    system_view = lazy("cluster.render.system")
    preflight_checks = lazy("cluster.preflight.checks")
    preflight_run = lazy("cluster.preflight.run")
    serving_cfg = lazy("cluster.serving.config")
    serving_plan = lazy("cluster.serving.plan")
    serving_records = lazy("cluster.serving.records")
    serving_start = lazy("cluster.serving.start")
    serving_status = lazy("cluster.serving.status")
    serving_stop = lazy("cluster.serving.stop")

Targets = str | Iterable[str] | None
OnDone = Callable[[HostSession, Any], None]
OnEvent = Callable[["logs.FollowEvent"], None]  # named here: in Cluster's body `logs` is the method


class Cluster:
    """A roles file plus one SSH engine (shared key, known_hosts, open connections)."""

    def __init__(self, inventory: Inventory | None = None, **ssh_overrides: Any) -> None:
        self.inventory = inventory or Inventory()
        self.settings = self.inventory.ssh.with_overrides(**ssh_overrides)
        self._engine: Engine | None = None

    @classmethod
    def from_roles(cls, path: str | os.PathLike[str] | None = None, **ssh_overrides: Any) -> Cluster:
        """Load ``path`` (default: $CLUSTER_ROLES, then ./roles.yaml)."""
        return cls(load_inventory(path), **ssh_overrides)

    @property
    def engine(self) -> Engine:
        """The shared SSH engine (created on first use)."""
        if self._engine is None:
            if self.settings.known_hosts:  # unset: each host's UserKnownHostsFile (ssh_config)
                check_known_hosts_path(self.settings.known_hosts)  # a local problem: exit 2 up front
            self._engine = Engine(self.settings)
        return self._engine

    def hosts(self, hosts: Targets = None, role: Targets = None) -> list[Host]:
        """The selected hosts: ``role`` hosts then ``hosts``; neither means all roles."""
        return self.inventory.select(hosts=hosts, roles=role)

    # -- commands and probes ---------------------------------------------------------------
    def run(self, command: str, *, hosts: Targets = None, role: Targets = None,
            timeout: float | None = None, on_done: OnDone | None = None,
            on_output: Callable[[Host, str, bytes], None] | None = None) -> Report:
        """Run a shell command on every selected host (``inv run``).

        ``on_output(host, stream, chunk)`` ("out" / "err", bytes) receives the output as
        it arrives, from the hosts' threads; the report then holds stderr only.
        """
        limit = status.check_timeout(timeout)
        targets = self.hosts(hosts, role)
        report = build_report(self.engine.run(targets, command, timeout=limit, on_done=on_done,
                                              on_output=on_output), self.engine)
        return _described(report, "run", command_fields)

    def call(self, fn: Callable[[HostSession], Any], *, hosts: Targets = None,
             role: Targets = None, keep_open: bool = False) -> Report:
        """Apply ``fn(session)`` to every selected host; its return value lands in ``.data``."""
        targets = self.hosts(hosts, role)
        return build_report(self.engine.call(targets, fn, keep_open=keep_open), self.engine)

    def probe(self, probe: Probe, *, hosts: Targets = None, role: Targets = None,
              keep_open: bool = False, on_done: OnDone | None = None) -> Report:
        """Run any `cluster.probe.Probe` (``gpu.probe()``, ``system.probe()``, your own)
        on every selected host: ``.data`` = what its parser made of stdout."""
        return _described(run_probe(self.engine, self.hosts(hosts, role), probe,
                                    fanout=self.settings.fanout, keep_open=keep_open,
                                    on_done=on_done), probe.name)

    def check(self, *, hosts: Targets = None, role: Targets = None,
              on_done: OnDone | None = None) -> Report:
        """Connect + authenticate + ``uname -n`` everywhere (``inv check``)."""
        report = checks.check(self.engine, self.hosts(hosts, role), on_done=on_done)
        return _described(report, "check", basic_view.check_fields)

    def keyscan(self, *, hosts: Targets = None, role: Targets = None,
                on_done: OnDone | None = None) -> Report:
        """Fetch host keys and record/verify them per the host-key policy (``inv keyscan``)."""
        report = checks.keyscan(self.engine, self.hosts(hosts, role), on_done=on_done)
        return _described(report, "keyscan", basic_view.keyscan_fields)

    def gpu_limits(self) -> HealthLimits:
        """The roles file's ``gpu:`` health limits (`cluster.gpu_health`), validated."""
        source = str(self.inventory.path) if self.inventory.path else "roles.yaml"
        return gpu_health.parse_limits(self.inventory.sections.get("gpu"), source)

    def gpu_status(self, *, hosts: Targets = None, role: Targets = None,
                   timeout: float | None = defaults.GPU_TIMEOUT_S, on_done: OnDone | None = None) -> Report:
        """nvidia-smi GPUs and compute processes per host (``.data``: `cluster.gpu.GpuStatus`)."""
        report = self.probe(gpu.probe(timeout, self.gpu_limits()), hosts=hosts, role=role,
                            on_done=on_done)
        report.fields, report.totals = gpu_view.gpu_fields, gpu_view.gpu_totals
        return report

    def watch_gpu_status(self, interval: float, on_tick: Callable[[status.Tick], None], *,
                         hosts: Targets = None, role: Targets = None,
                         timeout: float | None = defaults.GPU_TIMEOUT_S, max_ticks: int | None = None,
                         stop: threading.Event | None = None) -> status.Tick | None:
        """`gpu_status` every ``interval`` s on the same open connections; see `cluster.status.watch`."""
        return status.watch(self.engine, self.hosts(hosts, role), gpu.probe(timeout, self.gpu_limits()),
                            interval, on_tick, max_ticks=max_ticks, stop=stop)

    def sys_status(self, *, hosts: Targets = None, role: Targets = None, samples: int = 2,
                   interval: int = 1, timeout: float | None = None,
                   on_done: OnDone | None = None) -> Report:
        """vmstat samples, load and memory per host (``.data``: `cluster.system.SystemStatus`)."""
        report = self.probe(system.probe(samples, interval, timeout), hosts=hosts, role=role,
                            on_done=on_done)
        report.fields = system_view.sys_fields
        report.extra.update(samples=samples, interval_s=interval)
        return report

    def service_status(self, names: str | Iterable[str], *, hosts: Targets = None,
                       role: Targets = None, timeout: float | None = defaults.SERVICE_TIMEOUT_S,
                       on_done: OnDone | None = None) -> Report:
        """systemd state or matching processes of each service per host (``.data``: list)."""
        report = self.probe(service.probe(names, timeout), hosts=hosts, role=role, on_done=on_done)
        report.fields = system_view.service_fields
        return report

    # -- logs and kill ---------------------------------------------------------------------
    def log_sources(self, *, hosts: Targets = None, role: Targets = None, file: str | None = None,
                    deployment: str | None = None, job: str | None = None) -> list[logs.LogSource]:
        """Which files `logs` reads where: ``file`` on every selected host, the log of
        detached ``job`` on its hosts, else the server logs of the recorded deployment
        (``role`` may name its roles: prefill, decode)."""
        if job is not None:
            return self._job_log_sources(job, hosts, role, file, deployment)
        if file is not None:
            return logs.file_sources(self.hosts(hosts, role), file)
        manifest = serving_records.load_manifest(_deployment(deployment))
        if manifest is None:
            raise ParameterError("file", f"no recorded deployment "
                                         f"({serving_records.manifest_file(deployment)} not found): "
                                         "start one with `inv start-pd`, or name a file with {name}")
        sources = serving_records.select_log_sources(manifest, self.hosts, hosts, role)
        if not sources:
            raise ParameterError("hosts", "the recorded deployment has no server on the selected "
                                          "hosts ({name})")
        return sources

    def logs(self, *, hosts: Targets = None, role: Targets = None, file: str | None = None,
             lines: int | None = defaults.LOG_LINES, grep: str | None = None,
             deployment: str | None = None, job: str | None = None, timeout: float | None = defaults.LOG_READ_TIMEOUT_S,
             on_done: OnDone | None = None) -> Report:
        """The last ``lines`` lines (None: all) of each host's log (``.data``: `cluster.logs.LogText`)."""
        count, pattern = logs.check_lines(lines), logs.check_grep(grep)
        sources = self.log_sources(hosts=hosts, role=role, file=file, deployment=deployment, job=job)
        report = logs.read_logs(self.engine, sources, count, pattern,
                                timeout=status.check_timeout(timeout), on_done=on_done)
        return _described(report, "logs", logs_view.logs_fields)

    def save_logs(self, directory: str | os.PathLike[str], *, hosts: Targets = None,
                  role: Targets = None, file: str | None = None, lines: int | None = None,
                  grep: str | None = None, deployment: str | None = None, job: str | None = None,
                  timeout: float | None = None, on_done: OnDone | None = None) -> Report:
        """Each host's log (all of it, or its last ``lines``) into ``directory/<host>.log``."""
        count, pattern = logs.check_lines(lines), logs.check_grep(grep)
        sources = self.log_sources(hosts=hosts, role=role, file=file, deployment=deployment, job=job)
        report = logs.save_logs(self.engine, sources, directory, count, pattern,
                                timeout=status.check_timeout(timeout), on_done=on_done)
        report = _described(report, "logs", logs_view.logs_fields)
        report.extra["saved_to"] = str(directory)
        return report

    def follow_logs(self, on_event: OnEvent, *, hosts: Targets = None,
                    role: Targets = None, file: str | None = None, lines: int = 10,
                    grep: str | None = None, deployment: str | None = None, job: str | None = None,
                    stop: threading.Event | None = None, duration: float | None = None) -> Report:
        """Stream new lines of every host's log to ``on_event`` until ``stop`` is set,
        ``duration`` passes or Ctrl-C (see `cluster.logs.follow_logs`)."""
        count, pattern = logs.check_lines(lines), logs.check_grep(grep)
        sources = self.log_sources(hosts=hosts, role=role, file=file, deployment=deployment, job=job)
        report = logs.follow_logs(self.engine, sources, on_event, 10 if count is None else count,
                                  pattern, stop=stop, duration=duration)
        return _described(report, "logs", logs_view.logs_fields)

    def kill(self, pattern: str, *, hosts: Targets = None, role: Targets = None,
             signal: str = defaults.KILL_SIGNAL, dry_run: bool = False, user: str | None = None,
             all_users: bool = False, wait: float = defaults.KILL_WAIT_S,
             timeout: float | None = defaults.KILL_LIST_TIMEOUT_S, on_done: OnDone | None = None) -> Report:
        """Signal the processes whose command line matches ``pattern`` on every host
        (``.data``: `cluster.kill.KillResult`, each process with its result)."""
        pattern, sig = kill.check_pattern(pattern), kill.check_signal(signal)
        who = kill.check_user(user)
        if who and all_users:
            raise ParameterError("user", "{name} and all_users do not go together")
        report = kill.kill(self.engine, self.hosts(hosts, role), pattern, signal=sig,
                           dry_run=dry_run, user=who, all_users=all_users,
                           wait_s=kill.check_wait(wait), timeout=status.check_timeout(timeout),
                           on_done=on_done)
        report = _described(report, "kill", kill_view.kill_fields)
        report.extra.update(pattern=pattern, signal=sig, dry_run=bool(dry_run))
        return report

    # -- detached jobs (cluster.jobs) ------------------------------------------------------
    def start_job(self, name: str, command: str, *, hosts: Targets = None, role: Targets = None,
                  on_done: OnDone | None = None) -> Report:
        """Start ``command`` detached on every selected host as job ``name`` and return at
        once (``inv run --detach``); ``.data``: `cluster.jobs.JobHost` (pid, log path).
        A host where the name is still held fails as ``job-exists``."""
        name, command = jobs_op.check_name(name), jobs_op.check_command(command)
        report = jobs_op.start(self.engine, self.hosts(hosts, role), name, command,
                               fanout=self.settings.fanout, on_done=on_done)
        return _described(report, "run", jobs_view.jobs_fields)

    def jobs(self, name: str | None = None, *, hosts: Targets = None, role: Targets = None,
             on_done: OnDone | None = None) -> Report:
        """The recorded jobs (or job ``name``) on their hosts: one outcome per job and host,
        ``.data.state`` running / exited (``.exit_code``) / vanished (``inv jobs``). With
        ``hosts``/``role``: those hosts only, and jobs found there that this controller
        did not record."""
        if name is not None:
            name = jobs_op.check_name(name, "name")
        recorded = ([j for j in [jobs_op.load_job(name)] if j] if name else jobs_op.list_jobs())
        targets = self._targets(hosts, role)
        report = jobs_op.status(self.engine, recorded, targets, name=name,
                                fanout=self.settings.fanout, on_done=on_done)
        return _described(report, "jobs", jobs_view.jobs_fields)

    def stop_job(self, name: str, *, hosts: Targets = None, role: Targets = None,
                 grace: float | None = None, on_done: OnDone | None = None) -> Report:
        """Stop job ``name`` (``inv stop --job``): verified TERM, ``grace`` seconds (None:
        ``cluster.jobs.DEFAULT_GRACE_S``), KILL, checked gone; then the name is free on those
        hosts (logs kept). ``.data``: `cluster.jobs.JobStop`."""
        name = jobs_op.check_name(name, "name")
        targets = self._targets(hosts, role)
        wait = jobs_op.DEFAULT_GRACE_S if grace is None else grace
        report = jobs_op.stop(self.engine, jobs_op.load_job(name), name, targets, grace=wait,
                              fanout=self.settings.fanout, on_done=on_done)
        return _described(report, "stop", jobs_view.stop_fields)

    def _job_log_sources(self, job: str, hosts: Targets, role: Targets, file: str | None,
                         deployment: str | None) -> list[LogSource]:
        if file is not None or deployment is not None:
            raise ParameterError("job", "{name} reads the job's own log: leave out file and deployment")
        recorded = jobs_op.load_job(jobs_op.check_name(job, "job"))
        if recorded is None:
            raise ParameterError("job", f"{{name}}: no job {job} recorded ({jobs_op.job_file(job)} "
                                        "not found): `inv jobs` lists the jobs")
        targets = self._targets(hosts, role)
        sources = jobs_op.log_sources(recorded, targets)
        if not sources:
            raise ParameterError("hosts", f"job {job} has no process on the selected hosts ({{name}})")
        return sources

    # -- files (cluster.transfer) ----------------------------------------------------------
    def put(self, local: str, remote: str, *, hosts: Targets = None, role: Targets = None,
            recursive: bool = False, mkdir: bool = False, force: bool = False,
            timeout: float = defaults.TRANSFER_IDLE_TIMEOUT_S) -> Report:
        """Copy a local file (or tree) to every selected host (``.data``: `cluster.transfer.HostTransfer`)."""
        plan = transfer.plan_put(local, remote, recursive)
        return transfer.put(self.engine, self.hosts(hosts, role), plan, mkdir=mkdir, force=force,
                            timeout=timeout)

    def get(self, remote: str, localdir: str, *, hosts: Targets = None, role: Targets = None,
            recursive: bool = False, force: bool = False,
            timeout: float = defaults.TRANSFER_IDLE_TIMEOUT_S) -> Report:
        """Fetch ``remote`` from every selected host into ``localdir/<host>/``."""
        targets = self.hosts(hosts, role)
        plan = transfer.plan_get(remote, localdir, targets, recursive)
        return transfer.get(self.engine, targets, plan, force=force, timeout=timeout)

    # -- PD serving (cluster.serving) --------------------------------------------
    def serving_config(self, **overrides: Any) -> ServingConfig:
        """The roles file's ``serving:`` section with overrides (None = not given), validated."""
        source = str(self.inventory.path) if self.inventory.path else "roles.yaml"
        raw = self.inventory.sections.get("serving")
        return serving_cfg.parse_serving(raw, source=source).with_overrides(**overrides)

    def plan_pd(self, prefill: Targets = None, decode: Targets = None, *, router: str | None = None,
                deployment: str | None = None, run_id: str | None = None,
                **overrides: Any) -> StartPlan:
        """Plan a PD deployment without connecting: hosts from the expressions, else from
        the roles ``prefill`` / ``decode``. ``overrides`` are `ServingConfig.with_overrides`
        keys (model_path, tp_size, engine...). Raises `InputError` on bad input."""
        config = self.serving_config(**overrides)
        prefill_hosts = self.hosts(prefill) if prefill is not None else self.inventory.role_hosts("prefill")
        decode_hosts = self.hosts(decode) if decode is not None else self.inventory.role_hosts("decode")
        return serving_plan.plan_start(config, prefill_hosts, decode_hosts, router=router,
                                       deployment=_deployment(deployment), run_id=run_id)

    def start_pd(self, plan: StartPlan, *, wait: bool = True,
                 timeout: float | None = None, restart: bool = False, grace: float | None = None,
                 on_progress: serving_start.ProgressFn | None = None,
                 preflight: bool = True) -> serving_start.StartResult:
        """Start the planned servers (and router) and wait until they are ready: exactly
        the scripts ``serving.dry_run_scripts(plan)`` shows, with the plan's run id.
        ``timeout`` / ``grace`` None: ``serving.DEFAULT_TIMEOUT_S`` / ``DEFAULT_GRACE_S``.

        ``preflight`` (default): first the fast checks of :meth:`preflight` (GPUs free, env
        file, engine importable, model present); a failing one on any host starts nothing
        anywhere. Ports are left to the start's own check (it tells a running server from
        another listener); with ``restart``, busy GPUs are expected and not checked."""
        limit, pause = _wait_limit(timeout), _grace(grace)
        refused = None
        if preflight:
            # Bad input is exit 2 before any host is contacted, the checks' round trip included.
            serving_start.check_timeout(limit)
            serving_stop.check_grace(pause)
            serving_records.ensure_state_dir()
            checked = preflight_run.preflight(self.engine, plan, fast=True, fanout=self.settings.fanout,
                                              keep_open=True)
            ignore = (preflight_checks.PORTS,) + ((preflight_checks.GPU_FREE,) if restart else ())
            refused = preflight_run.refusals(checked, ignore)
        return serving_start.start_pd(self.engine, plan, wait=wait, timeout=limit,
                                      restart=restart, grace=pause, fanout=self.settings.fanout,
                                      on_progress=on_progress, refused=refused)

    def preflight(self, plan: StartPlan, *, deep: bool = False, fast: bool = False,
                  on_done: OnDone | None = None) -> Report:
        """Check that every host can serve its part of ``plan`` (docs/preflight.md): one
        round trip per host; each outcome's ``data`` holds its checks (ok / warn / fail),
        a host with a failing check is failed (kind ``preflight``). ``fast``: start-pd's
        subset; ``deep``: also hash the model's top-level JSON files."""
        return preflight_run.preflight(self.engine, plan, deep=deep, fast=fast,
                                       fanout=self.settings.fanout, on_done=on_done)

    def restart_pd(self, *, hosts: Targets = None, role: Targets = None,
                   deployment: str | None = None, wait: bool = True,
                   timeout: float | None = None, grace: float | None = None,
                   on_progress: serving_start.ProgressFn | None = None) -> serving_start.RestartResult:
        """Replace servers of the recorded deployment: those on the selected hosts (every
        rank of each), or with no selection those whose process is gone; others are left
        alone. Recorded specs, a new run id; the router is made to list them again."""
        manifest = self._recorded(deployment)
        targets = self._targets(hosts, role)
        config = self.serving_config()
        arguments = {"prefill": config.prefill.extra_args, "decode": config.decode.extra_args,
                     "router": config.router.extra_args}
        return serving_start.restart_pd(self.engine, manifest, hosts=targets, arguments=arguments,
                                        secrets=self._secret_values(), wait=wait,
                                        timeout=_wait_limit(timeout), grace=_grace(grace),
                                        fanout=self.settings.fanout,
                                        on_progress=on_progress)

    def stop_pd(self, *, hosts: Targets = None, role: Targets = None, deployment: str | None = None,
                grace: float | None = None, sweep: str | None = None,
                keep_router: bool = False) -> serving_stop.StopResult:
        """Stop the recorded deployment, or what start-pd started on the selected hosts.
        ``grace`` / ``sweep`` None: ``serving.DEFAULT_GRACE_S`` / ``DEFAULT_SWEEP``."""
        targets = self._targets(hosts, role)
        deployment = _deployment(deployment)
        manifest, problem = self._manifest_for(deployment, targets)
        result = serving_stop.stop_pd(self.engine, manifest, hosts=targets,
                                      run_dir=self.serving_config().run_dir, grace=_grace(grace),
                                      sweep=serving_stop.DEFAULT_SWEEP if sweep is None else sweep,
                                      keep_router=keep_router, fanout=self.settings.fanout,
                                      deployment=deployment)
        if problem:
            result.report.extra["manifest_error"] = problem
        return result

    def pd_status(self, *, hosts: Targets = None, role: Targets = None,
                  deployment: str | None = None, prune: bool = False) -> serving_status.StatusResult:
        """Health of every server of the recorded deployment (or of the selected hosts);
        ``prune`` removes the stale per-host records found."""
        targets = self._targets(hosts, role)
        deployment = _deployment(deployment)
        manifest, problem = self._manifest_for(deployment, targets)
        result = serving_status.pd_status(self.engine, manifest, hosts=targets,
                                          run_dir=self.serving_config().run_dir,
                                          fanout=self.settings.fanout, deployment=deployment, prune=prune)
        if problem:
            result.report.extra["manifest_error"] = problem
        return result

    @staticmethod
    def _manifest_for(deployment: str | None, targets: Sequence[Host] | None
                      ) -> tuple[serving_records.Manifest | None, str | None]:
        """The recorded deployment; with hosts named, a corrupt manifest is set aside (the
        hosts' own records still work) and its error returned, else it raises."""
        try:
            return serving_records.load_manifest(deployment), None
        except InputError as exc:
            if targets is None:
                raise
            return None, str(exc)

    def _targets(self, hosts: Targets, role: Targets) -> list[Host] | None:
        """The selected hosts, or None when neither was given (an empty -H "" is an
        error, never "everything": `Inventory.select`)."""
        return None if hosts is None and role is None else self.hosts(hosts, role)

    def _recorded(self, deployment: str | None) -> serving_records.Manifest:
        deployment = _deployment(deployment)
        manifest = serving_records.load_manifest(deployment)
        if manifest is None:
            raise ParameterError("deployment", f"no recorded deployment "
                                               f"({serving_records.manifest_file(deployment)} not found): "
                                               "start one with `inv start-pd` (or check {name})")
        return manifest

    def _secret_values(self) -> Mapping[str, str]:
        """Where the values of secret variables (never recorded) come from on a restart:
        this process's environment, then the roles file's serving env (role env last)."""
        config = self.serving_config()
        values = dict(os.environ)
        values.update(config.env)
        values.update(config.prefill.env)
        values.update(config.decode.env)
        return values

    def close(self) -> None:
        """Close every open connection."""
        if self._engine is not None:
            self._engine.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _described(report: Report, task: str,
               fields: Callable[[Outcome], dict[str, Any]] | None = None) -> Report:
    """``report`` named after its task, with the task's JSON fields per host."""
    report.task = task
    if fields is not None:
        report.fields = fields
    return report


def _deployment(name: str | None) -> str | None:
    """A deployment name as given (None: the default one), checked: it names a file and
    reaches remote command lines (`cluster.options.name`)."""
    return None if name is None else options.name(name, "deployment")


# Defaults resolved on use, not in the signatures: a default read at class definition
# would load the serving code with `import cluster.api` (cluster/lazy.py).
def _wait_limit(timeout: float | None) -> float:
    return serving_start.DEFAULT_TIMEOUT_S if timeout is None else timeout


def _grace(grace: float | None) -> float:
    return serving_stop.DEFAULT_GRACE_S if grace is None else grace
