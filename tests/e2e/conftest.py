"""Fixtures of the command line's end-to-end tests (the harness is in harness.py): the demo,
run once per module and store as a real process, and the `store` of tests/conftest.py, which
the test's commands use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import pytest
from rich.console import Console

from chatledger import cli
from infrastructure.stores import DATABASE_URL_VARIABLE
from tests.e2e.harness import Demo, chatledger
from tests.stores import BACKENDS, Store, open_store


@pytest.fixture(autouse=True)
def cli_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs print through cli's consoles, which chose their colours when imported:
    give them none, whatever terminal pytest runs in (the app itself widens them for a pipe).
    And a test runs on the workspace's SQLite file unless it asks for another store, even
    where the developer's shell sets CHATLEDGER_DATABASE_URL."""
    monkeypatch.setattr(cli, "console", Console(no_color=True))
    monkeypatch.setattr(cli, "err_console", Console(stderr=True, soft_wrap=True, no_color=True))
    monkeypatch.setenv(DATABASE_URL_VARIABLE, "")


@pytest.fixture(scope="module", params=BACKENDS)
def demo_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Demo]:
    with open_store(request.param, tmp_path_factory.mktemp("cli") / "ws") as store:
        result = chatledger("demo", "--workspace", store.workspace, env=store.env)
        assert result.code == 0, result.out + result.err
        with closing(store.ledger()) as ledger:
            conversations = ledger.list_conversations()
            branches = ledger.branch_tree()
            events = ledger.verify().events
        assert len(branches) == 1
        yield Demo(
            store,
            store.workspace,
            result,
            parent=branches[0]["parent_id"],
            branch=branches[0]["branch_id"],
            conversations=conversations,
            events=events,
        )


@pytest.fixture
def demo(demo_run: Demo, cli_defaults: None, monkeypatch: pytest.MonkeyPatch) -> Demo:
    """The module's demo on one store; the test's commands, in-process or not, use that store."""
    monkeypatch.setenv(DATABASE_URL_VARIABLE, demo_run.store.url)
    return demo_run


@pytest.fixture
def store(store: Store, cli_defaults: None, monkeypatch: pytest.MonkeyPatch) -> Store:
    """tests/conftest.py's empty store of the test's own; the test's commands use it."""
    monkeypatch.setenv(DATABASE_URL_VARIABLE, store.url)
    return store
