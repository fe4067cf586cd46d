"""Stand-in ``sglang`` package for test hosts (put ``cluster/testing/standins`` on PYTHONPATH).

Only ``python3 -m sglang.launch_server`` (and ``sglang.__version__``) is provided; it runs
``cluster/testing/standin_server.py``, loaded by file path so that nothing else
(no fabric, no ``cluster`` package imports) is needed on the test host.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType


def _version() -> str:
    """``$CLUSTER_SIM_ROOT/sglang-version`` when the host has one (a rehearsal host with a
    different sglang, for inv preflight), else the stand-in's own."""
    root = os.environ.get("CLUSTER_SIM_ROOT")
    try:
        text = Path(root, "sglang-version").read_text().strip() if root else ""
    except OSError:
        text = ""
    return text or "0.0.0-standin"


__version__ = _version()
_IMPL = Path(__file__).resolve().parents[2] / "standin_server.py"


def load_standin() -> ModuleType:
    """The stand-in implementation module, loaded from its file."""
    name = "_cluster_standin_server"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _IMPL)
    assert spec and spec.loader, _IMPL
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module
