"""Shared fixtures: a session-wide loopback fleet of real sshd processes, and a clean env."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from cluster.testing import Fleet


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fleet: integration test against real sshd on loopback")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the fleet, so `-m "not fleet"` runs the pure tests only."""
    for item in items:
        if "fleet" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.fleet)


@pytest.fixture(scope="session")
def fleet_dir():
    """Make work dirs for fleets OUTSIDE pytest's temp root.

    Every pytest session resets /tmp/pytest-of-<user> to mode 0700, which locks
    the fleet's login user out of a running fleet's authorized_keys when two
    sessions overlap (parallel developers, a rehearsal cluster). Dirs made here
    are removed at the end of the session.
    """
    made: list[Path] = []

    def make(name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"cluster-{name}-"))
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def fleet(fleet_dir):
    """8 good hosts on 127.0.1.[1-8] plus the special hosts, for the whole session."""
    with Fleet(fleet_dir("fleet")) as running:
        yield running


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CLUSTER_ROLES, an empty HOME (no ~/.ssh/config, keys or agent), cwd without roles.yaml.

    Returns the empty home directory; the cwd is its parent.
    """
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.delenv("CLUSTER_ROLES", raising=False)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home
