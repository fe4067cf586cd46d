"""``python3 -m sglang.launch_server ...`` on a test host: runs the stand-in SGLang server."""

from __future__ import annotations

import sys

from sglang import load_standin

if __name__ == "__main__":
    sys.exit(load_standin().sglang_main(sys.argv[1:]))
