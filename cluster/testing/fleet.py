"""A loopback test fleet: real OpenSSH sshd processes on 127.x addresses.

Used by the integration tests, the benchmarks and (later) a user-facing
rehearsal cluster. Nothing here is on the code path used against real hosts.

Layout under ``workdir``::

    keys/client_ed25519          the client's private key (fleet.key_file)
    keys/authorized_keys         what every good sshd accepts
    keys/known_hosts             client known_hosts (pre-seeded for "badkey")
    sshd/<name>/sshd_config      one directory per sshd process, with its
    sshd/<name>/host_ed25519     own host key and its own log (-E)
    sshd/<name>/log
    hosts/<address>/bin/         first on the remote PATH for that address
    hosts/<address>/root/        $CLUSTER_PREFLIGHT_ROOT: the host's own sysfs / model copy
    hosts/<address>/home/        SFTP's start directory for that address
                                 (only with ``sftp_home_per_host``)
    roles.yaml                   a roles file for the good hosts

Per-address environment comes from ``Match LocalAddress`` + ``SetEnv`` in the
sshd config, so one sshd can serve several addresses that still look like
different hosts. ``SetEnv PATH=...`` wins for exec sessions (what Fabric
runs: ``$SHELL -c CMD``), checked on OpenSSH 9.2p1 / Debian 12. A *login*
shell (``bash -lc``) re-reads /etc/profile, which resets PATH; a guarded line
in the dedicated user's ~/.profile puts ``$CLUSTER_SIM_ROOT/bin`` back first.

When run as root, sessions log in as a dedicated user ``clustertest`` with a
clean home (root's rc files are slow and noisy on these machines); otherwise
as the current user, on a high port.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ClusterError
from ..hosts import fold_names

SSHD = Path("/usr/sbin/sshd")
TEST_USER = "clustertest"
MAX_LISTEN_PER_SSHD = 16  # OpenSSH's MAX_LISTEN_SOCKS
SPECIAL_NAMES = ("refused", "tarpit", "badkey", "denied")
_HIGH_PORTS = (20000, 32000)  # below the kernel's ephemeral range (32768-60999)


class FleetError(ClusterError):
    """The fleet could not be set up or started; the message says why and how to fix it."""


class _PortInUse(FleetError):
    """An sshd could not bind the chosen port (another fleet won the race)."""


@dataclass
class _Server:
    """One listening process: an sshd serving some addresses, or the tarpit."""

    name: str
    addresses: list[str]
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "log"

    @property
    def stderr(self) -> Path:
        return self.directory / "stderr"


class Fleet:
    """Real sshd processes on loopback addresses, one host key per process.

    ``count`` good hosts start at ``base + start`` (``127.0.1.1`` ...) and
    continue across octets (``127.1.0.254`` is followed by ``127.1.1.1``),
    all on one shared port. ``specials`` adds four misbehaving hosts on
    ``special_base`` 1-4 (see :attr:`special`). ``hosts_per_sshd`` > 1 makes
    one sshd serve several addresses (at most 16, OpenSSH's listen cap).

    Every host shares this machine's file system. With ``sftp_home_per_host``
    each host's SFTP server starts in its own ``host_dir(address)/home``, so
    relative SFTP paths land in a different directory per host, as they would
    on separate machines (one sshd per host; remote *commands* still start in
    the login user's real home).

    Processes are started from the calling thread and, with
    ``die_with_parent``, get SIGTERM when that thread's process dies, so a
    killed test run leaves no sshd behind. Call :meth:`start` from a thread
    that outlives the fleet (Linux ties the signal to the starting thread).
    """

    def __init__(self, workdir: Path, count: int = 8, base: str = "127.0.1.", start: int = 1,
                 port: int | None = None, specials: bool = True, hosts_per_sshd: int = 1, *,
                 special_base: str = "127.0.2.", sshd_path: Path = SSHD,
                 start_timeout: float = 30.0, die_with_parent: bool = True,
                 sftp_home_per_host: bool = False, session_env: dict[str, str] | None = None,
                 sshd_options: Iterable[str] = ()) -> None:
        self.workdir = Path(workdir).resolve()
        self.count, self.base, self.start_at = count, base, start
        self.port, self._fixed_port = port, port is not None
        self.specials, self.special_base = specials, special_base
        self.hosts_per_sshd = max(1, min(hosts_per_sshd, MAX_LISTEN_PER_SSHD))
        self.sshd_path, self.start_timeout = Path(sshd_path), start_timeout
        self.die_with_parent = die_with_parent
        if sftp_home_per_host and self.hosts_per_sshd != 1:
            raise FleetError("sftp_home_per_host needs one sshd per host (hosts_per_sshd=1)")
        self.sftp_home_per_host = sftp_home_per_host
        self.extra_env = dict(session_env or {})  # e.g. HOME: a home whose ~/.bashrc prints banners
        self.sshd_options = list(sshd_options)  # first in sshd_config: they win (e.g. stock MaxStartups)
        self.user = ""
        self.addresses = address_range(base, start, count)
        self.special = special_addresses(special_base) if specials else {}
        overlap = set(self.addresses) & set(self.special.values())
        if overlap:
            raise FleetError(f"special hosts overlap the good hosts: {fold_names(sorted(overlap))}")
        self._servers: list[_Server] = []
        self._server_of: dict[str, _Server] = {}  # address -> the sshd serving it
        self._host_keys: dict[str, str] = {}  # server name -> public host key line
        self._seed = ""  # known_hosts content at start: the wrong key for "badkey"

    # ----------------------------------------------------------------- paths
    @property
    def key_file(self) -> Path:
        """The ed25519 private key the client logs in with."""
        return self.workdir / "keys" / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        """Client known_hosts: empty, or holding a wrong key for the "badkey" host."""
        return self.workdir / "keys" / "known_hosts"

    @property
    def roles_file(self) -> Path:
        """roles.yaml with one role ``all`` = the good hosts, and the ssh settings."""
        return self.workdir / "roles.yaml"

    def host_dir(self, address: str) -> Path:
        """Per-host directory; its ``bin/`` is first on the remote PATH of ``address``."""
        return self.workdir / "hosts" / address

    def sftp_home(self, address: str) -> Path:
        """Where relative SFTP paths of ``address`` start (``sftp_home_per_host`` fleets)."""
        return self.host_dir(address) / "home"

    def session_pids(self, address: str) -> list[int]:
        """The processes of every open SSH session on ``address`` (its sshd's descendants).

        Killing them is a host that dies mid-transfer while its sshd keeps
        listening. With several addresses per sshd, those share the sessions.
        """
        server = self._server_of.get(address)
        if server is None or server.proc is None:
            raise FleetError(f"{address} is not served by a running sshd of this fleet")
        return descendants([server.proc.pid])

    @property
    def sshd_pids(self) -> list[int]:
        """PIDs of the running sshd listeners (tarpit excluded)."""
        return [s.proc.pid for s in self._servers
                if s.proc and s.proc.poll() is None and s.name != "tarpit"]

    @property
    def served_addresses(self) -> list[str]:
        """Every address a real sshd listens on: good hosts, then badkey/denied."""
        return [a for s in self._servers if s.name != "tarpit" for a in s.addresses]

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Fleet:
        """Create keys, user and configs, start every sshd (and the tarpit), wait until they listen.

        Raises :class:`FleetError` with the failing sshd's log tail when one does not come up.
        """
        if self._servers:
            return self
        if not self.sshd_path.is_file():
            raise FleetError("OpenSSH server not found: apt-get install openssh-server "
                             f"(expected {self.sshd_path})")
        self.user = ensure_login_user()
        self._prepare_files()
        for _ in range(5):
            if not self._fixed_port:
                self.port = pick_port(self._all_addresses())
            try:
                self._launch()
                return self
            except _PortInUse:
                # Another fleet bound the port between our check and sshd's bind.
                self.stop()
                if self._fixed_port:
                    raise
            except BaseException:
                self.stop()
                raise
        raise FleetError("could not find a port free on every fleet address after 5 tries")

    def stop(self) -> None:
        """Kill every sshd (with its connection and session processes) and the tarpit. Idempotent.

        Detached leftovers of this fleet's sessions (``setsid`` servers) are
        swept too when the login user is the dedicated one.
        """
        servers, self._servers = self._servers, []
        running = [s.proc for s in servers if s.proc is not None and s.proc.poll() is None]
        doomed = descendants([p.pid for p in running])
        for proc in running:
            _signal(proc.pid, signal.SIGTERM)
        for pid in doomed:
            _signal(pid, signal.SIGKILL)
        for proc in running:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._server_of = {}
        if servers:
            self.kill_user_processes()

    # ------------------------------------------------------------ inspection
    def connection_count(self, address: str) -> int:
        """SSH connections that authenticated on ``address`` so far (from its sshd's log)."""
        return count_accepted(self.sshd_log(address)).get(address, 0)

    def sshd_log(self, address: str) -> str:
        """The log of the sshd serving ``address`` (shared with the other addresses it serves)."""
        server = self._server_of.get(address)
        if server is None:
            raise FleetError(f"{address} is not served by a running sshd of this fleet")
        return _read(server.log)

    def host_key_line(self, address: str) -> str:
        """A known_hosts line with the real host key of ``address`` (for strict-policy tests)."""
        server = self._server_of.get(address)
        if server is None or server.name not in self._host_keys:
            raise FleetError(f"{address} is not served by a running sshd of this fleet")
        return f"{known_hosts_name(address, self.port or 22)} {self._host_keys[server.name]}"

    def write_known_hosts(self, path: Path, addresses: Iterable[str] = ()) -> Path:
        """Write a known_hosts as it was at start, plus the real keys of ``addresses``.

        The session fleet's own known_hosts fills up as tests accept new keys;
        tests that need a pristine or fully known file write their own.
        """
        lines = [self._seed] + [self.host_key_line(a) + "\n" for a in addresses]
        path = Path(path)
        path.write_text("".join(lines))
        return path

    def ssh_command(self, address: str) -> list[str]:
        """An OpenSSH client command line that logs in to ``address`` (handy when debugging)."""
        return ["ssh", "-i", str(self.key_file), "-p", str(self.port),
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes",
                f"{self.user}@{address}"]

    # ------------------------------------------------------------ test helpers
    def install(self, address: str | Iterable[str], name: str, text: str) -> list[Path]:
        """Write an executable ``name`` into ``host_dir(address)/bin`` on one or more hosts."""
        addresses = [address] if isinstance(address, str) else list(address)
        paths = []
        for addr in addresses:
            path = self.host_dir(addr) / "bin" / name
            path.write_text(text)
            path.chmod(0o755)
            paths.append(path)
        return paths

    def write_roles(self, path: Path, roles: Mapping[str, str | list[str]],
                    extra: dict[str, Any] | None = None) -> Path:
        """Write a roles.yaml for this fleet with the given roles.

        ``extra`` adds top-level sections (``serving:`` ...); an ``ssh`` entry
        in it updates the fleet's ssh settings instead of replacing them.
        """
        doc: dict[str, Any] = {"ssh": self.ssh_settings(), "roles": dict(roles)}
        for key, value in (extra or {}).items():
            if key == "ssh" and isinstance(value, dict):
                doc["ssh"].update(value)
            else:
                doc[key] = value
        path = Path(path)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def ssh_settings(self) -> dict[str, Any]:
        """The ``ssh:`` section of this fleet's roles files."""
        return {"user": self.user, "port": self.port, "key_filename": str(self.key_file),
                "known_hosts": str(self.known_hosts), "host_key_policy": "accept-new",
                "connect_timeout": 5, "ssh_config": str(self.ssh_config)}

    @property
    def ssh_config(self) -> Path:
        """The client ssh_config of this fleet's roles files: empty, so the machine's
        /etc/ssh/ssh_config (e.g. Debian's HashKnownHosts yes) does not leak into tests."""
        return self.workdir / "ssh_config"

    def kill_user_processes(self, everything: bool = False) -> list[int]:
        """SIGKILL the login user's processes left by tests (servers started in sessions).

        Only for the dedicated ``clustertest`` user, never the current user.
        By default only processes started under this fleet (their environment
        holds ``CLUSTER_SIM_ROOT`` inside this workdir), so another test run
        sharing the user is left alone; ``everything=True`` kills them all.
        """
        if self.user != TEST_USER or pwd.getpwuid(os.getuid()).pw_name == TEST_USER:
            return []
        marker = None if everything else str(self.workdir / "hosts") + os.sep
        return kill_processes_of(pwd.getpwnam(self.user).pw_uid, marker)

    # -------------------------------------------------------------- internals
    def _all_addresses(self) -> list[str]:
        return self.addresses + list(self.special.values())

    def _prepare_files(self) -> None:
        """Keys, authorized_keys, host dirs and permissions; no process started yet."""
        keys = self.workdir / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        client_public = write_keypair(self.key_file)
        (keys / "authorized_keys").write_text(client_public + "\n")
        (keys / "denied_authorized_keys").write_text(new_public_key() + "\n")
        self.known_hosts.write_text("")
        self.ssh_config.write_text("")
        login = pwd.getpwnam(self.user)
        homes = [self.sftp_home(a) for a in self.addresses] if self.sftp_home_per_host else []
        for address in self._all_addresses():
            (self.host_dir(address) / "bin").mkdir(parents=True, exist_ok=True)
        for home in homes:
            home.mkdir(exist_ok=True)
        if login.pw_uid != os.getuid():
            # The login user must reach authorized_keys and the host dirs.
            open_path_for_others(self.workdir)
            for path in (self.workdir, keys, self.workdir / "hosts"):
                path.chmod(0o755)
            (keys / "authorized_keys").chmod(0o644)
            (keys / "denied_authorized_keys").chmod(0o644)
            for address in self._all_addresses():
                for path in (self.host_dir(address), self.host_dir(address) / "bin"):
                    os.chown(path, login.pw_uid, login.pw_gid)
                    path.chmod(0o755)
            for home in homes:
                os.chown(home, login.pw_uid, login.pw_gid)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privsep dir sshd insists on

    def _plan(self) -> list[_Server]:
        sshd_root = self.workdir / "sshd"
        servers = [
            _Server(f"sshd-{i // self.hosts_per_sshd:04d}",
                    self.addresses[i:i + self.hosts_per_sshd],
                    sshd_root / f"sshd-{i // self.hosts_per_sshd:04d}")
            for i in range(0, len(self.addresses), self.hosts_per_sshd)
        ]
        if self.special:
            servers += [_Server(name, [self.special[name]], sshd_root / name)
                        for name in ("badkey", "denied")]
            servers.append(_Server("tarpit", [self.special["tarpit"]], sshd_root / "tarpit"))
        return servers

    def _listen_port(self) -> int:
        """The port of this start (given, or picked by `start` before launching)."""
        if self.port is None:
            raise FleetError("no port yet: the fleet is not started")
        return self.port

    def _launch(self) -> None:
        servers = self._plan()
        self._servers = servers
        for server in servers:
            server.directory.mkdir(parents=True, exist_ok=True)
            server.log.write_text("")
            if server.name == "tarpit":
                argv = [sys.executable, str(Path(__file__).with_name("tarpit.py")),
                        server.addresses[0], str(self.port), str(server.log)]
            else:
                argv = self._sshd_argv(server)
            if self.die_with_parent:
                argv = with_death_signal(argv)
            with open(server.stderr, "wb") as err:
                server.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                               stdout=err, stderr=err)
        wait_listening(servers, self._listen_port(), self.start_timeout)
        self._server_of = {a: s for s in servers if s.name != "tarpit" for a in s.addresses}
        self._seed_known_hosts()
        self.write_roles(self.roles_file, {"all": fold_names(self.addresses)})

    def _sshd_argv(self, server: _Server) -> list[str]:
        host_key = server.directory / "host_ed25519"
        self._host_keys[server.name] = write_keypair(host_key)
        authorized = self.workdir / "keys" / (
            "denied_authorized_keys" if server.name == "denied" else "authorized_keys")
        envs = {a: self._session_env(a) for a in server.addresses}
        sftp_dir = self.sftp_home(server.addresses[0]) if self.sftp_home_per_host else None
        config = sshd_config(server.addresses, self._listen_port(), host_key, authorized, envs,
                             sshd_version(self.sshd_path), sftp_dir=sftp_dir, first=self.sshd_options)
        (server.directory / "sshd_config").write_text(config)
        return self._sshd_command(server)

    def _sshd_command(self, server: _Server) -> list[str]:
        config_path = server.directory / "sshd_config"
        return [str(self.sshd_path), "-D", "-f", str(config_path), "-E", str(server.log)]

    def restart_sshd(self, address: str) -> None:
        """Kill the sshd serving ``address`` with its sessions, start it again (same port,
        same host key) and wait until it listens: the SSH side of a host that rebooted
        (the test kills whatever else the "reboot" should take)."""
        server = self._server_of.get(address)
        if server is None or server.proc is None:
            raise FleetError(f"{address} is not served by a running sshd of this fleet")
        doomed = descendants([server.proc.pid])
        _signal(server.proc.pid, signal.SIGTERM)
        for pid in doomed:
            _signal(pid, signal.SIGKILL)
        server.proc.wait(timeout=5)
        server.log.write_text("")  # a fresh "listening" line to wait for (connection counts restart)
        argv = self._sshd_command(server)
        if self.die_with_parent:
            argv = with_death_signal(argv)
        with open(server.stderr, "ab") as err:
            server.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        wait_listening([server], self.port or 22, self.start_timeout)

    def _session_env(self, address: str) -> dict[str, str]:
        root = self.host_dir(address)
        # CLUSTER_PREFLIGHT_ROOT: where inv preflight reads this host's sysfs and model
        # copy (cluster/preflight/probe.py), so each address can have its own.
        return {"PATH": f"{root / 'bin'}:/usr/local/bin:/usr/bin:/bin",
                "CLUSTER_SIM_HOST": address, "CLUSTER_SIM_ROOT": str(root),
                "CLUSTER_PREFLIGHT_ROOT": str(root / "root"), **self.extra_env}

    def _seed_known_hosts(self) -> None:
        """Record a key that is *not* badkey's real one, so connecting to it is a changed key."""
        if "badkey" in self.special:
            name = known_hosts_name(self.special["badkey"], self._listen_port())
            self._seed = f"{name} {new_public_key()}\n"
        self.known_hosts.write_text(self._seed)


# ------------------------------------------------------------------ pure helpers
def address_range(base: str, start: int, count: int) -> list[str]:
    """``count`` IPv4 addresses from ``base+start`` upwards, skipping x.x.x.0 and x.x.x.255."""
    try:
        current = ipaddress.IPv4Address(f"{base}{start}")
    except ValueError:
        raise FleetError(f"bad fleet address {base}{start!s}") from None
    out: list[str] = []
    while len(out) < count:
        if not current.is_loopback:
            raise FleetError(f"fleet address {current} is not loopback (127.0.0.0/8 only)")
        if current.packed[-1] not in (0, 255):
            out.append(str(current))
        current += 1
    return out


def special_addresses(base: str) -> dict[str, str]:
    """The four special hosts on ``base`` 1-4, in :data:`SPECIAL_NAMES` order."""
    return dict(zip(SPECIAL_NAMES, address_range(base, 1, len(SPECIAL_NAMES))))


def known_hosts_name(address: str, port: int) -> str:
    """How OpenSSH/paramiko spell a host in known_hosts: bare on port 22, else ``[a]:p``."""
    return address if port == 22 else f"[{address}]:{port}"


def sshd_config(addresses: list[str], port: int, host_key: Path, authorized_keys: Path,
                envs: dict[str, dict[str, str]], version: tuple[int, int] = (9, 2),
                sftp_dir: Path | None = None, first: Iterable[str] = ()) -> str:
    """The sshd_config text for one sshd serving ``addresses`` with a per-address environment.

    ``sftp_dir``: the SFTP server's start directory (``internal-sftp -d``)
    instead of the login user's home.
    """
    if sftp_dir is not None and any(c.isspace() or c in "%\"" for c in str(sftp_dir)):
        raise FleetError(f"path not usable as an sftp start directory: {str(sftp_dir)!r}")
    for value in [str(host_key), str(authorized_keys)] + [
            v for env in envs.values() for v in env.values()]:
        if '"' in value or "\n" in value:
            raise FleetError(f"path not usable in sshd_config: {value!r}")
    lines = list(first) + [f"ListenAddress {a}:{port}" for a in addresses] + [
        f"HostKey {host_key}",
        "PidFile none",
        "StrictModes no",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        f'AuthorizedKeysFile "{authorized_keys}"',
        # Benchmarks open 64+ connections at once per sshd.
        "MaxStartups 1000:30:1000",
        "MaxSessions 100",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "LogLevel VERBOSE",
        # Fabric's put/get, inv put/get
        "Subsystem sftp internal-sftp" + (f" -d {sftp_dir}" if sftp_dir is not None else ""),
    ]
    if version >= (9, 8):
        # Our deliberate auth failures must not get 127.0.0.1 penalised for later tests.
        lines.append("PerSourcePenalties no")
    for address in addresses:
        pairs = " ".join(f'"{k}={v}"' for k, v in envs[address].items())
        lines += [f"Match LocalAddress {address}", f"    SetEnv {pairs}"]
    return "\n".join(lines) + "\n"


_CONNECTION = re.compile(r"Connection from (\S+) port (\d+) on (\S+) port \d+")
_ACCEPTED = re.compile(r"Accepted publickey for \S+ from (\S+) port (\d+) ")


def count_accepted(log_text: str) -> dict[str, int]:
    """Authenticated connections per local address, from an sshd VERBOSE log.

    "Accepted" lines name only the client's address and port, so each is tied
    to a "Connection from" line with that client address and port that no
    accept has claimed yet, the latest first. Linux may give two live
    connections to different local addresses the same source port, so that
    pair is not a unique key: the latest line alone would count one host twice
    and the other not at all. Whichever of two such connections authenticates
    first, both are counted once each.
    """
    waiting: dict[tuple[str, str], list[str]] = {}
    counts: dict[str, int] = {}
    for line in log_text.splitlines():
        if match := _CONNECTION.search(line):
            waiting.setdefault((match[1], match[2]), []).append(match[3])
        elif match := _ACCEPTED.search(line):
            if unclaimed := waiting.get((match[1], match[2])):
                local = unclaimed.pop()
                counts[local] = counts.get(local, 0) + 1
    return counts


# ------------------------------------------------------------- system helpers
def ensure_login_user() -> str:
    """The login user: ``clustertest`` (created if needed) when root, else the current user."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.getuid()).pw_name
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        result = _run(["useradd", "-m", "-s", "/bin/bash", TEST_USER])
        if result.returncode != 0 and not _user_exists(TEST_USER):  # lost a race: fine
            raise FleetError(f"useradd {TEST_USER} failed: {result.stderr.strip()}") from None
    if _account_locked(TEST_USER):
        # Without PAM, sshd refuses accounts whose password field starts with "!".
        for _ in range(5):
            if _run(["usermod", "-p", "*", TEST_USER]).returncode == 0:
                break
            time.sleep(0.2)  # /etc/passwd lock held by a concurrent run
        if _account_locked(TEST_USER):
            raise FleetError(f"could not unlock user {TEST_USER}: usermod -p '*' {TEST_USER}")
    ensure_profile_hook(TEST_USER)
    return TEST_USER


PROFILE_HOOK = (
    "# cluster.testing: login shells reset PATH in /etc/profile; keep the fleet host's bin first\n"
    'if [ -n "$CLUSTER_SIM_ROOT" ]; then PATH="$CLUSTER_SIM_ROOT/bin:$PATH"; fi\n'
)


def ensure_profile_hook(user: str) -> None:
    """Append :data:`PROFILE_HOOK` to the dedicated user's ~/.profile once (login shells)."""
    entry = pwd.getpwnam(user)
    profile = Path(entry.pw_dir) / ".profile"
    text = _read(profile)
    if PROFILE_HOOK not in text:
        with open(profile, "a") as handle:
            handle.write(("\n" if text and not text.endswith("\n") else "") + PROFILE_HOOK)
        os.chown(profile, entry.pw_uid, entry.pw_gid)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _account_locked(name: str) -> bool:
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields[1].startswith("!")
    return False


def new_public_key() -> str:
    """A fresh ed25519 public key line whose private half is thrown away."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH,
                               serialization.PublicFormat.OpenSSH).decode()


def write_keypair(path: Path) -> str:
    """Write a new ed25519 key in OpenSSH format (0600) and ``path.pub``; return the public line.

    Same files as ``ssh-keygen -t ed25519 -N ''``, without a process per key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    Path(f"{path}.pub").write_text(public + "\n")
    return public


def open_path_for_others(path: Path) -> None:
    """Add o+x to ``path`` and its ancestors so another user can traverse to it.

    pytest's /tmp/pytest-of-root is 0700; pytest resets it on its next run.
    """
    for part in [path, *path.parents]:
        mode = part.stat().st_mode
        if not mode & stat.S_IXOTH:
            part.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def pick_port(addresses: list[str]) -> int:
    """A random high port free on every address.

    Not 22: several fleets (parallel test runs, a rehearsal cluster) may share
    the 127.0.1.x addresses, and a random port keeps them from colliding.
    """
    candidates = random.sample(range(*_HIGH_PORTS), 50)
    for port in candidates:
        if all(_bindable(a, port) for a in addresses):
            return port
    raise FleetError(f"no port free on all of {fold_names(addresses)}")


def _bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as sshd does
        try:
            sock.bind((address, port))
            return True
        except OSError:
            return False


def sshd_version(sshd_path: Path) -> tuple[int, int]:
    """(major, minor) of the OpenSSH server, (0, 0) when unknown."""
    result = _run([str(sshd_path), "-V"])
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", result.stderr + result.stdout)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def wait_listening(servers: list[_Server], port: int, timeout: float) -> None:
    """Wait until every server's log says it listens on each of its addresses."""
    deadline = time.monotonic() + timeout
    pending = {s.name: s for s in servers}
    while pending:
        for name, server in list(pending.items()):
            text = _read(server.log)
            if f"Bind to port {port} on " in text and "Address already in use" in text:
                raise _PortInUse(_failure(server, f"port {port} already in use"))
            if all(f"Server listening on {a} port {port}." in text for a in server.addresses):
                del pending[name]
            elif server.proc is None or server.proc.poll() is not None:
                raise FleetError(_failure(server, "exited during startup"))
        if pending and time.monotonic() > deadline:
            server = next(iter(pending.values()))
            raise FleetError(_failure(server, f"not listening after {timeout:.0f} s"))
        if pending:
            time.sleep(0.02)


def _failure(server: _Server, what: str) -> str:
    tail = (_read(server.log) + _read(server.stderr)).strip().splitlines()[-15:]
    return (f"{server.name} on {fold_names(server.addresses)} {what}; "
            f"config {server.directory / 'sshd_config'}; log tail:\n  " + "\n  ".join(tail))


def descendants(roots: list[int]) -> list[int]:
    """All living descendants of ``roots`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat_text.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, queue = [], list(roots)
    while queue:
        for child in children.get(queue.pop(0), []):
            out.append(child)
            queue.append(child)
    return out


def kill_processes_of(uid: int, env_marker: str | None = None) -> list[int]:
    """SIGKILL the processes of ``uid``; with ``env_marker``, only those whose
    ``CLUSTER_SIM_ROOT`` lies under it. Returns the PIDs signalled."""
    killed: list[int] = []
    for _ in range(5):  # a dying session may still fork; sweep until quiet
        marks = {pid: True if env_marker is None else _has_sim_root(pid, env_marker)
                 for pid in _pids_of(uid) if pid != os.getpid()}
        victims = [pid for pid, mark in marks.items() if mark]
        if not victims and None not in marks.values():
            break
        for pid in victims:
            _signal(pid, signal.SIGKILL)
        killed += victims
        time.sleep(0.05)
    return sorted(set(killed))


def _pids_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def _has_sim_root(pid: int, marker: str) -> bool | None:
    """Whether ``pid`` runs under the fleet ``marker``; None while that cannot be told yet:
    a process in the middle of an exec (``setsid nohup CMD &`` is three) shows no
    environment for a moment, so the sweep looks again instead of passing it over."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except FileNotFoundError:
        return False  # gone
    except OSError:
        environ = b""
    if not environ:  # mid-exec, or a zombie (no environment for good: nothing to kill)
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return False
        return False if state in ("Z", "X") else None
    return any(item.startswith(b"CLUSTER_SIM_ROOT=" + marker.encode())
               or item == b"CLUSTER_SIM_ROOT=" + marker.rstrip(os.sep).encode()
               for item in environ.split(b"\0"))


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def with_death_signal(argv: list[str]) -> list[str]:
    """Prefix ``setpriv --pdeathsig TERM`` (util-linux) so the process dies with its starter.

    setpriv execs the command in place, so the PID stays the one Popen returns.
    Without setpriv the command runs as is (a killed test run may then leave it).
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        return subprocess.CompletedProcess(argv, 127, "", str(exc))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
