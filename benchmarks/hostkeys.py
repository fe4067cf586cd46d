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

``--ref DIR`` adds the store of another checkout (``git archive COMMIT
cluster | tar -x -C DIR``) on the same files, in a child process: the
pre-issue-13 API (``HostKeyStore(path).check(name, key)`` after a lookup) or
this one.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parents[1]
# ``cluster`` is imported where used: a --ref child imports the reference checkout's.

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
    from cluster.hostkeys import hash_name

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
    from cluster.hostkeys import HostKeyStore, HostKeyTarget

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


def ref_run(path: Path, count: int, repeat: int) -> float:
    """In a child whose ``cluster`` is the reference checkout: best seconds for the file."""
    import cluster.hostkeys as ref

    print(f"reference store: {ref.__file__}", file=sys.stderr)

    hosts = names(count)
    lines = path.read_text().splitlines()[:count]
    host_keys = [paramiko.PKey.from_type_string(line.split()[1], base64.b64decode(line.split()[2]))
                 for line in lines]
    if hasattr(ref, "HostKeyTarget"):
        return best(repeat, store_run(path, hosts, host_keys, "strict"))

    def old_api() -> None:
        store = ref.HostKeyStore(path, "strict")
        for name, key in zip(hosts, host_keys):
            store.host_keys.lookup(name)
            assert store.check(name, key) == "known"
    return best(repeat, old_api)


def ref_seconds(ref: str, path: Path, count: int, repeat: int) -> float:
    code = (f"import sys; sys.path[:0] = [{ref!r}, {str(ROOT / 'benchmarks')!r}]; import hostkeys as b; "
            f"print(b.ref_run(b.Path({str(path)!r}), {count}, {repeat}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    sys.path.insert(0, str(ROOT))  # this checkout's cluster package, installed or not
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000, help="hosts, and lines per file (default 1000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement, best kept (default 5)")
    parser.add_argument("--ref", metavar="DIR", help="also time the store of the checkout in DIR (DIR/cluster)")
    args = parser.parse_args()
    count = args.hosts
    hosts, host_keys = names(count), keys(count)
    work = Path(tempfile.mkdtemp(prefix="hostkeys-bench-"))
    print(f"{count} hosts, known_hosts of {count} lines, best of {args.repeat}\n")
    ref = " | ref store per host | vs ref" if args.ref else ""
    print(f"| file | store: order + check per host | paramiko HostKeys: load + lookup per host | ratio{ref} |")
    print("|---|---|---|---|" + ("---|---|" if args.ref else ""))
    for kind in ("plain", "hashed", "patterns"):
        path = work / f"known_hosts.{kind}"
        path.write_text(known_hosts(kind, hosts, host_keys))
        ours = best(args.repeat, store_run(path, hosts, host_keys, "strict"))
        row = f"| {kind} | {ours / count * 1e6:.0f} µs"
        if kind == "patterns":
            row += " | n/a (no patterns or markers) |"
        else:
            theirs = best(args.repeat, paramiko_run(path, hosts, host_keys))
            row += f" | {theirs / count * 1e6:.0f} µs | {ours / theirs:.2f}x"
        if args.ref:
            old = ref_seconds(args.ref, path, count, args.repeat)
            row += f" | {old / count * 1e6:.0f} µs | {ours / old:.2f}x"
        print(row + " |")
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
