"""Penguin's checkpoint semantics: the conversation plane switch, and a conversation with
nothing in it yet, which has nothing to checkpoint."""

from __future__ import annotations

from uuid import UUID

import pytest

from chatledger import CheckpointConfig, InvalidInput, NothingToCheckpoint
from tests.stores import Store


def stored_events(store: Store) -> int:
    (count,) = store.rows(f"SELECT COUNT(*) FROM {store.dialect.events_table}")[0]
    return int(count)


async def test_with_the_conversation_plane_off_only_manual_checkpoints_are_taken(
    store: Store,
) -> None:
    planes = {"conversation": False, "tasks": False, "code": False}
    manager = store.manager(checkpoint_config=CheckpointConfig(planes=planes))
    await manager.process_message("Plan a weekend in Lisbon.")
    manager.add_message("tool", "3 hotels found")
    assert manager.list_checkpoints() == []

    checkpoint = await manager.create_manual_checkpoint("before day trips")
    assert [(c["id"], c["type"]) for c in manager.list_checkpoints()] == [(checkpoint, "manual")]


async def test_a_conversation_with_only_its_system_prompt_has_nothing_to_checkpoint(
    store: Store,
) -> None:
    manager = store.manager(system_prompt="You are a concise assistant.")
    conversation = UUID(manager.get_conversation_id())
    before = stored_events(store)

    # Penguin's API answers None; the Ledger underneath says why, and writes nothing.
    assert await manager.create_manual_checkpoint("too early") is None
    with pytest.raises(NothingToCheckpoint, match="nothing to checkpoint") as refused:
        manager.ledger.create_checkpoint(conversation, name="too early")
    assert isinstance(refused.value, InvalidInput)
    assert "besides its system prompt" in str(refused.value)
    assert stored_events(store) == before
    assert manager.list_checkpoints() == []

    # Anything the user puts in the conversation, even context alone, is worth a checkpoint.
    manager.add_context("The office is in Porto.", source="facts.md")
    assert await manager.create_manual_checkpoint("with context") is not None


async def test_a_conversation_with_no_messages_at_all_has_nothing_to_checkpoint(
    store: Store,
) -> None:
    manager = store.manager()
    # Asking before any conversation exists does not start one.
    assert await manager.create_manual_checkpoint() is None
    assert manager.list_conversations() == []
    manager.get_conversation_id()  # started, and still empty
    assert await manager.create_manual_checkpoint() is None
    await manager.process_message("hello")
    assert await manager.create_manual_checkpoint() is not None
