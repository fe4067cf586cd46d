"""Connectivity operations: check (connect+auth+uname), keyscan, ensure-key."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .hostkeys import fingerprint
from .hosts import Host
from .inventory import GCE_KEY, SSHSettings
from .keys import ENCRYPTED, IN_AGENT, MISSING, KeyRing
from .result import Report, build_report
from .shell import framed, unframed
from .ssh import Engine, HostSession, load_private_key
from .sshconfig import DEFAULT_IDENTITIES

CHECK_COMMAND = "uname -n"


@dataclass
class CheckInfo:
    """What `check` learnt about a host."""

    hostname: str
    connect_ms: float | None
    command_ms: float

    def to_json(self) -> dict[str, Any]:
        return {"remote_hostname": self.hostname, "connect_ms": self.connect_ms,
                "command_ms": self.command_ms}


def _check_one(session: HostSession) -> Any:
    started = time.monotonic()
    connect_ms = None
    if not session.host.is_local:
        session.open()
        connect_ms = (time.monotonic() - started) * 1000
    mark = time.monotonic()
    result = session.run(framed(CHECK_COMMAND), timeout=session.connect_timeout)
    command_ms = (time.monotonic() - mark) * 1000
    if not result.ok:
        return result
    return CheckInfo(unframed(result.stdout).strip(), connect_ms, command_ms)


def check(engine: Engine, hosts: Sequence[Host], *, fanout: int | None = None,
          on_done: Callable[..., None] | None = None) -> Report:
    """Connect, authenticate and run ``uname -n`` on every host; time each step."""
    return build_report(engine.call(hosts, _check_one, fanout=fanout, on_done=on_done), engine)


# ---------------------------------------------------------------------------
# keyscan
# ---------------------------------------------------------------------------


@dataclass
class KeyInfo:
    """A host key seen by keyscan and what the host-key store did with it."""

    entry: str  # the known_hosts name checked (HostKeyAlias or host / [host]:port)
    key_type: str  # the key type, or the certificate type of a certified host
    fingerprint: str
    status: str  # known | added | certified | local

    def to_json(self) -> dict[str, Any]:
        return {"entry": self.entry, "key_type": self.key_type,
                "fingerprint": self.fingerprint, "status": self.status}


def _scan_one(session: HostSession) -> KeyInfo:
    if session.host.is_local:
        return KeyInfo("local", "-", "-", "local")
    session.handshake()  # raises HostKeyError when the store refuses the key
    verdict = session.engine.host_keys.last_verdict()  # this thread's: the handshake's
    assert verdict is not None  # a handshake that returned has passed `HostKeyStore.check`
    return KeyInfo(verdict.name, verdict.key_type, verdict.fingerprint, verdict.status)


def keyscan(engine: Engine, hosts: Sequence[Host], *, fanout: int | None = None,
            on_done: Callable[..., None] | None = None) -> Report:
    """Fetch each host's key (no login) and record or verify it per the host-key policy."""
    return build_report(engine.call(hosts, _scan_one, fanout=fanout, on_done=on_done), engine)


# ---------------------------------------------------------------------------
# ensure-key
# ---------------------------------------------------------------------------


@dataclass
class KeyReport:
    """Result of ensure-key: which key is in use, or what to do about it."""

    ok: bool
    key_path: str | None
    description: str
    actions: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # every key ssh would offer, with its state

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "key": self.key_path, "description": self.description,
                "actions": self.actions, "steps": self.steps, "keys": self.keys}


MANUAL_STEPS = [
    "gcloud auth login                      # once, on this controller",
    "gcloud compute config-ssh --quiet      # creates ~/.ssh/google_compute_engine and ~/.ssh/config entries",
    "# or, without gcloud: ssh-keygen -t ed25519 -f ~/.ssh/google_compute_engine -N ''",
    "#   and add ~/.ssh/google_compute_engine.pub to each host's ~/.ssh/authorized_keys",
    "#   (or set ssh.key_filename in roles.yaml to the key you already use)",
]


def ensure_key(settings: SSHSettings, *, gcloud: str | None = None,
               runner: Callable[[list[str]], int] | None = None) -> KeyReport:
    """Report the private key in use; create the GCE key with gcloud when it is missing."""
    actions: list[str] = []
    gce = Path(GCE_KEY).expanduser()
    if not settings.key_filename and not gce.exists():
        gcloud = gcloud if gcloud is not None else shutil.which("gcloud")
        if gcloud:
            command = [gcloud, "compute", "config-ssh", "--quiet"]
            actions.append(" ".join(command))
            code = (runner or _run)(command)
            if code != 0:
                return KeyReport(False, None, f"`{' '.join(command)}` failed with exit code {code}",
                                 actions, MANUAL_STEPS)
    try:
        first = load_private_key(settings)
    except InputError as exc:  # a configured key file that does not exist
        return KeyReport(False, settings.resolved_key(), str(exc), actions, MANUAL_STEPS)
    return _key_inventory(first, actions, gce)


def _key_inventory(first: str | None, actions: list[str], gce: Path) -> KeyReport:
    """Every key ``ssh`` would offer: the agent's by fingerprint, files by path and state."""
    ring = KeyRing()
    agent = ring.agent_keys(None)
    in_agent = {k.fingerprint for k in agent}
    lines = [f"agent: {k.get_name()} {k.fingerprint}" for k in agent]
    paths = ([first] if first else []) + [os.path.expanduser(p) for p in DEFAULT_IDENTITIES]
    usable, encrypted = list(agent), []
    for path in dict.fromkeys(paths):
        loaded = ring.file(path)
        if loaded.state == MISSING:
            continue
        state = IN_AGENT if loaded.state == ENCRYPTED and loaded.fingerprint in in_agent else loaded.state
        shown = f" ({loaded.pkey.get_name()} {loaded.fingerprint})" if loaded.pkey is not None else ""
        lines.append(f"{path}: {state}{shown}")
        if loaded.pkey is not None:
            usable.append(loaded.pkey)
        elif state == ENCRYPTED:
            encrypted.append(path)
    if not usable:
        if encrypted:
            return KeyReport(False, encrypted[0], f"{encrypted[0]} is encrypted and not in ssh-agent: "
                             f"run `ssh-add {encrypted[0]}`", actions, [], lines)
        return KeyReport(False, None, f"no SSH key found ({gce} is missing and gcloud is not on PATH)",
                         actions, MANUAL_STEPS, lines)
    key = usable[0]
    key_path = first if first and ring.file(first).pkey is not None else None
    where = key_path or ("ssh-agent" if key in agent else None)
    return KeyReport(True, key_path, f"{key.get_name()} {fingerprint(key)}" + (f" ({where})" if where == "ssh-agent" else ""),
                     actions, [], lines)


def _run(command: list[str]) -> int:
    return subprocess.call(command)

