"""What preflight checks on each host, and the shell text of its one round trip. Pure.

:func:`host_plans` turns the start-pd plan (:class:`~cluster.serving.plan.StartPlan`) into
one :class:`HostPlan` per SSH target: its roles, the GPUs its servers need, the ports they
bind, the env file and env, the engine's package and launchers, the model, the RDMA devices
(asked of the engine), and the peers it must reach. :func:`sections` gives that host's
framed sections for :func:`cluster.shell.sections_script`; :mod:`.checks` parses them.

Lean on purpose (it must cost little more than gpu-status): besides gpu-status's own
nvidia-smi query, a host runs ``dmesg``, the ports scan, and **one** ``python3`` that reads
everything else from files — package versions from ``*.dist-info`` names on its sys.path,
``/proc/driver/nvidia/version``, PCIe links and NICs and RDMA ports in sysfs, ``statvfs``,
``getrlimit``, the model's file list — and makes the TCP connections to the peers.

Stand-ins: every absolute path the probe inspects (``/sys``, ``/proc/driver/nvidia``, the
model directory, the HF cache) is read under ``$CLUSTER_PREFLIGHT_ROOT`` when that
variable is set on the host (empty on real hosts). The loopback test fleet sets it per host,
so each simulated host has its own NICs, RDMA ports, GPUs' links and model copy; under that
root, ``sys/class/net/<if>/addresses`` (not a real sysfs file) lists the interface's
addresses, which ``ip -o addr`` gives on a real host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import gpu, shell
from ..hosts import Host, parse_host
from ..serving import engines
from ..serving.config import DECODE, PREFILL
from ..serving.plan import ROUTER, StartPlan
from ..serving.scripts import listen_keys, server_env

ROOT_ENV = "CLUSTER_PREFLIGHT_ROOT"
PEER_TIMEOUT_S = 3.0
IFNAME_VARS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")

# Section keys, in the order they run: gpu-status's own query, then everything else.
GPU, ENV = "gpu", "env"


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
    peers: tuple[tuple[str, int], ...] = ()   # (address, a port planned there)
    engine_package: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)   # values to mask in output

    @property
    def serves(self) -> bool:
        """True when a prefill/decode server runs here (not only the router)."""
        return any(role in (PREFILL, DECODE) for role in self.roles)


def host_plans(plan: StartPlan) -> dict[Host, HostPlan]:
    """One HostPlan per SSH target of ``plan`` (servers, then the router), in plan order.

    Peers: a rank >= 1 must reach its rank 0 (on the dist-init port), a decode host every
    prefill host (on the prefill server port) — the ports the engine will use, free before
    the start, so a refused connection proves the path (nothing is woken up on the peer; a
    connection to its sshd would start an sshd process per check).
    """
    by_host: dict[Host, dict[str, Any]] = {}
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
        _launcher(engine.server_argv(spec), spec.python, engine.package, entry)
        entry["ib"].extend(engine.rdma_devices(spec))
        if spec.nnodes > 1 and not spec.is_api:
            rank0 = next(s for s in plan.servers if s.role == spec.role
                         and s.server_index == spec.server_index and s.is_api)
            entry["peers"].append((rank0.target, rank0.host, rank0.dist_init_port))
        if spec.role == DECODE:
            entry["peers"].extend((s.target, s.host, s.port) for s in prefill_hosts)
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
    return {host: _host_plan(host, entry) for host, entry in by_host.items()}


def _empty() -> dict[str, Any]:
    return {"roles": [], "gpus": 0, "bind": None, "ports": [], "env_file": None, "env": (),
            "python": "python3", "model": None, "run_dir": "~", "package": None, "modules": [],
            "commands": [], "ib": [], "peers": [], "secrets": []}


def _launcher(argv: Sequence[str], python: str, package: str | None, entry: dict[str, Any]) -> None:
    """A ``PY -m pkg.mod`` launcher needs ``pkg`` importable; any other, its command on PATH."""
    if len(argv) > 2 and argv[1] == "-m":
        module = argv[2].split(".")[0]
        entry["modules"].append((module, module.replace("_", "-")))
        entry["python"] = argv[0] if argv[0] else python
    elif argv:
        entry["commands"].append(argv[0])
        if package:  # `vllm serve`: the package's version still matters
            entry["modules"].append((package, package))


def _host_plan(host: Host, entry: dict[str, Any]) -> HostPlan:
    peers = [(address, port) for target, address, port in entry["peers"] if parse_host(target) != host]
    return HostPlan(
        host=host, roles=tuple(dict.fromkeys(entry["roles"])), gpus_needed=entry["gpus"],
        bind=entry["bind"], ports=tuple(dict.fromkeys(entry["ports"])), env_file=entry["env_file"],
        env=entry["env"], python=entry["python"], modules=tuple(dict.fromkeys(entry["modules"])),
        commands=tuple(dict.fromkeys(entry["commands"])), model_path=entry["model"],
        run_dir=entry["run_dir"], ib_devices=tuple(dict.fromkeys(entry["ib"])),
        peers=tuple(dict.fromkeys(peers)), engine_package=entry["package"],
        secrets=tuple(s for s in entry["secrets"] if s),
    )


# --------------------------------------------------------------------------- shell text


def sections(plan: HostPlan, *, fast: bool = False, deep: bool = False) -> list[tuple[str, str]]:
    """``(key, script)`` parts of one host's round trip; ``fast``: start-pd's subset (GPUs
    free, ports free, env file, engine importable, model present)."""
    parts: list[tuple[str, str]] = [(GPU, gpu.COMMAND)] if plan.serves else []
    return parts + [(ENV, env_script(plan, fast=fast, deep=deep))]


# Everything else, in one interpreter, from files (the module docstring). Its output lines
# are the tags :func:`cluster.preflight.checks.parse_env` reads. Formats read: the
# ``NAME-VERSION.dist-info`` directory names (PEP 376/427); /proc/driver/nvidia/version
# ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  ..."); sysfs PCI attributes
# vendor/class/current_link_speed ("16.0 GT/s PCIe")/current_link_width/max_* (kernel
# Documentation/ABI/testing/sysfs-bus-pci), net operstate (sysfs-class-net), infiniband
# ports/N/state ("4: ACTIVE", drivers/infiniband/core/sysfs.c), /dev/kmsg records
# ("PRI,SEQ,TS,FLAGS;MESSAGE", Documentation/ABI/testing/dev-kmsg), where the Xid lines
# read "NVRM: Xid (PCI:0000:3b:00): 79, pid=..., GPU has fallen off the bus.".
_PY_PROBE = r"""import os, sys, time
A = {"mod": [], "disk": [], "ib": [], "peer": [], "model": [""], "port": [], "listen": []}
for tok in sys.argv[2:]:
    k, _, v = tok.partition("=")
    A.setdefault(k, []).append(v)
full, serves, deep = (c == "1" for c in sys.argv[1])
R = os.environ.get("CLUSTER_PREFLIGHT_ROOT", "")
def rd(path):
    try:
        with open(R + path) as f:
            return f.read().strip()
    except OSError:
        return None
print("python", sys.version.split()[0], sys.executable)
dists = {}
for d in sys.path:
    try:
        names = os.listdir(d or ".")
    except OSError:
        continue
    for n in names:
        if n.endswith((".dist-info", ".egg-info")):
            k, _, v = n.rsplit(".", 1)[0].partition("-")
            dists.setdefault(k.lower().replace("-", "_"), v.split("-")[0])
def ver(dist):
    return dists.get(dist.lower().replace("-", "_"))
def find_spec(mod):  # importlib.util.find_spec for a top-level name, without its imports
    for finder in sys.meta_path:
        spec = getattr(finder, "find_spec", lambda *a: None)(mod, None)
        if spec is not None:
            return spec
for item in A["mod"]:
    mod, _, dist = item.partition(",")
    try:
        found = find_spec(mod) is not None
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
def model(d):
    items = []
    for top, dirs, files in os.walk(d, followlinks=True):
        for f in files:
            p = os.path.join(top, f)
            try:
                items.append((os.path.relpath(p, d), os.stat(p).st_size))
            except OSError:
                pass
    items.sort()
    import zlib
    text = "".join("%s\t%d\n" % i for i in items).encode()
    print("model files", len(items), sum(s for _, s in items))
    print("model manifest %08x-%d" % (zlib.crc32(text), len(text)))
    print("model config", "yes" if os.path.isfile(os.path.join(d, "config.json")) else "no")
    if deep:
        import hashlib
        h = hashlib.sha256()
        for name, _ in items:
            if "/" not in name and name.endswith(".json"):
                with open(os.path.join(d, name), "rb") as f:
                    h.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
        print("model deep", h.hexdigest()[:16])
m = A["model"][-1]
if m.startswith(("/", "~", ".")):
    d = R + os.path.expanduser(m) if m.startswith(("/", "~")) else m
    if os.path.isdir(d):
        print("model dir")
        model(d)
    elif os.path.isfile(d):
        print("model file", os.path.getsize(d))
    else:
        print("model missing")
elif m:
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface"), "hub")
    base = R + os.path.join(hub, "models--" + m.replace("/", "--"))
    ref = None
    try:
        with open(os.path.join(base, "refs", "main")) as f:
            ref = f.read().strip()
    except OSError:
        pass
    if ref and os.path.isdir(os.path.join(base, "snapshots", ref)):
        print("model hf-cached")
        model(os.path.join(base, "snapshots", ref))
    else:
        print("model hf-missing", os.environ.get("HF_HUB_OFFLINE", ""))
if full:
    tv = ver("torch")
    print("torch", tv or "-")
    c = ver("nvidia_cuda_runtime_cu12") or ver("nvidia_cuda_runtime_cu11")
    if c:
        c = ".".join(c.split(".")[:2])
    elif tv and "+cu" in tv:
        d = tv.split("+cu")[1]
        c = d[:-1] + "." + d[-1:] if d.isdigit() and len(d) > 1 else None
    print("cuda", c or "-")
if full and serves:
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        fd = None
    journal = False
    for j in ("/run/log/journal", "/var/log/journal") if fd is None else ():
        try:
            journal = journal or any(os.access(os.path.join(j, sub, "system.journal"), os.R_OK)
                                     for sub in os.listdir(j))
        except OSError:
            pass
    if journal:
        # /dev/kmsg refused (kernel.dmesg_restrict=1): the journal, when this user may read it.
        print("xidsource journalctl", flush=True)
        os.system("journalctl -k -b -q --no-pager 2>/dev/null | grep 'NVRM: Xid' | tail -n 20 | sed 's/^/xid /'")
    else:
        print("xidsource", "none" if fd is None else "kmsg")
    xids = []
    while fd is not None:
        try:
            rec = os.read(fd, 8192)
        except BlockingIOError:
            break
        except OSError:
            continue
        if not rec:
            break
        if b"NVRM: Xid" in rec:
            xids.append(rec.decode("utf-8", "replace").split(";", 1)[-1].strip())
    if fd is not None:
        os.close(fd)
    for line in xids[-20:]:
        print("xid", line)
    words = (rd("/proc/driver/nvidia/version") or "").split("Kernel Module", 1)[-1].split()
    print("driver", next((w for w in words[:4] if w[:1].isdigit()), "-"))
    GEN = {"2.5": 1, "5.0": 2, "8.0": 3, "16.0": 4, "32.0": 5, "64.0": 6}
    pci = "/sys/bus/pci/devices"
    try:
        buses = sorted(os.listdir(R + pci))
    except OSError:
        buses = []
    for b in buses:
        if rd(f"{pci}/{b}/vendor") != "0x10de" or not (rd(f"{pci}/{b}/class") or "").startswith("0x03"):
            continue
        g = [GEN.get((rd(f"{pci}/{b}/{k}_link_speed") or "-").split()[0], "-") for k in ("current", "max")]
        w = [rd(f"{pci}/{b}/{k}_link_width") or "-" for k in ("current", "max")]
        print("pcie", b, g[0], g[1], w[0], w[1])
    try:
        sv = os.statvfs("/dev/shm")
        print("shm", sv.f_blocks * sv.f_frsize // 1024, sv.f_bavail * sv.f_frsize // 1024)
    except OSError:
        print("shm")
    import resource
    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    print("memlock", "unlimited" if soft == resource.RLIM_INFINITY else soft // 1024)
if full:
    for item in A["disk"]:
        label, rooted, path = item.split(",", 2)
        d = (R if rooted == "1" else "") + os.path.expanduser(path)
        while d not in ("", "/") and not os.path.exists(d):
            d = os.path.dirname(d)
        try:
            sv = os.statvfs(d or "/")
            print("disk", label, sv.f_bavail * sv.f_frsize // 1024, d or "/")
        except OSError:
            print("disk", label, "-", d)
    try:
        print("load", "%.2f" % os.getloadavg()[0], os.cpu_count())
    except OSError:
        pass
    names = [os.environ.get(v, "") for v in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")]
    print("ifname NCCL_SOCKET_IFNAME", names[0])
    print("ifname GLOO_SOCKET_IFNAME", names[1])
    if any(names):
        net = "/sys/class/net"
        try:
            nics = sorted(os.listdir(R + net))
        except OSError:
            nics = []
        for n in nics:
            print("nic", n, rd(f"{net}/{n}/operstate") or "unknown")
            for addr in (rd(f"{net}/{n}/addresses") or "").split() if R else ():
                print("addr", n, addr)
    for dev in A["ib"]:
        try:
            found = sorted(os.listdir(R + f"/sys/class/infiniband/{dev}/ports"))
        except OSError:
            print("ib", dev, "-", "missing")
            continue
        for p in found:
            print("ib", dev, p, rd(f"/sys/class/infiniband/{dev}/ports/{p}/state") or "unknown")
    if A["peer"]:
        # Non-blocking connects, all at once; refused counts as reached (the port is free).
        # _socket, not socket: socket.py's enums cost more than all the connects.
        import _socket as socket
        import errno, select
        res, socks, poll = {}, {}, select.poll()
        for item in A["peer"]:
            h, _, p = item.rpartition(",")
            try:
                fam, _, _, _, addr = socket.getaddrinfo(h, int(p), 0, socket.SOCK_STREAM)[0]
                s = socket.socket(fam, socket.SOCK_STREAM)
                s.setblocking(False)
                rc = s.connect_ex(addr)
            except OSError as e:
                res[item] = "error:" + (e.strerror or "?").replace(" ", "_")
                continue
            if rc in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                socks[s.fileno()] = (s, item)
                poll.register(s.fileno(), select.POLLOUT)
                continue
            res[item] = "ok" if rc in (0, errno.ECONNREFUSED) else "error:" + os.strerror(rc).replace(" ", "_")
            s.close()
        end = time.time() + float(A["t"][-1])
        while socks and time.time() < end:
            for fd, _ in poll.poll(max(0.0, end - time.time()) * 1000):
                s, item = socks.pop(fd)
                poll.unregister(fd)
                rc = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                res[item] = "ok" if rc in (0, errno.ECONNREFUSED) else "error:" + os.strerror(rc).replace(" ", "_")
                s.close()
        for s, item in socks.values():
            res[item] = "timeout"
            s.close()
        for item in A["peer"]:
            h, _, p = item.rpartition(",")
            print("peer", h, p, res.get(item, "error:no-answer"))
if A["port"]:
    # LISTEN sockets (state 0A) in /proc/net/tcp{,6} (proc(5)) at the bind address or a
    # wildcard: the keys come from cluster.serving.scripts.listen_keys.
    want = dict(k.rsplit("=", 1) for k in A["listen"])
    busy = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            w = row.split()
            if len(w) > 3 and w[3] == "0A":
                key = w[1]
                port = want.get(key) or want.get("*:" + key.split(":")[-1])
                if port:
                    busy.add(port)
    for port in A["port"]:
        print(port, "busy" if port in busy else "free")
if full:
    print("clock", repr(time.time()))
"""


def env_script(plan: HostPlan, *, fast: bool = False, deep: bool = False) -> str:
    """The env file sourced (its status; its last lines when it fails), the plan's env
    exported, launchers looked up, interface addresses listed (``ip -o addr``: iproute2's
    one-line form, field 2 the interface, 4 the address), then the one ``python3``
    (:data:`_PY_PROBE`) in that environment.

    Output lines: ``envfile RC|missing``, ``envout TEXT``, ``cmd NAME PATH|-``, ``addr IF
    ADDRESS``, then the probe's: ``python``, ``module``, ``torch``, ``cuda``, ``driver``,
    ``pcie``, ``xidsource``, ``xid``, ``shm``, ``memlock``, ``disk``, ``load``, ``ifname``,
    ``nic``, ``ib``, ``model``, ``peer``, ``PORT free|busy``, ``clock`` (the journal's Xid
    lines when /dev/kmsg was not readable and the journal is). Contains the env in clear:
    run it on stdin, never print it.
    """
    lines = ['R="${%s:-}"' % ROOT_ENV]
    if plan.env_file:
        env_file = shell.path(plan.env_file)
        # Sourced once in the command substitution's subshell first: an env file that exits
        # must not end the check; then, when it succeeded, here for its variables.
        lines.append(
            f"if [ -f {env_file} ]; then out=$( . {env_file} 2>&1 < /dev/null ); rc=$?; "
            'echo "envfile $rc"; '
            f"if [ $rc = 0 ]; then . {env_file} >/dev/null 2>&1 < /dev/null; "
            "else printf '%s\\n' \"$out\" | tail -n 3 | sed 's/^/envout /'; fi; "
            "else echo 'envfile missing'; fi")
    exports = shell.export_line(plan.env)
    if exports:
        lines.append(exports)
    for command in plan.commands:
        lines.append(f"echo \"cmd {shell.plain(command)} $(command -v {shell.quote(command)} || echo -)\"")
    if not fast:
        lines.append('if [ -z "$R" ] && [ -n "${NCCL_SOCKET_IFNAME-}${GLOO_SOCKET_IFNAME-}" ]; then '
                     "ip -o addr show 2>/dev/null | awk '{sub(/@.*/, \"\", $2); print \"addr\", $2, $4}'; fi")
    python = shell.quote(plan.python)
    lines.append(f"if command -v {python} >/dev/null 2>&1; then {python} -c {shell.quote(_PY_PROBE)} "
                 f"{shell.join(probe_args(plan, fast=fast, deep=deep))} < /dev/null 2>&1; "
                 "else echo 'python -'; fi")
    return "\n".join(lines) + "\n"


def probe_args(plan: HostPlan, *, fast: bool = False, deep: bool = False) -> list[str]:
    """:data:`_PY_PROBE`'s arguments: the flags ``full serves deep`` as ``0``/``1``, then
    ``mod=MODULE,DIST``, ``model=PATH``, ``disk=LABEL,ROOTED,PATH``, ``ib=DEV``,
    ``peer=HOST,PORT``, ``t=SECONDS``, ``port=PORT`` and ``listen=KEY`` (the port scan,
    :func:`cluster.serving.scripts.listen_keys`) — no json: its import costs more than
    the parsing."""
    flags = "".join("1" if f else "0" for f in (not fast, plan.serves, deep))
    args = [flags, f"t={PEER_TIMEOUT_S:g}", *(f"mod={m},{d}" for m, d in plan.modules)]
    if plan.model_path and plan.serves:
        args.append(f"model={plan.model_path}")
    args.append(f"disk=run,0,{plan.run_dir}")
    if plan.model_path and plan.model_path.startswith(("/", "~")):
        args.append(f"disk=model,1,{plan.model_path}")
    args += [f"ib={d}" for d in plan.ib_devices]
    if not fast:
        args += [f"peer={h},{p}" for h, p in plan.peers]
    args += [f"port={p}" for p in plan.ports]
    args += [f"listen={k}" for k in listen_keys(plan.bind, plan.ports)] if plan.ports else []
    return args


def work(plans: Mapping[Host, HostPlan], *, fast: bool = False, deep: bool = False
         ) -> dict[Host, list[tuple[str, str]]]:
    """Every host's sections (input of :func:`cluster.shell.run_sections`)."""
    return {host: sections(plan, fast=fast, deep=deep) for host, plan in plans.items()}
