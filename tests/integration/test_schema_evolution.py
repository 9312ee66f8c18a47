"""A store written by an earlier release opens and works: its version-1 events are upcast
on read, its hash chains still verify, and projections whose schema changed are rebuilt.

The fixture was written by release 0.1 (commit 9a32e57), whose MessageAppended (v1) also
stored `pinned` and `eligible`. Release 0.1 only had SQLite; on PostgreSQL the same events are
copied into a new store's log, as moving a store between databases by hand would, and
chatledger must make of them what it makes of the file."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from uuid import UUID

import orjson
import pytest

from domain.events import MessageAppended
from tests.stores import Store

FIXTURE = Path(__file__).parent.parent / "fixtures" / "release-0.1-v1-events.db"


def _copy_events_to(store: Store) -> None:
    """The fixture's log, row by row and in its order, into the log table of the store, and
    nothing else: no snapshots, no projections."""
    # chatledger creates its tables itself, on first opening the (empty) store.
    store.ledger().close()
    with closing(sqlite3.connect(FIXTURE)) as fixture:
        rows = fixture.execute(
            "SELECT originator_id, originator_version, topic, state FROM stored_events "
            "ORDER BY rowid"
        ).fetchall()
    for originator_id, version, topic, state in rows:
        # The log numbers the rows itself (notification_id), in the order inserted.
        store.execute(
            f"INSERT INTO {store.dialect.events_table} "
            "(originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?)",
            UUID(hex=originator_id),
            version,
            topic,
            state,
        )
    assert len(store.rows(f"SELECT * FROM {store.dialect.events_table}")) == len(rows)
    # The projections know nothing of them: their tracked position is still 0, where the
    # empty store left it, so the next opening must catch up from the log.
    assert store.rows("SELECT * FROM conversations") == []
    assert {p for (p,) in store.rows("SELECT position FROM projection_tracking")} == {0}


@pytest.fixture
def old_store(store: Store) -> Store:
    """The test's store, holding the log release 0.1 wrote (and nothing else)."""
    store.workspace.mkdir()
    if store.name == "sqlite":
        shutil.copy(FIXTURE, store.workspace / "chatledger.db")
    else:
        _copy_events_to(store)
    return store


def test_the_fixture_really_holds_version_1_events() -> None:
    with sqlite3.connect(FIXTURE) as db:
        states = [
            orjson.loads(state)
            for (state,) in db.execute(
                "SELECT state FROM stored_events WHERE topic=?", (MessageAppended.TOPIC,)
            )
        ]
    assert states and all("pinned" in s and "class_version" not in s for s in states)


def test_an_old_store_opens_reads_verifies_and_grows(old_store: Store) -> None:
    ledger = old_store.ledger()
    listed = {c["title"]: c for c in ledger.list_conversations()}
    assert set(listed) == {"Written by release 0.1 (MessageAppended v1)", "v1 branch"}
    parent = listed["Written by release 0.1 (MessageAppended v1)"]["id"]
    branch = listed["v1 branch"]["id"]
    assert [m["content"] for m in ledger.history(parent)] == [
        "You are a v1 assistant.",
        "Hello from the first release",
        "Hello back",
        "A later message",
    ]
    assert [m["content"] for m in ledger.history(branch)][-1] == "In the branch"
    # Upcast on read: the write model and the events load as version 2.
    events = [e for e in ledger.store.events.get(ledger.conversation(parent).id)]
    appended = [e for e in events if isinstance(e, MessageAppended)]
    assert len(appended) == 4 and all("pinned" not in e.document() for e in appended)
    assert appended[0].pinned and appended[1].eligible
    # The chains written then still verify, and as_of works (its projection was built).
    assert ledger.verify().ok
    assert [m["content"] for m in ledger.as_of(parent, 2)] == ["You are a v1 assistant."]
    ledger.append_message(parent, "user", "Written by this release")
    assert ledger.history(parent)[-1]["content"] == "Written by this release"
    assert ledger.verify().ok


async def test_an_old_conversation_continues_through_the_manager(old_store: Store) -> None:
    manager = old_store.manager()
    parent = next(
        c["id"] for c in manager.list_conversations() if c["title"].startswith("Written by")
    )
    assert manager.load(parent)
    answer = await manager.process_message("Still there?")
    assert "Still there?" in answer
    assert manager.get_history()[-2]["content"] == "Still there?"
