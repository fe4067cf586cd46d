"""The shell text PD serving runs on hosts, and the parsers of its output. Pure.

* launch (:func:`launch_script`): start one planned process detached, record first
  (:mod:`cluster.detach`: identity, records, locks); the same checks without the start
  (:func:`preflight_script`); the masked form ``--dry-run`` prints
  (:func:`render_for_display`). Exit codes: ``EXIT_*``.
* probe (:func:`probe_command` / :func:`parse_probe`): per process, its identity verified,
  group members, leader, uptime, ``/health`` from the host itself, listening ports, last
  log line, a body.
* sweep (:func:`sweep_command`) with its parser (stopping groups: :func:`cluster.detach.stop_script`).
* small ones: health, free ports, log tail, a call to the router's HTTP API.

Everything a host runs goes through :mod:`cluster.shell` (quoting, masking, framing) and
is fed on stdin, so secrets in the environment never appear on a command line. What
differs by engine comes from the spec's engine (:mod:`.engines`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import detach, shell
from ..errors import InputError
from ..hosts import LOCAL
from . import engines
from .engines.base import HttpCall
from .plan import RUN_ID_ENV, ProcessSpec, RouterSpec, http_url

# Exit codes of launch_script (and preflight_script). 1 and 2 are left to the shell
# and to tools; 126/127 mean "cannot execute" / "not found" as usual. 4 and 5 are the
# launch discipline's (cluster.detach).
EXIT_ENV_FILE_MISSING = 3
EXIT_RUN_DIR = detach.EXIT_RUN_DIR
EXIT_ALREADY_RUNNING = detach.EXIT_ALREADY_RUNNING
EXIT_PORT_BUSY = 6
EXIT_LAUNCHER_MISSING = 7
EXIT_MESSAGES = {
    **detach.EXIT_MESSAGES,
    EXIT_ENV_FILE_MISSING: "env file not found",
    EXIT_ALREADY_RUNNING: "a server is already running there",
    EXIT_PORT_BUSY: "a port it needs is already in use",
    EXIT_LAUNCHER_MISSING: "the launcher (python/vllm/router) is not on PATH",
}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# --------------------------------------------------------------------------- launch


@dataclass(frozen=True)
class Launch:
    """A process to start in its own session: the data behind :func:`launch_script`.
    ``name`` is its slot in the run dir (:mod:`cluster.detach`)."""

    name: str
    run_id: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    env_file: str | None
    run_dir: str
    bind_host: str
    ports: tuple[int, ...]
    secret_env: tuple[str, ...] = ()

    @property
    def job(self) -> detach.Job:
        # exec'd: the server's own command line in ps (inv kill patterns match it once)
        return detach.Job(self.run_dir, self.name, self.run_id, self.argv, RUN_ID_ENV, exit_code=False)

    @property
    def log_path(self) -> str:
        return self.job.log

    @property
    def pid_path(self) -> str:
        return self.job.pid_path

    @property
    def record_path(self) -> str:
        return self.job.record_path


def server_env(spec: ProcessSpec) -> list[tuple[str, str]]:
    """Variables exported before the process starts: its spec's env, then what its engine
    adds (never overriding the spec's). `InputError` for a secret whose value is unknown."""
    env: dict[str, str] = {}
    for name, value in spec.env:
        if value is None:
            raise InputError(f"{spec.label}: the value of {name} was not recorded (it is secret): "
                             "set it in the roles file's serving.env or the controller's environment")
        env[name] = value
    if not isinstance(spec, RouterSpec):
        for name, value in engines.get(spec.engine).server_env(spec):
            env.setdefault(name, value)
    return list(env.items())


def launch_of(spec: ProcessSpec) -> Launch:
    """The Launch (argv, env, files, ports) of one planned process."""
    engine = engines.get(spec.engine)
    if isinstance(spec, RouterSpec):
        argv, bind = engine.router_argv(spec), spec.bind
    else:
        argv, bind = engine.server_argv(spec), spec.host
    return Launch(
        name=spec.name, run_id=spec.run_id, argv=tuple(argv), env=tuple(server_env(spec)),
        env_file=spec.env_file, run_dir=spec.run_dir, bind_host=bind, ports=spec.ports,
        secret_env=spec.secret_env,
    )


def display_command(item: ProcessSpec | Launch) -> str:
    """One line for tables and manifests: ``ENV=… argv…`` with secrets masked."""
    launch = item if isinstance(item, Launch) else _public_launch(item)
    exports = shell.export_line(launch.env, mask=True, secret=launch.secret_env).removeprefix("export ")
    return f"{exports} {shell.display_argv(launch.argv)}".strip()


def _public_launch(spec: ProcessSpec) -> Launch:
    """:func:`launch_of` for showing: unrecorded secret values are masked, not refused."""
    if isinstance(spec, RouterSpec) or all(value is not None for _, value in spec.env):
        return launch_of(spec)  # a router has no env of its own (and no env field to replace)
    filled = tuple((name, shell.MASK if value is None else value) for name, value in spec.env)
    return launch_of(dataclasses.replace(spec, env=filled))


def launch_script(launch: Launch, *, doc: str = "null", refuse_running: bool = True,
                  check_ports: bool = True) -> str:
    """POSIX shell text that starts ``launch`` detached (:func:`cluster.detach.launch_lines`)
    and prints ``DETACHED PID START`` last.

    Steps, each failing with a documented exit code and a one-line message on stderr:
    run dir created (4), slot lock and no verified-live server in the slot (5), env file
    present (3), ports free on the bind address (6); the per-host record (``doc``) written
    with state ``starting``; then source the env file (its output goes to the log), export
    the env, check the launcher is on PATH (7), and start it ``setsid`` (PGID = PID) with
    the run id marker (``CLUSTER_PD_RUN_ID``); the pid file and the record get the pid.
    Contains secrets in clear: run it (on stdin, :func:`cluster.shell.run_script`), never print it.
    """
    return "\n".join(_launch_lines(launch, refuse_running, check_ports, doc=doc, mask=False)) + "\n"


def render_for_display(item: ProcessSpec | Launch, *, doc: str = "null") -> str:
    """What ``--dry-run`` prints: the launch script with secret values shown as ``***``.

    Secret = env vars named like *TOKEN*, *KEY*, *SECRET*, *PASSWORD*, those of
    ``serving.forward_env``, and the values of options such as ``--api-key``.
    Never returns the real secret.
    """
    launch = item if isinstance(item, Launch) else _public_launch(item)
    return "\n".join(_launch_lines(launch, True, True, doc=doc, mask=True)) + "\n"


def preflight_script(launch: Launch, *, running_ok: bool = False) -> str:
    """The checks of :func:`launch_script` without the start (starts nothing).

    Run on every host before starting anything, so bad input fails before any
    server starts. Exit 0 = all clear (last line ``ok``); otherwise the same exit
    codes as the launch. Checks: the run dir can be created (4), env file (3), a
    verified-live server in the slot (5), ports (6), and — in a subshell that sources the
    env file and exports the env — that the launcher is on PATH and, for
    ``PY -m pkg.mod``, that ``pkg`` imports (7). With ``running_ok`` (``--restart``) a live
    server is not an error: the script prints ``RUNNING PGID START RUN_ID`` and skips the
    port check (that group holds the ports).
    Contains the env in clear: run it on stdin, never print it.
    """
    lines = [detach.functions(RUN_ID_ENV), *detach.run_dir_lines(launch.run_dir)]
    if launch.env_file:
        lines.append(_env_file_check(launch.env_file))
    lines += detach.running_lines(launch.run_dir, launch.name, refuse=not running_ok)
    if launch.ports:
        lines.append(f'if [ -z "$running" ]; then {_ports_check(launch.bind_host, launch.ports)}; fi')
    lines.append(_launcher_check(launch))
    lines.append("echo ok")
    return "\n".join(lines) + "\n"


def _env_file_check(env_file: str) -> str:
    msg = shell.quote(f"env file not found: {env_file}")
    return f"[ -f {shell.path(env_file)} ] || {{ echo {msg} >&2; exit {EXIT_ENV_FILE_MISSING}; }}"


_PY_FIND_SPEC = "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)"


def _launcher_check(launch: Launch) -> str:
    """Exit 7 unless the launcher is on PATH (and ``PY -m pkg`` imports) once the env
    file is sourced and the env exported — in a subshell, so nothing leaks out."""
    program = launch.argv[0]
    steps = []
    if launch.env_file:
        steps.append(f". {shell.path(launch.env_file)} >/dev/null 2>&1 < /dev/null")
    exports = shell.export_line(launch.env)
    if exports:
        steps.append(exports)
    missing = shell.quote(f"{program} not found on PATH")
    steps.append(f"command -v {shell.quote(program)} >/dev/null 2>&1 || "
                 f"{{ echo {missing} >&2; exit {EXIT_LAUNCHER_MISSING}; }}")
    if len(launch.argv) > 2 and launch.argv[1] == "-m":
        package = launch.argv[2].split(".")[0]
        cannot = shell.quote(f"{program} cannot import {package} (not installed in that environment?)")
        steps.append(f"{shell.quote(program)} -c {shell.quote(_PY_FIND_SPEC)} {shell.quote(package)} "
                     f"< /dev/null >/dev/null 2>&1 || {{ echo {cannot} >&2; exit {EXIT_LAUNCHER_MISSING}; }}")
    return "( " + "; ".join(steps) + " ) || exit $?"


def _ports_check(host: str, ports: Sequence[int]) -> str:
    scan = listen_scan(host, ports)
    return (
        f"busy=$({scan} | tr '\\n' ' '); "
        f'if [ -n "$busy" ]; then echo "port(s) in use on {shell.plain(host)}: $busy" >&2; '
        f"exit {EXIT_PORT_BUSY}; fi"
    )


def _launch_lines(launch: Launch, refuse_running: bool, check_ports: bool, *, doc: str,
                  mask: bool) -> list[str]:
    log = shell.path(launch.log_path)
    checks = [_env_file_check(launch.env_file)] if launch.env_file else []
    if check_ports and launch.ports:
        checks.append(_ports_check(launch.bind_host, launch.ports))
    prelude = []
    if launch.env_file:
        # Its chatter goes to the log; a non-zero status of its last line is common and harmless.
        prelude.append(f". {shell.path(launch.env_file)} >> {log} 2>&1 < /dev/null")
    exports = shell.export_line(launch.env, mask=mask, secret=launch.secret_env)
    if exports:
        prelude.append(exports)
    program = shell.quote(launch.argv[0])
    not_found = shell.quote(launch.argv[0] + " not found on PATH")
    prelude.append(f"command -v {program} >/dev/null 2>&1 || {{ echo {not_found} >&2; "
                   f"exit {EXIT_LAUNCHER_MISSING}; }}")
    return [f"# {launch.name}", *detach.launch_lines(launch.job, checks=checks, prelude=prelude, doc=doc,
                                                     refuse_running=refuse_running, display=mask)]


# --------------------------------------------------------------------------- HTTP from the host


_PY_HEALTH = """import sys, urllib.request, urllib.error
o = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    print(o.open(sys.argv[1], timeout=float(sys.argv[2])).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
"""


def health_command(host: str, port: int, path: str = "/health", *, timeout_s: float = 5) -> str:
    """Shell text that GETs ``http://host:port/path`` from the host itself and prints the code.

    Prints the HTTP status (``200``, ``503``…) or ``000`` when nothing answers.
    Proxies are bypassed (``http_proxy`` on a GPU host would otherwise catch the request).
    Uses curl when present, else python3's urllib.
    """
    url = shell.quote(http_url(host, port, path))
    limit = shell.quote(f"{timeout_s:g}")
    curl = f"curl -s -o /dev/null --noproxy '*' -m {limit} -w '%{{http_code}}' {url} 2>/dev/null"
    py = shell.quote(_PY_HEALTH)
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


_PY_CALL = """import sys, urllib.request, urllib.error
o = urllib.request.build_opener(urllib.request.ProxyHandler({}))
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
r = urllib.request.Request(sys.argv[2], data=data, method=sys.argv[1],
                           headers={"Content-Type": "application/json"})
try:
    with o.open(r, timeout=10) as a:
        sys.stdout.write(a.read().decode(errors="replace"))
        print(); print("@@status", a.status)
except urllib.error.HTTPError as e:
    sys.stdout.write(e.read().decode(errors="replace"))
    print(); print("@@status", e.code)
except Exception as e:
    print(e); print("@@status 000")
"""


def http_call_command(host: str, port: int, call: HttpCall | None = None, *, path: str = "",
                      timeout_s: float = 10) -> str:
    """Shell text that sends ``call`` (or a GET of ``path``) to ``host:port`` from the host
    itself, printing the response body, then ``@@status CODE`` (parse: :func:`parse_http_call`)."""
    method, target = (call.method, call.path) if call else ("GET", path)
    url = shell.quote(http_url(host, port, target))
    body = [] if call is None or call.body is None else [call.body]
    curl = (f"curl -s --noproxy '*' -m {shell.quote(f'{timeout_s:g}')} -X {shell.quote(method)} "
            "-H 'Content-Type: application/json' "
            + "".join(f"--data-binary {shell.quote(b)} " for b in body)
            + f"-w '\\n@@status %{{http_code}}\\n' {url} 2>/dev/null")
    py = f"python3 -c {shell.quote(_PY_CALL)} {shell.quote(method)} {url} " + " ".join(shell.quote(b) for b in body)
    return f"if command -v curl >/dev/null 2>&1; then {curl}; else {py.strip()} 2>/dev/null; fi; true"


def parse_http_call(stdout: str) -> tuple[int, str]:
    """``(status, body)`` from :func:`http_call_command` output (status 0 = no answer)."""
    body, _, status = stdout.rpartition("@@status ")
    code = status.strip()
    return (int(code) if code.isdigit() and len(code) == 3 else 0), body.strip()


# --------------------------------------------------------------------------- ports


def listen_keys(host: str | None, ports: Sequence[int]) -> list[str]:
    """``ADDR:PORT=port`` in /proc/net/tcp{,6} spelling (hex) for each port at ``host`` and
    the wildcards (``*:PORT=port``: any address); also read by inv preflight's probe."""
    keys = []
    for port in ports:
        hexport = f"{int(port):04X}"
        addresses = _proc_addresses(host)
        if addresses is None:
            keys.append(f"*:{hexport}={port}")
        else:
            keys.extend(f"{a}:{hexport}={port}" for a in addresses)
    return keys


def listen_scan(host: str | None, ports: Sequence[int]) -> str:
    """awk over /proc/net/tcp{,6} printing the decimal port of each matching LISTEN socket."""
    want = shell.quote(" ".join(listen_keys(host, ports)))
    program = shell.quote(
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


def ports_free_command(ports: Iterable[int], host: str | None = None) -> str:
    """Shell text printing ``<port> free`` or ``<port> busy`` per port (exit 0).

    A port is busy when something LISTENs on it at ``host``, on a wildcard address
    (0.0.0.0 / ::), or — when ``host`` is None or not an IP literal — anywhere.
    Reads /proc/net/tcp{,6} with awk, so it needs neither ss nor netstat; matching
    the address matters on loopback fleets where 127.0.1.1 and 127.0.1.2 share a kernel.
    """
    wanted = list(dict.fromkeys(int(p) for p in ports))
    if not wanted:
        return "true"
    loop = " ".join(str(p) for p in wanted)
    return (
        f"busy=\" $({listen_scan(host, wanted)} | tr '\\n' ' ') \"; "
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


# --------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class ProbeTarget:
    """What to look at for one started process (a server node-rank or the router).

    ``health_path`` None = no HTTP health check (non-API ranks, headless vLLM).
    """

    key: str
    identity: detach.Identity | None  # None: never got a pid
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
    verdict: str = detach.GONE  # ok / reused (the pgid is someone else's now) / gone
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


def probe_command(targets: Sequence[ProbeTarget], *, health_timeout_s: float = 3) -> str:
    """Shell text reporting, per target: group members alive, leader alive, uptime,
    ``/health`` code (from the host itself), which of its ports listen, the last log line
    and (``fetch_path``) a response body. One round trip for all targets of a host.

    Output blocks (parse with :func:`parse_probe`)::

        @@probe KEY
        members N / leader 0|1 / etimes S / health CODE / listen P… / log LINE / nolog
        @@body-begin … @@body-end
    """
    lines = [detach.functions(RUN_ID_ENV)]
    for t in targets:
        lines.append(f"echo {shell.quote('@@probe ' + t.key)}")
        lines += _group_lines(t.identity)
        if t.health_path:
            lines.append(f"{health_command(t.host, t.port, t.health_path, timeout_s=health_timeout_s)}"
                         " | sed 's/^/health /'")
        if t.ports:
            lines.append(f"echo \"listen $({listen_scan(t.host, t.ports)} | tr '\\n' ' ')\"")
        log = shell.path(t.log_path)
        lines.append(f"if [ -f {log} ]; then printf 'log %s\\n' \"$(tail -n 1 {log} 2>/dev/null "
                     "| tr -d '\\r' | cut -c1-500)\"; else echo nolog; fi")
        if t.fetch_path:
            lines.append("echo @@body-begin")
            lines.append(_fetch_body(t.host, t.port, t.fetch_path, health_timeout_s))
            lines.append("echo; echo @@body-end")
    lines.append("true")
    return "\n".join(lines) + "\n"


def _group_lines(identity: detach.Identity | None) -> list[str]:
    """Verify the identity first: a pgid that is someone else's now counts as nothing."""
    if identity is None:
        return ['echo "verdict gone"; echo "members 0"; echo "leader 0"']
    g = identity.pgid
    return [f'v=$(verdict {identity.words()}); echo "verdict $v"',
            'if [ "$v" = ok ]; then',
            f'  m=$(members {g}); set -- $m; echo "members $#"',
            f"  st=$(ps -o stat= -p {g} 2>/dev/null | tr -d ' ') || st=''",
            '  case "$st" in ""|Z*) echo "leader 0";; *) echo "leader 1";; esac',
            f"  echo \"etimes $(ps -o etimes= -p {g} 2>/dev/null | tr -d ' ')\"",
            'else echo "members 0"; echo "leader 0"; fi']


def _fetch_body(host: str, port: int, path: str, timeout_s: float) -> str:
    url = shell.quote(http_url(host, port, path))
    limit = shell.quote(f"{timeout_s:g}")
    py = shell.quote("import sys, urllib.request as u\n"
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
        if body is not None and current is not None:
            if raw == "@@body-end":
                current["body"] = "\n".join(body).strip()
                body = None
            else:
                body.append(raw)
        elif raw.startswith("@@probe "):
            current = found.setdefault(raw[len("@@probe "):].strip(), {})
        elif current is not None:
            if raw == "@@body-begin":
                body = []
            else:
                _probe_field(current, raw)
    return {key: ProbeResult(key=key, **values) for key, values in found.items()}


def _probe_field(values: dict[str, Any], line: str) -> None:
    word, _, rest = line.partition(" ")
    if word == "verdict" and rest.strip() in (detach.OK, detach.REUSED, detach.GONE):
        values["verdict"] = rest.strip()
    elif word == "members" and rest.strip().isdigit():
        values["members"] = int(rest)
    elif word == "leader":
        values["leader_alive"] = rest.strip() == "1"
    elif word == "etimes":
        values["uptime_s"] = int(rest) if rest.strip().isdigit() else None
    elif word == "health":
        values["health"] = parse_health(rest)
    elif word == "listen":
        values["listening"] = ints(rest)
    elif word == "log":
        values["last_log"] = _ANSI.sub("", rest).strip()
    elif word == "nolog":
        values["last_log"] = None


def tail_command(log_path: str, lines: int = 30) -> str:
    """Shell text printing the last ``lines`` lines of a log (nothing when it is missing)."""
    return f"tail -n {int(lines)} {shell.path(log_path)} 2>/dev/null | tr -d '\\r'; true"


def clean_log_lines(text: str) -> list[str]:
    """Log text as lines without colour escapes (the router logs in colour)."""
    return [_ANSI.sub("", line).rstrip() for line in text.splitlines()]


def ints(text: str) -> tuple[int, ...]:
    """The whitespace-separated integers of ``text`` (other words skipped)."""
    return tuple(int(t) for t in text.split() if t.isdigit())


# --------------------------------------------------------------------------- sweep


def sweep_command(engine: str, user: str | None = None, spare_router: bool = True, *,
                  servers: bool = True, run_ids: Iterable[str] = (),
                  logs: Iterable[str] = ()) -> str:
    """Shell text that SIGKILLs leftover processes of ``engine`` owned by ``user``.

    Matches command lines (``pgrep -f``: titles like ``sglang::scheduler_TP0`` are
    truncated in ``comm``) against the engine's sweep patterns, e.g.
    ``sglang::|sglang.launch_server|sglang serve|sglang.srt``; the router's titles
    (``sglang::router``) and launcher only when ``spare_router`` is False.
    ``servers=False`` sweeps only router processes (a router-only host). ``run_ids``
    limits the sweep to processes of those runs, ``logs`` to processes writing to those
    log files (one server's, when others of its run share the host). Never matches the
    sweeping shell: the patterns use ``[s]glang`` and the shell's own pid and ancestors
    are skipped. ``user`` None = the remote login user. Output: ``KILLED <pid> <cmdline>``
    per process, then ``SURVIVED <pid>…`` if any is still there (:func:`parse_sweep`).
    """
    spec = engines.get(engine)
    if servers:
        patterns = list(spec.sweep_patterns)
        spared: tuple[str, ...] = spec.router_titles if spare_router else ()
        if not spare_router:
            patterns += spec.router_sweep_patterns
    else:
        patterns = list(spec.router_sweep_patterns) + [
            "[" + t[0] + "]" + re.escape(t[1:]) for t in spec.router_titles]
        spared = ()
    who = shell.quote(user) if user else '"$(id -un)"'
    pattern = shell.quote("|".join(patterns))
    spare_case = " | ".join(shell.quote(t) + "*" for t in spared)
    skip = [f'  case "$cmd" in {spare_case}) continue;; esac'] if spared else []
    skip += _scope_lines(list(dict.fromkeys(run_ids)), list(dict.fromkeys(logs)))
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


def _scope_lines(run_ids: Sequence[str], logs: Sequence[str]) -> list[str]:
    """Loop-body lines of :func:`sweep_command` that skip processes of other runs/servers.

    A process belongs to a run when its stdout or stderr is that run's per-launch log
    (``…@<run_id>.log``: inherited by every child, kept across ``setsid``, untouched by
    ``setproctitle``) or its environment holds ``CLUSTER_PD_RUN_ID=<run_id>``
    (``setproctitle`` wipes ``/proc/PID/environ``, so the log is the main key). With
    ``logs``, only the log counts (several servers of one run may share a host).
    """
    if not run_ids and not logs:
        return []
    globs = [shell.quote(f"@{r}.log") for r in run_ids] + [shell.quote("/" + log.rsplit("/", 1)[-1])
                                                           for log in logs]
    lines = [
        "  mine=''",
        "  for fd in 1 2; do",
        '    l=$(readlink /proc/"$pid"/fd/$fd 2>/dev/null) || l=""',
        f'    case "$l" in {" | ".join("*" + g for g in globs)}) mine=1;; esac',
        "  done",
    ]
    if run_ids:
        options = " ".join(f"-e {shell.quote(f'{RUN_ID_ENV}={r}')}" for r in run_ids)
        lines += [
            '  if [ -z "$mine" ]; then',
            '    envs=$(tr "\\000" "\\n" < /proc/"$pid"/environ 2>/dev/null) || envs=""',
            f'    if printf "%s\\n" "$envs" | grep -qxF {options}; then mine=1; fi',
            "  fi",
        ]
    return lines + ['  [ -n "$mine" ] || continue']


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
            survived = ints(line.strip()[len("SURVIVED"):])
    return SweepResult(tuple(killed), survived)
