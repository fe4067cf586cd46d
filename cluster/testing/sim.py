"""A rehearsal cluster on loopback: N simulated GPU hosts that outlive the command starting them.

``inv sim-up --hosts 4`` runs :func:`up`, ``inv sim-down`` runs :func:`down`. Every
host is a real OpenSSH sshd on its own ``127.0.5.K`` address (the test harness,
:class:`cluster.testing.Fleet`) whose login sessions find, first on their PATH, the
stand-in ``nvidia-smi`` (an idle 8-GPU H100 state by default, ``--gpus`` rows),
``sglang`` and ``vllm``; a roles file splits the hosts into prefill and decode and
points ``serving:`` at the stand-in servers (``python3 -m sglang.launch_server``
through PYTHONPATH, short load times). Every task then works end to end against it.

How it outlives ``inv sim-up``: the fleet is started by a small supervisor process
(``python -m cluster.testing.sim serve DIR``) spawned in its own session
(``start_new_session``), so Ctrl-C or closing the terminal does not reach it. The
sshd processes are the supervisor's children with a parent-death signal, so they
go when it goes, however it goes. ``down`` sends the supervisor SIGTERM (it stops
the fleet: sshd processes, their sessions, and every process started through them),
then sweeps whatever still carries this cluster's ``CLUSTER_SIM_ROOT`` and removes
the files.

Layout of the state directory (default ``./.sim``)::

    state.json        supervisor pid, sshd pids, addresses, port, user, roles
    supervisor.log    the supervisor's output (start-up errors land here)
    roles.yaml        the roles file to use (export CLUSTER_ROLES=...)
    deployments/      where the rehearsal's PD manifests go (CLUSTER_STATE_DIR)
    fleet/            keys, sshd configs and logs, hosts/<address>/ (bin/, gpu rows)
    fleet/standin/    a copy of the stand-ins (so the login user can read them)
    fleet/run/        the PD servers' run directory (logs, pid files)

Never used on the code path that drives real hosts.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ClusterError, InputError
from ..hosts import fold_names
from . import defects as defect_kit
from .fleet import SSHD, Fleet, FleetError, address_range, kill_processes_of, pick_port

DEFAULT_STATE_DIR = ".sim"
DEFAULT_BASE = "127.0.5."
DEFAULT_HOSTS = 4
DEFAULT_GPUS = 8
MAX_HOSTS = 250
MAX_GPUS = 16
DEFAULT_LOAD_SECONDS = 2.0
START_TIMEOUT_S = 60.0
STATE_FILE = "state.json"
SUPERVISOR_LOG = "supervisor.log"
SSHD_ENV = "CLUSTER_SIM_SSHD"  # another sshd binary (tests use a missing one)
INSTALL_HINT = ("install it with `sudo apt-get install openssh-server` (Debian/Ubuntu) or "
                "`sudo dnf install openssh-server` (Fedora/RHEL); only the binary is needed, "
                "the system sshd service may stay disabled")

_TESTING = Path(__file__).resolve().parent
# Ports the rehearsal's servers use on every address: the SSH port must not be one of them.
_SERVING_PORTS = set(range(29990, 30011)) | {8000, 8100, 8200, 8998, 29000}


class SimError(ClusterError):
    """The rehearsal cluster could not be started or stopped; the message says why."""


@dataclass
class SimState:
    """What ``state.json`` records about a running rehearsal cluster."""

    state_dir: str
    supervisor_pid: int
    sshd_pids: list[int]
    addresses: list[str]
    port: int
    user: str
    gpus: int
    roles: dict[str, list[str]]
    roles_file: str
    deployments_dir: str
    fleet_dir: str
    started_at: float
    defects: dict[str, str] = field(default_factory=dict)   # address -> defect (--defects)

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str]) -> "SimState | None":
        """The recorded state, or None when there is none (or it is unreadable)."""
        try:
            doc = json.loads((Path(state_dir) / STATE_FILE).read_text())
            return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})
        except (OSError, ValueError, TypeError):
            return None

    def save(self) -> Path:
        path = Path(self.state_dir) / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @property
    def folded(self) -> str:
        return fold_names(self.addresses)

    def exports(self) -> str:
        """The shell line that points the tasks at this cluster."""
        return f"export CLUSTER_ROLES={self.roles_file} CLUSTER_STATE_DIR={self.deployments_dir}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DownResult:
    """What :func:`down` stopped and removed."""

    state_dir: str
    was_running: bool
    stopped: list[int] = field(default_factory=list)   # supervisor + sshd pids signalled
    swept: list[int] = field(default_factory=list)     # leftover session processes killed
    removed: list[str] = field(default_factory=list)   # paths removed

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- checks


def sshd_path() -> Path:
    """The OpenSSH server binary the rehearsal uses ($CLUSTER_SIM_SSHD, else /usr/sbin/sshd)."""
    return Path(os.environ.get(SSHD_ENV) or SSHD)


def check_sshd() -> Path:
    """The sshd binary, or `InputError` (exit 2) saying how to install it."""
    path = sshd_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise InputError(f"the rehearsal cluster runs real OpenSSH servers, and sshd was not "
                         f"found at {path}: {INSTALL_HINT}")
    return path


def check_count(value: Any, option: str, low: int, high: int) -> int:
    """A whole number in [low, high] from an option (exit 2 otherwise)."""
    text = str(value).strip()
    if not text.isdigit() or not low <= int(text) <= high:
        raise InputError(f"{option} must be a whole number {low}-{high}, got {value!r}")
    return int(text)


def listening_ports(addresses: list[str], tables: tuple[str, ...] = ("/proc/net/tcp",)) -> dict[str, list[int]]:
    """TCP ports something listens on at exactly these IPv4 addresses (not the wildcard),
    from the kernel's socket table: another rehearsal cluster, or anything else."""
    wanted = {socket.inet_aton(a)[::-1].hex().upper(): a for a in addresses}
    found: dict[str, set[int]] = {}
    for table in tables:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # LISTEN
                hex_address, _, hex_port = fields[1].partition(":")
                if hex_address in wanted:
                    found.setdefault(wanted[hex_address], set()).add(int(hex_port, 16))
    return {address: sorted(found[address]) for address in addresses if address in found}


def check_addresses_free(addresses: list[str]) -> None:
    """`InputError` when something already listens on one of the addresses sim-up wants
    (two rehearsal clusters on the same addresses would answer for each other)."""
    busy = listening_ports(addresses)
    if busy:
        address, ports = next(iter(busy.items()))
        raise InputError(f"{address} is in use (listening on port {', '.join(map(str, ports[:5]))}"
                         f"{' and ' + str(len(busy) - 1) + ' more addresses' if len(busy) > 1 else ''}): "
                         "another rehearsal cluster? Stop it with `inv sim-down --state-dir DIR`, "
                         "or pick other addresses with --base (e.g. 127.0.6.)")


def check_base(base: str) -> str:
    """A loopback address prefix such as ``127.0.5.`` (hosts are base+1 ... base+N)."""
    text = str(base).strip()
    if not text.endswith("."):
        text += "."
    try:
        address_range(text, 1, 1)
    except FleetError as exc:
        raise InputError(f"--base: {exc}") from None
    return text


# --------------------------------------------------------------------------- pure parts


def plan_roles(addresses: list[str]) -> dict[str, list[str]]:
    """A prefill/decode split: a quarter of the hosts (at least one) prefill, the rest decode.

    One host does both (two servers on one address, distinct ports).
    """
    if len(addresses) == 1:
        return {"prefill": list(addresses), "decode": list(addresses)}
    prefill = max(1, len(addresses) // 4)
    return {"prefill": addresses[:prefill], "decode": addresses[prefill:]}


def gpu_rows(address: str, count: int, template: str) -> str:
    """A stand-in nvidia-smi fixture with ``count`` idle GPUs whose UUIDs are unique to ``address``.

    ``template`` is a fixture's text (``h100-idle``): its rows are reused in turn with
    the index, UUID and PCI bus id rewritten.
    """
    rows = [line for line in template.split("@@compute-apps")[0].splitlines() if line.strip()]
    out = []
    for index in range(count):
        fields = rows[index % len(rows)].split(", ")
        fields[0] = str(index)
        fields[1] = "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim://{address}/gpu/{index}"))
        fields[3] = f"00000000:{(0x18 + 0x10 * index) % 0x100:02X}:00.0"
        out.append(", ".join(fields))
    return "\n".join(out) + "\n@@compute-apps\n@@compute-apps-exit 0\n"


def serving_section(standin: Path, run_dir: Path, gpus: int, load_seconds: float) -> dict[str, Any]:
    """The roles file's ``serving:`` section for the stand-in servers.

    ``STANDIN_STUBBORN: "0"``: every stand-in child obeys SIGTERM, so ``stop-pd``
    is quick; set it to ``"1"`` (or remove it: one child per server ignores
    SIGTERM) to rehearse leftover schedulers that only SIGKILL removes.
    """
    return {
        "engine": "sglang",
        "model_path": "sim/standin-model",
        "python": "python3",
        "run_dir": str(run_dir),
        "env": {"PYTHONPATH": str(standin / "standins"),
                "STANDIN_LOAD_SECONDS": f"{load_seconds:g}", "STANDIN_STUBBORN": "0"},
        "prefill": {"port": 30000, "tp_size": min(gpus, 8)},
        "decode": {"port": 30001, "tp_size": min(gpus, 8)},
    }


# --------------------------------------------------------------------------- up / down


def up(state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR, hosts: int = DEFAULT_HOSTS,
       gpus: int = DEFAULT_GPUS, base: str = DEFAULT_BASE,
       load_seconds: float = DEFAULT_LOAD_SECONDS, timeout: float = START_TIMEOUT_S,
       defects: str | None = None) -> SimState:
    """Start the rehearsal cluster in ``state_dir`` and wait until every sshd listens.

    ``defects`` (``--defects``): give hosts stand-in NICs, RDMA ports and a model copy
    that ``inv preflight`` checks, and break one thing on each named host
    (:func:`cluster.testing.defects.parse_defects`; ``""``: none broken).

    Raises `InputError` (exit 2) without sshd or on bad arguments, `SimError` when
    one is already running there or the start fails (with the supervisor's log).
    """
    check_sshd()
    hosts = check_count(hosts, "--count", 1, MAX_HOSTS)
    gpus = check_count(gpus, "--gpus", 1, MAX_GPUS)
    base = check_base(base)
    chosen = None
    if defects is not None:
        try:
            chosen = defect_kit.parse_defects(defects, address_range(base, 1, hosts))
        except ValueError as exc:
            raise InputError(f"--defects: {exc}") from None
    directory = Path(state_dir).expanduser().resolve()
    current = status(directory)
    if current is not None:
        raise SimError(f"a rehearsal cluster already runs from {directory} "
                       f"({len(current.addresses)} hosts {current.folded}, supervisor pid "
                       f"{current.supervisor_pid}): `inv sim-down` first")
    down(directory)  # leftovers of a crashed one (no-op when there are none)
    check_addresses_free(address_range(base, 1, hosts))
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / SUPERVISOR_LOG
    argv = [sys.executable, "-m", "cluster.testing.sim", "serve", str(directory),
            "--hosts", str(hosts), "--gpus", str(gpus), "--base", base,
            "--load-seconds", f"{load_seconds:g}"]
    if chosen is not None:
        argv += ["--defects", json.dumps(chosen)]
    env = dict(os.environ)
    package_root = str(_TESTING.parent.parent)  # so `-m cluster.testing.sim` imports from any cwd
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                cwd=directory, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = SimState.load(directory)
        if state is not None and state.supervisor_pid == proc.pid:
            return state
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    tail = "\n  ".join(_read(log).strip().splitlines()[-15:])
    raise SimError(f"the rehearsal cluster did not start (log {log}):\n  {tail}")


def status(state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR) -> SimState | None:
    """The running rehearsal cluster of ``state_dir``, or None (none, or its supervisor is gone)."""
    state = SimState.load(Path(state_dir).expanduser())
    if state is None or not _is_supervisor(state.supervisor_pid, state.state_dir):
        return None
    return state


def down(state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR, timeout: float = 20.0) -> DownResult:
    """Stop the rehearsal cluster of ``state_dir`` and remove its files. Idempotent.

    Only pids recorded in ``state.json`` are signalled, and only while their command
    line is still ours; then every process that carries this cluster's
    ``CLUSTER_SIM_ROOT`` (servers started through it, even detached ones) is killed.
    """
    directory = Path(state_dir).expanduser().resolve()
    state = SimState.load(directory)
    result = DownResult(str(directory), was_running=False)
    if state is not None:
        result.was_running = _is_supervisor(state.supervisor_pid, str(directory))
        if result.was_running:
            _signal(state.supervisor_pid, signal.SIGTERM)
            result.stopped.append(state.supervisor_pid)
            _wait_gone([state.supervisor_pid], timeout)
            if _alive(state.supervisor_pid):
                _signal(state.supervisor_pid, signal.SIGKILL)
        for pid in state.sshd_pids:  # normally gone with the supervisor already
            if _alive(pid) and _is_our_sshd(pid, directory):
                _signal(pid, signal.SIGKILL)
                result.stopped.append(pid)
        result.swept = _sweep(directory, state.user)
    for name in (STATE_FILE, "roles.yaml", "deployments", "fleet", SUPERVISOR_LOG):
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            result.removed.append(str(path))
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
            result.removed.append(str(path))
    try:
        directory.rmdir()  # only when nothing else was kept in it
        result.removed.append(str(directory))
    except OSError:
        pass
    return result


def _sweep(directory: Path, user: str) -> list[int]:
    marker = str(directory / "fleet" / "hosts") + os.sep
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return []
    return kill_processes_of(uid, marker)


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_supervisor(pid: int, state_dir: str) -> bool:
    """True when ``pid`` is (still) the supervisor of ``state_dir`` (not a reused pid)."""
    argv = _cmdline(pid)
    return "cluster.testing.sim" in argv and "serve" in argv and state_dir in argv and _alive(pid)


def _is_our_sshd(pid: int, directory: Path) -> bool:
    return any(str(directory) in part for part in _cmdline(pid))


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# --------------------------------------------------------------------------- supervisor


def serve(state_dir: str | os.PathLike[str], hosts: int, gpus: int, base: str,
          load_seconds: float, defects: dict[str, str] | None = None) -> int:
    """The supervisor: start the fleet, write ``state.json``, wait for SIGTERM, stop the fleet."""
    directory = Path(state_dir).resolve()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal is no reason to stop
    addresses = address_range(base, 1, hosts)
    fleet = Fleet(directory / "fleet", count=hosts, base=base, specials=False,
                  port=_ssh_port(addresses), sshd_path=sshd_path(), die_with_parent=True)
    try:
        fleet.start()
        state = _prepare(fleet, directory, gpus, load_seconds, defects)
        print(f"rehearsal cluster up: {state.folded} port {state.port}", flush=True)
        state.save()
        while not done.wait(1.0):
            if not fleet.sshd_pids:
                print("every sshd exited: stopping", flush=True)
                break
        return 0
    finally:
        fleet.stop()
        (directory / STATE_FILE).unlink(missing_ok=True)
        print("rehearsal cluster stopped", flush=True)


def _ssh_port(addresses: list[str]) -> int:
    """A random free port for the sshd processes that is none of the servers' ports."""
    for _ in range(20):
        port = pick_port(addresses)
        if port not in _SERVING_PORTS:
            return port
    raise FleetError("no free SSH port found for the rehearsal cluster")


def _prepare(fleet: Fleet, directory: Path, gpus: int, load_seconds: float,
             defects: dict[str, str] | None = None) -> SimState:
    """Stand-ins, GPU rows, run dir and roles file for a started fleet; the state to record."""
    standin = _copy_standins(fleet.workdir / "standin")
    template = (standin / "fixtures" / "gpu" / "h100-idle.txt").read_text()
    login = pwd.getpwnam(fleet.user)
    for address in fleet.addresses:
        host_dir = fleet.host_dir(address)
        for tool in ("nvidia-smi", "sglang", "vllm"):
            link = host_dir / "bin" / tool
            link.unlink(missing_ok=True)
            link.symlink_to(standin / "bin" / tool)
        rows = host_dir / "gpus.txt"
        rows.write_text(gpu_rows(address, gpus, template))
        rows.chmod(0o644)
        (host_dir / "gpu-state").write_text(f"{rows}\n")
        (host_dir / "gpu-state").chmod(0o644)
    run_dir = fleet.workdir / "run"
    run_dir.mkdir(exist_ok=True)
    os.chown(run_dir, login.pw_uid, login.pw_gid)
    run_dir.chmod(0o755)
    deployments = directory / "deployments"
    deployments.mkdir(exist_ok=True)
    roles = plan_roles(fleet.addresses)
    serving = serving_section(standin, run_dir, gpus, load_seconds)
    if defects is not None:
        serving = _rehearse_preflight(fleet, serving, roles, defects)
    roles_file = fleet.write_roles(directory / "roles.yaml", roles, extra={"serving": serving})
    return SimState(state_dir=str(directory), supervisor_pid=os.getpid(),
                    sshd_pids=fleet.sshd_pids, addresses=list(fleet.addresses),
                    port=int(fleet.port or 0), user=fleet.user, gpus=gpus, roles=roles,
                    roles_file=str(roles_file), deployments_dir=str(deployments),
                    fleet_dir=str(fleet.workdir), started_at=time.time(), defects=dict(defects or {}))


# Listening sockets of the ``port`` defect, held for the supervisor's lifetime.
_HELD_PORTS: list[socket.socket] = []


def _rehearse_preflight(fleet: Fleet, serving: dict[str, Any], roles: dict[str, list[str]],
                        defects: dict[str, str]) -> dict[str, Any]:
    """Stand-in roots on every host, the defects applied, and the serving section that
    makes preflight check them (cluster/testing/defects.py)."""
    env_file = defect_kit.write_env_file(fleet.workdir / "env.sh")
    for index, address in enumerate(fleet.addresses):
        defect_kit.prepare_host(fleet.host_dir(address), index)
    for address, defect in defects.items():
        if defect == "port":
            role = "decode" if address in roles["decode"] else "prefill"
            _HELD_PORTS.append(defect_kit.hold_port(address, serving[role]["port"]))
        else:
            host_dir = fleet.host_dir(address)
            defect_kit.apply(host_dir, defect, gpu_fixture=host_dir / "gpus.txt")
    return defect_kit.serving_settings(serving, env_file)


def _copy_standins(target: Path) -> Path:
    """Copy the stand-in tools, servers and GPU fixtures where the login user can read them.

    The package may be installed under a home the login user cannot enter (root's
    pyenv); the copy keeps the layout the tools expect (bin/ next to
    standin_server.py, fixtures/gpu, standins/sglang).
    """
    shutil.rmtree(target, ignore_errors=True)
    (target / "bin").mkdir(parents=True)
    for tool in ("nvidia-smi", "sglang", "vllm"):
        shutil.copy2(_TESTING / "bin" / tool, target / "bin" / tool)
        (target / "bin" / tool).chmod(0o755)
    shutil.copy2(_TESTING / "standin_server.py", target / "standin_server.py")
    shutil.copytree(_TESTING / "standins", target / "standins",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(_TESTING / "fixtures" / "gpu", target / "fixtures" / "gpu")
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m cluster.testing.sim serve DIR --hosts N --gpus G --base B --load-seconds S``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cluster.testing.sim")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the supervisor in the foreground (sim-up does this)")
    run.add_argument("state_dir")
    run.add_argument("--hosts", type=int, default=DEFAULT_HOSTS)
    run.add_argument("--gpus", type=int, default=DEFAULT_GPUS)
    run.add_argument("--base", default=DEFAULT_BASE)
    run.add_argument("--load-seconds", type=float, default=DEFAULT_LOAD_SECONDS)
    run.add_argument("--defects", type=json.loads, default=None, help="JSON {address: defect}")
    args = parser.parse_args(argv)
    return serve(args.state_dir, args.hosts, args.gpus, args.base, args.load_seconds, args.defects)


if __name__ == "__main__":
    sys.exit(main())
