"""Stand-in ``sglang`` package for test hosts (put ``cluster/testing/standins`` on PYTHONPATH).

Only ``python3 -m sglang.launch_server`` (and ``sglang.__version__``) is provided; it runs
``cluster/testing/standin_server.py``, loaded by file path so that nothing else
(no fabric, no ``cluster`` package imports) is needed on the test host. Importing the
package itself stays cheap (``inv preflight`` imports it on every host for its version).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing costs more than the rest of this file
if TYPE_CHECKING:
    from types import ModuleType


def _version() -> str:
    """``$CLUSTER_SIM_ROOT/sglang-version`` when the host has one (a rehearsal host with a
    different sglang, for inv preflight), else the stand-in's own."""
    root = os.environ.get("CLUSTER_SIM_ROOT", "")
    try:
        with open(os.path.join(root, "sglang-version") if root else "") as file:
            text = file.read().strip()
    except (OSError, TypeError):
        text = ""
    return text or "0.0.0-standin"


__version__ = _version()
_IMPL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))),
                     "standin_server.py")


def load_standin() -> ModuleType:
    """The stand-in implementation module, loaded from its file."""
    import importlib.util

    name = "_cluster_standin_server"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _IMPL)
    assert spec and spec.loader, _IMPL
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module
