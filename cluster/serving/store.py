"""Where deployments are recorded: the controller's manifest store, and the per-server
records start-pd leaves in each host's run dir (:func:`discover_records`, over SSH).

One JSON file per deployment name: ``$CLUSTER_STATE_DIR/<name>.json``, else
``~/.cluster/deployments/<name>.json`` (:func:`cluster.serving.manifest.manifest_path`),
in the shape of :class:`cluster.serving.manifest.Manifest`. Written atomically; read by
stop-pd, pd-status and logs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..hosts import Host
from ..result import Failure
from ..ssh import Engine, HostSession
from .manifest import (
    DEFAULT_DEPLOYMENT,
    Manifest,
    ServerRecord,
    manifest_path,
    parse_records,
    records_command,
)
from .remote import each, host_of, run_script, transport_failure


def manifest_file(name: str | None = None) -> Path:
    """Controller-side manifest of deployment ``name`` (default ``default``):
    ``$CLUSTER_STATE_DIR/<name>.json``, else ``~/.cluster/deployments/<name>.json``."""
    return Path(manifest_path(name or DEFAULT_DEPLOYMENT)).expanduser()


def load_manifest(name: str | None = None) -> Manifest | None:
    """The recorded deployment ``name``, or None when there is none."""
    path = manifest_file(name)
    try:
        return Manifest.loads(path.read_text())
    except FileNotFoundError:
        return None


def save_manifest(manifest: Manifest) -> Path:
    """Write the manifest atomically (temp file + rename); returns its path."""
    path = manifest_file(manifest.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(manifest.dumps() + "\n")
    os.replace(tmp, path)
    return path


def discover_records(engine: Engine, hosts: Sequence[Host], run_dir: str,
                     fanout: int | None = None) -> dict[Host, list[ServerRecord] | BaseException]:
    """The server records start-pd left in ``run_dir`` on each host (its own files only)."""
    def one(session: HostSession) -> list[ServerRecord]:
        address = "127.0.0.1" if session.host.is_local else session.host.hostname
        result = run_script(session, records_command(run_dir, address))
        return [r for r in parse_records(result.stdout) if r.host == address]

    return each(engine, hosts, one, fanout)


def records_on_hosts(engine: Engine, manifest: Manifest | None, hosts: Sequence[Host],
                     run_dir: str | None, fanout: int | None = None
                     ) -> tuple[list[ServerRecord], dict[Host, Failure]]:
    """The servers recorded on ``hosts``: the manifest's, then those found in ``run_dir``
    on each host that the manifest did not list (so it works without a manifest).

    Also returns the hosts whose run dir could not be read, with their failure.
    """
    wanted = {h.hostname for h in hosts}
    records = [r for r in manifest.servers if host_of(r.target).hostname in wanted] if manifest else []
    failures: dict[Host, Failure] = {}
    if run_dir:
        for host, found in discover_records(engine, hosts, run_dir, fanout).items():
            if isinstance(found, BaseException):
                failures[host] = transport_failure(engine, host, found)
                continue
            known = {(r.record_path, r.pid) for r in records}
            records += [r for r in found if (r.record_path, r.pid) not in known]
    return records, failures
