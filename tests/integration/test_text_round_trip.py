"""Whatever text a user can send comes back exactly as sent, on both stores.

A NUL character is valid text that PostgreSQL's text type cannot hold: in a message, a title,
metadata, a checkpoint's name, a context file, a snapshot's meta, a model call's record, it is
stored faithfully and every read (history, as_of, search, the conversation list, checkpoints,
verify, a rebuild, a fresh process) gives it back.

And a command is all or nothing: when a projection fails in the middle of an append, the event
is not in the log either, and the store opens and works as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from chatledger.ledger import Ledger
from tests.stores import Store

NUL = "\x00"


def text(label: str) -> str:
    """Text with NUL at the start, inside a word and at the end, next to lookalikes of an
    escape (a backslash and zero, a noncharacter and zero)."""
    return f"{NUL}{label} a{NUL}b \\0 \uffff0 \uffff{NUL}"


def write_context_file(workspace: Path, name: str, content: str) -> None:
    folder = workspace / "context"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(content, encoding="utf-8")


def test_text_with_nul_comes_back_exactly_from_every_read(store: Store) -> None:
    write_context_file(store.workspace, "notes.txt", text("context file"))
    ledger = store.ledger()
    conversation = ledger.start_conversation(title=text("title"), system_prompt=text("system"))
    metadata = {text("key"): text("value"), "list": [text("item")]}
    first = ledger.append_message(conversation, "user", text("message"), metadata=metadata)
    # Found only through the full-text index: not the first user message, not in a title.
    ledger.append_message(conversation, "assistant", f"hidden{NUL}zebra")
    checkpoint = ledger.create_checkpoint(
        conversation, name=text("checkpoint"), description=text("why")
    )
    ledger.load_context_file(conversation, "notes.txt")
    snapshot = ledger.take_snapshot(conversation, {text("meta key"): text("meta value")})
    ledger.prepare_turn(
        conversation,
        text("question"),
        provider=text("provider"),
        model=text("model"),
        idempotency_key=text("key"),
    )
    branch = ledger.branch(checkpoint, title=text("branch"))

    def assert_reads_give_it_back(ledger: Ledger) -> None:
        history = ledger.history(conversation)
        assert [m["content"] for m in history] == [
            text("system"),
            text("message"),
            f"hidden{NUL}zebra",
            text("context file"),
            text("question"),
        ]
        assert history[1]["metadata"] == metadata
        assert [m["content"] for m in ledger.as_of(conversation, first.position)] == [
            text("system"),
            text("message"),
        ]
        titles = {c["id"]: c["title"] for c in ledger.list_conversations()}
        assert titles == {str(conversation): text("title"), str(branch): text("branch")}
        assert _ids(ledger.list_conversations(search_term=f"message a{NUL}b")) == [conversation]
        assert _ids(ledger.list_conversations(search_term="zebra")) == [conversation]
        assert _ids(ledger.list_conversations(search_term=f"branch a{NUL}b")) == [branch]
        (manual,) = ledger.checkpoints(conversation, "manual")
        assert (manual.name, manual.description) == (text("checkpoint"), text("why"))
        stored = ledger.read.snapshot(snapshot)
        assert stored is not None
        assert stored.meta == {text("meta key"): text("meta value")}
        (call,) = ledger.read.model_calls(conversation)
        assert (call["provider"], call["model"]) == (text("provider"), text("model"))
        assert ledger.verify().ok

    assert_reads_give_it_back(ledger)
    ledger.rebuild_projections()
    assert_reads_give_it_back(ledger)
    # What a new process sees, with nothing held in memory.
    assert_reads_give_it_back(store.ledger())


def _ids(rows: list[dict[str, Any]]) -> list[UUID]:
    return [UUID(row["id"]) for row in rows]


def test_the_manager_keeps_a_nul_in_a_message(store: Store) -> None:
    manager = store.manager()
    manager.add_message("user", f"a{NUL}b")
    assert [m["content"] for m in manager.get_history()] == [f"a{NUL}b"]
    conversation = manager.get_conversation_id()
    reopened = store.manager()
    assert reopened.load(conversation)
    assert [m["content"] for m in reopened.get_history()] == [f"a{NUL}b"]


def test_a_projection_failing_mid_append_leaves_the_log_without_the_event(store: Store) -> None:
    ledger = store.ledger()
    conversation = ledger.start_conversation(title="all or nothing")
    ledger.append_message(conversation, "user", "before")
    log_before = store.log_rows()
    listed_before = ledger.list_conversations()

    project = ledger.store.projector
    assert project is not None

    def project_then_fail(cursor: Any, events: Any, notification_ids: Any) -> None:
        # The projections have written their rows in the insert's transaction; then one
        # fails, as a bug in a handler or a value its database refuses would.
        project(cursor, events, notification_ids)
        raise RuntimeError("a projection failed")

    ledger.store.projector = project_then_fail
    with pytest.raises(RuntimeError, match="a projection failed"):
        ledger.append_message(conversation, "user", "lost with its projection")
    ledger.store.projector = project

    assert store.log_rows() == log_before, "the event outlived its failed projection"
    assert ledger.list_conversations() == listed_before
    assert [m["content"] for m in ledger.history(conversation)] == ["before"]
    ledger.append_message(conversation, "user", "after")
    reopened = store.ledger()
    assert [m["content"] for m in reopened.history(conversation)] == ["before", "after"]
    assert reopened.verify().ok
