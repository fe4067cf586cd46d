"""Helpers shared by several test modules (imported as ``helpers``; tests/ is on sys.path)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def http(method: str, url: str, body: Any = None, timeout: float = 3) -> tuple[int, str]:
    """(status, text); status 0 when nothing answers. Proxies bypassed (loopback only)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> tuple[int, str, str]:
    """Run the task CLI (``python -m cluster_cli``) from the repo root: (exit code, stdout, stderr)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-m", "cluster_cli", *args], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200", **(env or {})},
                          cwd=Path(__file__).resolve().parent.parent, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def cli_json(*args: str, **kwargs: Any) -> tuple[int, dict]:
    """`cli` with ``--json`` added; the parsed document (AssertionError when it is not JSON)."""
    code, out, err = cli(*args, "--json", **kwargs)
    try:
        return code, json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON (exit {code}):\n{out}\n{err}") from None
