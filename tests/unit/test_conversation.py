"""The Conversation aggregate: pure, in memory, no store."""

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from domain import events
from domain.checkpoints import CheckpointType
from domain.conversation import Conversation
from domain.errors import InvalidInput
from domain.hashing import GENESIS_HASH
from domain.messages import Category, Role, TextPart
from domain.view import ViewState

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def started() -> Conversation:
    return Conversation.start(
        conversation_id=uuid4(),
        view=ViewState().with_new_session("s1"),
        prev_hash=GENESIS_HASH,
        timestamp=NOW,
    )


def say(conversation: Conversation, text: str, role: Role = Role.USER, tokens: int = 3) -> None:
    conversation.append_message(
        message_id=f"m-{text}",
        role=role,
        category=Category.SYSTEM if role is Role.SYSTEM else Category.DIALOG,
        parts=(TextPart(text=text),),
        tokens=tokens,
        encoding="test",
        timestamp=NOW,
        metadata={},
    )


def test_every_event_chains_to_the_one_before() -> None:
    conversation = started()
    say(conversation, "a")
    say(conversation, "b")
    recorded = conversation.collect_events()
    assert recorded[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in recorded[1:]] == [e.hash for e in recorded[:-1]]
    assert conversation.chain_tip == recorded[-1].hash


def test_hash_covers_the_payload() -> None:
    conversation = started()
    say(conversation, "a")
    event = conversation.collect_events()[1]
    assert isinstance(event, events.MessageAppended)
    edited = event.model_copy(update={"parts": (TextPart(text="b"),)})
    assert edited.compute_hash() != event.hash


def test_view_counts_messages_and_tokens_by_category() -> None:
    conversation = started()
    say(conversation, "sys", Role.SYSTEM, tokens=5)
    say(conversation, "hi", tokens=2)
    view = conversation.view
    assert (view.message_count, view.token_count) == (2, 7)
    assert view.tokens_by_category == {"SYSTEM": 5, "DIALOG": 2}
    assert [p.message_id for p in view.pinned] == ["m-sys"]
    assert view.eligible_since_auto_checkpoint == 1


def test_rollback_resolves_the_view_and_takes_an_undo_checkpoint() -> None:
    conversation = started()
    say(conversation, "a")
    target = conversation.create_checkpoint(
        checkpoint_id="cp", checkpoint_type=CheckpointType.MANUAL, timestamp=NOW
    )
    view_at_target = conversation.view
    say(conversation, "b")
    conversation.roll_back(
        checkpoint_id="cp",
        target_position=target,
        view_at_target=view_at_target,
        undo_checkpoint_id="undo",
        timestamp=NOW,
    )
    undo, rolled = conversation.collect_events()[-2:]
    assert (
        isinstance(undo, events.CheckpointCreated)
        and undo.checkpoint_type is CheckpointType.ROLLBACK
    )
    assert isinstance(rolled, events.RolledBack)
    assert conversation.view.message_count == 1
    assert conversation.view.segments(conversation.id, conversation.version) == (
        rolled.view.closed[0],
    )
    assert rolled.view.open_from == conversation.version + 1


def test_session_start_carries_pins_and_adds_one_marker() -> None:
    conversation = started()
    say(conversation, "sys", Role.SYSTEM, tokens=5)
    say(conversation, "hi", tokens=2)
    conversation.start_session(
        session_id="s2",
        reason="full",
        marker_message_id="marker",
        marker_text="continued",
        marker_tokens=1,
        encoding="test",
        timestamp=NOW,
    )
    session = conversation.view.session
    assert (session.session_id, session.number, session.message_count) == ("s2", 2, 1)
    assert session.tokens_by_category == {"SYSTEM": 6}
    assert [p.message_id for p in conversation.view.pinned] == ["m-sys"]


def test_bad_commands_raise_typed_errors_and_record_nothing() -> None:
    conversation = started()
    conversation.collect_events()
    with pytest.raises(InvalidInput):
        conversation.fork(branch_id=uuid4(), position=99, source_id="x", timestamp=NOW)
    with pytest.raises(InvalidInput):
        conversation.retitle("   ", NOW)
    assert conversation.collect_events() == []
