"""docs/api.md: every example runs as written against the loopback fleet, and every public
method of `Cluster` has an example.

The examples read the roles file from ``$CLUSTER_ROLES``: here the fleet's hosts with the
roles prefill (127.0.1.1) and decode (127.0.1.2, 127.0.1.3), a ``serving:`` section
running the stand-in servers and the real sglang-router on ``local``, and the stand-in
nvidia-smi on the prefill host. The serving example starts, restarts and stops a
deployment; whatever a failure leaves is killed at the end.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from test_pd_lifecycle import DECODES, PD, PREFILL, install_nvidia_smi

from cluster.api import Cluster

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


@pytest.fixture(scope="module")
def docs_cluster(fleet, tmp_path_factory):
    """A roles file (and state dir) for the examples; cleaned up after the module."""
    pd = PD(fleet, tmp_path_factory.mktemp("api-docs"))
    pd.serving["router"]["host"] = "local"
    pd.write_roles({"prefill": PREFILL, "decode": DECODES})
    added = install_nvidia_smi(fleet, PREFILL)
    try:
        yield pd
    finally:
        pd.cleanup(set())
        if added is not None:
            added.unlink()


def test_the_page_has_examples():
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("number", range(len(EXAMPLES)))
def test_every_example_runs_against_the_fleet(docs_cluster, monkeypatch, number, capsys):
    monkeypatch.setenv("CLUSTER_ROLES", str(docs_cluster.roles))
    monkeypatch.setenv("CLUSTER_STATE_DIR", str(docs_cluster.state_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = compile(EXAMPLES[number], f"docs/api.md example {number + 1}", "exec")
    exec(code, {"__name__": f"api_example_{number + 1}"})  # noqa: S102 (the documented examples)
    assert capsys.readouterr().out  # every example shows something


def test_every_public_cluster_method_has_an_example():
    text = "\n".join(EXAMPLES)
    public = [name for name, _ in inspect.getmembers(Cluster) if not name.startswith("_")]
    missing = [name for name in public if not re.search(rf"\.{name}\b", text)]
    assert public and missing == []
