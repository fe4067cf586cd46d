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
        env=tuple(server_env(spec)),
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
        env=(),
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


def preflight_script(launch: Launch) -> str:
    """The checks of :func:`launch_script` without the start (changes nothing on the host).

    Run on every host before starting anything, so bad input fails before any
    server starts. Exit 0 = all clear; otherwise the same exit codes.
    """
    lines = []
    if launch.env_file:
        lines.append(_env_file_check(launch.env_file))
    lines.append(_running_check(launch.pid_path))
    if launch.ports:
        lines.append(_ports_check(launch.bind_host, launch.ports))
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


def sweep_command(engine: str, user: str | None = None, spare_router: bool = True) -> str:
    """Shell text that SIGKILLs leftover processes of ``engine`` owned by ``user``.

    Matches command lines (``pgrep -f``: titles like ``sglang::scheduler_TP0`` are
    truncated in ``comm``), e.g. ``sglang::|sglang.launch_server|sglang serve|sglang.srt``
    or ``VLLM::EngineCore|VLLM::Worker|vllm serve``; ``sglang::router`` (and the router
    launcher) only when ``spare_router`` is False. Never matches the sweeping shell:
    the patterns use ``[s]glang`` and the shell's own pid and ancestors are skipped.
    ``user`` None = the remote login user. Output: ``KILLED <pid> <cmdline>`` per
    process, then ``SURVIVED <pid>…`` if any is still there (parse with :func:`parse_sweep`).
    """
    if engine not in SWEEP_PATTERNS:
        raise InputError(f"unknown engine {engine!r}")
    patterns = list(SWEEP_PATTERNS[engine])
    spared: tuple[str, ...] = ROUTER_TITLES[engine] if spare_router else ()
    if not spare_router:
        patterns += ROUTER_SWEEP_PATTERNS[engine]
    who = shellcmd.quote(user) if user else '"$(id -un)"'
    pattern = shellcmd.quote("|".join(patterns))
    spare_case = " | ".join(shellcmd.quote(t) + "*" for t in spared)
    skip = [f'  case "$cmd" in {spare_case}) continue;; esac'] if spared else []
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
            killed.append((int(parts[1]), parts[2] if len(parts) > 2 else ""))
        elif parts[0] == "SURVIVED":
            survived = _ints(line.strip()[len("SURVIVED"):])
    return SweepResult(tuple(killed), survived)


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

    @classmethod
    def from_spec(cls, spec: ServerSpec, pid: int | None = None, started_at: float | None = None) -> "ServerRecord":
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

    @property
    def is_local(self) -> bool:
        return self.host == LOCAL

    @classmethod
    def from_spec(cls, spec: RouterSpec, pid: int | None = None, started_at: float | None = None) -> "RouterRecord":
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


def manifest_path(name: str, base: str = "~/.cluster/deployments") -> str:
    """Controller-side manifest location for deployment ``name``."""
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
        for rank, (host, address) in enumerate(zip(group, addresses)):
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
    lines.append(f"mkdir -p {run_dir} || {{ echo {shellcmd.quote('cannot create run dir: ' + launch.run_dir)} >&2; "
                 f"exit {EXIT_RUN_DIR}; }}")
    if refuse_running:
        lines.append(_running_check(launch.pid_path))
    if check_ports and launch.ports:
        lines.append(_ports_check(launch.bind_host, launch.ports))
    if launch.env_file:
        # Its chatter goes to the log; a non-zero status of its last line is common and harmless.
        lines.append(f". {shellcmd.path(launch.env_file)} >> {log} 2>&1")
    exports = shellcmd.export_line(launch.env, mask=mask)
    if exports:
        lines.append(exports)
    program = shellcmd.quote(launch.argv[0])
    lines.append(f"command -v {program} >/dev/null 2>&1 || {{ echo {shellcmd.quote(launch.argv[0] + ' not found on PATH')} >&2; "
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
