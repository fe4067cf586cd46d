"""The effective OpenSSH client configuration of each host, as ``ssh`` itself evaluates it.

Where an OpenSSH client is installed, ``ssh -G [-F FILE] [-l USER] [-p PORT] HOST``
is the resolver: it prints OpenSSH's own evaluation (Include, Match, Host
patterns, first-obtained-value-wins, tokens in paths, defaults), so there is no
second implementation of ssh_config semantics to drift from it. One subprocess
per distinct (host, user, port), cached; callers resolve from their worker
threads, so distinct hosts resolve in parallel.

A fleet of 1,000 hosts usually meets the same few ``Host`` blocks: `HostBlocks`
reads the files ``ssh`` would read and sorts hosts by which ``Host`` lines
match them. Hosts alike there (and with the same user and port) go through the
same directives, so after two of them were resolved by ``ssh -G`` the rest are
derived from the first (`_Group`), unless the two samples show a host-dependent
value (a ``%h`` in IdentityFile, say), which sends the group back to one
``ssh -G`` per host. Configs whose evaluation depends on more than ``Host``
lines (``Match``, ``CanonicalizeHostname``) are always resolved host by host.
Without an ``ssh`` binary,
paramiko's parser is the fallback, with ``Include`` expanded first (paramiko
does not know it).

``~`` means ``$HOME`` here as everywhere in this library (Python's rule);
``ssh`` expands it to the passwd entry's home. When the two differ (tests,
sandboxes) the user config is read from ``$HOME/.ssh/config`` and paths that
``ssh -G`` expanded under the passwd home are mapped back under ``$HOME``.

`parse_g` and `host_config` are pure; `Resolver` runs the subprocesses.
"""

from __future__ import annotations

import glob
import io
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from .errors import InputError

SYSTEM_CONFIG = "/etc/ssh/ssh_config"
DEFAULT_IDENTITIES = ("~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ecdsa_sk", "~/.ssh/id_ed25519",
                      "~/.ssh/id_ed25519_sk", "~/.ssh/id_xmss", "~/.ssh/id_dsa")
# Keys that may appear several times in `ssh -G` output; every other key has one value.
_MULTI = frozenset({"identityfile", "certificatefile", "localforward", "remoteforward",
                    "dynamicforward", "sendenv", "setenv"})
_RESOLVE_TIMEOUT_S = 10.0


class SSHConfigError(InputError):
    """The ssh_config cannot be evaluated (``ssh -G`` refused it): bad input, exit 2."""


@dataclass(frozen=True)
class HostConfig:
    """What the library takes from one host's effective ssh_config (`ssh -G` keys, honoured)."""

    alias: str  # the name as given (``%n``)
    hostname: str
    user: str
    port: int
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    identity_agent: str | None = None  # None: $SSH_AUTH_SOCK; "none": no agent
    certificate_files: tuple[str, ...] = ()
    proxy_jump: str | None = None  # None also for ``ProxyJump none``
    proxy_command: str | None = None  # tokens not expanded yet (see connect.expand_tokens)
    connect_timeout: float | None = None
    server_alive_interval: int = 0
    server_alive_count_max: int = 3
    forward_agent: bool = False
    user_known_hosts: tuple[str, ...] = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
    global_known_hosts: tuple[str, ...] = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
    host_key_alias: str | None = None
    strict_host_key_checking: str = "ask"
    hash_known_hosts: bool = False
    check_host_ip: bool = False


def parse_g(text: str) -> dict[str, list[str]]:
    """``ssh -G`` output -> lower-case key -> values (in order; one for single-valued keys)."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if not key:
            continue
        key = key.lower()
        if key in _MULTI:
            values.setdefault(key, []).append(value.strip())
        else:
            values.setdefault(key, [value.strip()])  # first value wins, as in ssh
    return values


def _yes(value: str | None) -> bool:
    return (value or "").lower() in ("yes", "true")


def _none(value: str | None) -> str | None:
    return None if value is None or value.lower() == "none" else value


def host_config(alias: str, values: dict[str, list[str]], home_map: tuple[str, str] | None = None) -> HostConfig:
    """A `HostConfig` from ``ssh -G``-style values (also what the paramiko fallback produces)."""
    def one(key: str, default: str | None = None) -> str | None:
        got = values.get(key)
        return got[0] if got else default

    def paths(text: str | None) -> tuple[str, ...]:
        return tuple(_map_home(p, home_map) for p in (text or "").split())

    timeout = _none(one("connecttimeout"))
    return HostConfig(
        alias=alias,
        hostname=one("hostname", alias) or alias,
        user=one("user") or _local_user(),
        port=int(one("port", "22") or 22),
        identity_files=tuple(_map_home(p, home_map) for p in values.get("identityfile", [])),
        identities_only=_yes(one("identitiesonly")),
        identity_agent=one("identityagent"),
        certificate_files=tuple(_map_home(p, home_map) for p in values.get("certificatefile", [])),
        proxy_jump=_none(one("proxyjump")),
        proxy_command=_none(one("proxycommand")),
        connect_timeout=float(timeout) if timeout else None,
        server_alive_interval=int(one("serveraliveinterval", "0") or 0),
        server_alive_count_max=int(one("serveralivecountmax", "3") or 3),
        forward_agent=_yes(one("forwardagent")),
        user_known_hosts=paths(one("userknownhostsfile", " ".join(HostConfig.user_known_hosts))),
        global_known_hosts=paths(one("globalknownhostsfile", " ".join(HostConfig.global_known_hosts))),
        host_key_alias=_none(one("hostkeyalias")),
        strict_host_key_checking=(one("stricthostkeychecking", "ask") or "ask").lower(),
        hash_known_hosts=_yes(one("hashknownhosts")),
        check_host_ip=_yes(one("checkhostip")),
    )


def _map_home(path: str, home_map: tuple[str, str] | None) -> str:
    """A path ssh expanded under the passwd home, moved under ``$HOME`` (see the module doc)."""
    if home_map and (path == home_map[0] or path.startswith(home_map[0] + "/")):
        return home_map[1] + path[len(home_map[0]):]
    return path


def _local_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER", "root")


class Resolver:
    """Effective config per (host, user, port), cached; ``config_file`` is ``ssh -F`` (None: the defaults).

    ``group``: derive the configs of hosts that the files treat alike (see the module doc);
    False runs one ``ssh -G`` per host.
    """

    def __init__(self, config_file: str | None = None, ssh_path: str | None = None, group: bool = True) -> None:
        self.config_file = str(Path(config_file).expanduser()) if config_file else None
        if self.config_file and not Path(self.config_file).is_file():
            raise InputError(f"ssh.ssh_config: file not found: {self.config_file}")
        self.ssh = ssh_path if ssh_path is not None else shutil.which("ssh")
        self._cache: dict[tuple[str, str | None, int | None], HostConfig] = {}
        self._pending: dict[tuple[str, str | None, int | None], threading.Event] = {}
        self._lock = threading.Lock()
        self._wrapper: str | None = None
        self._home_map = _home_map()
        # Read on first use (only with an ssh binary); group=False: one `ssh -G` per host, always.
        self._blocks: HostBlocks | None = None if group else HostBlocks()
        self._groups: dict[tuple[Any, ...], _Group] = {}
        self.ssh_g_runs = 0  # how many `ssh -G` processes ran (tests, benchmarks)

    def resolve(self, alias: str, user: str | None = None, port: int | None = None) -> HostConfig:
        """The effective config of ``alias``; ``user``/``port`` act as ``ssh -l/-p`` (command line wins)."""
        key = (alias, user, port)
        while True:
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
                waiting = self._pending.get(key)
                if waiting is None:
                    self._pending[key] = threading.Event()
                    break
            waiting.wait()  # another thread is resolving the same host
        try:
            config = self._resolve(alias, user, port)
            with self._lock:
                self._cache[key] = config
            return config
        finally:
            with self._lock:
                self._pending.pop(key).set()

    def _resolve(self, alias: str, user: str | None, port: int | None) -> HostConfig:
        if self.ssh:
            group = self._group(alias, user, port)
            if group is not None:
                return group.resolve(alias, lambda name: self._resolve_one(name, user, port))
            return self._resolve_one(alias, user, port)
        else:
            values = fallback_values(alias, self._fallback_files())
            if user:
                values["user"] = [user]
            if port:
                values["port"] = [str(port)]
        return host_config(alias, values, self._home_map)

    def _resolve_one(self, alias: str, user: str | None, port: int | None) -> HostConfig:
        return host_config(alias, self._ssh_g(alias, user, port), self._home_map)

    def _group(self, alias: str, user: str | None, port: int | None) -> _Group | None:
        """The group of hosts ``ssh`` treats as it treats ``alias`` (None: resolve it alone)."""
        with self._lock:
            if self._blocks is None:
                self._blocks = HostBlocks.read(*self._files_read())
            key = self._blocks.key(alias)
            if key is None:
                return None
            return self._groups.setdefault((key, user, port), _Group())

    def _files_read(self) -> tuple[list[str], int, bool]:
        """The files `_ssh_g` makes ssh read, how many of them are user configs, whether $HOME differs."""
        if self.config_file:  # ssh -F FILE: that file alone, a user config
            return [self.config_file], 1, self._home_map is not None
        if self._home_map:  # `_home_config`'s wrapper includes both, from a -F file (user config)
            return [str(Path(self._home_map[1], ".ssh", "config")), SYSTEM_CONFIG], 2, True
        return [os.path.expanduser("~/.ssh/config"), SYSTEM_CONFIG], 1, False

    def _ssh_g(self, alias: str, user: str | None, port: int | None) -> dict[str, list[str]]:
        assert self.ssh is not None  # only called when an OpenSSH client was found
        with self._lock:
            self.ssh_g_runs += 1
        argv = [self.ssh, "-G"]
        config = self.config_file or self._home_config()
        if config:
            argv += ["-F", config]
        if user:
            argv += ["-l", user]
        if port:
            argv += ["-p", str(port)]
        argv += ["--", alias]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=_RESOLVE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SSHConfigError(f"ssh -G {alias}: {exc}") from None
        if done.returncode != 0:
            detail = next((line for line in done.stderr.splitlines() if "Pseudo-terminal" not in line), "")
            raise SSHConfigError(f"ssh_config for {alias}: {detail or f'ssh -G exited {done.returncode}'}")
        return parse_g(done.stdout)

    def _home_config(self) -> str | None:
        """With ``$HOME`` not the passwd home: a config that reads $HOME/.ssh/config, then the system one."""
        if not self._home_map:
            return None
        with self._lock:
            if self._wrapper is None:
                lines = []
                user_config = Path(self._home_map[1]) / ".ssh" / "config"
                if user_config.is_file():
                    lines.append(f'Include "{user_config}"')
                if Path(SYSTEM_CONFIG).is_file():
                    lines.append(f'Include "{SYSTEM_CONFIG}"')
                fd, path = tempfile.mkstemp(prefix="cluster-ssh-config-")
                with os.fdopen(fd, "w") as out:
                    out.write("\n".join(lines) + "\n")
                self._wrapper = path
            return self._wrapper

    def _fallback_files(self) -> list[str]:
        if self.config_file:
            return [self.config_file]
        return [str(Path("~/.ssh/config").expanduser()), SYSTEM_CONFIG]

    def close(self) -> None:
        if self._wrapper:
            try:
                os.unlink(self._wrapper)
            except OSError:
                pass
            self._wrapper = None


class _Group:
    """Hosts that match the same ``Host`` lines (same user and port): how their configs relate.

    The first two hosts of the group (distinct names, ignoring case) are resolved by ``ssh -G``.
    Equal apart from the name, they show how the rest follow: the same ``hostname``
    (a literal ``Hostname``), or each its own name lower-cased (as ``ssh`` does when no
    ``Hostname`` applies). Any other difference means a host-dependent value (``%h``, ``%n``,
    ``%C`` ... in a path the library uses): every host of the group then runs its own ``ssh -G``.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._samples: list[HostConfig] = []
        self._sampling: set[str] = set()  # lower-cased names being resolved as samples now
        self._mode: str | None = None  # "literal", "alias" or "each", once two samples are in

    def resolve(self, alias: str, resolve_one: Callable[[str], HostConfig]) -> HostConfig:
        name, sampling = _ascii_lower(alias), False
        with self._changed:
            while self._mode is None:
                taken = {_ascii_lower(s.alias) for s in self._samples} | self._sampling
                if name in taken:
                    break  # the same name in other case: no sample, its own run (below)
                if len(taken) < 2:
                    self._sampling.add(name)  # the two samples run side by side
                    sampling = True
                    break
                self._changed.wait()  # both samples are running: their answer decides
            mode = self._mode
        if mode is not None:
            return self._derive(mode, alias, resolve_one)
        if not sampling:
            return resolve_one(alias)
        try:
            config = resolve_one(alias)
        except BaseException:
            with self._changed:
                self._sampling.discard(name)
                self._changed.notify_all()  # a waiting host takes this sample's place
            raise
        with self._changed:
            self._sampling.discard(name)
            self._samples.append(config)
            if len(self._samples) == 2:
                self._mode = derivation(*self._samples)
            self._changed.notify_all()
        return config

    def _derive(self, mode: str, alias: str, resolve_one: Callable[[str], HostConfig]) -> HostConfig:
        first = self._samples[0]
        if mode == "literal":
            return replace(first, alias=alias)
        if mode == "alias":
            return replace(first, alias=alias, hostname=_ascii_lower(alias))
        return resolve_one(alias)


def derivation(a: HostConfig, b: HostConfig) -> str:
    """How two hosts of one group relate: ``literal`` / ``alias`` hostname, or ``each`` (unrelated)."""
    if replace(a, alias="", hostname="") != replace(b, alias="", hostname=""):
        return "each"
    if a.hostname == b.hostname:
        return "literal"
    if a.hostname == _ascii_lower(a.alias) and b.hostname == _ascii_lower(b.alias):
        return "alias"
    return "each"


def _ascii_lower(text: str) -> str:
    """Lower-case as ssh's ``lowercase()`` does (tolower: ASCII letters only)."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class HostBlocks:
    """The ``Host`` lines of the files ``ssh`` reads, in order; ``groupable`` False: see `key`.

    Only ``Host`` lines decide which directives apply when the files have no ``Match`` and no
    ``CanonicalizeHostname`` (which re-reads the files with another name): two hosts that
    match the same ``Host`` lines get the same directives. Anything this reader is unsure of
    (quoting, a comment on a ``Host`` line, a file it cannot read, an ``Include`` that ssh
    may expand under a different home) makes the config ungroupable: every host is resolved
    alone, as before.
    """

    patterns: tuple[tuple[str, ...], ...] = ()
    groupable: bool = False

    @classmethod
    def read(cls, files: list[str], user_files: int = 1, home_differs: bool = False) -> HostBlocks:
        """``files`` as ssh reads them; the first ``user_files`` are user configs (for Include paths)."""
        lines: list[tuple[str, ...]] = []
        try:
            for number, name in enumerate(files):
                if Path(name).exists():
                    _scan(Path(name), number < user_files, home_differs, lines, 0)
        except _Ungroupable:
            return cls()
        return cls(patterns=tuple(lines), groupable=True)

    def key(self, alias: str) -> tuple[bool, ...] | None:
        """Which ``Host`` lines match ``alias`` (None: ungroupable config)."""
        if not self.groupable:
            return None
        return tuple(_host_line_matches(alias, line) for line in self.patterns)


class _Ungroupable(Exception):
    """`HostBlocks.read` met something that makes hosts' configs depend on more than Host lines."""


_UNSURE = ("match", "canonicalizehostname")


def _scan(path: Path, user_config: bool, home_differs: bool, out: list[tuple[str, ...]], depth: int) -> None:
    if depth > 16:
        raise _Ungroupable
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        raise _Ungroupable from None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, args = _keyword(line)
        if keyword in _UNSURE:
            raise _Ungroupable
        if keyword == "host":
            if any(c in args for c in "\"'#"):
                raise _Ungroupable
            out.append(tuple(args.split()))
        elif keyword == "include":
            for name in _include_files(args, user_config, home_differs):
                _scan(Path(name), user_config, home_differs, out, depth + 1)


def _keyword(line: str) -> tuple[str, str]:
    """``Keyword args`` or ``Keyword=args`` (ssh's strdelim: whitespace and one ``=``)."""
    match = re.match(r"([^\s=]+)\s*(?:=\s*|\s)?(.*)", line)
    assert match is not None  # a non-empty stripped line always has a first word
    return match.group(1).lower(), match.group(2).strip()


def _include_files(args: str, user_config: bool, home_differs: bool) -> list[str]:
    if any(c in args for c in "\"'%$"):
        raise _Ungroupable  # quoting, tokens or variables: leave it to ssh
    names: list[str] = []
    for pattern in args.split():
        if not pattern.startswith("/"):
            if home_differs:
                raise _Ungroupable  # glob(GLOB_TILDE) or the passwd home: ssh's libc decides
            if not pattern.startswith("~"):
                pattern = ("~/.ssh/" if user_config else "/etc/ssh/") + pattern
            pattern = os.path.expanduser(pattern)
        names.extend(sorted(glob.glob(pattern)))
    return names


def _host_line_matches(alias: str, patterns: tuple[str, ...]) -> bool:
    """OpenSSH's ``Host`` line: some pattern matches and no ``!pattern`` does (case-sensitive)."""
    found = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _pattern_regex(pattern[1:] if negated else pattern).fullmatch(alias):
            if negated:
                return False
            found = True
    return found


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """ssh's match_pattern: ``*`` any run, ``?`` one character, everything else literal."""
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        compiled = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
                              re.DOTALL)
        _PATTERNS[pattern] = compiled
    return compiled


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _home_map() -> tuple[str, str] | None:
    home = os.environ.get("HOME")
    try:
        passwd_home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return None
    if not home or os.path.realpath(home) == os.path.realpath(passwd_home):
        return None
    return passwd_home.rstrip("/") or "/", home.rstrip("/")


# ------------------------------------------------------------ paramiko fallback
def fallback_values(alias: str, files: list[str]) -> dict[str, list[str]]:
    """paramiko's evaluation of ``files`` (Include expanded) for ``alias``, in `parse_g`'s shape."""
    import paramiko

    parsed = paramiko.SSHConfig()
    text = "".join(expand_includes(Path(f)) for f in files if Path(f).is_file())
    parsed.parse(_lines(text))
    found = parsed.lookup(alias)
    values: dict[str, list[str]] = {}
    raw: dict[str, Any] = dict(found)  # the stubs say str; identityfile & co. are lists
    for key, value in raw.items():
        values[key] = list(value) if isinstance(value, list) else [str(value)]
    if "identityfile" not in values:
        values["identityfile"] = list(DEFAULT_IDENTITIES)
    return values


def _lines(text: str) -> io.StringIO:
    return io.StringIO(text)


def expand_includes(path: Path, depth: int = 0) -> str:
    """The text of ``path`` with each ``Include`` replaced by the files it names (relative: ~/.ssh)."""
    if depth > 16:
        raise SSHConfigError(f"ssh_config: Include nested too deeply at {path}")
    out = []
    for line in path.read_text().splitlines():
        words = line.strip().split(None, 1)
        if words and words[0].lower() == "include" and len(words) > 1:
            for pattern in words[1].split():
                pattern = os.path.expanduser(pattern.strip('"'))
                if not os.path.isabs(pattern):
                    pattern = str(Path("~/.ssh").expanduser() / pattern)
                for name in sorted(glob.glob(pattern)):
                    out.append(expand_includes(Path(name), depth + 1))
        else:
            out.append(line + "\n")
    return "".join(out)
