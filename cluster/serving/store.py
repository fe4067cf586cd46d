"""The controller-side record of deployments (the manifest store).

One JSON file per deployment name: ``$CLUSTER_STATE_DIR/<name>.json``, else
``~/.cluster/deployments/<name>.json`` (:func:`cluster.serving.manifest.manifest_path`),
in the shape of :class:`cluster.serving.manifest.Manifest`. Written atomically; read by
stop-pd, pd-status and logs.
"""

from __future__ import annotations

import os
from pathlib import Path

from .manifest import DEFAULT_DEPLOYMENT, Manifest, manifest_path


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
