"""OpenSSH host certificates: parse the blob, check it as ``ssh`` does.

paramiko negotiates the ``*-cert-v01@openssh.com`` host-key algorithms and
verifies the key-exchange signature with the certified key, but it never
looks at the certificate itself: who signed it, for which names, until
when. This module reads the blob (format: OpenSSH's PROTOCOL.certkeys) and
answers the questions ``sshconnect.c`` asks before it trusts a host
certificate:

* does the CA signature verify (OpenSSH checks it while parsing the key, so a
  bad one fails the connection outright)? The signature is verified with
  paramiko's key classes, which use the ``cryptography`` library;
* is it a *host* certificate, valid now, for this host name, without critical
  options, signed with an algorithm ``CASignatureAlgorithms`` allows
  (``sshkey_cert_check_host``)?

Principals follow OpenSSH 10.3 and later: a certificate must list principals
(9.x accepted an empty list for every host) and a principal may be a
wildcard pattern (``*.example.com``).

Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
import struct
import time
from dataclasses import dataclass

import paramiko

CERT_SUFFIX = "-cert-v01@openssh.com"
HOST_CERTIFICATE = 2  # SSH2_CERT_TYPE_HOST (1 is a user certificate)
# OpenSSH's default CASignatureAlgorithms (myproposal.h SSH_ALLOWED_CA_SIGALGS):
# no SHA-1 "ssh-rsa" signatures.
ALLOWED_CA_SIGNATURES = frozenset({
    "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
    "webauthn-sk-ecdsa-sha2-nistp256@openssh.com", "rsa-sha2-512", "rsa-sha2-256",
})

# Certificate blob type -> (plain key type, key fields between nonce and serial).
_KEY_FIELDS = {
    "ssh-ed25519-cert-v01@openssh.com": ("ssh-ed25519", ("string",)),
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": ("ecdsa-sha2-nistp256", ("string", "string")),
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": ("ecdsa-sha2-nistp384", ("string", "string")),
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": ("ecdsa-sha2-nistp521", ("string", "string")),
    "ssh-rsa-cert-v01@openssh.com": ("ssh-rsa", ("mpint", "mpint")),
}


class CertificateFormatError(ValueError):
    """The blob is not an OpenSSH certificate this module can read."""


@dataclass(frozen=True)
class HostCertificate:
    """The fields of an OpenSSH certificate that a host-key check uses."""

    cert_type: str  # "ssh-ed25519-cert-v01@openssh.com"
    key_type: str  # the certified key's plain type, "ssh-ed25519"
    key_blob: bytes  # the certified key as a plain public key blob
    serial: int
    kind: int  # HOST_CERTIFICATE or 1 (user)
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: bytes
    ca_blob: bytes  # the signing CA's public key blob
    signed: bytes  # the bytes the CA signed (everything before the signature)
    signature: bytes

    @property
    def ca_type(self) -> str:
        return _Reader(self.ca_blob).string().decode("ascii", "replace")

    @property
    def signature_type(self) -> str:
        return _Reader(self.signature).string().decode("ascii", "replace")

    def signature_problem(self) -> str | None:
        """Why the CA signature does not verify, or None when it does.

        The CA key must be a plain key; paramiko builds it and checks the
        signature with ``cryptography``.
        """
        if self.ca_type.endswith(CERT_SUFFIX):
            return "the CA key is itself a certificate"
        try:
            ca = paramiko.PKey.from_type_string(self.ca_type, self.ca_blob)
            verified = ca.verify_ssh_sig(self.signed, paramiko.Message(self.signature))
        except Exception as exc:  # unknown CA key type, malformed key or signature
            return f"cannot verify the CA signature ({type(exc).__name__}: {exc})"
        return None if verified else "the CA signature does not verify"

    def host_problem(self, name: str, now: float | None = None) -> str | None:
        """Why this certificate is not valid for host ``name`` now (OpenSSH's reason), or None.

        ``name`` is what ``ssh`` checks: HostKeyAlias when set, else the host
        name connected to (no port).
        """
        now = time.time() if now is None else now
        if self.kind != HOST_CERTIFICATE:
            return "Certificate invalid: not a host certificate"
        if now < self.valid_after:
            return "Certificate invalid: not yet valid"
        if now >= self.valid_before:
            return "Certificate invalid: expired"
        if not self.principals:
            return "Certificate lacks principal list"
        if not any(match_pattern(name, principal) for principal in self.principals):
            return "Certificate invalid: name is not a listed principal"
        if self.critical_options:
            return "Certificate contains unsupported critical options"
        if self.signature_type not in ALLOWED_CA_SIGNATURES:
            return "Certificate signed with disallowed algorithm"
        return None


def parse_certificate(blob: bytes) -> HostCertificate:
    """Read an OpenSSH certificate blob; `CertificateFormatError` when it is not one."""
    try:
        return _parse(blob)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise CertificateFormatError(f"truncated or malformed certificate: {exc}") from None


def _parse(blob: bytes) -> HostCertificate:
    reader = _Reader(blob)
    cert_type = reader.string().decode("ascii")
    if cert_type not in _KEY_FIELDS:
        raise CertificateFormatError(f"unsupported certificate type {cert_type!r}")
    key_type, fields = _KEY_FIELDS[cert_type]
    reader.string()  # nonce
    start = reader.offset
    for _ in fields:
        reader.string()  # an mpint is encoded as a string of bytes too
    key_blob = _string(key_type.encode()) + blob[start:reader.offset]
    serial, kind = reader.uint64(), reader.uint32()
    key_id = reader.string().decode("utf-8", "replace")
    principals_field = _Reader(reader.string())
    principals = []
    while not principals_field.done:
        principals.append(principals_field.string().decode("utf-8", "replace"))
    valid_after, valid_before = reader.uint64(), reader.uint64()
    critical = reader.string()
    reader.string()  # extensions
    reader.string()  # reserved
    ca_blob = reader.string()
    signed = blob[:reader.offset]
    signature = reader.string()
    if not reader.done:
        raise CertificateFormatError("trailing bytes after the certificate signature")
    return HostCertificate(cert_type, key_type, key_blob, serial, kind, key_id, tuple(principals),
                           valid_after, valid_before, critical, ca_blob, signed, signature)


def match_pattern(text: str, pattern: str) -> bool:
    """OpenSSH's ``match_pattern``: ``*`` any run, ``?`` any one character, else literal."""
    return glob_regex(pattern).fullmatch(text) is not None


def glob_regex(*patterns: str) -> re.Pattern[str]:
    """One compiled regex that fully matches any of OpenSSH's glob ``patterns``."""
    return _compiled(patterns)


@functools.lru_cache(maxsize=4096)
def _compiled(patterns: tuple[str, ...]) -> re.Pattern[str]:
    sources = ("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in p) for p in patterns)
    return re.compile("|".join(f"(?:{source})" for source in sources), re.DOTALL)


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _Reader:
    """SSH wire-format fields (RFC 4251 §5) from a bytes blob."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    @property
    def done(self) -> bool:
        return self.offset >= len(self.data)

    def _take(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise IndexError(f"field of {size} bytes past the end")
        chunk, self.offset = self.data[self.offset:end], end
        return chunk

    def uint32(self) -> int:
        return int.from_bytes(self._take(4), "big")

    def uint64(self) -> int:
        return int.from_bytes(self._take(8), "big")

    def string(self) -> bytes:
        return self._take(self.uint32())
