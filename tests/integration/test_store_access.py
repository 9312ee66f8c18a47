"""Whose store a file is, and how it may be opened.

A SQLite file is chatledger's when it holds chatledger's own marker table (chatledger_meta);
a file of another program, even another eventsourcing application with its own
`stored_events`, is refused before anything is written to it. A Ledger opened read-only (as
the reading commands open it) writes nothing, not even to a store of its own, reads a file
it may not write, and refuses a command with a message that says read-only. A file damaged
in its middle, wherever the damage lies, gives a StoreError naming the file from every call
that meets it, never another exception.

The SQLite file is what these are about; the read-only opening also runs on PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chatledger import StoreError
from chatledger.ledger import Ledger
from infrastructure.sqlite_store import DB_FILE
from tests.damaged_stores import another_eventsourcing_application, damage_pages_of, files, tables
from tests.stores import Store

SQLITE = ""


@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
def test_another_eventsourcing_application_is_refused_untouched(
    tmp_path: Path, read_only: bool
) -> None:
    path = another_eventsourcing_application(tmp_path / "ws")
    their_tables = tables(path)
    before = files(path.parent)

    with pytest.raises(StoreError) as refused:
        Ledger(path.parent, database_url=SQLITE, read_only=read_only)

    assert str(path) in str(refused.value)
    assert "another program" in str(refused.value)
    assert tables(path) == their_tables == {"stored_events"}
    assert files(path.parent) == before


def test_stores_of_chatledger_still_open_empty_new_or_written_long_ago(tmp_path: Path) -> None:
    """The marker must not turn away what is chatledger's: a new workspace, an empty file
    left by a first opening that died before its first table, a store of release 0.1."""
    Ledger(tmp_path / "new", database_url=SQLITE).close()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / DB_FILE).write_bytes(b"")
    Ledger(empty, database_url=SQLITE).close()
    old = tmp_path / "old"
    old.mkdir()
    fixture = Path(__file__).parent.parent / "fixtures" / "release-0.1-v1-events.db"
    (old / DB_FILE).write_bytes(fixture.read_bytes())
    ledger = Ledger(old, database_url=SQLITE)
    assert len(ledger.list_conversations()) == 2
    ledger.close()


def _filled(store: Store) -> tuple[Ledger, Any]:
    ledger = store.ledger()
    conversation = ledger.start_conversation(title="read me")
    ledger.append_message(conversation, "user", "hello")
    ledger.create_checkpoint(conversation, name="here")
    return ledger, conversation


def test_a_read_only_ledger_reads_everything_and_writes_nothing(store: Store) -> None:
    writer, conversation = _filled(store)
    (checkpoint,) = writer.checkpoints(conversation, "manual")
    listed, history = writer.list_conversations(), writer.history(conversation)
    writer.close()
    before = _contents(store)

    reader = store.ledger(read_only=True)
    assert reader.list_conversations() == listed
    assert reader.history(conversation) == history
    assert reader.as_of(conversation, 2) == history
    assert reader.checkpoints(conversation, "manual") == [checkpoint]
    assert reader.context_at(conversation)["sent"]
    assert reader.branch_tree() == []
    assert reader.verify().ok
    for command in (
        lambda: reader.append_message(conversation, "user", "no"),
        lambda: reader.create_checkpoint(conversation, name="no"),
        reader.rebuild_projections,
    ):
        with pytest.raises(StoreError, match="read-only"):
            command()
    reader.close()

    assert _contents(store) == before


def _contents(store: Store) -> Any:
    if store.name == "sqlite":
        return files(store.workspace)
    return store.tables()


@pytest.mark.parametrize("where", ["missing-folder", "empty-folder", "empty-file"])
def test_a_read_only_ledger_never_creates_a_store(tmp_path: Path, where: str) -> None:
    workspace = tmp_path / "ws"
    if where != "missing-folder":
        workspace.mkdir()
    if where == "empty-file":
        (workspace / DB_FILE).write_bytes(b"")
    before = files(workspace) if workspace.exists() else None

    with pytest.raises(StoreError, match="no chatledger store in"):
        Ledger(workspace, database_url=SQLITE, read_only=True)

    assert (files(workspace) if workspace.exists() else None) == before


def test_a_read_only_ledger_refuses_a_store_whose_read_models_are_out_of_date(
    tmp_path: Path,
) -> None:
    """A store from an older chatledger needs its projections rebuilt, which is a write."""
    old = tmp_path / "old"
    old.mkdir()
    fixture = Path(__file__).parent.parent / "fixtures" / "release-0.1-v1-events.db"
    (old / DB_FILE).write_bytes(fixture.read_bytes())
    before = files(old)

    with pytest.raises(StoreError, match="chatledger rebuild"):
        Ledger(old, database_url=SQLITE, read_only=True)

    assert files(old) == before
    Ledger(old, database_url=SQLITE).close()
    assert len(Ledger(old, database_url=SQLITE, read_only=True).list_conversations()) == 2


# -- damage in the middle of the file ---------------------------------------------------------
CALLS: list[tuple[str, Callable[[Ledger, Any], Any]]] = [
    ("list_conversations", lambda lg, c: lg.list_conversations()),
    ("search", lambda lg, c: lg.list_conversations(search_term="hello")),
    ("history", lambda lg, c: lg.history(c)),
    ("as_of", lambda lg, c: lg.as_of(c, 2)),
    ("context_at", lambda lg, c: lg.context_at(c)),
    ("checkpoints", lambda lg, c: lg.checkpoints(c)),
    ("branch_tree", lambda lg, c: lg.branch_tree()),
    ("verify", lambda lg, c: lg.verify()),
    ("append_message", lambda lg, c: lg.append_message(c, "user", "more")),
    ("create_checkpoint", lambda lg, c: lg.create_checkpoint(c, name="more")),
    ("rebuild_projections", lambda lg, c: lg.rebuild_projections()),
]


@pytest.mark.parametrize(
    "table",
    [
        "stored_events",
        "stored_snapshots",
        "conversations",
        "conversation_views",
        "checkpoints",
        "projection_tracking",
        "message_search_data",
    ],
)
@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
def test_damage_anywhere_in_the_file_is_a_store_error_naming_it(
    tmp_path: Path, table: str, read_only: bool
) -> None:
    workspace = tmp_path / "ws"
    ledger = Ledger(workspace, database_url=SQLITE)
    conversation = ledger.start_conversation(title="damaged")
    for index in range(30):  # past a snapshot (every 25 events), over several pages
        ledger.append_message(conversation, "user", f"hello {index} " + "words " * 300)
    ledger.create_checkpoint(conversation, name="cp")
    ledger.close()
    path = workspace / DB_FILE
    damage_pages_of(path, table, seed=7)

    met_the_damage = []
    try:
        ledger = Ledger(workspace, database_url=SQLITE, read_only=read_only)
    except StoreError as error:
        assert str(path) in str(error), error
        return
    try:
        for name, call in CALLS:
            try:
                call(ledger, conversation)
            except StoreError as error:
                assert str(path) in str(error), f"{name}: {error}"
                met_the_damage.append(name)
    finally:
        ledger.close()
    assert met_the_damage, f"no call read the damaged pages of {table}"


def test_a_file_nobody_may_write_is_refused_for_writing_as_read_only(tmp_path: Path) -> None:
    """As root, permissions do not stop writes: this runs where they do."""
    if os.geteuid() == 0:
        pytest.skip("root may write any file; tests/e2e/test_cli_store_access.py drops the right")
    workspace = tmp_path / "ws"
    Ledger(workspace, database_url=SQLITE).close()
    (workspace / DB_FILE).chmod(0o444)
    try:
        with pytest.raises(StoreError, match="read-only") as refused:
            Ledger(workspace, database_url=SQLITE)
        assert "corrupt" not in str(refused.value)
        Ledger(workspace, database_url=SQLITE, read_only=True).close()
    finally:
        (workspace / DB_FILE).chmod(0o644)
