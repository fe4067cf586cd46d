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


def serving_config(**doc: Any) -> Any:
    """A ``serving:`` section as parsed from roles.yaml (model path defaulted)."""
    from cluster.serving.config import parse_serving

    doc.setdefault("model_path", "deepseek-ai/DeepSeek-V3")
    return parse_serving(doc, source="roles.yaml")


def run_local(script: str) -> Any:
    """Run shell text on this machine (``sh -s``); the CompletedProcess."""
    import subprocess

    return subprocess.run(["sh", "-s"], input=script, text=True, capture_output=True, timeout=30)
