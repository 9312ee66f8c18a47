"""Stateful property tests of the Ledger against a plain in-memory model.

The model knows, for every conversation and every position of its stream, the active view
right after that event: the ordered messages (session transition markers included) and the
count of eligible messages since the last auto checkpoint (which decides the next auto
checkpoint and travels with the view through rollback, restore and branch). Every command
appends the events the design says it appends, so the model also predicts each stream's head,
every checkpoint's position and type, and what `as_of` returns at any position.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from chatledger.ledger import Ledger
from domain.checkpoints import CheckpointConfig, CheckpointType
from domain.errors import NothingToCheckpoint

ELIGIBLE = frozenset({"user", "assistant", "tool"})
ROLES = ("user", "assistant", "tool", "system")


# -- the model ---------------------------------------------------------------------------
class Msg(NamedTuple):
    """One message of a view. A session transition marker has role "system", content None."""

    role: str
    content: str | None
    metadata: dict[str, Any]
    conversation_id: UUID  # the stream that holds the message (an ancestor for inherited ones)
    position: int

    @property
    def is_marker(self) -> bool:
        return self.content is None


@dataclass(frozen=True)
class View:
    messages: tuple[Msg, ...] = ()
    eligible_since_auto: int = 0

    def session_count(self) -> int:
        """Messages of the current session (its marker included)."""
        for back, message in enumerate(reversed(self.messages), start=1):
            if message.is_marker:
                return back
        return len(self.messages)

    def dialog(self) -> list[tuple[str, str | None]]:
        return [(m.role, m.content) for m in self.messages if not m.is_marker]


def observed(messages: list[dict[str, Any]]) -> list[Msg]:
    """The ledger's transcript in the model's terms (markers recognised by their metadata)."""
    result = []
    for m in messages:
        marker = m["role"] == "system" and m["metadata"].get("session_transition") is True
        result.append(
            Msg(
                m["role"],
                None if marker else m["content"],
                {} if marker else m["metadata"],
                UUID(m["conversation_id"]),
                m["position"],
            )
        )
    return result


def dialog_of(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [
        (m["role"], m["content"]) for m in messages if not m["metadata"].get("session_transition")
    ]


@dataclass(frozen=True)
class MachineConfig:
    checkpoints: Callable[[], CheckpointConfig]
    max_messages_per_session: int
    cache_size: int = 20

    def ledger(self, workspace: Path) -> Ledger:
        return Ledger(
            workspace,
            checkpoint_config=self.checkpoints(),
            max_messages_per_session=self.max_messages_per_session,
            cache_size=self.cache_size,
        )


# -- strategies --------------------------------------------------------------------------
texts = st.one_of(
    st.sampled_from(
        [
            "hello",
            "  padded with spaces  ",
            "héllo wörld",
            "日本語のテキスト",
            "emoji 🎉👩‍👩‍👧",
            "right-to-left עברית",
            "line one\nline two",
            "nul \x00 inside",
        ]
    ),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=40),
).filter(lambda text: text.strip() != "")

metadatas = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["tool", "k", "ünï", "n"]),
        st.one_of(
            st.integers(-(2**53), 2**53),
            st.text(st.characters(codec="utf-8"), max_size=10),
            st.booleans(),
            st.none(),
        ),
        max_size=3,
    ),
)

messages = st.lists(st.tuples(st.sampled_from(ROLES), texts, metadatas), min_size=1, max_size=4)
picks = st.integers(min_value=0, max_value=10_000)  # index into a model list, shrinks to 0


# -- the machine -------------------------------------------------------------------------
class LedgerMachine(RuleBasedStateMachine):
    CONFIG: MachineConfig

    def __init__(self) -> None:
        super().__init__()
        self.workspace = Path(tempfile.mkdtemp(prefix="chatledger-stateful-"))
        self.ledger: Ledger | None = None
        self.conversations: list[UUID] = []
        self.heads: dict[UUID, int] = {}
        self.views: dict[tuple[UUID, int], View] = {}
        #: checkpoint id -> (conversation, position, type)
        self.checkpoints: dict[str, tuple[UUID, int, str]] = {}
        #: snapshot id -> (conversation, position)
        self.snapshots: dict[str, tuple[UUID, int]] = {}
        self.checkpoint_ids: list[str] = []  # in creation order, for picking
        self.snapshot_ids: list[str] = []

    def teardown(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
        shutil.rmtree(self.workspace, ignore_errors=True)

    @initialize(title=st.none() | texts, system_prompt=st.just("") | texts)
    def open_ledger_and_start(self, title: str | None, system_prompt: str) -> None:
        self.ledger = self.CONFIG.ledger(self.workspace)
        self.start_conversation(title, system_prompt)

    # -- model helpers ---------------------------------------------------------------------
    @property
    def lg(self) -> Ledger:
        assert self.ledger is not None
        return self.ledger

    def current(self, conversation_id: UUID) -> View:
        return self.views[(conversation_id, self.heads[conversation_id])]

    def emit(self, conversation_id: UUID, view: View) -> int:
        """The model's side of one event appended to the conversation's stream."""
        self.heads[conversation_id] = self.heads.get(conversation_id, 0) + 1
        self.views[(conversation_id, self.heads[conversation_id])] = view
        return self.heads[conversation_id]

    def expect_append(
        self, conversation_id: UUID, role: str, content: str, metadata: dict[str, Any]
    ) -> tuple[int, list[tuple[int, str]]]:
        """Models one append; returns the message's position and the expected new checkpoints."""
        view = self.current(conversation_id)
        if view.session_count() >= self.CONFIG.max_messages_per_session:
            position = self.heads[conversation_id] + 1
            marker = Msg("system", None, {}, conversation_id, position)
            view = replace(view, messages=(*view.messages, marker))
            self.emit(conversation_id, view)
        position = self.heads[conversation_id] + 1
        view = View(
            (*view.messages, Msg(role, content, metadata, conversation_id, position)),
            view.eligible_since_auto + (role in ELIGIBLE),
        )
        self.emit(conversation_id, view)
        config = self.lg.config
        new_checkpoints = []
        if config.enabled and config.frequency > 0 and view.eligible_since_auto >= config.frequency:
            auto = self.emit(conversation_id, replace(view, eligible_since_auto=0))
            new_checkpoints.append((auto, CheckpointType.AUTO.value))
        return position, new_checkpoints

    def record_checkpoint(self, checkpoint_id: str, conversation_id: UUID, kind: str) -> None:
        assert checkpoint_id not in self.checkpoints
        self.checkpoints[checkpoint_id] = (conversation_id, self.heads[conversation_id], kind)
        self.checkpoint_ids.append(checkpoint_id)

    def adopt_checkpoints(self, conversation_id: UUID, expected: list[tuple[int, str]]) -> None:
        """Learns the ids of checkpoints a command took as a side effect (auto, rollback,
        branch), checking that exactly the expected ones, at the expected positions, appeared."""
        rows = self.lg.checkpoints(conversation_id, limit=None)
        new = [row for row in rows if row.checkpoint_id not in self.checkpoints]
        assert sorted((row.position, row.type) for row in new) == sorted(expected)
        for row in sorted(new, key=lambda row: row.position):
            self.checkpoints[row.checkpoint_id] = (conversation_id, row.position, row.type)
            self.checkpoint_ids.append(row.checkpoint_id)

    def pick_conversation(self, pick: int) -> UUID:
        return self.conversations[pick % len(self.conversations)]

    # -- rules -----------------------------------------------------------------------------
    @rule(title=st.none() | texts, system_prompt=st.just("") | texts)
    def start_conversation(self, title: str | None, system_prompt: str) -> None:
        conversation_id = self.lg.start_conversation(title=title, system_prompt=system_prompt)
        assert conversation_id not in self.heads
        self.conversations.append(conversation_id)
        self.emit(conversation_id, View())
        if system_prompt:
            _, new_checkpoints = self.expect_append(conversation_id, "system", system_prompt, {})
            assert new_checkpoints == []

    @precondition(lambda self: self.conversations)
    @rule(pick=picks, batch=messages)
    def append(self, pick: int, batch: list[tuple[str, str, dict[str, Any] | None]]) -> None:
        conversation_id = self.pick_conversation(pick)
        for role, content, metadata in batch:
            appended = self.lg.append_message(conversation_id, role, content, metadata=metadata)
            position, new_checkpoints = self.expect_append(
                conversation_id, role, content, metadata or {}
            )
            assert appended.conversation_id == conversation_id
            assert appended.position == position
            self.adopt_checkpoints(conversation_id, new_checkpoints)

    @precondition(lambda self: self.conversations)
    @rule(pick=picks, name=st.none() | texts)
    def manual_checkpoint(self, pick: int, name: str | None) -> None:
        conversation_id = self.pick_conversation(pick)
        messages = self.current(conversation_id).messages
        if all(m.role == "system" and not m.is_marker for m in messages):
            # Nothing but system messages (the prompt): refused, and nothing is appended.
            with pytest.raises(NothingToCheckpoint):
                self.lg.create_checkpoint(conversation_id, CheckpointType.MANUAL, name=name)
            return
        checkpoint_id = self.lg.create_checkpoint(conversation_id, CheckpointType.MANUAL, name=name)
        self.emit(conversation_id, self.current(conversation_id))
        self.record_checkpoint(checkpoint_id, conversation_id, CheckpointType.MANUAL.value)

    @precondition(lambda self: self.checkpoint_ids)
    @rule(pick=picks)
    def rollback(self, pick: int) -> None:
        checkpoint_id = self.checkpoint_ids[pick % len(self.checkpoint_ids)]
        conversation_id, position, _ = self.checkpoints[checkpoint_id]
        assert self.lg.rollback(checkpoint_id) == conversation_id
        undo = self.emit(conversation_id, self.current(conversation_id))
        self.emit(conversation_id, self.views[(conversation_id, position)])
        self.adopt_checkpoints(conversation_id, [(undo, CheckpointType.ROLLBACK.value)])

    @precondition(lambda self: self.checkpoint_ids or self.snapshot_ids)
    @rule(pick=picks, title=st.none() | texts)
    def branch(self, pick: int, title: str | None) -> None:
        sources = self.checkpoint_ids + self.snapshot_ids
        source_id = sources[pick % len(sources)]
        if source_id in self.checkpoints:
            parent_id, position, _ = self.checkpoints[source_id]
        else:
            parent_id, position = self.snapshots[source_id]
        parent_before = self.lg.history(parent_id)
        branch_id = self.lg.branch(source_id, title=title)
        assert branch_id not in self.heads
        self.conversations.append(branch_id)
        self.emit(parent_id, self.current(parent_id))  # BranchForked on the parent
        start = self.views[(parent_id, position)]
        self.emit(branch_id, start)  # ConversationStarted naming the fork point
        branch_checkpoint = self.emit(branch_id, start)
        self.adopt_checkpoints(branch_id, [(branch_checkpoint, CheckpointType.BRANCH.value)])
        # The parent's transcript is untouched by the fork.
        assert self.lg.history(parent_id) == parent_before

    @precondition(lambda self: self.conversations)
    @rule(pick=picks, meta=metadatas)
    def take_snapshot(self, pick: int, meta: dict[str, Any] | None) -> None:
        conversation_id = self.pick_conversation(pick)
        snapshot_id = self.lg.take_snapshot(conversation_id, meta=meta)
        assert snapshot_id not in self.snapshots
        position = self.emit(conversation_id, self.current(conversation_id))
        self.snapshots[snapshot_id] = (conversation_id, position)
        self.snapshot_ids.append(snapshot_id)
        row = self.lg.read.snapshot(snapshot_id)
        assert row is not None
        assert (row.conversation_id, row.position, row.meta) == (
            conversation_id,
            position,
            meta or {},
        )

    @precondition(lambda self: self.snapshot_ids)
    @rule(pick=picks)
    def restore_snapshot(self, pick: int) -> None:
        snapshot_id = self.snapshot_ids[pick % len(self.snapshot_ids)]
        conversation_id, position = self.snapshots[snapshot_id]
        assert self.lg.restore_snapshot(snapshot_id) == conversation_id
        self.emit(conversation_id, self.views[(conversation_id, position)])

    @rule()
    def reload_from_disk(self) -> None:
        self.lg.close()
        self.ledger = None
        self.ledger = self.CONFIG.ledger(self.workspace)

    @precondition(lambda self: self.views)
    @rule(picks=st.lists(picks, min_size=1, max_size=5))
    def time_travel(self, picks: list[int]) -> None:
        """Replaying the log to any position reproduces the view at that position."""
        recorded = sorted(self.views)
        for pick in picks:
            conversation_id, position = recorded[pick % len(recorded)]
            expected = self.views[(conversation_id, position)]
            got = self.lg.as_of(conversation_id, position)
            assert observed(got) == list(expected.messages), (conversation_id, position)
            # The view-history projection agrees with replaying the write model to there.
            replayed = self.lg.view_at(conversation_id, position)
            assert got == self.lg.read.transcript(replayed.segments(conversation_id, position))

    @precondition(lambda self: self.conversations)
    @rule()
    def verify_and_rebuild(self) -> None:
        report = self.lg.verify()
        assert report.ok, report.breaks
        tables = self.lg.projections.readable_tables()
        before = self.lg.read.table_dump(tables)
        self.lg.rebuild_projections()
        assert self.lg.read.table_dump(tables) == before

    # -- the invariant ---------------------------------------------------------------------
    @invariant()
    def ledger_agrees_with_the_model(self) -> None:
        """One invariant (so a falsifying example prints one line per step) of four checks."""
        self.check_views()
        self.check_heads()
        self.check_checkpoint_index()
        self.check_conversation_index()

    def check_views(self) -> None:
        for conversation_id in self.conversations:
            expected = self.current(conversation_id)
            history = self.lg.history(conversation_id)
            # The plain form first (markers filtered out), then the exact one.
            assert dialog_of(history) == expected.dialog(), conversation_id
            assert observed(history) == list(expected.messages), conversation_id

    def check_heads(self) -> None:
        for conversation_id in self.conversations:
            head = self.lg.store.conversation(conversation_id).version
            assert head == self.heads[conversation_id], conversation_id

    def check_checkpoint_index(self) -> None:
        for conversation_id in self.conversations:
            rows = self.lg.checkpoints(conversation_id, limit=None)
            got = sorted((row.checkpoint_id, row.position, row.type) for row in rows)
            expected = sorted(
                (checkpoint_id, position, kind)
                for checkpoint_id, (owner, position, kind) in self.checkpoints.items()
                if owner == conversation_id
            )
            assert got == expected, conversation_id

    def check_conversation_index(self) -> None:
        listed = {row["id"]: row for row in self.lg.list_conversations(limit=10_000)}
        assert set(listed) == {str(c) for c in self.conversations}
        for conversation_id in self.conversations:
            expected = len(self.current(conversation_id).messages)
            assert listed[str(conversation_id)]["message_count"] == expected, conversation_id


MACHINE_SETTINGS = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class DefaultConfigMachine(LedgerMachine):
    """Penguin's defaults: an auto checkpoint after every dialog or tool message."""

    CONFIG = MachineConfig(CheckpointConfig, max_messages_per_session=5000)


class RolloverMachine(LedgerMachine):
    """No auto checkpoints, a session rollover every 4 messages, a one-aggregate cache."""

    CONFIG = MachineConfig(
        lambda: CheckpointConfig(enabled=False), max_messages_per_session=4, cache_size=1
    )


class SparseCheckpointMachine(LedgerMachine):
    """An auto checkpoint every 2nd eligible message (the counter travels with the view) and
    a rollover every 3 messages."""

    CONFIG = MachineConfig(lambda: CheckpointConfig(frequency=2), max_messages_per_session=3)


TestDefaultConfig = DefaultConfigMachine.TestCase
TestDefaultConfig.settings = MACHINE_SETTINGS
TestRollover = RolloverMachine.TestCase
TestRollover.settings = MACHINE_SETTINGS
TestSparseCheckpoints = SparseCheckpointMachine.TestCase
TestSparseCheckpoints.settings = MACHINE_SETTINGS


# -- one explicit example ----------------------------------------------------------------
def dialog(ledger: Ledger, conversation_id: UUID) -> list[tuple[str, Any]]:
    return dialog_of(ledger.history(conversation_id))


def test_rollback_then_branch_then_append_stays_isolated(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, checkpoint_config=CheckpointConfig(enabled=False))
    try:
        parent = ledger.start_conversation(title="parent")
        ledger.append_message(parent, "user", "one")
        at_one = ledger.create_checkpoint(parent, CheckpointType.MANUAL, name="after one")
        ledger.append_message(parent, "assistant", "two")
        three = ledger.append_message(parent, "user", "three")
        at_three = ledger.create_checkpoint(parent, CheckpointType.MANUAL, name="after three")

        assert ledger.rollback(at_one) == parent
        assert dialog(ledger, parent) == [("user", "one")]
        # The rollback is a new event: the log still has the past, by position.
        assert dialog_of(ledger.as_of(parent, three.position)) == [
            ("user", "one"),
            ("assistant", "two"),
            ("user", "three"),
        ]

        after_rollback = ledger.create_checkpoint(parent, CheckpointType.MANUAL)
        branch = ledger.branch(after_rollback, title="branch")
        old_branch = ledger.branch(at_three, title="from before the rollback")
        assert dialog(ledger, branch) == [("user", "one")]
        assert dialog(ledger, old_branch) == [
            ("user", "one"),
            ("assistant", "two"),
            ("user", "three"),
        ]

        ledger.append_message(branch, "user", "only in the branch")
        ledger.append_message(parent, "user", "only in the parent")
        ledger.append_message(old_branch, "assistant", "only in the old branch")

        expected = {
            parent: [("user", "one"), ("user", "only in the parent")],
            branch: [("user", "one"), ("user", "only in the branch")],
            old_branch: [
                ("user", "one"),
                ("assistant", "two"),
                ("user", "three"),
                ("assistant", "only in the old branch"),
            ],
        }
        for conversation_id, transcript in expected.items():
            assert dialog(ledger, conversation_id) == transcript
        assert ledger.verify().ok

        ledger.close()
        ledger = Ledger(tmp_path, checkpoint_config=CheckpointConfig(enabled=False))
        for conversation_id, transcript in expected.items():
            assert dialog(ledger, conversation_id) == transcript
    finally:
        ledger.close()


@pytest.mark.parametrize("max_messages", [1, 2])
def test_rollover_marker_is_a_system_message_with_transition_metadata(
    tmp_path: Path, max_messages: int
) -> None:
    ledger = Ledger(
        tmp_path,
        checkpoint_config=CheckpointConfig(enabled=False),
        max_messages_per_session=max_messages,
    )
    try:
        conversation = ledger.start_conversation()
        for text in ("a", "b", "c"):
            ledger.append_message(conversation, "user", text)
        history = ledger.history(conversation)
        markers = [m for m in history if m["metadata"].get("session_transition")]
        assert all(m["role"] == "system" for m in markers)
        assert dialog_of(history) == [("user", "a"), ("user", "b"), ("user", "c")]
        # One marker each time the session was full before an append.
        assert len(markers) == {1: 2, 2: 1}[max_messages]
    finally:
        ledger.close()
