"""Stand-in vLLM server (tests/rehearsals only). See :mod:`cluster.testing.standin_server`.

Run as ``vllm serve MODEL ...`` with ``cluster/testing/bin`` on PATH, or directly:
``python3 -m cluster.testing.vllm_server serve MODEL ...``.
"""

from __future__ import annotations

import sys

from .standin_server import Options, child_titles, parse_vllm, read_requests, request_log_path, run
from .standin_server import vllm_main as main

__all__ = ["Options", "child_titles", "main", "parse_vllm", "read_requests", "request_log_path", "run"]

if __name__ == "__main__":
    sys.exit(main())
