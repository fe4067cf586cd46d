#!/usr/bin/env python3
"""What the host-key store costs per connection on 1,000-line known_hosts files.

For N hosts whose keys are all recorded in a known_hosts file of N lines,
times what every connection asks of the store: the host-key algorithm order
(`HostKeyStore.host_key_algorithms`, before the key exchange) and the check
of the offered key (`HostKeyStore.check`, after it), against the baseline of
the same run: paramiko's own ``HostKeys`` (load the file, ``lookup`` the host,
compare the key), which is what ``SSHClient`` does with a loaded file and
which does neither patterns, markers nor certificates. Files: plain names,
hashed names (``HashKnownHosts yes``), and plain names plus wildcard,
``@revoked`` and ``@cert-authority`` lines. Then a first contact: N unknown
hosts recorded by accept-new (locked appends), against the known-host check.
Best of ``--repeat`` runs; no connection is opened::

    python benchmarks/hostkeys.py --hosts 1000
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's cluster package, installed or not

from cluster.hostkeys import HostKeyStore, HostKeyTarget, hash_name  # noqa: E402

OFFERED = paramiko.Transport._preferred_keys + tuple(
    f"{a}-cert-v01@openssh.com" for a in paramiko.Transport._preferred_keys)


def keys(count: int) -> list[paramiko.PKey]:
    out = []
    for _ in range(count):
        public = Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        out.append(paramiko.Ed25519Key(data=base64.b64decode(public.split()[1])))
    return out


def names(count: int) -> list[str]:
    return [f"[10.{i // 250}.{i % 250}.1]:2222" for i in range(count)]


def known_hosts(kind: str, hosts: list[str], host_keys: list[paramiko.PKey]) -> str:
    lines = []
    for name, key in zip(hosts, host_keys):
        shown = hash_name(name) if kind == "hashed" else name
        lines.append(f"{shown} {key.get_name()} {key.get_base64()}\n")
    if kind == "patterns":  # plus what real files carry: wildcards, a revocation, a CA
        other = keys(1)[0]
        lines += [f"[192.168.{i}.*]:22 {other.get_name()} {other.get_base64()}\n" for i in range(50)]
        lines.append(f"@revoked * {other.get_name()} {other.get_base64()}\n")
        lines.append(f"@cert-authority *.example.com {other.get_name()} {other.get_base64()}\n")
    return "".join(lines)


def best(repeat: int, run: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def store_run(path: Path, hosts: list[str], host_keys: list[paramiko.PKey], policy: str) -> Callable[[], None]:
    def run() -> None:
        store = HostKeyStore()  # a new engine: reads the file once
        for name, key in zip(hosts, host_keys):
            hostname, port = name[1:].split("]:")
            target = HostKeyTarget(hostname, int(port), user_files=(str(path),), global_files=(),
                                   policy=policy)
            store.host_key_algorithms(target, OFFERED)
            store.check(target, key)
    return run


def paramiko_run(path: Path, hosts: list[str], host_keys: list[paramiko.PKey]) -> Callable[[], None]:
    def run() -> None:
        loaded = paramiko.HostKeys(str(path))
        for name, key in zip(hosts, host_keys):
            found = loaded.lookup(name)
            assert found is not None and found.get(key.get_name()) == key
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000, help="hosts, and lines per file (default 1000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement, best kept (default 5)")
    args = parser.parse_args()
    count = args.hosts
    hosts, host_keys = names(count), keys(count)
    work = Path(tempfile.mkdtemp(prefix="hostkeys-bench-"))
    print(f"{count} hosts, known_hosts of {count} lines, best of {args.repeat}\n")
    print("| file | store: order + check per host | paramiko HostKeys: load + lookup per host | ratio |")
    print("|---|---|---|---|")
    for kind in ("plain", "hashed", "patterns"):
        path = work / f"known_hosts.{kind}"
        path.write_text(known_hosts(kind, hosts, host_keys))
        ours = best(args.repeat, store_run(path, hosts, host_keys, "strict"))
        baseline = ("n/a (no patterns or markers)" if kind == "patterns" else None)
        if baseline is None:
            theirs = best(args.repeat, paramiko_run(path, hosts, host_keys))
            print(f"| {kind} | {ours / count * 1e6:.0f} µs | {theirs / count * 1e6:.0f} µs "
                  f"| {ours / theirs:.2f}x |")
        else:
            print(f"| {kind} | {ours / count * 1e6:.0f} µs | {baseline} | |")
    known = best(args.repeat, store_run(work / "known_hosts.plain", hosts, host_keys, "strict"))

    def first_contact() -> None:
        path = work / "known_hosts.new"
        path.unlink(missing_ok=True)
        store_run(path, hosts, host_keys, "accept-new")()

    new = best(args.repeat, first_contact)
    print(f"\nfirst contact (accept-new appends {count} lines): {new / count * 1e6:.0f} µs per host, "
          f"{new / known:.2f}x the known-host check")


if __name__ == "__main__":
    main()
