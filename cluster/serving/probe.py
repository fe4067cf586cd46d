"""Probes of hosts and running servers (pure): ``/health`` from the host itself, which
ports are free, per-process state in one round trip, and log tails — each with a
``parse_*`` for its output."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..hosts import LOCAL
from . import shellcmd
from .text import http_url, ints


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


_PY_HEALTH = """import sys, urllib.request, urllib.error
o = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    print(o.open(sys.argv[1], timeout=float(sys.argv[2])).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
"""


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
    scan = listen_scan(host, ports)
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
            lines.append(f"echo \"listen $({listen_scan(t.host, t.ports)} | tr '\\n' ' ')\"")
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
            current["listening"] = ints(rest)
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


def listen_scan(host: str | None, ports: Sequence[int]) -> str:
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
