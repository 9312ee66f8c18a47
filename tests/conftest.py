"""Fixtures every test can ask for (pytest finds them here; nothing to import)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stores import BACKENDS, Store, open_store


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A new, empty store per test, once per backend: the workspace's SQLite file, and a fresh
    PostgreSQL schema when CHATLEDGER_TEST_POSTGRES names a server (see tests/stores.py).
    Its workspace is `tmp_path / "ws"`, not yet created. What the test opened through it is
    closed afterwards, and the schema dropped. A process the test spawns opens the same
    store through `store.spec`."""
    with open_store(request.param, tmp_path / "ws") as opened:
        yield opened
