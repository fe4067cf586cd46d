"""PD deployment commands built from data. Pure: nothing here opens a connection or runs.

The flow a lifecycle follows:

1. :func:`plan_deployment` turns a :class:`~cluster.serving.config.ServingConfig` and the
   prefill/decode host lists into one :class:`ServerSpec` per host (multi-node servers
   span ``nnodes`` consecutive hosts; only node-rank 0 serves the API).
2. :func:`server_launch` / :func:`router_launch` give a :class:`Launch` (argv, env,
   files, ports) and :func:`launch_script` the POSIX shell text that starts it in its
   own session (``setsid nohup``) and prints its pid. :func:`render_for_display` is the
   only form ever shown to people (``--dry-run``): secrets masked.
3. :func:`health_command`, :func:`stop_command`, :func:`sweep_command`,
   :func:`ports_free_command` are the probes/actions used afterwards, each with a
   ``parse_*`` for its output.
4. :class:`Manifest` records what was started (JSON) so stop/status/logs need no host list.

Launch-script exit codes (documented for the lifecycle's messages): see ``EXIT_*``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Mapping, Sequence

from ..errors import InputError
from ..hosts import LOCAL, Host, parse_hosts
from . import shellcmd
from .config import DECODE, PREFILL, SGLANG, VLLM, ServingConfig

# Exit codes of launch_script (and preflight_script). 1 and 2 are left to the shell
# and to tools; 126/127 mean "cannot execute" / "not found" as usual.
EXIT_ENV_FILE_MISSING = 3
EXIT_RUN_DIR = 4
EXIT_ALREADY_RUNNING = 5
EXIT_PORT_BUSY = 6
EXIT_LAUNCHER_MISSING = 7
EXIT_MESSAGES = {
    EXIT_ENV_FILE_MISSING: "env file not found",
    EXIT_RUN_DIR: "cannot create the run directory",
    EXIT_ALREADY_RUNNING: "a server is already running there",
    EXIT_PORT_BUSY: "a port it needs is already in use",
    EXIT_LAUNCHER_MISSING: "the launcher (python/vllm/router) is not on PATH",
}

# Command-line patterns of a deployment's processes, for the sweep. Each alternative
# starts with a one-letter bracket class ([s]glang) so the regex never matches the text
# of the sweeping shell's own command line (which contains the pattern literally).
SWEEP_PATTERNS = {
    SGLANG: (r"[s]glang::", r"[s]glang\.launch_server", r"[s]glang serve", r"[s]glang\.srt"),
    VLLM: (r"[V]LLM::EngineCore", r"[V]LLM::Worker", r"[v]llm serve"),
}
ROUTER_SWEEP_PATTERNS = {
    SGLANG: (r"[s]glang_router", r"(^|/)[s]mg "),
    VLLM: (r"[v]llm-router", r"[v]llm_router"),
}
# Titles of router processes, spared by the sweep unless the router is being stopped.
ROUTER_TITLES = {SGLANG: ("sglang::router",), VLLM: ()}

# Exported into every server's and router's environment (children inherit it, even those
# that leave the process group), so a sweep can be limited to one deployment's processes.
RUN_ID_ENV = "CLUSTER_PD_RUN_ID"

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


# --- specs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """One server process on one host (one node-rank of one PD server).

    ``host`` is the node's own address (``--host``, URLs, file names); ``target`` is
    how to reach the host over SSH (the host expression item, e.g. ``user@10.8.0.81``).
    """

    engine: str
    role: str
    host: str
    target: str
    port: int
    server_index: int
    node_rank: int
    nnodes: int
    tp_size: int
    dist_init_addr: str | None
    dist_init_port: int
    bootstrap_port: int
    model_path: str
    python: str
    extra_args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    env_file: str | None
    run_dir: str
    run_id: str
    side_channel_port: int | None = None

    @property
    def is_api(self) -> bool:
        """Only node-rank 0 serves the HTTP API (health polls, router targets)."""
        return self.node_rank == 0

    @property
    def name(self) -> str:
        """``<engine>-<role>-<host>-<port>``: unique per host:port, used in file names."""
        return f"{self.engine}-{self.role}-{_safe(self.host)}-{self.port}"

    @property
    def log_path(self) -> str:
        """Per-launch log (run id in the name: an old "ready" line never matches)."""
        return f"{_dir(self.run_dir)}/{self.name}-{self.run_id}.log"

    @property
    def pid_path(self) -> str:
        return f"{_dir(self.run_dir)}/{self.name}.pid"

    @property
    def record_path(self) -> str:
        """Per-host manifest entry (JSON of this server's :class:`ServerRecord`)."""
        return f"{_dir(self.run_dir)}/{self.name}.json"

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    @property
    def local_tp(self) -> int:
        """GPUs (TP ranks) of this server on this node."""
        return max(1, self.tp_size // self.nnodes)

    @property
    def ports(self) -> tuple[int, ...]:
        """TCP ports this process listens on, on its host (for busy/free checks)."""
        ports: list[int] = []
        if self.engine == SGLANG:
            # Every rank binds --port (rank >= 1 runs a dummy /health server there).
            ports.append(self.port)
            if self.role == PREFILL and self.is_api:
                ports.append(self.bootstrap_port)
        elif self.is_api:  # vLLM headless ranks serve no HTTP
            ports.append(self.port)
        if self.nnodes > 1 and self.is_api:
            ports.append(self.dist_init_port)
        if self.side_channel_port is not None:
            ports.extend(range(self.side_channel_port, self.side_channel_port + self.local_tp))
        return tuple(dict.fromkeys(ports))


@dataclass(frozen=True)
class RouterSpec:
    """The PD router: where it runs, what it listens on, which workers it fronts."""

    engine: str
    host: str
    target: str
    bind: str
    port: int
    metrics_port: int
    policy: str | None
    launcher: tuple[str, ...]
    prefill: tuple[tuple[str, int | None], ...]
    decode: tuple[str, ...]
    extra_args: tuple[str, ...]
    env_file: str | None
    run_dir: str
    run_id: str

    @property
    def is_local(self) -> bool:
        return self.host == LOCAL

    @property
    def name(self) -> str:
        return f"{self.engine}-router-{_safe(self.host)}-{self.port}"

    @property
    def log_path(self) -> str:
        return f"{_dir(self.run_dir)}/{self.name}-{self.run_id}.log"

    @property
    def pid_path(self) -> str:
        return f"{_dir(self.run_dir)}/{self.name}.pid"

    @property
    def url(self) -> str:
        """Where clients (and readiness polls) reach the router."""
        return http_url(self.bind if self.bind not in ("0.0.0.0", "::") else _loopback(self.bind),
                        self.port)


@dataclass(frozen=True)
class Launch:
    """A process to start in its own session: the data behind :func:`launch_script`."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    env_file: str | None
    run_dir: str
    log_path: str
    pid_path: str
    bind_host: str
    ports: tuple[int, ...]


# --- planning ------------------------------------------------------------------------------


def new_run_id(now: float | None = None, token: str | None = None) -> str:
    """A run id such as ``20250101-120000-a1b2``: sortable time plus 4 random hex digits."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    return f"{stamp}-{token if token is not None else secrets.token_hex(2)}"


def plan_deployment(
    config: ServingConfig,
    prefill_hosts: Sequence[str | Host],
    decode_hosts: Sequence[str | Host],
    *,
    run_id: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[ServerSpec]:
    """One ServerSpec per host: prefill servers first, then decode, in the given order.

    Hosts are grouped into servers of ``nnodes`` consecutive hosts per role; node-rank 0
    of each group is its API node and its address is the group's ``--dist-init-addr``.
    ``environ`` supplies the values of ``serving.forward_env`` (default: empty).
    Raises InputError (exit 2) for: no hosts in a role, a host count that is not a
    multiple of ``nnodes``, ``tp_size`` not divisible by ``nnodes``, no model path, a
    wildcard ``--host``, a forwarded variable that is not set, or a port claimed twice
    on one host.
    """
    if not config.model_path:
        raise InputError("no model path: set serving.model_path in the roles file or pass --model-path")
    run_id = run_id or new_run_id()
    forwarded = _forwarded_env(config, environ or {})
    specs: list[ServerSpec] = []
    for role, hosts in ((PREFILL, prefill_hosts), (DECODE, decode_hosts)):
        specs.extend(_plan_role(config, role, _as_hosts(hosts, role), run_id, forwarded))
    if config.engine == VLLM:
        specs = _assign_side_channels(specs, config.side_channel_port)
    _check_port_clashes(specs)
    return specs


def plan_router(
    config: ServingConfig,
    servers: Sequence[ServerSpec],
    *,
    host: str | Host | None = None,
) -> RouterSpec | None:
    """The router fronting the API nodes of ``servers``, or None when no router is asked.

    ``host`` (e.g. from ``--router``) overrides ``serving.router.host``; ``local`` runs
    it on the controller, listening on 127.0.0.1 unless ``router.bind`` says otherwise.
    """
    router = config.router
    chosen = host if host is not None else router.host
    if chosen is None:
        return None
    target_host = chosen if isinstance(chosen, Host) else _parse_one(str(chosen), "router")
    address = target_host.hostname
    bind = router.bind or ("127.0.0.1" if address == LOCAL else address)
    api = [s for s in servers if s.is_api]
    prefill = tuple(
        (s.url, s.bootstrap_port if s.engine == SGLANG else None) for s in api if s.role == PREFILL
    )
    decode = tuple(s.url for s in api if s.role == DECODE)
    if not prefill or not decode:
        raise InputError("the router needs at least one prefill and one decode server")
    run_id = servers[0].run_id
    spec = RouterSpec(
        engine=config.engine,
        host=address,
        target=str(target_host),
        bind=bind,
        port=router.port,
        metrics_port=router.metrics_port,
        policy=router.policy,
        launcher=router.launcher or _default_router_launcher(config),
        prefill=prefill,
        decode=decode,
        extra_args=router.extra_args,
        env_file=router.env_file,
        run_dir=config.run_dir,
        run_id=run_id,
    )
    # A wildcard bind takes the port on every address of the router's host.
    router_addresses = {bind, "127.0.0.1" if address == LOCAL else address}
    if router.metrics_port == router.port:
        raise InputError(f"router port and router metrics port are both {router.port}")
    for server in servers:
        for port in (router.port, router.metrics_port):
            if server.host in router_addresses and port in server.ports:
                raise InputError(
                    f"router port {port} on {bind} is also used by {server.role} server "
                    f"{server.server_index} (node-rank {server.node_rank})"
                )
    return spec


# --- argv builders -------------------------------------------------------------------------


def server_argv(spec: ServerSpec) -> list[str]:
    """The exact argument vector of one server process (no shell involved)."""
    if spec.engine == SGLANG:
        return _sglang_argv(spec)
    if spec.engine == VLLM:
        return _vllm_argv(spec)
    raise InputError(f"unknown engine {spec.engine!r}")


def server_env(spec: ServerSpec) -> list[tuple[str, str]]:
    """Variables exported before the server starts: config env, role env, engine extras."""
    env = dict(spec.env)
    if spec.engine == VLLM and spec.side_channel_port is not None:
        # NIXL's side channel defaults to localhost:5600: set a reachable address and a
        # per-host-unique port so several servers can share a host.
        env.setdefault("VLLM_NIXL_SIDE_CHANNEL_HOST", spec.host)
        env.setdefault("VLLM_NIXL_SIDE_CHANNEL_PORT", str(spec.side_channel_port))
    return list(env.items())


def router_argv(spec: RouterSpec) -> list[str]:
    """The router's argument vector (sglang_router / smg, or vllm-router)."""
    argv = list(spec.launcher)
    if spec.engine == SGLANG:
        argv.append("--pd-disaggregation")
        for url, bootstrap in spec.prefill:
            argv += ["--prefill", url] + ([str(bootstrap)] if bootstrap is not None else [])
        for url in spec.decode:
            argv += ["--decode", url]
    else:
        argv.append("--vllm-pd-disaggregation")
        for url, _ in spec.prefill:
            argv += ["--prefill", url]
        for url in spec.decode:
            argv += ["--decode", url]
        argv += ["--kv-connector", "nixl"]
    argv += ["--host", spec.bind, "--port", str(spec.port)]
    # Both routers export Prometheus metrics on 29000 unless told otherwise, and
    # sglang-router panics when that port is taken: keep it explicit and checkable.
    argv += ["--prometheus-host", spec.bind, "--prometheus-port", str(spec.metrics_port)]
    if spec.policy:
        argv += ["--policy", spec.policy]
    return argv + list(spec.extra_args)


def server_launch(spec: ServerSpec) -> Launch:
    """The Launch (argv, env, files, ports) of one server."""
    return Launch(
        name=spec.name,
        argv=tuple(server_argv(spec)),
        env=tuple(server_env(spec)) + ((RUN_ID_ENV, spec.run_id),),
        env_file=spec.env_file,
        run_dir=spec.run_dir,
        log_path=spec.log_path,
        pid_path=spec.pid_path,
        bind_host=spec.host,
        ports=spec.ports,
    )


def router_launch(spec: RouterSpec) -> Launch:
    """The Launch of the router."""
    return Launch(
        name=spec.name,
        argv=tuple(router_argv(spec)),
        env=((RUN_ID_ENV, spec.run_id),),
        env_file=spec.env_file,
        run_dir=spec.run_dir,
        log_path=spec.log_path,
        pid_path=spec.pid_path,
        bind_host=spec.bind,
        ports=(spec.port, spec.metrics_port),
    )


# --- shell text ----------------------------------------------------------------------------

# Feed launch_script() on stdin to this, so secrets never appear in any process's
# command line (``ps`` shows argv to every user on the host). bash when present,
# because env files such as /opt/deepep/unified-env.sh are often bash.
STDIN_RUNNER = "if command -v bash >/dev/null 2>&1; then exec bash -s; else exec sh -s; fi"


def launch_script(launch: Launch, *, refuse_running: bool = True, check_ports: bool = True) -> str:
    """POSIX shell text that starts ``launch`` in its own session and prints its pid.

    Steps, each failing with a documented exit code and a one-line message on stderr:
    env file present (3), run dir created (4), no live process group from the pid
    file (5), ports free on the bind address (6); then source the env file (its
    output goes to the log), export the env, check the launcher is on PATH (7), and
    ``setsid nohup ARGV >> LOG 2>&1 < /dev/null &`` — PGID = PID, so stop can kill
    the whole group; it waits (at most 1 s) until the new process leads its group.
    Prints the pid as the last line of stdout.
    Contains secrets in clear: run it (preferably via :data:`STDIN_RUNNER`), never print it.
    """
    return "\n".join(_launch_lines(launch, refuse_running, check_ports, mask=False)) + "\n"


def preflight_script(launch: Launch, *, running_ok: bool = False) -> str:
    """The checks of :func:`launch_script` without the start (changes nothing on the host).

    Run on every host before starting anything, so bad input fails before any
    server starts. Exit 0 = all clear (last line ``ok``); otherwise the same exit
    codes as the launch. Checks: env file (3), a live group from the pid file (5),
    ports (6), and — in a subshell that sources the env file and exports the env —
    that the launcher is on PATH and, for ``PY -m pkg.mod``, that ``pkg`` imports (7).
    With ``running_ok`` (``--restart``) a live group is not an error: the script
    prints ``RUNNING <pgid>`` and skips the port check (that group holds the ports).
    Contains the env in clear: run it on stdin, never print it.
    """
    lines = []
    if launch.env_file:
        lines.append(_env_file_check(launch.env_file))
    if running_ok:
        lines.append(_running_report(launch.pid_path))
        if launch.ports:
            lines.append(f'if [ -z "$running" ]; then {_ports_check(launch.bind_host, launch.ports)}; fi')
    else:
        lines.append(_running_check(launch.pid_path))
        if launch.ports:
            lines.append(_ports_check(launch.bind_host, launch.ports))
    lines.append(_launcher_check(launch))
    lines.append("echo ok")
    return "\n".join(lines) + "\n"


def render_for_display(item: ServerSpec | RouterSpec | Launch) -> str:
    """What ``--dry-run`` prints: the launch script with secret values shown as ``***``.

    Secret = env vars named like *TOKEN*, *KEY*, *SECRET*, *PASSWORD*, and the values
    of options such as ``--api-key``. Never returns the real secret.
    """
    launch = _as_launch(item)
    return "\n".join(_launch_lines(launch, True, True, mask=True)) + "\n"


def display_command(item: ServerSpec | RouterSpec | Launch) -> str:
    """One line for tables and manifests: ``ENV=… argv…`` with secrets masked."""
    launch = _as_launch(item)
    exports = shellcmd.export_line(launch.env, mask=True).removeprefix("export ")
    command = shellcmd.display_argv(launch.argv)
    return f"{exports} {command}".strip()


def http_url(host: str, port: int, path: str = "") -> str:
    """``http://host:port/path`` with IPv6 literals bracketed."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}{path}"


def health_command(host: str, port: int, path: str = "/health", *, timeout_s: float = 5) -> str:
    """Shell text that GETs ``http://host:port/path`` from the host itself and prints the code.

    Prints the HTTP status (``200``, ``503``…) or ``000`` when nothing answers.
    Proxies are bypassed (``http_proxy`` on a GPU host would otherwise catch the request).
    Uses curl when present, else python3's urllib.
    """
    url = shellcmd.quote(http_url(host, port, path))
    limit = shellcmd.quote(f"{timeout_s:g}")
    curl = (f"curl -s -o /dev/null --noproxy '*' -m {limit} -w '%{{http_code}}' {url} "
            "2>/dev/null")
    py = shellcmd.quote(_PY_HEALTH)
    return (
        "if command -v curl >/dev/null 2>&1; then "
        f"code=$({curl}); "
        f"else code=$(python3 -c {py} {url} {limit} 2>/dev/null); fi; "
        'case "$code" in [0-9][0-9][0-9]) ;; *) code=000;; esac; echo "$code"'
    )


def parse_health(stdout: str) -> int:
    """HTTP code from :func:`health_command` output; 0 = no answer (``000`` or garbage)."""
    lines = stdout.strip().splitlines()
    last = lines[-1].strip() if lines else ""
    return int(last) if last.isdigit() and len(last) == 3 else 0


def ports_free_command(ports: Iterable[int], host: str | None = None) -> str:
    """Shell text printing ``<port> free`` or ``<port> busy`` per port (exit 0).

    A port is busy when something LISTENs on it at ``host``, on a wildcard address
    (0.0.0.0 / ::), or — when ``host`` is None or not an IP literal — anywhere.
    Reads /proc/net/tcp{,6} with awk, so it needs neither ss nor netstat; matching
    the address matters on loopback fleets where 127.0.1.1 and 127.0.1.2 share a kernel.
    """
    ports = list(dict.fromkeys(int(p) for p in ports))
    if not ports:
        return "true"
    scan = _listen_scan(host, ports)
    loop = " ".join(str(p) for p in ports)
    return (
        f"busy=\" $({scan} | tr '\\n' ' ') \"; "
        f"for p in {loop}; do case \"$busy\" in *\" $p \"*) echo \"$p busy\";; "
        '*) echo "$p free";; esac; done'
    )


def parse_ports_free(stdout: str) -> dict[int, bool]:
    """``{port: free?}`` from :func:`ports_free_command` output."""
    result: dict[int, bool] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1] in ("free", "busy"):
            result[int(parts[0])] = parts[1] == "free"
    return result


def stop_command(pgid: int, grace_s: float = 30) -> str:
    """Shell text that stops process group ``pgid``: SIGTERM, wait ``grace_s``, SIGKILL.

    Output lines (parse with :func:`parse_stop`): ``GONE`` when nothing was running;
    else ``PIDS p1 p2…`` (group members at the start), then ``TERM`` or ``KILL p…``
    (members still alive after the grace), and ``DONE <term|kill> <seconds>``; if
    members survive SIGKILL (uninterruptible sleep), ``ALIVE p…`` and exit 1.
    Zombies do not count as alive.
    """
    if int(pgid) <= 1:
        raise InputError(f"refusing to signal process group {pgid}")
    ticks = max(0, round(grace_s * 10))
    return "\n".join([
        f"g={int(pgid)}",
        _GROUP_FUNCS,
        'if [ -z "$(members)" ]; then echo GONE; exit 0; fi',
        'echo "PIDS $(members)"',
        "start=$(date +%s)",
        "kill -TERM -$g 2>/dev/null",
        "t=0",
        f'while [ -n "$(members)" ] && [ $t -lt {ticks} ]; do sleep 0.1; t=$((t+1)); done',
        'how=term',
        'left=$(members)',
        'if [ -n "$left" ]; then echo "KILL $left"; how=kill; kill -KILL -$g 2>/dev/null;',
        '  t=0; while [ -n "$(members)" ] && [ $t -lt 50 ]; do sleep 0.1; t=$((t+1)); done; fi',
        'left=$(members)',
        'echo "DONE $how $(( $(date +%s) - start ))"',
        'if [ -n "$left" ]; then echo "ALIVE $left"; exit 1; fi',
    ]) + "\n"


@dataclass(frozen=True)
class StopResult:
    """Parsed :func:`stop_command` output."""

    was_running: bool
    pids: tuple[int, ...] = ()
    killed: tuple[int, ...] = ()
    how: str = ""
    seconds: int | None = None
    alive: tuple[int, ...] = ()


def parse_stop(stdout: str) -> StopResult:
    """StopResult from :func:`stop_command` output."""
    values: dict[str, Any] = {"was_running": True}
    for line in stdout.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "GONE":
            return StopResult(was_running=False)
        if word in ("PIDS", "KILL", "ALIVE"):
            key = {"PIDS": "pids", "KILL": "killed", "ALIVE": "alive"}[word]
            values[key] = _ints(rest)
        elif word == "DONE":
            how, _, secs = rest.partition(" ")
            values["how"] = how
            values["seconds"] = int(secs) if secs.strip().isdigit() else None
    return StopResult(**values)


def sweep_command(engine: str, user: str | None = None, spare_router: bool = True, *,
                  servers: bool = True, run_ids: Iterable[str] = ()) -> str:
    """Shell text that SIGKILLs leftover processes of ``engine`` owned by ``user``.

    Matches command lines (``pgrep -f``: titles like ``sglang::scheduler_TP0`` are
    truncated in ``comm``), e.g. ``sglang::|sglang.launch_server|sglang serve|sglang.srt``
    or ``VLLM::EngineCore|VLLM::Worker|vllm serve``; ``sglang::router`` (and the router
    launcher) only when ``spare_router`` is False. ``servers=False`` sweeps only router
    processes (a router-only host). ``run_ids`` limits the sweep to processes whose
    environment holds ``CLUSTER_PD_RUN_ID=<one of them>`` (set by every launch and
    inherited by every child, including those that left the group): one deployment's
    leftovers, not every server of the user. Never matches the sweeping shell:
    the patterns use ``[s]glang`` and the shell's own pid and ancestors are skipped.
    ``user`` None = the remote login user. Output: ``KILLED <pid> <cmdline>`` per
    process, then ``SURVIVED <pid>…`` if any is still there (parse with :func:`parse_sweep`).
    """
    if engine not in SWEEP_PATTERNS:
        raise InputError(f"unknown engine {engine!r}")
    if servers:
        patterns = list(SWEEP_PATTERNS[engine])
        spared: tuple[str, ...] = ROUTER_TITLES[engine] if spare_router else ()
        if not spare_router:
            patterns += ROUTER_SWEEP_PATTERNS[engine]
    else:
        patterns = list(ROUTER_SWEEP_PATTERNS[engine]) + [
            "[" + t[0] + "]" + re.escape(t[1:]) for t in ROUTER_TITLES[engine]]
        spared = ()
    who = shellcmd.quote(user) if user else '"$(id -un)"'
    pattern = shellcmd.quote("|".join(patterns))
    spare_case = " | ".join(shellcmd.quote(t) + "*" for t in spared)
    skip = [f'  case "$cmd" in {spare_case}) continue;; esac'] if spared else []
    ids = list(dict.fromkeys(run_ids))
    if ids:
        skip += _run_scope_lines(ids)
    lines = [
        # $$ and its ancestors (this shell, sshd's session shell) are never candidates.
        'anc=" $$ "; a=$$',
        'while [ "${a:-1}" -gt 1 ]; do',
        '  a=$(ps -o ppid= -p "$a" 2>/dev/null | tr -d " ") || a=""',
        '  if [ -n "$a" ]; then anc="$anc$a "; fi',
        "done",
        "killed=''",
        # `|| true` everywhere: callers may run this under `set -e`, and "no match" is fine.
        f"list=$(pgrep -u {who} -a -f {pattern} 2>/dev/null) || true",
        'while read -r pid cmd; do',
        '  [ -n "$pid" ] || continue',
        '  case "$anc" in *" $pid "*) continue;; esac',
        # A zombie is already dead (its parent has not reaped it yet): nothing to kill.
        '  case "$(ps -o stat= -p "$pid" 2>/dev/null || true)" in ""|Z*) continue;; esac',
        *skip,
        '  if kill -KILL "$pid" 2>/dev/null; then echo "KILLED $pid $cmd"; killed="$killed $pid"; fi',
        "done <<EOF",
        "$list",
        "EOF",
        'if [ -n "$killed" ]; then',
        '  sleep 0.3; left=""',
        "  for p in $killed; do",
        '    st=$(ps -o stat= -p "$p" 2>/dev/null) || st=""',
        '    case "$st" in ""|Z*) ;; *) left="$left $p";; esac',
        "  done",
        '  if [ -n "$left" ]; then echo "SURVIVED$left"; fi',
        "fi",
        "true",
    ]
    return "\n".join(lines) + "\n"


def _run_scope_lines(run_ids: Sequence[str]) -> list[str]:
    """Loop-body lines of :func:`sweep_command` that skip processes of other runs.

    A process belongs to a run when its stdout or stderr is that run's per-launch log
    (``…-<run_id>.log``: inherited by every child, kept across ``setsid``, untouched by
    ``setproctitle``) or its environment holds ``CLUSTER_PD_RUN_ID=<run_id>``
    (``setproctitle`` wipes ``/proc/PID/environ``, so the log is the main key).
    """
    logs = " | ".join("*" + shellcmd.quote(f"-{r}.log") for r in run_ids)
    options = " ".join(f"-e {shellcmd.quote(f'{RUN_ID_ENV}={r}')}" for r in run_ids)
    return [
        "  mine=''",
        "  for fd in 1 2; do",
        '    l=$(readlink /proc/"$pid"/fd/$fd 2>/dev/null) || l=""',
        f'    case "$l" in {logs}) mine=1;; esac',
        "  done",
        '  if [ -z "$mine" ]; then',
        '    envs=$(tr "\\000" "\\n" < /proc/"$pid"/environ 2>/dev/null) || envs=""',
        f'    if printf "%s\\n" "$envs" | grep -qxF {options}; then mine=1; fi',
        "  fi",
        '  [ -n "$mine" ] || continue',
    ]


@dataclass(frozen=True)
class SweepResult:
    """Parsed :func:`sweep_command` output."""

    killed: tuple[tuple[int, str], ...] = ()
    survived: tuple[int, ...] = ()


def parse_sweep(stdout: str) -> SweepResult:
    """SweepResult from :func:`sweep_command` output."""
    killed: list[tuple[int, str]] = []
    survived: tuple[int, ...] = ()
    for line in stdout.splitlines():
        parts = line.strip().split(" ", 2)
        if parts[0] == "KILLED" and len(parts) >= 2 and parts[1].isdigit():
            # Command lines can be huge (python -c CODE): keep the start.
            killed.append((int(parts[1]), parts[2][:200] if len(parts) > 2 else ""))
        elif parts[0] == "SURVIVED":
            survived = _ints(line.strip()[len("SURVIVED"):])
    return SweepResult(tuple(killed), survived)


def stop_groups_command(pgids: Sequence[int], grace_s: float = 30) -> str:
    """Shell text that stops several process groups at once: SIGTERM all, one shared
    grace of ``grace_s``, then SIGKILL the groups that still have members.

    Per group ``g`` (parse with :func:`parse_stop_groups`): ``GONE g`` when nothing ran;
    else ``PIDS g p…``, then ``KILL g p…`` for members left after the grace,
    ``DONE g <term|kill> <seconds>`` and, if members survive SIGKILL, ``ALIVE g p…``
    (exit 1). Zombies do not count. Refuses groups 0 and 1.
    """
    groups = list(dict.fromkeys(int(g) for g in pgids))
    for g in groups:
        if g <= 1:
            raise InputError(f"refusing to signal process group {g}")
    if not groups:
        return "true\n"
    ticks = max(0, round(grace_s * 10))
    return "\n".join([
        "members() { ps -eo pid=,pgid=,stat= 2>/dev/null | "
        "awk -v g=\"$1\" '$2==g && $3 !~ /^Z/ {printf \"%s \", $1}' | sed 's/ $//'; }",
        'any_left() { for g in $live; do [ -n "$(members "$g")" ] && return 0; done; return 1; }',
        "live=''; hard=''",
        f"for g in {' '.join(str(g) for g in groups)}; do",
        '  m=$(members "$g")',
        '  if [ -z "$m" ]; then echo "GONE $g"; else echo "PIDS $g $m"; live="$live $g"; fi',
        "done",
        "start=$(date +%s)",
        'for g in $live; do kill -TERM -"$g" 2>/dev/null; done',
        f't=0; while any_left && [ $t -lt {ticks} ]; do sleep 0.1; t=$((t+1)); done',
        "for g in $live; do",
        '  left=$(members "$g")',
        '  if [ -n "$left" ]; then echo "KILL $g $left"; hard="$hard $g "; kill -KILL -"$g" 2>/dev/null; fi',
        "done",
        'if [ -n "$hard" ]; then t=0; while any_left && [ $t -lt 50 ]; do sleep 0.1; t=$((t+1)); done; fi',
        "rc=0",
        "for g in $live; do",
        '  case "$hard" in *" $g "*) how=kill;; *) how=term;; esac',
        '  echo "DONE $g $how $(( $(date +%s) - start ))"',
        '  left=$(members "$g")',
        '  if [ -n "$left" ]; then echo "ALIVE $g $left"; rc=1; fi',
        "done",
        "exit $rc",
    ]) + "\n"


def parse_stop_groups(stdout: str) -> dict[int, StopResult]:
    """``{pgid: StopResult}`` from :func:`stop_groups_command` output."""
    values: dict[int, dict[str, Any]] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            continue
        word, group, rest = parts[0], int(parts[1]), parts[2:]
        if word == "GONE":
            values[group] = {"was_running": False}
        elif word in ("PIDS", "KILL", "ALIVE"):
            key = {"PIDS": "pids", "KILL": "killed", "ALIVE": "alive"}[word]
            values.setdefault(group, {"was_running": True})[key] = _ints(" ".join(rest))
        elif word == "DONE" and rest:
            entry = values.setdefault(group, {"was_running": True})
            entry["how"] = rest[0]
            entry["seconds"] = int(rest[1]) if len(rest) > 1 and rest[1].isdigit() else None
    return {g: StopResult(**v) for g, v in values.items()}


# --- probes of running servers ------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeTarget:
    """What to look at for one started process (a server node-rank or the router).

    ``health_path`` None = no HTTP health check (non-API ranks, headless vLLM).
    """

    key: str
    pgid: int | None
    host: str
    port: int
    log_path: str
    ports: tuple[int, ...] = ()
    health_path: str | None = "/health"
    fetch_path: str | None = None  # also GET this and print the body (router /workers)


@dataclass(frozen=True)
class ProbeResult:
    """Parsed state of one :class:`ProbeTarget` (see :func:`probe_command`)."""

    key: str
    members: int = 0          # live (non-zombie) processes in the group
    leader_alive: bool = False
    uptime_s: int | None = None
    health: int | None = None  # HTTP code, 0 = no answer, None = not checked
    listening: tuple[int, ...] = ()
    last_log: str | None = None  # None = no log file
    body: str | None = None

    @property
    def alive(self) -> bool:
        """Something of the group still runs (the leader, or children it left)."""
        return self.members > 0


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def probe_command(targets: Sequence[ProbeTarget], *, health_timeout_s: float = 3) -> str:
    """Shell text reporting, per target: group members alive, leader alive, uptime,
    ``/health`` code (from the host itself), which of its ports listen, the last log line
    and (``fetch_path``) a response body. One round trip for all targets of a host.

    Output blocks (parse with :func:`parse_probe`)::

        @@probe KEY
        members N / leader 0|1 / etimes S / health CODE / listen P… / log LINE / nolog
        @@body-begin … @@body-end
    """
    lines = ["members() { ps -eo pid=,pgid=,stat= 2>/dev/null | "
             "awk -v g=\"$1\" '$2==g && $3 !~ /^Z/ {n++} END {print n+0}'; }"]
    for t in targets:
        lines.append(f"echo {shellcmd.quote('@@probe ' + t.key)}")
        if t.pgid and t.pgid > 1:
            g = int(t.pgid)
            lines.append(f'echo "members $(members {g})"')
            lines.append(f"st=$(ps -o stat= -p {g} 2>/dev/null | tr -d ' ') || st=''; "
                         'case "$st" in ""|Z*) echo "leader 0";; *) echo "leader 1";; esac')
            lines.append(f"echo \"etimes $(ps -o etimes= -p {g} 2>/dev/null | tr -d ' ')\"")
        else:
            lines.append('echo "members 0"; echo "leader 0"')
        if t.health_path:
            lines.append(f"{health_command(t.host, t.port, t.health_path, timeout_s=health_timeout_s)}"
                         " | sed 's/^/health /'")
        if t.ports:
            lines.append(f"echo \"listen $({_listen_scan(t.host, t.ports)} | tr '\\n' ' ')\"")
        log = shellcmd.path(t.log_path)
        lines.append(f"if [ -f {log} ]; then printf 'log %s\\n' \"$(tail -n 1 {log} 2>/dev/null "
                     "| tr -d '\\r' | cut -c1-500)\"; else echo nolog; fi")
        if t.fetch_path:
            lines.append("echo @@body-begin")
            lines.append(_fetch_body(t.host, t.port, t.fetch_path, health_timeout_s))
            lines.append("echo; echo @@body-end")
    lines.append("true")
    return "\n".join(lines) + "\n"


def _fetch_body(host: str, port: int, path: str, timeout_s: float) -> str:
    url = shellcmd.quote(http_url(host, port, path))
    limit = shellcmd.quote(f"{timeout_s:g}")
    py = shellcmd.quote("import sys, urllib.request as u\n"
                        "o = u.build_opener(u.ProxyHandler({}))\n"
                        "try:\n"
                        "    r = o.open(sys.argv[1], timeout=float(sys.argv[2]))\n"
                        "    sys.stdout.write(r.read().decode())\n"
                        "except Exception:\n    pass\n")
    return (f"if command -v curl >/dev/null 2>&1; then curl -s --noproxy '*' -m {limit} {url} 2>/dev/null; "
            f"else python3 -c {py} {url} {limit} 2>/dev/null; fi")


def parse_probe(stdout: str) -> dict[str, ProbeResult]:
    """``{key: ProbeResult}`` from :func:`probe_command` output."""
    found: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    body: list[str] | None = None
    for raw in stdout.splitlines():
        if body is not None:
            if raw == "@@body-end":
                assert current is not None
                current["body"] = "\n".join(body).strip()
                body = None
            else:
                body.append(raw)
            continue
        if raw.startswith("@@probe "):
            current = found.setdefault(raw[len("@@probe "):].strip(), {})
            continue
        if current is None:
            continue
        word, _, rest = raw.partition(" ")
        if word == "members" and rest.strip().isdigit():
            current["members"] = int(rest)
        elif word == "leader":
            current["leader_alive"] = rest.strip() == "1"
        elif word == "etimes":
            current["uptime_s"] = int(rest) if rest.strip().isdigit() else None
        elif word == "health":
            current["health"] = parse_health(rest)
        elif word == "listen":
            current["listening"] = _ints(rest)
        elif word == "log":
            current["last_log"] = _ANSI.sub("", rest).strip()
        elif word == "nolog":
            current["last_log"] = None
        elif raw == "@@body-begin":
            body = []
    return {key: ProbeResult(key=key, **values) for key, values in found.items()}


def tail_command(log_path: str, lines: int = 30) -> str:
    """Shell text printing the last ``lines`` lines of a log (nothing when it is missing)."""
    return f"tail -n {int(lines)} {shellcmd.path(log_path)} 2>/dev/null | tr -d '\\r'; true"


def clean_log_lines(text: str) -> list[str]:
    """Log text as lines without colour escapes (the router logs in colour)."""
    return [_ANSI.sub("", line).rstrip() for line in text.splitlines()]


# --- several scripts in one round trip --------------------------------------------------------------


def sections_script(sections: Sequence[tuple[str, str]]) -> str:
    """Run each ``(key, script)`` in its own subshell, stderr folded into stdout, framed by
    ``@@begin KEY`` / ``@@end KEY RC`` lines: one round trip for all of a host's work,
    and one script's ``exit`` ends only its own part. Parse with :func:`parse_sections`.
    """
    out = []
    for key, script in sections:
        if not _KEY.match(key):
            raise ValueError(f"bad section key {key!r}")
        out.append(f"echo '@@begin {key}'")
        out.append("(\n" + script.rstrip("\n") + "\n) 2>&1")
        out.append(f"echo \"@@end {key} $?\"")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Section:
    """One part of :func:`sections_script` output. ``rc`` None = it never finished."""

    key: str
    output: str
    rc: int | None


def parse_sections(stdout: str) -> dict[str, Section]:
    """``{key: Section}`` from :func:`sections_script` output (a cut-off part has rc None)."""
    found: dict[str, Section] = {}
    key: str | None = None
    body: list[str] = []
    for line in stdout.splitlines():
        if line.startswith("@@begin "):
            key, body = line[len("@@begin "):].strip(), []
        elif line.startswith("@@end ") and key is not None:
            rc = line.rsplit(" ", 1)[-1]
            found[key] = Section(key, "\n".join(body), int(rc) if rc.lstrip("-").isdigit() else None)
            key = None
        elif key is not None:
            body.append(line)
    if key is not None:
        found[key] = Section(key, "\n".join(body), None)
    return found


_KEY = re.compile(r"^[A-Za-z0-9_.:-]+$")


# --- per-host records ------------------------------------------------------------------------


def record_write_command(record: "ServerRecord") -> str:
    """Shell text that writes ``record`` as JSON to its ``record_path`` on its host."""
    return shellcmd.write_file(record.record_path, json.dumps(asdict(record), sort_keys=True))


def records_command(run_dir: str, host: str) -> str:
    """Shell text printing every server record of ``host`` in ``run_dir`` (one JSON per
    line). File names carry the host address, so on a shared (NFS) run dir each host
    only reads its own."""
    # _safe() leaves only [A-Za-z0-9._-]: the glob needs no quoting (and must not have any).
    pattern = f"*-{_safe(host)}-[0-9]*.json"
    return (f"for f in {shellcmd.path(run_dir)}/{pattern}; do "
            '[ -f "$f" ] && { tr -d "\\n" < "$f"; echo; }; done; true')


def parse_records(stdout: str) -> list["ServerRecord"]:
    """ServerRecords from :func:`records_command` output (unreadable lines skipped)."""
    records = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            records.append(_record(ServerRecord, json.loads(line)))
        except (ValueError, TypeError):
            continue
    return records


# --- manifest ------------------------------------------------------------------------------


@dataclass
class ServerRecord:
    """What was started for one ServerSpec (and what stop/status/logs need)."""

    engine: str
    role: str
    host: str
    target: str
    port: int
    server_index: int
    node_rank: int
    nnodes: int
    is_api: bool
    run_id: str
    log_path: str
    pid_path: str
    record_path: str
    ports: list[int] = field(default_factory=list)
    pid: int | None = None
    pgid: int | None = None
    started_at: float | None = None
    command: str = ""  # display form, secrets masked
    stopped_at: float | None = None  # set by stop-pd

    @classmethod
    def from_spec(cls, spec: ServerSpec, pid: int | None = None,
                  started_at: float | None = None) -> "ServerRecord":
        """Record for ``spec``; pid = pgid because servers are started with setsid."""
        return cls(
            engine=spec.engine, role=spec.role, host=spec.host, target=spec.target,
            port=spec.port, server_index=spec.server_index, node_rank=spec.node_rank,
            nnodes=spec.nnodes, is_api=spec.is_api, run_id=spec.run_id,
            log_path=spec.log_path, pid_path=spec.pid_path, record_path=spec.record_path,
            ports=list(spec.ports), pid=pid, pgid=pid, started_at=started_at,
            command=display_command(spec),
        )


@dataclass
class RouterRecord:
    """What was started for the router."""

    engine: str
    host: str
    target: str
    bind: str
    port: int
    url: str
    run_id: str
    log_path: str
    pid_path: str
    pid: int | None = None
    pgid: int | None = None
    started_at: float | None = None
    command: str = ""
    stopped_at: float | None = None  # set by stop-pd

    @property
    def is_local(self) -> bool:
        return self.host == LOCAL

    @classmethod
    def from_spec(cls, spec: RouterSpec, pid: int | None = None,
                  started_at: float | None = None) -> "RouterRecord":
        return cls(
            engine=spec.engine, host=spec.host, target=spec.target, bind=spec.bind,
            port=spec.port, url=spec.url, run_id=spec.run_id, log_path=spec.log_path,
            pid_path=spec.pid_path, pid=pid, pgid=pid, started_at=started_at,
            command=display_command(spec),
        )


MANIFEST_VERSION = 1


@dataclass
class Manifest:
    """A deployment: every server and the router, as started. Plain JSON on disk.

    Kept on the controller (e.g. ``~/.cluster/deployments/<name>.json``) and, per
    server, in its run dir (:attr:`ServerSpec.record_path`).
    """

    name: str
    engine: str
    run_id: str
    model_path: str
    created_at: float
    servers: list[ServerRecord] = field(default_factory=list)
    router: RouterRecord | None = None
    version: int = MANIFEST_VERSION
    stopped_at: float | None = None  # set when stop-pd stopped the whole deployment

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``json.dumps`` it)."""
        return asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Manifest":
        """Inverse of :meth:`to_json`; unknown keys are ignored (newer writers)."""
        if not isinstance(doc, Mapping):
            raise InputError("deployment manifest: expected a JSON object")
        try:
            servers = [_record(ServerRecord, s) for s in doc.get("servers", [])]
            router = _record(RouterRecord, doc["router"]) if doc.get("router") else None
            top = _pick(cls, doc, exclude=("servers", "router"))
            return cls(servers=servers, router=router, **top)
        except (TypeError, KeyError) as exc:
            raise InputError(f"deployment manifest: malformed ({exc})") from None

    @classmethod
    def loads(cls, text: str) -> "Manifest":
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InputError(f"deployment manifest: not JSON ({exc})") from None

    def api_servers(self, role: str | None = None) -> list[ServerRecord]:
        """Rank-0 servers (the ones with an API), optionally of one role."""
        return [s for s in self.servers if s.is_api and (role is None or s.role == role)]


DEFAULT_STATE_DIR = "~/.cluster/deployments"
STATE_DIR_ENV = "CLUSTER_STATE_DIR"
DEFAULT_DEPLOYMENT = "default"


def manifest_path(name: str = DEFAULT_DEPLOYMENT, base: str | None = None) -> str:
    """Controller-side manifest location for deployment ``name``.

    ``base`` defaults to ``$CLUSTER_STATE_DIR``, else ``~/.cluster/deployments`` (not
    expanded here: callers ``expanduser`` it on the controller).
    """
    if base is None:
        base = os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    return f"{_dir(base)}/{_safe(name)}.json"


# --- internals -----------------------------------------------------------------------------

_PY_HEALTH = """import sys, urllib.request, urllib.error
o = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    print(o.open(sys.argv[1], timeout=float(sys.argv[2])).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
"""

# members: non-zombie pids of process group $g, space-separated (empty when none).
_GROUP_FUNCS = (
    "members() { ps -eo pid=,pgid=,stat= 2>/dev/null | "
    "awk -v g=\"$g\" '$2==g && $3 !~ /^Z/ {printf \"%s \", $1}' | sed 's/ $//'; }"
)


def _safe(text: str) -> str:
    return _SAFE_NAME.sub("_", text).strip("_") or "_"


def _dir(run_dir: str) -> str:
    return run_dir.rstrip("/") or "/"


def _loopback(bind: str) -> str:
    return "::1" if ":" in bind else "127.0.0.1"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split() if t.isdigit())


def _parse_one(item: str, role: str) -> Host:
    hosts = parse_hosts(item)
    if len(hosts) != 1:
        raise InputError(f"{role}: expected one host, got {item!r}")
    return hosts[0]


def _as_hosts(items: Sequence[str | Host], role: str) -> list[Host]:
    hosts: list[Host] = []
    for item in items:
        hosts.extend([item] if isinstance(item, Host) else parse_hosts(item))
    if not hosts:
        raise InputError(f"no {role} hosts given")
    return hosts


def _address(host: Host, role: str) -> str:
    """The address a server on ``host`` binds and advertises (never a wildcard)."""
    if host.is_local:
        return "127.0.0.1"
    address = host.hostname
    try:
        if ipaddress.ip_address(address).is_unspecified:
            raise InputError(
                f"{role} host {address}: a server needs its own routable address, not a "
                "wildcard (--host 0.0.0.0 breaks prefill bootstrap registration)"
            )
    except ValueError:
        pass  # a host name: resolved on the host itself
    return address


def _forwarded_env(config: ServingConfig, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    values = []
    for name in config.forward_env:
        if name not in environ:
            raise InputError(f"serving.forward_env: {name} is not set in the controller's environment")
        values.append((name, environ[name]))
    return values


def _plan_role(config: ServingConfig, role: str, hosts: list[Host], run_id: str,
               forwarded: list[tuple[str, str]]) -> list[ServerSpec]:
    settings = config.role(role)
    nnodes = settings.nnodes
    if len(hosts) % nnodes:
        raise InputError(
            f"{role}: {len(hosts)} host(s) cannot be split into servers of nnodes={nnodes} "
            f"(need a multiple of {nnodes})"
        )
    if settings.tp_size % nnodes:
        raise InputError(f"{role}: tp_size={settings.tp_size} is not divisible by nnodes={nnodes}")
    env = dict(config.env)
    env.update(settings.env)
    env.update(forwarded)
    port = config.port(role)
    specs = []
    for index in range(len(hosts) // nnodes):
        group = hosts[index * nnodes:(index + 1) * nnodes]
        addresses = [_address(h, role) for h in group]
        dist = f"{_url_host(addresses[0])}:{settings.dist_init_port}" if nnodes > 1 else None
        for rank, (host, address) in enumerate(zip(group, addresses, strict=True)):
            specs.append(ServerSpec(
                engine=config.engine, role=role, host=address, target=str(host), port=port,
                server_index=index, node_rank=rank, nnodes=nnodes, tp_size=settings.tp_size,
                dist_init_addr=dist, dist_init_port=settings.dist_init_port,
                bootstrap_port=config.bootstrap_port, model_path=config.model_path or "",
                python=config.python, extra_args=settings.extra_args,
                env=tuple(env.items()), env_file=config.env_file, run_dir=config.run_dir,
                run_id=run_id,
            ))
    return specs


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _assign_side_channels(specs: list[ServerSpec], base: int) -> list[ServerSpec]:
    """Give every vLLM server a side-channel port range unique on its host.

    NIXL listens on base + local rank, so servers sharing a host are spaced by
    their local TP size.
    """
    from dataclasses import replace

    used: dict[str, int] = {}
    out = []
    for spec in specs:
        offset = used.get(spec.host, 0)
        out.append(replace(spec, side_channel_port=base + offset))
        used[spec.host] = offset + spec.local_tp
    return out


def _check_port_clashes(specs: list[ServerSpec]) -> None:
    owner: dict[tuple[str, int], ServerSpec] = {}
    for spec in specs:
        for port in dict.fromkeys((spec.port,) + spec.ports):
            key = (spec.host, port)
            if key in owner:
                first = owner[key]
                raise InputError(
                    f"{spec.host}:{port} is used twice: {_describe(first)} and {_describe(spec)}"
                    " (give the roles different ports or hosts)"
                )
            owner[key] = spec


def _describe(spec: ServerSpec) -> str:
    return f"{spec.role} server {spec.server_index} (node-rank {spec.node_rank})"


def _sglang_argv(spec: ServerSpec) -> list[str]:
    argv = [
        spec.python, "-m", "sglang.launch_server",
        "--model-path", spec.model_path,
        "--disaggregation-mode", spec.role,
        "--host", spec.host,
        "--port", str(spec.port),
        "--tp-size", str(spec.tp_size),
        # Explicit on every prefill and decode launch: ranks and decode must agree on it.
        "--disaggregation-bootstrap-port", str(spec.bootstrap_port),
    ]
    if spec.nnodes > 1:
        argv += ["--dist-init-addr", spec.dist_init_addr or "", "--nnodes", str(spec.nnodes),
                 "--node-rank", str(spec.node_rank)]
    return argv + list(spec.extra_args)


def _vllm_argv(spec: ServerSpec) -> list[str]:
    kv_role = "kv_producer" if spec.role == PREFILL else "kv_consumer"
    kv_config = json.dumps({"kv_connector": "NixlConnector", "kv_role": kv_role},
                           separators=(",", ":"))
    argv = ["vllm", "serve", spec.model_path]
    if spec.is_api:
        argv += ["--host", spec.host, "--port", str(spec.port)]
    argv += ["--tensor-parallel-size", str(spec.tp_size), "--kv-transfer-config", kv_config]
    if spec.nnodes > 1:
        master = (spec.dist_init_addr or "").rpartition(":")[0].strip("[]")
        argv += ["--nnodes", str(spec.nnodes), "--node-rank", str(spec.node_rank),
                 "--master-addr", master, "--master-port", str(spec.dist_init_port)]
        if not spec.is_api:
            argv.append("--headless")
    return argv + list(spec.extra_args)


def _default_router_launcher(config: ServingConfig) -> tuple[str, ...]:
    if config.engine == SGLANG:
        return (config.python, "-m", "sglang_router.launch_router")
    return ("vllm-router",)


def _as_launch(item: ServerSpec | RouterSpec | Launch) -> Launch:
    if isinstance(item, Launch):
        return item
    if isinstance(item, ServerSpec):
        return server_launch(item)
    return router_launch(item)


def _env_file_check(env_file: str) -> str:
    msg = shellcmd.quote(f"env file not found: {env_file}")
    return f"[ -f {shellcmd.path(env_file)} ] || {{ echo {msg} >&2; exit {EXIT_ENV_FILE_MISSING}; }}"


def _running_check(pid_path: str) -> str:
    """Exit 5 when the pid file names a process group that still has a live member.

    The group, not just the pid: a dead leader can leave schedulers holding the GPUs.
    Zombies do not count (``kill -0`` would).
    """
    pidfile = shellcmd.path(pid_path)
    return (
        f"if [ -f {pidfile} ]; then old=$(cat {pidfile} 2>/dev/null | tr -dc 0-9) || old=''; "
        'if [ -n "$old" ] && [ "$old" -gt 1 ] && ps -eo pgid=,stat= 2>/dev/null | '
        "awk -v g=\"$old\" '$1==g && $2 !~ /^Z/ {f=1} END {exit !f}'; then "
        f'echo "already running: process group $old (pid file {_plain(pid_path)})" >&2; '
        f"exit {EXIT_ALREADY_RUNNING}; fi; fi"
    )


def _running_report(pid_path: str) -> str:
    """Set ``running`` to the live process group of the pid file (empty when none) and
    print ``RUNNING <pgid>`` for it. Used by the ``--restart`` preflight."""
    pidfile = shellcmd.path(pid_path)
    return (
        f"running=''; if [ -f {pidfile} ]; then old=$(cat {pidfile} 2>/dev/null | tr -dc 0-9) || old=''; "
        'if [ -n "$old" ] && [ "$old" -gt 1 ] && ps -eo pgid=,stat= 2>/dev/null | '
        "awk -v g=\"$old\" '$1==g && $2 !~ /^Z/ {f=1} END {exit !f}'; then "
        'running=$old; echo "RUNNING $old"; fi; fi'
    )


_PY_FIND_SPEC = "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)"


def _launcher_check(launch: Launch) -> str:
    """Exit 7 unless the launcher is on PATH (and ``PY -m pkg`` imports) once the env
    file is sourced and the env exported — in a subshell, so nothing leaks out."""
    program = launch.argv[0]
    steps = []
    if launch.env_file:
        steps.append(f". {shellcmd.path(launch.env_file)} >/dev/null 2>&1 < /dev/null")
    exports = shellcmd.export_line(launch.env)
    if exports:
        steps.append(exports)
    missing = shellcmd.quote(f"{program} not found on PATH")
    steps.append(f"command -v {shellcmd.quote(program)} >/dev/null 2>&1 || "
                 f"{{ echo {missing} >&2; exit {EXIT_LAUNCHER_MISSING}; }}")
    if len(launch.argv) > 2 and launch.argv[1] == "-m":
        package = launch.argv[2].split(".")[0]
        cannot = shellcmd.quote(f"{program} cannot import {package} (not installed in that environment?)")
        steps.append(f"{shellcmd.quote(program)} -c {shellcmd.quote(_PY_FIND_SPEC)} "
                     f"{shellcmd.quote(package)} "
                     f"< /dev/null >/dev/null 2>&1 || {{ echo {cannot} >&2; exit {EXIT_LAUNCHER_MISSING}; }}")
    return "( " + "; ".join(steps) + " ) || exit $?"


def _ports_check(host: str, ports: Sequence[int]) -> str:
    scan = _listen_scan(host, ports)
    return (
        f"busy=$({scan} | tr '\\n' ' '); "
        f'if [ -n "$busy" ]; then echo "port(s) in use on {_plain(host)}: $busy" >&2; '
        f"exit {EXIT_PORT_BUSY}; fi"
    )


def _plain(text: str) -> str:
    """Text safe inside a double-quoted shell string (for messages only)."""
    return re.sub(r'["$`\\]', "_", text)


def _launch_lines(launch: Launch, refuse_running: bool, check_ports: bool, *, mask: bool) -> list[str]:
    run_dir = shellcmd.path(launch.run_dir)
    log = shellcmd.path(launch.log_path)
    pidfile = shellcmd.path(launch.pid_path)
    lines = [f"# {launch.name}"]
    if launch.env_file:
        lines.append(_env_file_check(launch.env_file))
    no_dir = shellcmd.quote("cannot create run dir: " + launch.run_dir)
    lines.append(f"mkdir -p {run_dir} || {{ echo {no_dir} >&2; "
                 f"exit {EXIT_RUN_DIR}; }}")
    if refuse_running:
        lines.append(_running_check(launch.pid_path))
    if check_ports and launch.ports:
        lines.append(_ports_check(launch.bind_host, launch.ports))
    if launch.env_file:
        # Its chatter goes to the log; a non-zero status of its last line is common and harmless.
        lines.append(f". {shellcmd.path(launch.env_file)} >> {log} 2>&1 < /dev/null")
    exports = shellcmd.export_line(launch.env, mask=mask)
    if exports:
        lines.append(exports)
    program = shellcmd.quote(launch.argv[0])
    not_found = shellcmd.quote(launch.argv[0] + " not found on PATH")
    lines.append(f"command -v {program} >/dev/null 2>&1 || {{ echo {not_found} >&2; "
                 f"exit {EXIT_LAUNCHER_MISSING}; }}")
    argv = shellcmd.display_argv(launch.argv) if mask else shellcmd.join(launch.argv)
    lines.append(f"setsid nohup {argv} >> {log} 2>&1 < /dev/null &")
    lines.append("pid=$!")
    lines.append(f'echo "$pid" > {pidfile}')
    # The forked child calls setsid() a moment after $! is known: wait (up to 1 s) until
    # it leads its own group, so a stop right after the start signals the whole group.
    lines.append("i=0; while [ \"$(ps -o pgid= -p \"$pid\" 2>/dev/null | tr -d '[:space:]')\" != \"$pid\" ] "
                 "&& [ $i -lt 50 ]; do sleep 0.02; i=$((i+1)); done")
    lines.append('echo "$pid"')
    return lines


def _listen_scan(host: str | None, ports: Sequence[int]) -> str:
    """awk over /proc/net/tcp{,6} printing the decimal port of each matching LISTEN socket."""
    keys = []
    for port in ports:
        hexport = f"{int(port):04X}"
        addresses = _proc_addresses(host)
        if addresses is None:
            keys.append(f"*:{hexport}={port}")
        else:
            keys.extend(f"{a}:{hexport}={port}" for a in addresses)
    want = shellcmd.quote(" ".join(keys))
    program = shellcmd.quote(
        'BEGIN{n=split(want,w," ");for(i=1;i<=n;i++){split(w[i],kv,"=");W[kv[1]]=kv[2]}}'
        ' FNR>1 && $4=="0A" {k=$2; p="*:" substr(k, index(k,":")+1);'
        " if (k in W) print W[k]; else if (p in W) print W[p]}"
    )
    return f"awk -v want={want} {program} /proc/net/tcp /proc/net/tcp6 2>/dev/null | sort -u"


def _proc_addresses(host: str | None) -> list[str] | None:
    """/proc/net/tcp spellings of ``host`` and the wildcards; None = match any address."""
    if host is None or host == LOCAL:
        return None
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    v4_any, v6_any = "00000000", "0" * 32
    if ip.version == 4:
        le = ip.packed[::-1].hex().upper()
        mapped = "0000000000000000FFFF0000" + le
        return [le, v4_any, mapped, v6_any]
    words = [ip.packed[i:i + 4][::-1].hex().upper() for i in range(0, 16, 4)]
    return ["".join(words), v6_any]


def _pick(cls: type, doc: Mapping[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    names = {f.name for f in fields(cls)} - set(exclude)
    return {k: v for k, v in doc.items() if k in names}


def _record(cls: type, doc: Mapping[str, Any]) -> Any:
    if not isinstance(doc, Mapping):
        raise TypeError(f"expected an object for {cls.__name__}")
    return cls(**_pick(cls, doc))
