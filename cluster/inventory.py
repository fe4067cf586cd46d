"""roles.yaml: SSH settings and named roles of hosts.

Which file (DESIGN.md): ``--roles-file PATH``, else ``$CLUSTER_ROLES``, else
``./roles.yaml``. A missing *default* file is not an error (``-H local`` works
anywhere); a missing file that was named explicitly is.

Everything here is validated before any connection is made, and every error
names the file, the key and the offending value (the CLI exits 2 on them).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import HostExpressionError, InputError, InventoryError, quoted
from .hosts import MAX_HOSTS, Host, parse_hosts, read_bounded_text, unique

ROLES_ENV = "CLUSTER_ROLES"
DEFAULT_ROLES_FILE = "roles.yaml"
GCE_KEY = "~/.ssh/google_compute_engine"
HOST_KEY_POLICIES = ("accept-new", "strict")
# Top-level sections of roles.yaml; anything else (a typo such as 'rolez:') is an error.
# ssh, roles and limits are parsed here; serving and gpu by their own layers.
SECTIONS = ("ssh", "roles", "limits", "serving", "gpu")
# Bounds on the file itself: its size, and how many YAML nodes it expands to through
# aliases (a "billion laughs" file is small but expands to billions of nodes).
MAX_ROLES_FILE_BYTES = 16 * 1024 * 1024
MAX_YAML_NODES = 1_000_000


DEFAULT_CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class SSHSettings:
    """The ``ssh:`` section. ``None`` means "not set here": ssh_config, then the defaults apply.

    Precedence (docs/roles.md): command line > these values > ssh_config > defaults.
    """

    user: str | None = None
    port: int | None = None
    key_filename: str | None = None
    connect_timeout: float | None = None  # None: ConnectTimeout, else DEFAULT_CONNECT_TIMEOUT
    fanout: int = 64
    host_key_policy: str | None = None  # None: StrictHostKeyChecking yes -> strict, else accept-new
    known_hosts: str | None = None  # None: UserKnownHostsFile
    ssh_config: str | None = None  # None: ~/.ssh/config (and /etc/ssh/ssh_config)
    proxy_jump: str | None = None  # None: ProxyJump/ProxyCommand of ssh_config; "none": direct

    @property
    def timeout_or_default(self) -> float:
        """The connect timeout where no host's ssh_config is at hand (messages, local work)."""
        return self.connect_timeout if self.connect_timeout is not None else DEFAULT_CONNECT_TIMEOUT

    def resolved_key(self) -> str | None:
        """The private key to use: ssh.key_filename, else the GCE key when it exists."""
        if self.key_filename:
            return str(Path(self.key_filename).expanduser())
        gce = Path(GCE_KEY).expanduser()
        return str(gce) if gce.exists() else None

    def with_overrides(self, **changes: Any) -> SSHSettings:
        """Copy with the given non-None values replaced (CLI options)."""
        given = {k: v for k, v in changes.items() if v is not None}
        if "fanout" in given:
            given["fanout"] = _check_fanout(given["fanout"], "--fanout")
        return replace(self, **given)


@dataclass
class Inventory:
    """A parsed roles file (or an empty one when none exists)."""

    path: Path | None = None
    ssh: SSHSettings = field(default_factory=SSHSettings)
    roles: dict[str, list[Host]] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)  # other top-level sections (serving...)
    max_hosts: int = MAX_HOSTS  # limits.max_hosts: the most hosts one expression may select

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def all_hosts(self) -> list[Host]:
        return unique(h for hosts in self.roles.values() for h in hosts)

    def role_hosts(self, names: str | Iterable[str]) -> list[Host]:
        """Hosts of the given roles (comma-separated or a list), in order."""
        wanted = [n for n in _split_names(names)]
        unknown = [n for n in wanted if n not in self.roles]
        if unknown:
            where = f" in {self.path}" if self.path else " (no roles file found)"
            known = ", ".join(self.roles) or "none"
            raise InventoryError(f"unknown role {quoted(unknown[0])}{where}; known roles: {quoted(known)[1:-1]}")
        return unique(h for n in wanted for h in self.roles[n])

    def roles_of(self, host: Host) -> list[str]:
        return [name for name, hosts in self.roles.items() if host in hosts]

    def select(self, hosts: str | Iterable[str] | None = None,
               roles: str | Iterable[str] | None = None) -> list[Host]:
        """The targets of a task: --role hosts, then --hosts; neither means every role's hosts."""
        chosen: list[Host] = []
        # Given but empty (-H "", -r "") selects nothing, never "every host".
        if roles is not None:
            chosen += self.role_hosts(roles)
        if hosts is not None:
            chosen += parse_hosts(hosts if isinstance(hosts, str) else list(hosts), base_dir=Path.cwd(),
                                  max_hosts=self.max_hosts)
        if roles is None and hosts is None:
            chosen = self.all_hosts()
        if not chosen:
            where = f"{self.path}" if self.path else "no roles file (looked for ./roles.yaml)"
            raise InputError(f"no hosts selected: give --hosts/-H or --role/-r ({where} defines none)")
        return unique(chosen)


def _split_names(names: str | Iterable[str]) -> list[str]:
    items = names.replace(",", " ").split() if isinstance(names, str) else list(names)
    return [n.strip() for n in items if n.strip()]


def resolve_roles_path(explicit: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """Return (path, explicitly_named) following --roles-file > $CLUSTER_ROLES > ./roles.yaml."""
    if explicit:
        return Path(explicit).expanduser(), True
    env = os.environ.get(ROLES_ENV)
    if env:
        return Path(env).expanduser(), True
    return Path(DEFAULT_ROLES_FILE), False


def load_inventory(path: str | os.PathLike[str] | None = None) -> Inventory:
    """Load and validate the roles file; an absent default file gives an empty inventory."""
    roles_path, explicit = resolve_roles_path(path)
    if not roles_path.exists():
        if explicit:
            raise InventoryError(f"roles file not found: {roles_path}")
        return Inventory()
    try:
        text = read_bounded_text(roles_path, MAX_ROLES_FILE_BYTES, "roles file")
    except OSError as exc:
        raise InventoryError(f"cannot read roles file {roles_path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InventoryError(str(exc)) from None
    return parse_inventory(text, roles_path)


def load_yaml(text: str, path: Path, max_nodes: int = MAX_YAML_NODES) -> Any:
    """``yaml.safe_load`` with a budget: more than ``max_nodes`` nodes once aliases are
    expanded, or nesting too deep for the parser, is an `InventoryError`."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, max_nodes) > max_nodes:
            raise InventoryError(f"{path}: expands to more than {max_nodes:,} YAML nodes "
                                 "through its aliases (&anchor / *alias): refusing to load it")
        return loader.construct_document(node)
    except RecursionError:
        raise InventoryError(f"{path}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_size(root: yaml.Node, cap: int) -> int:
    """Nodes under ``root`` counting every alias use in full, capped at ``cap + 1``.

    Memoised by node: each distinct node is visited once, so a billion-laughs document
    costs its own size to measure, not its expansion. A node inside itself (recursive
    anchor) counts as over the cap.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # entered, children not yet measured
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            if id(node) in open_nodes or any(id(child) in open_nodes for child in children):
                return cap + 1  # a node inside itself: infinite once expanded
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(id(node))
        sizes[id(node)] = min(cap + 1, 1 + sum(sizes.get(id(child), cap + 1) for child in children))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def parse_inventory(text: str, path: Path) -> Inventory:
    """Parse roles.yaml text; errors name ``path`` and the key."""
    try:
        data = load_yaml(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InventoryError(f"{path}:{where}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InventoryError(f"{path}: expected a mapping with 'ssh:' and 'roles:', got {type(data).__name__}")
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise InventoryError(f"{path}: {quoted(unknown[0])}: unknown top-level key (known: {', '.join(SECTIONS)})")
    ssh = parse_ssh_section(data.get("ssh"), path)
    max_hosts = parse_limits_section(data.get("limits"), path)
    roles = parse_roles_section(data.get("roles"), path, max_hosts)
    sections = {k: v for k, v in data.items() if k not in ("ssh", "roles", "limits")}
    return Inventory(path=path, ssh=ssh, roles=roles, sections=sections, max_hosts=max_hosts)


def parse_limits_section(section: Any, path: Path) -> int:
    """``limits:``: ``max_hosts`` (default 100,000), the most hosts one expression selects."""
    if section is None:
        return MAX_HOSTS
    if not isinstance(section, dict):
        raise InventoryError(f"{path}: limits: expected a mapping, got {quoted(section)}")
    unknown = [k for k in section if k != "max_hosts"]
    if unknown:
        raise InventoryError(f"{path}: limits: {quoted(unknown[0])}: unknown key (known: max_hosts)")
    value = section.get("max_hosts", MAX_HOSTS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InventoryError(f"{path}: limits.max_hosts: expected a positive integer, got {quoted(value)}")
    return value


_SSH_KEYS: dict[str, type | tuple[type, ...]] = {
    "user": str,
    "port": int,
    "key_filename": str,
    "connect_timeout": (int, float),
    "fanout": int,
    "host_key_policy": str,
    "known_hosts": str,
    "ssh_config": str,
    "proxy_jump": str,
}


def parse_ssh_section(section: Any, path: Path) -> SSHSettings:
    """Validate the ``ssh:`` mapping into `SSHSettings`."""
    if section is None:
        return SSHSettings()
    if not isinstance(section, dict):
        raise InventoryError(f"{path}: ssh: expected a mapping, got {quoted(section)}")
    values: dict[str, Any] = {}
    for key, value in section.items():
        expected = _SSH_KEYS.get(key)
        if expected is None:
            raise InventoryError(f"{path}: ssh.{quoted(key)[1:-1]}: unknown key (known: {', '.join(_SSH_KEYS)})")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, expected):
            raise InventoryError(f"{path}: ssh.{key}: bad value {quoted(value)}")
        values[key] = value
    _check_ssh_values(values, path)
    return SSHSettings(**values)


def _check_ssh_values(values: dict[str, Any], path: Path) -> None:
    if "port" in values and not 0 < values["port"] < 65536:
        raise InventoryError(f"{path}: ssh.port: {values['port']} is not in 1-65535")
    timeout = values.get("connect_timeout")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):  # .inf/.nan too
        raise InventoryError(f"{path}: ssh.connect_timeout: must be a finite number > 0, got {timeout}")
    if "fanout" in values:
        values["fanout"] = _check_fanout(values["fanout"], f"{path}: ssh.fanout")
    policy = values.get("host_key_policy")
    if policy is not None and policy not in HOST_KEY_POLICIES:
        raise InventoryError(
            f"{path}: ssh.host_key_policy: {quoted(policy)} is not one of {', '.join(HOST_KEY_POLICIES)}"
        )


def _check_fanout(value: Any, where: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: fanout must be a positive integer, got {quoted(value)}") from None
    if number < 1:
        raise InputError(f"{where}: fanout must be >= 1, got {number}")
    return number


def parse_roles_section(section: Any, path: Path, max_hosts: int = MAX_HOSTS) -> dict[str, list[Host]]:
    """Validate ``roles:`` (name -> host expression or list of them)."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise InventoryError(f"{path}: roles: expected a mapping of role name -> hosts")
    roles: dict[str, list[Host]] = {}
    for name, value in section.items():
        if not isinstance(name, str) or not name.strip() or "," in name or " " in name:
            raise InventoryError(f"{path}: roles: bad role name {quoted(name)}")
        items = _role_items(name, value, path)
        try:
            roles[name] = parse_hosts(items, base_dir=path.parent, max_hosts=max_hosts)
        except HostExpressionError as exc:
            raise InventoryError(f"{path}: roles.{name}: {exc}") from None
    return roles


def _role_items(name: str, value: Any, path: Path) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    raise InventoryError(f"{path}: roles.{name}: expected a host expression or a list of them, got {quoted(value)}")
