"""Client keys the way ``ssh`` offers them: the agent's, then every key file, never a prompt.

Order per host: ``ssh.key_filename`` and ``~/.ssh/google_compute_engine``
(when it exists), then the agent's keys, then the host's IdentityFiles from
its effective ssh_config (OpenSSH lists the default ``~/.ssh/id_*`` files there
when none is configured). A key is offered once (by fingerprint), with its
certificate (CertificateFile, or ``PATH-cert.pub``) when there is one. With
``IdentitiesOnly yes`` only agent keys that match a listed file are offered.

An encrypted key file that the agent does not hold is skipped (paramiko 5
raises ``TypeError`` for it, older versions ``PasswordRequiredException``): we
never ask for a passphrase. Nothing authenticating is `AuthError` (kind
``auth``), whose message lists what was tried and whose hint names
``ssh-add PATH`` for a skipped encrypted key.

Files are read once per process run (`KeyRing` caches by path), the agent's
key list once per agent socket; agent requests from many threads share one
socket under a lock.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from paramiko.agent import AgentSSH
from paramiko.auth_strategy import AuthFailure, AuthStrategy, InMemoryPrivateKey, SourceResult
from paramiko.pkey import PublicBlob

# File states, as `ensure-key` and auth failures report them.
OK, MISSING, ENCRYPTED, UNREADABLE = "ok", "missing", "encrypted, not in agent", "unreadable"
IN_AGENT = "encrypted, in agent"


@dataclass(frozen=True)
class KeyFile:
    """One key file as loaded: its key (unencrypted only), state and public fingerprint."""

    path: str
    state: str
    pkey: paramiko.PKey | None = None
    fingerprint: str | None = None  # from the key or its .pub file
    detail: str = ""


@dataclass(frozen=True)
class Candidate:
    """A key offered to a server, and how failures name it."""

    label: str
    pkey: paramiko.PKey


class AuthError(paramiko.AuthenticationException):
    """No key authenticated (kind ``auth``): ``tried`` lists offers and skipped files."""

    def __init__(self, user: str, tried: list[str], hint: str) -> None:
        self.user, self.tried, self.hint = user, tried, hint
        what = "; ".join(tried) if tried else "no key (no agent, no key file)"
        super().__init__(f"no key accepted for user {user}: tried {what}")


class KeyRing:
    """The keys of one engine: files by path and agent keys by socket, loaded once each."""

    def __init__(self) -> None:
        self._files: dict[str, KeyFile] = {}
        self._agents: dict[str, list[paramiko.AgentKey]] = {}
        self._lock = threading.Lock()
        # Hosts of one fleet mostly share their key settings: the offer is worked out once per setting.
        self._offers: dict[tuple[Any, ...], tuple[list[Candidate], list[str]]] = {}
        self._offer_lock = threading.Lock()

    def file(self, path: str) -> KeyFile:
        path = os.path.expanduser(path)
        with self._lock:
            if path not in self._files:
                self._files[path] = load_key_file(path)
            return self._files[path]

    def agent_keys(self, identity_agent: str | None) -> list[paramiko.PKey]:
        """The agent's keys (IdentityAgent, else $SSH_AUTH_SOCK; ``none``: no agent)."""
        path = agent_socket(identity_agent)
        if not path:
            return []
        with self._lock:
            if path not in self._agents:
                self._agents[path] = _agent_keys(path)
            return list[paramiko.PKey](self._agents[path])

    def candidates(self, first: list[str], identity_files: tuple[str, ...], certificate_files: tuple[str, ...],
                   identity_agent: str | None, identities_only: bool) -> tuple[list[Candidate], list[str]]:
        """Keys to offer in order, and notes on skipped files (for the failure message)."""
        key = (tuple(first), identity_files, certificate_files, identity_agent, identities_only)
        with self._offer_lock:  # one thread works it out; the fleet's other threads wait for it
            known = self._offers.get(key)
            if known is None:
                known = self._candidates(first, identity_files, certificate_files, identity_agent, identities_only)
                self._offers[key] = known
        return list(known[0]), list(known[1])

    def _candidates(self, first: list[str], identity_files: tuple[str, ...], certificate_files: tuple[str, ...],
                    identity_agent: str | None, identities_only: bool) -> tuple[list[Candidate], list[str]]:
        agent = self.agent_keys(identity_agent)
        agent_prints = {k.fingerprint for k in agent}
        files = [self.file(p) for p in dict.fromkeys(list(first) + list(identity_files))]
        listed = {f.fingerprint for f in files if f.fingerprint}
        offered: list[Candidate] = []
        seen: set[str] = set()
        skipped: list[str] = []

        def offer(label: str, key: paramiko.PKey) -> None:
            if key.fingerprint not in seen:
                seen.add(key.fingerprint)
                offered.append(Candidate(label, key))

        head = {os.path.expanduser(p) for p in first}
        for loaded in (f for f in files if f.path in head and f.pkey is not None):
            offer(loaded.path, _with_certificate(loaded, certificate_files))
        for key in agent:
            if not identities_only or key.fingerprint in listed:
                offer(f"agent key {key.fingerprint}", key)
        for loaded in files:
            if loaded.pkey is not None:
                offer(loaded.path, _with_certificate(loaded, certificate_files))
            elif loaded.state == ENCRYPTED and loaded.fingerprint not in agent_prints:
                skipped.append(f"{loaded.path} ({ENCRYPTED})")
            elif loaded.state == UNREADABLE:
                skipped.append(f"{loaded.path} (unreadable: {loaded.detail})")
        return offered, skipped

    def close(self) -> None:
        """Close the agent connections (the key lists are read again on next use)."""
        with self._offer_lock:
            self._offers.clear()  # they hold agent keys
        with self._lock:
            agents, self._agents = list(self._agents.values()), {}
        for keys in agents:
            if keys:
                keys[0].agent._close()  # type: ignore[attr-defined]  # AgentSSH's own close; the stubs lack it

    def strategy(self, user: str, offered: list[Candidate], skipped: list[str]) -> KeyAuth:
        return KeyAuth(user, offered, skipped)


class KeyAuth(AuthStrategy):
    """paramiko's ``auth_strategy`` for one connection: our candidates in order, `AuthError` when none works."""

    def __init__(self, user: str, offered: list[Candidate], skipped: list[str]) -> None:
        super().__init__(ssh_config=paramiko.SSHConfig())  # stored, never read by authenticate()
        self.user, self.offered, self.skipped = user, offered, skipped

    def get_sources(self) -> Iterator[InMemoryPrivateKey]:
        for candidate in self.offered:
            yield InMemoryPrivateKey(self.user, candidate.pkey)

    def authenticate(self, transport: paramiko.Transport) -> list[SourceResult]:
        try:
            return super().authenticate(transport)
        except AuthFailure:
            raise self.failure() from None

    def failure(self) -> AuthError:
        tried = [c.label for c in self.offered] + self.skipped
        encrypted = [s.split(" (")[0] for s in self.skipped if ENCRYPTED in s]
        if encrypted:
            hint = f"unlock the key in ssh-agent: `ssh-add {encrypted[0]}`, then retry"
        else:
            hint = (f"check the user ({self.user}) and that one of these keys is in the host's "
                    "authorized_keys (inv ensure-key)")
        return AuthError(self.user, tried, hint)


def load_key_file(path: str) -> KeyFile:
    """Load one private key without ever asking for a passphrase."""
    if not os.path.exists(path):
        return KeyFile(path, MISSING)
    try:
        key = paramiko.PKey.from_path(path)
        return KeyFile(path, OK, key, key.fingerprint)
    except (TypeError, paramiko.PasswordRequiredException):
        # paramiko 5: TypeError("Key is password-protected, ...")
        return KeyFile(path, ENCRYPTED, None, public_fingerprint(path + ".pub"))
    except (paramiko.SSHException, ValueError, OSError) as exc:
        return KeyFile(path, UNREADABLE, None, public_fingerprint(path + ".pub"),
                       detail=str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)


def public_fingerprint(pub_path: str) -> str | None:
    """SHA256 fingerprint of a ``.pub`` file (how an encrypted key is matched with the agent's)."""
    try:
        blob = PublicBlob.from_file(pub_path)
        return paramiko.PKey.from_type_string(blob.key_type, blob.key_blob).fingerprint
    except (OSError, ValueError, paramiko.SSHException, TypeError):
        return None


def _with_certificate(loaded: KeyFile, certificate_files: tuple[str, ...]) -> paramiko.PKey:
    """The key with a matching certificate loaded (CertificateFile first, then PATH-cert.pub)."""
    key = loaded.pkey
    assert key is not None
    if key.public_blob is not None:
        return key
    for cert in [os.path.expanduser(c) for c in certificate_files] + [loaded.path + "-cert.pub"]:
        if not os.path.exists(cert):
            continue
        try:
            certified = paramiko.PKey.from_path(loaded.path)  # a copy: the cached key stays plain
            certified.load_certificate(cert)
            return certified
        except (ValueError, OSError, paramiko.SSHException, TypeError):
            continue  # a certificate of another key: try the next one
    return key


def agent_socket(identity_agent: str | None) -> str | None:
    """The agent socket ssh would use: IdentityAgent (``SSH_AUTH_SOCK``/``none``/path), else the env."""
    if identity_agent is None or identity_agent == "SSH_AUTH_SOCK":
        return os.environ.get("SSH_AUTH_SOCK") or None
    if identity_agent.lower() == "none":
        return None
    if identity_agent.startswith("$"):
        return os.environ.get(identity_agent.lstrip("${").rstrip("}")) or None
    return str(Path(identity_agent).expanduser())


def _agent_keys(path: str) -> list[paramiko.AgentKey]:
    """The keys an agent holds; an unreachable agent holds none (as for ssh)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5.0)
        sock.connect(path)
    except OSError:
        sock.close()
        return []
    agent = AgentSSH()
    try:
        agent._connect(sock)  # type: ignore[attr-defined]  # paramiko's own agent-socket setup; no public one
    except (paramiko.SSHException, OSError):
        sock.close()
        return []
    lock = threading.Lock()
    send = agent._send_message  # type: ignore[attr-defined]  # wrapped below: one socket, many threads

    def locked(message: paramiko.Message) -> tuple[int, paramiko.Message]:  # one socket, many connecting threads
        with lock:
            return send(message)  # type: ignore[no-any-return]

    agent._send_message = locked  # type: ignore[attr-defined]
    return list(agent.get_keys())
