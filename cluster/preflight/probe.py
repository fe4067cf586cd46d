"""What preflight checks on each host, and the shell text of its one round trip. Pure.

:func:`host_plans` turns the start-pd plan (:class:`~cluster.serving.plan.StartPlan`) into
one :class:`HostPlan` per SSH target: its roles, the GPUs its servers need, the ports they
bind, the env file and env, the engine's package and launchers, the model, the RDMA devices
(asked of the engine), and the peers it must reach. :func:`sections` gives that host's
framed sections for :func:`cluster.shell.sections_script`; :mod:`.checks` parses them.

Stand-ins: every absolute path the probe inspects (``/sys/class/net``, ``/sys/class/
infiniband``, the model directory, the HF cache) is read under ``$CLUSTER_PREFLIGHT_ROOT``
when that variable is set on the host (empty on real hosts). The loopback test fleet sets it
per host, so each simulated host has its own NICs, RDMA ports and model copy; under that
root, ``sys/class/net/<if>/addresses`` (not a real sysfs file) lists the interface's
addresses, which ``ip -o addr`` gives on a real host.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .. import gpu, shell
from ..hosts import Host, parse_host
from ..serving import engines
from ..serving.config import DECODE, PREFILL
from ..serving.plan import ROUTER, StartPlan
from ..serving.scripts import ports_free_command, server_env

ROOT_ENV = "CLUSTER_PREFLIGHT_ROOT"
PEER_TIMEOUT_S = 3.0
IFNAME_VARS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")
DEFAULT_SSH_PORT = 22

# Section keys, in the order they run.
GPU, GPU_INFO, XID, ENV, IB, PORTS, SYSTEM = "gpu", "gpuinfo", "xid", "env", "ib", "ports", "sys"
FAST_SECTIONS = (GPU, ENV, PORTS)

# The extra nvidia-smi query: driver and PCIe link per GPU (nvidia-smi --help-query-gpu).
GPU_INFO_FIELDS = ("index", "driver_version", "pcie.link.gen.current", "pcie.link.gen.max",
                   "pcie.link.width.current", "pcie.link.width.max")
GPU_INFO_COMMAND = f"nvidia-smi --query-gpu={','.join(GPU_INFO_FIELDS)} --format=csv,noheader,nounits"


@dataclass(frozen=True)
class HostPlan:
    """What one host must provide for its part of the deployment."""

    host: Host
    roles: tuple[str, ...]
    gpus_needed: int = 0
    bind: str | None = None
    ports: tuple[int, ...] = ()
    env_file: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    python: str = "python3"
    # (python module, distribution) pairs whose presence and version are checked.
    modules: tuple[tuple[str, str], ...] = ()
    commands: tuple[str, ...] = ()          # launchers that must be on PATH (vllm, vllm-router)
    model_path: str | None = None
    run_dir: str = "~"
    ib_devices: tuple[str, ...] = ()
    peers: tuple[tuple[str, int], ...] = ()
    engine_package: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)   # values to mask in output

    @property
    def serves(self) -> bool:
        """True when a prefill/decode server runs here (not only the router)."""
        return any(role in (PREFILL, DECODE) for role in self.roles)


def host_plans(plan: StartPlan, ssh_port: int | None = None) -> dict[Host, HostPlan]:
    """One HostPlan per SSH target of ``plan`` (servers, then the router), in plan order.

    ``ssh_port``: the port peers are reached on when a host names none (``ssh.port`` of
    the roles file, else 22): the TCP reachability check connects to the peer's SSH port.
    """
    by_host: dict[Host, dict] = {}
    engine = engines.get(plan.config.engine)
    prefill_hosts = [s for s in plan.servers if s.role == PREFILL]
    for spec in plan.servers:
        entry = by_host.setdefault(parse_host(spec.target), _empty())
        entry["roles"].append(spec.role)
        entry["gpus"] += spec.local_tp
        entry["bind"] = entry["bind"] or spec.host
        entry["ports"].extend(spec.ports)
        entry["env_file"] = entry["env_file"] or spec.env_file
        entry["env"] = entry["env"] or tuple((k, v) for k, v in server_env(spec))
        entry["python"] = spec.python
        entry["model"] = spec.model_path
        entry["run_dir"] = spec.run_dir
        entry["package"] = engine.package
        argv = engine.server_argv(spec)
        _launcher(argv, spec.python, engine.package, entry)
        entry["ib"].extend(engine.rdma_devices(spec))
        peers = []
        if spec.nnodes > 1 and not spec.is_api:
            rank0 = next(s for s in plan.servers if s.role == spec.role
                         and s.server_index == spec.server_index and s.is_api)
            peers.append(rank0.target)
        if spec.role == DECODE:
            peers.extend(s.target for s in prefill_hosts)
        entry["peers"].extend(peers)
        entry["secrets"].extend(dict(spec.env).get(name) or "" for name in spec.secret_env)
    if plan.router is not None:
        router = plan.router
        entry = by_host.setdefault(parse_host(router.target) if not router.is_local else Host("local"),
                                   _empty())
        entry["roles"].append(ROUTER)
        entry["ports"].extend(router.ports)
        entry["bind"] = entry["bind"] or router.address
        entry["env_file"] = entry["env_file"] or router.env_file
        entry["run_dir"] = router.run_dir
        _launcher(list(router.launcher), plan.config.python, None, entry)
    return {host: _host_plan(host, entry, ssh_port) for host, entry in by_host.items()}


def _empty() -> dict:
    return {"roles": [], "gpus": 0, "bind": None, "ports": [], "env_file": None, "env": (),
            "python": "python3", "model": None, "run_dir": "~", "package": None, "modules": [],
            "commands": [], "ib": [], "peers": [], "secrets": []}


def _launcher(argv: Sequence[str], python: str, package: str | None, entry: dict) -> None:
    """A ``PY -m pkg.mod`` launcher needs ``pkg`` importable; any other, its command on PATH."""
    if len(argv) > 2 and argv[1] == "-m":
        module = argv[2].split(".")[0]
        entry["modules"].append((module, module.replace("_", "-")))
        entry["python"] = argv[0] if argv[0] else python
    elif argv:
        entry["commands"].append(argv[0])
        if package:  # `vllm serve`: the package's version still matters
            entry["modules"].append((package, package))


def _host_plan(host: Host, entry: dict, ssh_port: int | None) -> HostPlan:
    peers = []
    for target in dict.fromkeys(entry["peers"]):
        peer = parse_host(target)
        if peer != host:
            peers.append((peer.hostname, peer.port or ssh_port or DEFAULT_SSH_PORT))
    return HostPlan(
        host=host, roles=tuple(dict.fromkeys(entry["roles"])), gpus_needed=entry["gpus"],
        bind=entry["bind"], ports=tuple(dict.fromkeys(entry["ports"])), env_file=entry["env_file"],
        env=entry["env"], python=entry["python"], modules=tuple(dict.fromkeys(entry["modules"])),
        commands=tuple(dict.fromkeys(entry["commands"])), model_path=entry["model"],
        run_dir=entry["run_dir"], ib_devices=tuple(dict.fromkeys(entry["ib"])),
        peers=tuple(peers), engine_package=entry["package"],
        secrets=tuple(s for s in entry["secrets"] if s),
    )


# --------------------------------------------------------------------------- shell text


def sections(plan: HostPlan, *, fast: bool = False, deep: bool = False) -> list[tuple[str, str]]:
    """``(key, script)`` parts of one host's round trip; ``fast``: start-pd's subset (GPUs
    free, ports free, env file, engine importable, model present)."""
    parts: list[tuple[str, str]] = []
    if plan.serves:
        parts.append((GPU, gpu.COMMAND))
        if not fast:
            parts += [(GPU_INFO, GPU_INFO_COMMAND), (XID, XID_SCRIPT)]
    parts.append((ENV, env_script(plan, fast=fast, deep=deep)))
    if plan.ib_devices and not fast:
        parts.append((IB, ib_script(plan.ib_devices)))
    if plan.ports:
        parts.append((PORTS, ports_free_command(plan.ports, plan.bind)))
    if not fast:
        parts.append((SYSTEM, system_script(plan)))
    return parts


# Kernel log: dmesg when this user may read it (kernel.dmesg_restrict=0), else the journal.
XID_SCRIPT = (
    "if dmesg >/dev/null 2>&1; then echo 'source dmesg'; "
    "dmesg 2>/dev/null | grep -i 'NVRM: Xid' | tail -n 20; "
    "elif [ -n \"$(journalctl -k -b -q --no-pager -n 1 2>/dev/null)\" ]; then echo 'source journalctl'; "
    "journalctl -k -b -q --no-pager 2>/dev/null | grep -i 'NVRM: Xid' | tail -n 20; "
    "else echo 'source none'; fi"
)

# Versions without importing the packages (importing sglang or torch takes seconds):
# distribution metadata; a module with no metadata (a source checkout) is imported for its
# __version__. CUDA runtime: the pip wheel's version, else torch's local tag (+cu124).
_PY_SOFTWARE = r"""import json, socket, sys, threading
a = json.loads(sys.argv[1])
print("python", sys.version.split()[0], sys.executable)
import importlib.util as iu
try:
    from importlib import metadata as md
except ImportError:
    md = None
def ver(dist):
    try:
        return md.version(dist) if md else None
    except Exception:
        return None
for mod, dist in a["modules"]:
    try:
        found = iu.find_spec(mod) is not None
    except Exception:
        found = False
    v = ver(dist) if found else None
    if found and v is None:
        try:
            v = getattr(__import__(mod), "__version__", None)
        except Exception as e:
            print("module", mod, "broken", type(e).__name__)
            continue
    print("module", mod, "ok" if found else "missing", v or "-")
if a["more"]:
    t = ver("torch")
    print("torch", t or "-")
    c = ver("nvidia-cuda-runtime-cu12") or ver("nvidia-cuda-runtime-cu11")
    if c:
        c = ".".join(c.split(".")[:2])
    elif t and "+cu" in t:
        d = t.split("+cu")[1]
        c = d[:-1] + "." + d[-1:] if d.isdigit() and len(d) > 1 else None
    print("cuda", c or "-")
res = {}
def con(h, p):
    try:
        socket.create_connection((h, p), timeout=a["t"]).close()
        res[(h, p)] = "ok"
    except socket.timeout:
        res[(h, p)] = "timeout"
    except ConnectionRefusedError:
        res[(h, p)] = "refused"
    except OSError as e:
        res[(h, p)] = "error:" + (e.strerror or type(e).__name__).replace(" ", "_")
ts = [threading.Thread(target=con, args=(h, p)) for h, p in a["peers"]]
for x in ts:
    x.start()
for x in ts:
    x.join()
for h, p in a["peers"]:
    print("peer", h, p, res.get((h, p), "error:no-answer"))
"""


def env_script(plan: HostPlan, *, fast: bool = False, deep: bool = False) -> str:
    """The env file sourced (status and last lines of output), the plan's env exported, then
    in that environment: interpreter, packages and versions, launchers on PATH, the NCCL /
    Gloo interfaces, the model, and (not ``fast``) TCP to the peers.

    Output lines: ``envfile RC|missing``, ``envout TEXT``, ``python VER PATH``, ``module M
    ok|missing|broken VER``, ``torch VER``, ``cuda VER``, ``cmd NAME PATH|-``, ``ifname VAR
    VALUE``, ``nic NAME OPERSTATE``, ``addr NAME ADDRESS``, ``model ...``, ``peer H P RESULT``.
    Contains the env in clear: run it on stdin, never print it.
    """
    lines = ['R="${%s:-}"' % ROOT_ENV]
    if plan.env_file:
        env_file = shell.path(plan.env_file)
        # Sourced once in a child shell first: an env file that exits must not end the check.
        lines.append(
            f"if [ -f {env_file} ]; then t=$(mktemp 2>/dev/null || echo /tmp/.preflight.$$); "
            f"( . {env_file} ) > \"$t\" 2>&1 < /dev/null; rc=$?; echo \"envfile $rc\"; "
            "tail -n 3 \"$t\" | sed 's/^/envout /'; rm -f \"$t\"; "
            f"if [ $rc = 0 ]; then . {env_file} >/dev/null 2>&1 < /dev/null; fi; "
            "else echo 'envfile missing'; fi")
    exports = shell.export_line(plan.env)
    if exports:
        lines.append(exports)
    for command in plan.commands:
        lines.append(f"echo \"cmd {shell.plain(command)} $(command -v {shell.quote(command)} || echo -)\"")
    args = {"modules": [list(m) for m in plan.modules], "more": not fast, "t": PEER_TIMEOUT_S,
            "peers": [] if fast else [list(p) for p in plan.peers]}
    python = shell.quote(plan.python)
    lines.append(f"if command -v {python} >/dev/null 2>&1; then {python} -c {shell.quote(_PY_SOFTWARE)} "
                 f"{shell.quote(json.dumps(args, separators=(',', ':')))} < /dev/null 2>&1 | head -n 200; "
                 "else echo 'python -'; fi")
    if not fast:
        lines.append(_NIC_SCRIPT)
    if plan.model_path:
        lines.append(model_script(plan.model_path, deep=deep))
    return "\n".join(lines) + "\n"


# The interfaces, only when NCCL/Gloo are told which to use (sysfs operstate; addresses
# from `ip -o addr` — iproute2's one-line form: "2: eth0    inet 10.0.0.5/24 brd ...").
_NIC_SCRIPT = "\n".join([
    *(f'echo "ifname {var} ${{{var}-}}"' for var in IFNAME_VARS),
    'if [ -n "${NCCL_SOCKET_IFNAME-}${GLOO_SOCKET_IFNAME-}" ]; then',
    '  for d in "$R"/sys/class/net/*; do [ -e "$d" ] || continue; '
    'echo "nic ${d##*/} $(cat "$d/operstate" 2>/dev/null || echo unknown)"; done',
    '  if [ -n "$R" ]; then for d in "$R"/sys/class/net/*; do [ -r "$d/addresses" ] && '
    'sed "s|^|addr ${d##*/} |" "$d/addresses"; done',
    "  else ip -o addr show 2>/dev/null | awk '{print \"addr\", $2, $4}'; fi",
    "fi",
])


def _is_path(model: str) -> bool:
    return model.startswith(("/", "~", "./", "../"))


def model_script(model: str, *, deep: bool = False) -> str:
    """``model dir|file SIZE|missing|hf-cached|hf-missing OFFLINE``, then for a directory
    ``model files N BYTES``, ``model manifest CRC`` (names + sizes, sorted), ``model config
    yes|no`` and with ``deep`` ``model deep HASH`` (sha256 of the top-level *.json files)."""
    manifest = (
        "list=$(cd \"$d\" && find -L . -type f -printf '%P\\t%s\\n' 2>/dev/null | LC_ALL=C sort); "
        "printf '%s\\n' \"$list\" | awk -F'\\t' 'NF==2{n++; s+=$2} END{printf \"model files %d %.0f\\n\", n, s}'; "
        "echo \"model manifest $(printf '%s\\n' \"$list\" | cksum | awk '{print $1 \"-\" $2}')\"; "
        "if [ -f \"$d/config.json\" ]; then echo 'model config yes'; else echo 'model config no'; fi; "
    )
    if deep:
        manifest += ("echo \"model deep $(cd \"$d\" && find -L . -maxdepth 1 -name '*.json' -type f | "
                     "LC_ALL=C sort | xargs -r sha256sum | sha256sum | cut -c1-16)\"; ")
    if _is_path(model):
        where = shell.path(model)
        return (f"d=\"$R\"{where}; if [ -d \"$d\" ]; then echo 'model dir'; {manifest}"
                "elif [ -f \"$d\" ]; then echo \"model file $(wc -c < \"$d\")\"; "
                "else echo 'model missing'; fi")
    repo = "models--" + model.replace("/", "--")
    return (
        'c="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"; '
        f"b=\"$R$c\"/{shell.quote(repo)}; ref=$(cat \"$b/refs/main\" 2>/dev/null); "
        "d=\"$b/snapshots/$ref\"; "
        "if [ -n \"$ref\" ] && [ -d \"$d\" ]; then echo 'model hf-cached'; "
        f"{manifest}"
        "else echo \"model hf-missing ${HF_HUB_OFFLINE:-}\"; fi"
    )


def ib_script(devices: Sequence[str]) -> str:
    """``ib DEV PORT STATE`` per port of each device (sysfs ``ports/N/state``: ``4: ACTIVE``,
    drivers/infiniband/core/sysfs.c), ``ib DEV - missing`` for an absent one."""
    names = " ".join(shell.quote(d) for d in devices)
    return (
        'R="${%s:-}"; for dev in %s; do b="$R/sys/class/infiniband/$dev"; '
        'if [ -d "$b" ]; then for p in "$b"/ports/*; do [ -e "$p" ] || continue; '
        'echo "ib $dev ${p##*/} $(cat "$p/state" 2>/dev/null || echo unknown)"; done; '
        'else echo "ib $dev - missing"; fi; done' % (ROOT_ENV, names)
    )


def system_script(plan: HostPlan) -> str:
    """``shm SIZE_KB AVAIL_KB``, ``memlock VALUE``, ``disk run|model AVAIL_KB DIR``, ``load
    LOAD1 NPROC``, ``clock EPOCH`` (``df -P``: POSIX output, one line per filesystem)."""
    lines = [
        'R="${%s:-}"' % ROOT_ENV,
        "echo \"shm $(df -Pk /dev/shm 2>/dev/null | awk 'NR==2{print $2, $4}')\"",
        'echo "memlock $(ulimit -l 2>/dev/null)"',
        _disk_line("run", shell.path(plan.run_dir)),
    ]
    if plan.model_path and _is_path(plan.model_path):
        lines.append(_disk_line("model", '"$R"' + shell.path(plan.model_path)))
    lines += [
        "echo \"load $(cut -d' ' -f1 /proc/loadavg 2>/dev/null) $(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)\"",
        'echo "clock $(date +%s.%N)"',
    ]
    return "\n".join(lines) + "\n"


def _disk_line(label: str, where: str) -> str:
    """Free space of the nearest existing directory at or above ``where``."""
    return (f"d={where}; while [ ! -e \"$d\" ] && [ \"$d\" != / ] && [ \"$d\" != . ]; do d=$(dirname \"$d\"); done; "
            f"echo \"disk {label} $(df -Pk \"$d\" 2>/dev/null | awk 'NR==2{{print $4}}') $d\"")


def work(plans: Mapping[Host, HostPlan], *, fast: bool = False, deep: bool = False
         ) -> dict[Host, list[tuple[str, str]]]:
    """Every host's sections (input of :func:`cluster.shell.run_sections`)."""
    return {host: sections(plan, fast=fast, deep=deep) for host, plan in plans.items()}
