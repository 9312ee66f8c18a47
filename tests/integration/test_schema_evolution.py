"""A store written by an earlier release opens and works: its version-1 events are upcast
on read, its hash chains still verify, and projections whose schema changed are rebuilt.

The fixture was written by release 0.1 (commit 9a32e57), whose MessageAppended (v1) also
stored `pinned` and `eligible`."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import orjson
import pytest

from chatledger import ConversationManager
from chatledger.ledger import Ledger
from domain.events import MessageAppended

FIXTURE = Path(__file__).parent.parent / "fixtures" / "release-0.1-v1-events.db"


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    shutil.copy(FIXTURE, workspace / "chatledger.db")
    return workspace


def test_the_fixture_really_holds_version_1_events() -> None:
    with sqlite3.connect(FIXTURE) as db:
        states = [
            orjson.loads(state)
            for (state,) in db.execute(
                "SELECT state FROM stored_events WHERE topic=?", (MessageAppended.TOPIC,)
            )
        ]
    assert states and all("pinned" in s and "class_version" not in s for s in states)


def test_an_old_store_opens_reads_verifies_and_grows(old_store: Path) -> None:
    ledger = Ledger(old_store)
    try:
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
    finally:
        ledger.close()


async def test_an_old_conversation_continues_through_the_manager(old_store: Path) -> None:
    manager = ConversationManager(workspace_path=old_store)
    parent = next(
        c["id"] for c in manager.list_conversations() if c["title"].startswith("Written by")
    )
    assert manager.load(parent)
    answer = await manager.process_message("Still there?")
    assert "Still there?" in answer
    assert manager.get_history()[-2]["content"] == "Still there?"
