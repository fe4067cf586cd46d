"""``python3 -m sglang.launch_server ...`` on a test host: runs the stand-in SGLang server."""

from __future__ import annotations

import sys

from . import load_standin  # the stand-in package (run as `-m sglang.launch_server`)

if __name__ == "__main__":
    sys.exit(load_standin().sglang_main(sys.argv[1:]))
