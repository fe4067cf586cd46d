"""roles.yaml: SSH settings and named roles of hosts.

Which file (DESIGN.md): ``--roles-file PATH``, else ``$CLUSTER_ROLES``, else
``./roles.yaml``. A missing *default* file is not an error (``-H local`` works
anywhere); a missing file that was named explicitly is.

Everything here is validated before any connection is made, and every error
names the file, the key and the offending value (the CLI exits 2 on them).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import HostExpressionError, InputError, InventoryError
from .hosts import Host, parse_hosts, unique

ROLES_ENV = "CLUSTER_ROLES"
DEFAULT_ROLES_FILE = "roles.yaml"
GCE_KEY = "~/.ssh/google_compute_engine"
HOST_KEY_POLICIES = ("accept-new", "strict")


@dataclass(frozen=True)
class SSHSettings:
    """The ``ssh:`` section. ``None`` means "not set here": ssh_config/defaults apply."""

    user: str | None = None
    port: int | None = None
    key_filename: str | None = None
    connect_timeout: float = 10.0
    fanout: int = 64
    host_key_policy: str = "accept-new"
    known_hosts: str = "~/.ssh/known_hosts"
    ssh_config: str | None = None  # None: ~/.ssh/config (and /etc/ssh/ssh_config)

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
            raise InventoryError(f"unknown role {unknown[0]!r}{where}; known roles: {known}")
        return unique(h for n in wanted for h in self.roles[n])

    def roles_of(self, host: Host) -> list[str]:
        return [name for name, hosts in self.roles.items() if host in hosts]

    def select(self, hosts: str | Iterable[str] | None = None,
               roles: str | Iterable[str] | None = None) -> list[Host]:
        """The targets of a task: --role hosts, then --hosts; neither means every role's hosts."""
        chosen: list[Host] = []
        if roles:
            chosen += self.role_hosts(roles)
        if hosts:
            chosen += parse_hosts(hosts if isinstance(hosts, str) else list(hosts), base_dir=Path.cwd())
        if not roles and not hosts:
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
        text = roles_path.read_text()
    except OSError as exc:
        raise InventoryError(f"cannot read roles file {roles_path}: {exc.strerror}") from None
    return parse_inventory(text, roles_path)


def parse_inventory(text: str, path: Path) -> Inventory:
    """Parse roles.yaml text; errors name ``path`` and the key."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InventoryError(f"{path}:{where}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InventoryError(f"{path}: expected a mapping with 'ssh:' and 'roles:', got {type(data).__name__}")
    ssh = parse_ssh_section(data.get("ssh"), path)
    roles = parse_roles_section(data.get("roles"), path)
    sections = {k: v for k, v in data.items() if k not in ("ssh", "roles")}
    return Inventory(path=path, ssh=ssh, roles=roles, sections=sections)


_SSH_KEYS: dict[str, type | tuple[type, ...]] = {
    "user": str,
    "port": int,
    "key_filename": str,
    "connect_timeout": (int, float),
    "fanout": int,
    "host_key_policy": str,
    "known_hosts": str,
    "ssh_config": str,
}


def parse_ssh_section(section: Any, path: Path) -> SSHSettings:
    """Validate the ``ssh:`` mapping into `SSHSettings`."""
    if section is None:
        return SSHSettings()
    if not isinstance(section, dict):
        raise InventoryError(f"{path}: ssh: expected a mapping, got {section!r}")
    values: dict[str, Any] = {}
    for key, value in section.items():
        expected = _SSH_KEYS.get(key)
        if expected is None:
            raise InventoryError(f"{path}: ssh.{key}: unknown key (known: {', '.join(_SSH_KEYS)})")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, expected):
            raise InventoryError(f"{path}: ssh.{key}: bad value {value!r}")
        values[key] = value
    _check_ssh_values(values, path)
    return SSHSettings(**values)


def _check_ssh_values(values: dict[str, Any], path: Path) -> None:
    if "port" in values and not 0 < values["port"] < 65536:
        raise InventoryError(f"{path}: ssh.port: {values['port']} is not in 1-65535")
    if "connect_timeout" in values and values["connect_timeout"] <= 0:
        raise InventoryError(f"{path}: ssh.connect_timeout: must be > 0, got {values['connect_timeout']}")
    if "fanout" in values:
        values["fanout"] = _check_fanout(values["fanout"], f"{path}: ssh.fanout")
    policy = values.get("host_key_policy")
    if policy is not None and policy not in HOST_KEY_POLICIES:
        raise InventoryError(
            f"{path}: ssh.host_key_policy: {policy!r} is not one of {', '.join(HOST_KEY_POLICIES)}"
        )


def _check_fanout(value: Any, where: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: fanout must be a positive integer, got {value!r}") from None
    if number < 1:
        raise InputError(f"{where}: fanout must be >= 1, got {number}")
    return number


def parse_roles_section(section: Any, path: Path) -> dict[str, list[Host]]:
    """Validate ``roles:`` (name -> host expression or list of them)."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise InventoryError(f"{path}: roles: expected a mapping of role name -> hosts")
    roles: dict[str, list[Host]] = {}
    for name, value in section.items():
        if not isinstance(name, str) or not name.strip() or "," in name or " " in name:
            raise InventoryError(f"{path}: roles: bad role name {name!r}")
        items = _role_items(name, value, path)
        try:
            roles[name] = parse_hosts(items, base_dir=path.parent)
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
    raise InventoryError(f"{path}: roles.{name}: expected a host expression or a list of them, got {value!r}")
