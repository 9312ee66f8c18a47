"""Every command of the Conversation aggregate records exactly what it was given, and every
event changes the write model exactly as its rule says (pure, in memory, no store)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID, uuid4

import pytest
from eventsourcing.utils import get_topic, resolve_topic

from domain import events
from domain.checkpoints import CheckpointType
from domain.conversation import Conversation, ConversationSnapshot
from domain.errors import InvalidInput
from domain.hashing import GENESIS_HASH
from domain.manifests import ManifestRecord
from domain.messages import Category, Role, TextPart, ToolResultPart
from domain.view import ViewState

T0 = datetime(2026, 4, 1, 8, tzinfo=UTC)
LATER = T0 + timedelta(minutes=7)
PARENT = UUID("3e0f5c1b-6a7d-4f8e-9b2c-1d4e5f6a7b8c")


def started(**kwargs: Any) -> Conversation:
    conversation = Conversation.start(
        conversation_id=uuid4(),
        view=ViewState().with_new_session("s1"),
        prev_hash=GENESIS_HASH,
        timestamp=T0,
        **kwargs,
    )
    conversation.collect_events()
    return conversation


def say(
    conversation: Conversation,
    message_id: str,
    role: Role = Role.USER,
    category: Category = Category.DIALOG,
    tokens: int = 5,
) -> None:
    conversation.append_message(
        message_id=message_id,
        role=role,
        category=category,
        parts=(TextPart(text=message_id),),
        tokens=tokens,
        encoding="enc",
        timestamp=T0,
        metadata={},
    )


def checkpoint(conversation: Conversation, checkpoint_id: str, kind: CheckpointType) -> int:
    return conversation.create_checkpoint(
        checkpoint_id=checkpoint_id, checkpoint_type=kind, timestamp=T0
    )


def recorded(
    conversation: Conversation, command: Callable[[Conversation], object]
) -> list[events.ConversationEvent]:
    conversation.collect_events()
    command(conversation)
    return [cast(events.ConversationEvent, e) for e in conversation.collect_events()]


def expected(
    cls: type[events.ConversationEvent],
    conversation: Conversation,
    back: int,
    prev: str,
    **fields: Any,
) -> events.ConversationEvent:
    """The event `cls` as it should stand at `back` positions before the head."""
    return cls(
        originator_id=conversation.id,
        originator_version=conversation.version - back,
        prev_hash=prev,
        **fields,
    )


# -- starting ------------------------------------------------------------------------------------
def test_starting_records_the_title_the_fork_point_and_the_view() -> None:
    cid, reset_from = uuid4(), uuid4()
    view = ViewState().with_new_session("s-branch")
    fork = events.ForkPoint(conversation_id=PARENT, position=4, source_id="cp-9")
    conversation = Conversation.start(
        conversation_id=cid,
        view=view,
        prev_hash="ab" * 32,
        timestamp=T0,
        title="Porto instead",
        parent=fork,
        reset_from=reset_from,
    )
    (event,) = conversation.collect_events()
    assert event == events.ConversationStarted(
        originator_id=cid,
        originator_version=1,
        originator_topic="chatledger:Conversation",
        timestamp=T0,
        prev_hash="ab" * 32,
        title="Porto instead",
        parent=fork,
        reset_from=reset_from,
        view=view,
    )
    assert (conversation.id, conversation.version, conversation.title) == (cid, 1, "Porto instead")
    assert (conversation.parent, conversation.view, conversation.chain_tip) == (
        fork,
        view,
        event.hash,
    )
    assert (conversation.live_auto_checkpoints, conversation.auto_checkpoints_taken) == (0, 0)


# -- each command and its event ------------------------------------------------------------------
def test_a_message_is_recorded_with_its_parts_tokens_session_and_metadata() -> None:
    conversation = started()
    prev = conversation.chain_tip
    parts = (TextPart(text="hello"), ToolResultPart(call_id="k1", content="42"))
    (event,) = recorded(
        conversation,
        lambda c: c.append_message(
            message_id="m1",
            role=Role.TOOL,
            category=Category.SYSTEM_OUTPUT,
            parts=parts,
            tokens=17,
            encoding="o200k_base",
            timestamp=LATER,
            metadata={"tool": "calc"},
        ),
    )
    assert event == expected(
        events.MessageAppended,
        conversation,
        0,
        prev,
        message_id="m1",
        role=Role.TOOL,
        category=Category.SYSTEM_OUTPUT,
        parts=parts,
        tokens=17,
        encoding="o200k_base",
        session_id="s1",
        metadata={"tool": "calc"},
        timestamp=LATER,
    )


def test_a_message_needs_a_part() -> None:
    conversation = started()
    with pytest.raises(InvalidInput) as error:
        conversation.append_message(
            message_id="m",
            role=Role.USER,
            category=Category.DIALOG,
            parts=(),
            tokens=1,
            encoding="enc",
            timestamp=T0,
            metadata={},
        )
    assert str(error.value) == "A message needs at least one content part."
    assert conversation.collect_events() == []


def test_a_new_session_records_where_it_came_from_and_its_marker() -> None:
    conversation = started()
    prev = conversation.chain_tip
    (event,) = recorded(
        conversation,
        lambda c: c.start_session(
            session_id="s2",
            reason="session full",
            marker_message_id="mk",
            marker_text="[continued]",
            marker_tokens=4,
            encoding="enc",
            timestamp=LATER,
        ),
    )
    assert event == expected(
        events.SessionStarted,
        conversation,
        0,
        prev,
        session_id="s2",
        previous_session_id="s1",
        reason="session full",
        marker_message_id="mk",
        marker_text="[continued]",
        marker_tokens=4,
        encoding="enc",
        timestamp=LATER,
    )


def test_a_checkpoint_records_its_kind_name_and_what_it_covers() -> None:
    conversation = started()
    say(conversation, "m1")
    say(conversation, "m2")
    prev = conversation.chain_tip
    positions: list[int] = []
    (event,) = recorded(
        conversation,
        lambda c: positions.append(
            c.create_checkpoint(
                checkpoint_id="cp-1",
                checkpoint_type=CheckpointType.AUTO,
                timestamp=LATER,
                name="auto name",
                description="why",
            )
        ),
    )
    assert positions == [conversation.version] == [4]
    assert event == expected(
        events.CheckpointCreated,
        conversation,
        0,
        prev,
        checkpoint_id="cp-1",
        checkpoint_type=CheckpointType.AUTO,
        name="auto name",
        description="why",
        session_id="s1",
        message_count=2,
        auto_ordinal=1,
        timestamp=LATER,
    )


def test_auto_checkpoints_are_numbered_1_2_3_and_no_other_kind_is() -> None:
    """Retention's "keep every nth" counts these ordinals: they never skip and never restart,
    whatever other checkpoints or pruning come between."""
    conversation = started()
    say(conversation, "m1")
    kinds = [
        CheckpointType.AUTO,
        CheckpointType.MANUAL,
        CheckpointType.AUTO,
        CheckpointType.BRANCH,
        CheckpointType.EMERGENCY,
        CheckpointType.AUTO,
    ]
    for number, kind in enumerate(kinds):
        checkpoint(conversation, f"cp{number}", kind)
    conversation.prune_checkpoints(("cp0", "cp2"), "retention", T0)
    checkpoint(conversation, "cp-last", CheckpointType.AUTO)
    ordinals = [
        (e.checkpoint_type, e.auto_ordinal)
        for e in conversation.collect_events()
        if isinstance(e, events.CheckpointCreated)
    ]
    assert ordinals == [
        (CheckpointType.AUTO, 1),
        (CheckpointType.MANUAL, None),
        (CheckpointType.AUTO, 2),
        (CheckpointType.BRANCH, None),
        (CheckpointType.EMERGENCY, None),
        (CheckpointType.AUTO, 3),
        (CheckpointType.AUTO, 4),
    ]


def test_pruning_removes_some_auto_checkpoints_and_keeps_the_others() -> None:
    conversation = started()
    say(conversation, "m1")
    for number in range(1, 6):
        checkpoint(conversation, f"cp{number}", CheckpointType.AUTO)
    checkpoint(conversation, "manual", CheckpointType.MANUAL)
    assert (conversation.live_auto_checkpoints, conversation.auto_checkpoints_taken) == (5, 5)
    prev = conversation.chain_tip
    (event,) = recorded(
        conversation, lambda c: c.prune_checkpoints(("cp1", "cp3"), "older than 30 days", LATER)
    )
    assert event == expected(
        events.CheckpointsPruned,
        conversation,
        0,
        prev,
        checkpoint_ids=("cp1", "cp3"),
        reason="older than 30 days",
        timestamp=LATER,
    )
    assert (conversation.live_auto_checkpoints, conversation.auto_checkpoints_taken) == (3, 5)
    assert conversation.chain_tip == event.hash
    # Nothing to prune records nothing.
    assert recorded(conversation, lambda c: c.prune_checkpoints((), "nothing", LATER)) == []


def test_only_auto_checkpoints_restart_the_count_of_eligible_messages() -> None:
    conversation = started()
    say(conversation, "u1")
    say(conversation, "a1", Role.ASSISTANT)
    checkpoint(conversation, "manual", CheckpointType.MANUAL)
    assert conversation.view.eligible_since_auto_checkpoint == 2
    assert conversation.live_auto_checkpoints == 0
    checkpoint(conversation, "auto", CheckpointType.AUTO)
    assert conversation.view.eligible_since_auto_checkpoint == 0
    assert (conversation.live_auto_checkpoints, conversation.auto_checkpoints_taken) == (1, 1)


def test_rollback_records_an_undo_checkpoint_then_the_view_it_resolves_to() -> None:
    conversation = started()
    say(conversation, "m1")
    target = checkpoint(conversation, "cp", CheckpointType.MANUAL)
    view_at_target = conversation.view
    say(conversation, "m2")
    prev = conversation.chain_tip
    undo, rolled = recorded(
        conversation,
        lambda c: c.roll_back(
            checkpoint_id="cp",
            target_position=target,
            view_at_target=view_at_target,
            undo_checkpoint_id="undo-1",
            timestamp=LATER,
        ),
    )
    assert undo == expected(
        events.CheckpointCreated,
        conversation,
        1,
        prev,
        checkpoint_id="undo-1",
        checkpoint_type=CheckpointType.ROLLBACK,
        name="Before rollback to cp",
        session_id="s1",
        message_count=2,
        timestamp=LATER,
    )
    assert rolled == expected(
        events.RolledBack,
        conversation,
        0,
        undo.hash,
        checkpoint_id="cp",
        undo_checkpoint_id="undo-1",
        target_position=target,
        view=view_at_target.cut(conversation.id, target, conversation.version + 1),
        timestamp=LATER,
    )
    assert isinstance(rolled, events.RolledBack)
    assert conversation.view == rolled.view
    assert conversation.view.message_count == 1


def test_restoring_a_snapshot_resolves_the_view_at_its_position() -> None:
    conversation = started()
    say(conversation, "m1")
    position = conversation.take_snapshot(snapshot_id="snap", meta={"k": 1}, timestamp=T0)
    view_there = conversation.view
    say(conversation, "m2")
    prev = conversation.chain_tip
    (event,) = recorded(
        conversation,
        lambda c: c.restore_snapshot(
            snapshot_id="snap", target_position=position, view_at_target=view_there, timestamp=LATER
        ),
    )
    assert event == expected(
        events.SnapshotRestored,
        conversation,
        0,
        prev,
        snapshot_id="snap",
        target_position=position,
        view=view_there.cut(conversation.id, position, conversation.version + 1),
        timestamp=LATER,
    )
    assert conversation.view.segments(conversation.id, conversation.version) == (
        *view_there.segments(conversation.id, position),
    )


def test_a_snapshot_records_its_id_and_meta_and_returns_its_position() -> None:
    conversation = started()
    prev = conversation.chain_tip
    positions: list[int] = []
    (event,) = recorded(
        conversation,
        lambda c: positions.append(
            c.take_snapshot(snapshot_id="snap", meta={"note": "before"}, timestamp=LATER)
        ),
    )
    assert positions == [2]
    assert event == expected(
        events.SnapshotTaken,
        conversation,
        0,
        prev,
        snapshot_id="snap",
        meta={"note": "before"},
        timestamp=LATER,
    )


@pytest.mark.parametrize("command", ["roll_back", "restore", "fork"])
def test_position_1_is_inside_the_conversation_and_0_is_not(command: str) -> None:
    """A rollback, restore or fork may go back to the very start, never before it nor past
    the head."""
    conversation = started()
    say(conversation, "m1")
    conversation.collect_events()
    at_start = ViewState().with_new_session("s1")

    def go(position: int) -> None:
        if command == "roll_back":
            conversation.roll_back(
                checkpoint_id="cp",
                target_position=position,
                view_at_target=at_start,
                undo_checkpoint_id=f"undo{position}",
                timestamp=T0,
            )
        elif command == "restore":
            conversation.restore_snapshot(
                snapshot_id="snap", target_position=position, view_at_target=at_start, timestamp=T0
            )
        else:
            conversation.fork(branch_id=uuid4(), position=position, source_id="s", timestamp=T0)

    for outside in (0, -1, conversation.version + 1):
        with pytest.raises(InvalidInput) as error:
            go(outside)
        assert str(error.value) == (
            f"Position {outside} is outside conversation {conversation.id} (1..2)."
        )
    assert conversation.collect_events() == []
    go(1)
    assert conversation.collect_events()
    go(conversation.version)  # the head itself is inside too


def test_a_fork_at_position_1_is_recorded_on_the_parent() -> None:
    conversation = started()
    branch_id = uuid4()
    prev = conversation.chain_tip
    (event,) = recorded(
        conversation,
        lambda c: c.fork(branch_id=branch_id, position=1, source_id="snap-0", timestamp=LATER),
    )
    assert event == expected(
        events.BranchForked,
        conversation,
        0,
        prev,
        branch_id=branch_id,
        position=1,
        source_id="snap-0",
        timestamp=LATER,
    )


def test_rollback_to_position_1_leaves_an_empty_transcript() -> None:
    conversation = started()
    first_view = conversation.view
    say(conversation, "m1")
    conversation.roll_back(
        checkpoint_id="start",
        target_position=1,
        view_at_target=first_view,
        undo_checkpoint_id="undo",
        timestamp=T0,
    )
    assert conversation.view.message_count == 0
    assert conversation.view.segments(conversation.id, 1) == ()  # position 1 holds no message


def test_a_context_file_is_recorded_with_where_it_came_from() -> None:
    conversation = started()
    prev = conversation.chain_tip
    (event,) = recorded(
        conversation,
        lambda c: c.record_context_file(
            path="/ws/notes.md",
            name="notes.md",
            location="workspace",
            size=120,
            modified=1_700_000_000.5,
            message_id="m-ctx",
            timestamp=LATER,
        ),
    )
    assert event == expected(
        events.ContextFileLoaded,
        conversation,
        0,
        prev,
        path="/ws/notes.md",
        name="notes.md",
        location="workspace",
        size=120,
        modified=1_700_000_000.5,
        message_id="m-ctx",
        timestamp=LATER,
    )


def test_retitling_records_a_new_title_only() -> None:
    conversation = started(title="Lisbon")
    prev = conversation.chain_tip
    (event,) = recorded(conversation, lambda c: c.retitle("Lisbon and Sintra", LATER))
    assert event == expected(
        events.ConversationTitled, conversation, 0, prev, title="Lisbon and Sintra", timestamp=LATER
    )
    assert conversation.title == "Lisbon and Sintra"
    assert recorded(conversation, lambda c: c.retitle("Lisbon and Sintra", LATER)) == []
    with pytest.raises(InvalidInput) as error:
        conversation.retitle(" \n", LATER)
    assert str(error.value) == "A title cannot be empty."
    assert conversation.title == "Lisbon and Sintra"


def test_a_trim_records_what_left_the_window_and_shrinks_the_session() -> None:
    conversation = started()
    say(conversation, "d1", tokens=30)
    say(conversation, "d2", tokens=20)
    say(conversation, "e1", category=Category.ERROR, tokens=9)
    prev = conversation.chain_tip
    (event,) = recorded(
        conversation,
        lambda c: c.trim_context(
            message_ids=("d1", "d2"),
            category=Category.DIALOG,
            tokens_freed=50,
            budget=40,
            reason="over DIALOG budget",
            timestamp=LATER,
        ),
    )
    assert event == expected(
        events.ContextTrimmed,
        conversation,
        0,
        prev,
        session_id="s1",
        message_ids=("d1", "d2"),
        category=Category.DIALOG,
        tokens_freed=50,
        budget=40,
        reason="over DIALOG budget",
        timestamp=LATER,
    )
    view = conversation.view
    assert view.session.tokens_by_category == {"DIALOG": 0, "ERROR": 9}
    assert view.truncations.model_dump() == {
        "total_truncations": 1,
        "messages_removed": 2,
        "tokens_freed": 50,
        "by_category": {"DIALOG": 2},
    }
    # The transcript keeps them.
    assert (view.message_count, view.token_count) == (3, 59)
    nothing = recorded(
        conversation,
        lambda c: c.trim_context(
            message_ids=(),
            category=Category.DIALOG,
            tokens_freed=0,
            budget=40,
            reason="-",
            timestamp=T0,
        ),
    )
    assert nothing == []


def test_a_model_call_records_what_was_sent_and_how() -> None:
    conversation = started()
    prev = conversation.chain_tip
    manifest = ManifestRecord(("m0",), "call-0", ("m2",), ("m1",))
    (event,) = recorded(
        conversation,
        lambda c: c.record_model_call(
            call_id="call-1",
            provider="offline",
            model="echo-1",
            parameters={"temperature": 0.2},
            manifest=manifest,
            message_count=2,
            images_replaced=("m0",),
            request_hash="f" * 64,
            prompt_tokens=321,
            timestamp=LATER,
            idempotency_key="turn-7",
            input_hash="e" * 64,
        ),
    )
    assert event == expected(
        events.ModelCalled,
        conversation,
        0,
        prev,
        call_id="call-1",
        session_id="s1",
        provider="offline",
        model="echo-1",
        parameters={"temperature": 0.2},
        message_count=2,
        message_ids=("m0",),
        base_call_id="call-0",
        added_ids=("m2",),
        removed_ids=("m1",),
        images_replaced=("m0",),
        request_hash="f" * 64,
        prompt_tokens=321,
        idempotency_key="turn-7",
        input_hash="e" * 64,
        timestamp=LATER,
    )
    assert ManifestRecord.of(event.document()) == manifest


def test_a_failed_call_records_the_error_and_what_had_arrived() -> None:
    conversation = started()
    prev = conversation.chain_tip
    (event,) = recorded(
        conversation,
        lambda c: c.record_model_failure(
            error_type="TimeoutError",
            message="read timed out",
            partial_text="Day 1: Al",
            timestamp=LATER,
            call_id="call-3",
            kind="cancelled",
            attempts=3,
        ),
    )
    assert event == expected(
        events.ModelCallFailed,
        conversation,
        0,
        prev,
        error_type="TimeoutError",
        message="read timed out",
        partial_text="Day 1: Al",
        call_id="call-3",
        kind="cancelled",
        attempts=3,
        timestamp=LATER,
    )
    conversation.record_model_failure(
        error_type="ValueError", message="bad", partial_text="", timestamp=LATER
    )
    (default,) = conversation.collect_events()
    assert isinstance(default, events.ModelCallFailed)
    assert (default.kind, default.attempts, default.call_id) == ("error", 1, None)


def test_an_answer_records_the_providers_report() -> None:
    conversation = started()
    prev = conversation.chain_tip
    (event,) = recorded(
        conversation,
        lambda c: c.record_model_response(
            call_id="call-1",
            message_id="m-answer",
            stop_reason="end_turn",
            prompt_tokens=300,
            completion_tokens=45,
            latency_ms=812.5,
            attempts=2,
            timestamp=LATER,
        ),
    )
    assert event == expected(
        events.ModelResponded,
        conversation,
        0,
        prev,
        call_id="call-1",
        message_id="m-answer",
        stop_reason="end_turn",
        prompt_tokens=300,
        completion_tokens=45,
        latency_ms=812.5,
        attempts=2,
        timestamp=LATER,
    )


# -- what events do to the write model ----------------------------------------------------------
def test_system_messages_are_pinned_dialog_and_tools_count_towards_checkpoints() -> None:
    conversation = started()
    say(conversation, "sys", Role.SYSTEM, Category.SYSTEM, tokens=8)
    say(conversation, "ctx", Role.USER, Category.CONTEXT, tokens=6)
    say(conversation, "tool", Role.TOOL, Category.SYSTEM_OUTPUT, tokens=4)
    view = conversation.view
    assert [(p.message_id, p.category, p.tokens) for p in view.pinned] == [
        ("sys", Category.SYSTEM, 8),
        ("ctx", Category.CONTEXT, 6),
    ]
    assert view.eligible_since_auto_checkpoint == 2
    assert (view.message_count, view.token_count) == (3, 18)
    assert view.session.message_count == 3
    assert view.session.tokens_by_category == {"SYSTEM": 8, "CONTEXT": 6, "SYSTEM_OUTPUT": 4}


def test_a_session_marker_is_an_unpinned_system_message_that_counts_for_nothing() -> None:
    conversation = started()
    say(conversation, "sys", Role.SYSTEM, Category.SYSTEM, tokens=8)
    say(conversation, "u1", tokens=5)
    conversation.start_session(
        session_id="s2",
        reason="full",
        marker_message_id="mk",
        marker_text="[continued]",
        marker_tokens=3,
        encoding="enc",
        timestamp=T0,
    )
    view = conversation.view
    assert conversation.session_id == "s2"
    assert [s.session_id for s in view.sessions] == ["s1", "s2"]
    assert (view.session.number, view.session.message_count) == (2, 1)
    assert view.session.tokens_by_category == {"SYSTEM": 11}
    assert [p.message_id for p in view.pinned] == ["sys"]
    assert view.eligible_since_auto_checkpoint == 1
    assert (view.message_count, view.token_count) == (3, 16)
    assert view.sessions[0].tokens_by_category == {"SYSTEM": 8, "DIALOG": 5}


def test_a_session_is_full_at_its_limit_not_before() -> None:
    conversation = started()
    say(conversation, "m1")
    say(conversation, "m2")
    assert conversation.session_is_full(2)
    assert not conversation.session_is_full(3)


def test_a_snapshot_of_the_write_model_restores_it_whole() -> None:
    fork = events.ForkPoint(conversation_id=PARENT, position=2, source_id="cp")
    conversation = started(title="Branch", parent=fork)
    say(conversation, "m1")
    checkpoint(conversation, "a1", CheckpointType.AUTO)
    checkpoint(conversation, "a2", CheckpointType.AUTO)
    conversation.prune_checkpoints(("a1",), "cap", LATER)
    conversation.collect_events()
    snapshot = ConversationSnapshot.take(conversation)
    assert snapshot.topic == get_topic(Conversation) == "chatledger:Conversation"
    assert (snapshot.originator_id, snapshot.originator_version) == (
        conversation.id,
        conversation.version,
    )
    restored = snapshot.mutate(None)
    assert type(restored) is Conversation
    assert (restored.id, restored.version) == (conversation.id, conversation.version)
    assert (restored.created_on, restored.modified_on) == (
        conversation.created_on,
        conversation.modified_on,
    )
    assert restored.view == conversation.view
    assert restored.chain_tip == conversation.chain_tip
    assert (restored.title, restored.parent) == ("Branch", fork)
    assert (restored.live_auto_checkpoints, restored.auto_checkpoints_taken) == (1, 2)


# -- event types ---------------------------------------------------------------------------------
def test_a_new_event_type_is_found_by_its_stable_topic() -> None:
    topic = f"test:Probe-{uuid4()}"
    probe: Any = type(
        "Probe",
        (events.ConversationEvent,),
        {"__annotations__": {}, "TOPIC": topic, "__module__": __name__},
    )
    assert resolve_topic(topic) is probe
    # A subclass that does not name a topic of its own is not registered under its parent's.
    child: Any = type("ProbeChild", (probe,), {"__annotations__": {}, "__module__": __name__})
    assert resolve_topic(topic) is probe
    assert topic == child.TOPIC


def test_every_stored_event_type_resolves_from_its_topic() -> None:
    kinds: list[type[events.ConversationEvent]] = [
        events.ConversationStarted,
        events.MessageAppended,
        events.SessionStarted,
        events.CheckpointCreated,
        events.CheckpointsPruned,
        events.RolledBack,
        events.SnapshotRestored,
        events.BranchForked,
        events.SnapshotTaken,
        events.ContextFileLoaded,
        events.ConversationTitled,
        events.ModelCallFailed,
        events.ModelResponded,
        events.ContextTrimmed,
        events.ModelCalled,
    ]
    for cls in kinds:
        assert cls.TOPIC.startswith("chatledger:")
        assert resolve_topic(cls.TOPIC) is cls


def test_a_release_0_1_message_is_upcast_by_dropping_what_v2_derives() -> None:
    document = {"message_id": "m1", "pinned": True, "eligible": False, "tokens": 3}
    events.MessageAppended.upcast_v1_v2(document)
    assert document == {"message_id": "m1", "tokens": 3}
    # Upcasting only drops: a document without those fields passes through unchanged.
    events.MessageAppended.upcast_v1_v2(document)
    assert document == {"message_id": "m1", "tokens": 3}
