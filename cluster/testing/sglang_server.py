"""Stand-in SGLang server (tests/rehearsals only). See :mod:`cluster.testing.standin_server`.

Run as ``python3 -m sglang.launch_server ...`` with ``cluster/testing/standins`` on
PYTHONPATH, as ``sglang serve ...`` with ``cluster/testing/bin`` on PATH, or
directly: ``python3 -m cluster.testing.sglang_server --model-path M ...``.
"""

from __future__ import annotations

import sys

from .standin_server import (
    Options,
    child_titles,
    parse_sglang,
    read_requests,
    request_log_path,
    run,
)
from .standin_server import sglang_main as main

__all__ = ["Options", "child_titles", "main", "parse_sglang", "read_requests", "request_log_path", "run"]

if __name__ == "__main__":
    sys.exit(main())
