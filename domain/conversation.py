"""The Conversation aggregate: the write model.

It holds only what its invariants need (the view's segments and counts, the session, the chain
tip), never message bodies, so loading it costs the same at 10 and at 100k messages.

It decides as well as records: given plain settings (`MessageRules`, `CheckpointConfig`) its
commands start a new session when one is full, take the auto checkpoint that is due and the
emergency checkpoint after a failed call, and refuse a checkpoint of nothing, the way the
eventsourcing examples' aggregates apply their `check_*` rules. Fresh ids and a session
marker's token count come from the command's `Mint`, asked only for what is decided.

Over 400 lines, and kept whole: one aggregate and the plain inputs its commands take; most of
the length is the keyword arguments each event records. Its snapshot is in
conversation_snapshot.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from uuid import UUID

from eventsourcing.domain import BaseAggregate
from eventsourcing.utils import register_topic

from domain import events
from domain.checkpoints import CheckpointConfig, CheckpointType, auto_checkpoint_due
from domain.conversation_snapshot import ConversationSnapshot
from domain.errors import InvalidInput, NothingToCheckpoint
from domain.manifests import ManifestRecord
from domain.messages import DEFAULT_CATEGORY, Category, ContentPart, Role
from domain.view import ViewState


class Mint(Protocol):
    """What a command mints for the events the aggregate decides to record: fresh ids, and
    the token count of a session marker's text by the application's tokenizer (which the
    domain does not hold). Asked only for what is decided, so a message that starts no
    session costs no marker count."""

    @property
    def encoding(self) -> str:
        """The tokenizer's encoding, recorded with every token count."""
        ...

    def new_id(self, prefix: str) -> str: ...

    def system_tokens(self, text: str) -> int:
        """What a SYSTEM message with this text costs in the model's context."""
        ...


@dataclass(frozen=True)
class MessageRules:
    """The settings each new message is held to: when a session is full, and when an auto
    checkpoint is due."""

    max_messages_per_session: int
    checkpoints: CheckpointConfig


@dataclass(frozen=True)
class AddedMessage:
    """What `Conversation.add_message` recorded: the message's event, and the auto checkpoint
    taken after it, if one was due."""

    event: events.MessageAppended
    auto_checkpoint_id: str | None


#: Why a session rolled over, as its SessionStarted records it.
SESSION_FULL = "max_messages_per_session reached"


class Conversation(BaseAggregate[UUID]):
    TOPIC: ClassVar[str] = "chatledger:Conversation"

    if TYPE_CHECKING:  # set by the events' apply methods; declared for type checkers only
        view: ViewState
        chain_tip: str
        title: str | None
        parent: events.ForkPoint | None
        live_auto_checkpoints: int
        auto_checkpoints_taken: int

    def __init__(self) -> None:
        """State comes from ConversationStarted.apply, so replays and commands agree."""

    @classmethod
    def start(
        cls,
        *,
        conversation_id: UUID,
        view: ViewState,
        prev_hash: str,
        timestamp: datetime,
        title: str | None = None,
        parent: events.ForkPoint | None = None,
        reset_from: UUID | None = None,
    ) -> Conversation:
        return cls._create(
            events.ConversationStarted,
            id=conversation_id,
            view=view,
            prev_hash=prev_hash,
            timestamp=timestamp,
            title=title,
            parent=parent,
            reset_from=reset_from,
        )

    def trigger_event(self, event_class: Any, **kwargs: Any) -> None:
        super().trigger_event(event_class, prev_hash=self.chain_tip, **kwargs)

    @property
    def session_id(self) -> str:
        return self.view.session.session_id

    def session_is_full(self, max_messages_per_session: int) -> bool:
        return self.view.session.message_count >= max_messages_per_session

    def add_message(
        self,
        *,
        role: Role,
        category: Category | None,
        parts: tuple[ContentPart, ...],
        tokens: int,
        metadata: dict[str, Any],
        timestamp: datetime,
        rules: MessageRules,
        mint: Mint,
    ) -> AddedMessage:
        """A message with what the rules make it bring: a new session first when the current
        one is full (the message is the new session's first), and an auto checkpoint after it
        when one is due."""
        if self.session_is_full(rules.max_messages_per_session):
            self.roll_over_session(SESSION_FULL, timestamp, mint)
        message_id = mint.new_id("msg")
        self.append_message(
            message_id=message_id,
            role=role,
            category=category or DEFAULT_CATEGORY[role],
            parts=parts,
            tokens=tokens,
            encoding=mint.encoding,
            timestamp=timestamp,
            metadata=metadata,
        )
        event = self.pending_events[-1]
        assert isinstance(event, events.MessageAppended)
        checkpoint_id = None
        if auto_checkpoint_due(rules.checkpoints, self.view.eligible_since_auto_checkpoint):
            checkpoint_id = mint.new_id("cp")
            self.create_checkpoint(
                checkpoint_id=checkpoint_id,
                checkpoint_type=CheckpointType.AUTO,
                timestamp=timestamp,
            )
        return AddedMessage(event, checkpoint_id)

    def next_session_marker(self) -> str:
        """The text of the marker that opens the session after this one."""
        previous = self.view.session
        # No ids in the text: a replay elsewhere must send the very same request.
        return (
            f"[Session {previous.number + 1} continues this conversation after session "
            f"{previous.number} ({previous.message_count} messages).]"
        )

    def roll_over_session(self, reason: str, timestamp: datetime, mint: Mint) -> None:
        """Starts the next session, opened by its marker."""
        marker = self.next_session_marker()
        self.start_session(
            session_id=mint.new_id("sess"),
            reason=reason,
            marker_message_id=mint.new_id("msg"),
            marker_text=marker,
            marker_tokens=mint.system_tokens(marker),
            encoding=mint.encoding,
            timestamp=timestamp,
        )

    def append_message(
        self,
        *,
        message_id: str,
        role: Role,
        category: Category,
        parts: tuple[ContentPart, ...],
        tokens: int,
        encoding: str,
        timestamp: datetime,
        metadata: dict[str, Any],
    ) -> None:
        if not parts:
            raise InvalidInput("A message needs at least one content part.")
        self.trigger_event(
            events.MessageAppended,
            message_id=message_id,
            role=role,
            category=category,
            parts=parts,
            tokens=tokens,
            encoding=encoding,
            session_id=self.session_id,
            metadata=metadata,
            timestamp=timestamp,
        )

    def start_session(
        self,
        *,
        session_id: str,
        reason: str,
        marker_message_id: str,
        marker_text: str,
        marker_tokens: int,
        encoding: str,
        timestamp: datetime,
    ) -> None:
        self.trigger_event(
            events.SessionStarted,
            session_id=session_id,
            previous_session_id=self.session_id,
            reason=reason,
            marker_message_id=marker_message_id,
            marker_text=marker_text,
            marker_tokens=marker_tokens,
            encoding=encoding,
            timestamp=timestamp,
        )

    def create_checkpoint(
        self,
        *,
        checkpoint_id: str,
        checkpoint_type: CheckpointType,
        timestamp: datetime,
        name: str | None = None,
        description: str | None = None,
    ) -> int:
        """Records a checkpoint at the next position and returns that position."""
        self.trigger_event(
            events.CheckpointCreated,
            checkpoint_id=checkpoint_id,
            checkpoint_type=checkpoint_type,
            name=name,
            description=description,
            session_id=self.session_id,
            message_count=self.view.message_count,
            auto_ordinal=self.auto_checkpoints_taken + 1
            if checkpoint_type is CheckpointType.AUTO
            else None,
            timestamp=timestamp,
        )
        return self.version

    def check_something_to_checkpoint(self) -> None:
        """A checkpoint someone asks for needs something to go back to."""
        if self.view.only_system_messages:
            raise NothingToCheckpoint(
                f"Conversation {self.id} has nothing to checkpoint yet: it holds no messages "
                "besides its system prompt. Add a message or context first."
            )

    def prune_checkpoints(
        self, checkpoint_ids: tuple[str, ...], reason: str, timestamp: datetime
    ) -> None:
        if checkpoint_ids:
            self.trigger_event(
                events.CheckpointsPruned,
                checkpoint_ids=checkpoint_ids,
                reason=reason,
                timestamp=timestamp,
            )

    def roll_back(
        self,
        *,
        checkpoint_id: str,
        target_position: int,
        view_at_target: ViewState,
        undo_checkpoint_id: str,
        timestamp: datetime,
    ) -> None:
        """Returns the view to the checkpoint's state, first taking a rollback checkpoint of
        the state before so that the rollback itself can be undone."""
        self._check_position(target_position)
        self.create_checkpoint(
            checkpoint_id=undo_checkpoint_id,
            checkpoint_type=CheckpointType.ROLLBACK,
            name=f"Before rollback to {checkpoint_id}",
            timestamp=timestamp,
        )
        self.trigger_event(
            events.RolledBack,
            checkpoint_id=checkpoint_id,
            undo_checkpoint_id=undo_checkpoint_id,
            target_position=target_position,
            view=self._resolved(view_at_target, target_position),
            timestamp=timestamp,
        )

    def restore_snapshot(
        self,
        *,
        snapshot_id: str,
        target_position: int,
        view_at_target: ViewState,
        timestamp: datetime,
    ) -> None:
        self._check_position(target_position)
        self.trigger_event(
            events.SnapshotRestored,
            snapshot_id=snapshot_id,
            target_position=target_position,
            view=self._resolved(view_at_target, target_position),
            timestamp=timestamp,
        )

    def _resolved(self, view_at_target: ViewState, target_position: int) -> ViewState:
        # The replacing event lands at version+1; the view continues right after it.
        return view_at_target.cut(self.id, target_position, self.version + 2)

    def _check_position(self, position: int) -> None:
        if not 1 <= position <= self.version:
            raise InvalidInput(
                f"Position {position} is outside conversation {self.id} (1..{self.version})."
            )

    def fork(self, *, branch_id: UUID, position: int, source_id: str, timestamp: datetime) -> None:
        self._check_position(position)
        self.trigger_event(
            events.BranchForked,
            branch_id=branch_id,
            position=position,
            source_id=source_id,
            timestamp=timestamp,
        )

    def take_snapshot(self, *, snapshot_id: str, meta: dict[str, Any], timestamp: datetime) -> int:
        self.trigger_event(
            events.SnapshotTaken, snapshot_id=snapshot_id, meta=meta, timestamp=timestamp
        )
        return self.version

    def record_context_file(
        self,
        *,
        path: str,
        name: str,
        location: str,
        size: int,
        modified: float,
        message_id: str,
        timestamp: datetime,
    ) -> None:
        self.trigger_event(
            events.ContextFileLoaded,
            path=path,
            name=name,
            location=location,
            size=size,
            modified=modified,
            message_id=message_id,
            timestamp=timestamp,
        )

    def retitle(self, title: str, timestamp: datetime) -> None:
        if not title.strip():
            raise InvalidInput("A title cannot be empty.")
        if title != self.title:
            self.trigger_event(events.ConversationTitled, title=title, timestamp=timestamp)

    def trim_context(
        self,
        *,
        message_ids: tuple[str, ...],
        category: Category,
        tokens_freed: int,
        budget: int,
        reason: str,
        timestamp: datetime,
    ) -> None:
        if message_ids:
            self.trigger_event(
                events.ContextTrimmed,
                session_id=self.session_id,
                message_ids=message_ids,
                category=category,
                tokens_freed=tokens_freed,
                budget=budget,
                reason=reason,
                timestamp=timestamp,
            )

    def record_model_call(
        self,
        *,
        call_id: str,
        provider: str,
        model: str,
        parameters: dict[str, Any],
        manifest: ManifestRecord,
        message_count: int,
        images_replaced: tuple[str, ...],
        request_hash: str,
        prompt_tokens: int,
        timestamp: datetime,
        idempotency_key: str | None = None,
        input_hash: str | None = None,
    ) -> None:
        self.trigger_event(
            events.ModelCalled,
            idempotency_key=idempotency_key,
            input_hash=input_hash,
            call_id=call_id,
            provider=provider,
            model=model,
            session_id=self.session_id,
            parameters=parameters,
            message_count=message_count,
            message_ids=manifest.message_ids,
            base_call_id=manifest.base_call_id,
            added_ids=manifest.added_ids,
            removed_ids=manifest.removed_ids,
            images_replaced=images_replaced,
            request_hash=request_hash,
            prompt_tokens=prompt_tokens,
            timestamp=timestamp,
        )

    def record_model_failure(
        self,
        *,
        error_type: str,
        message: str,
        partial_text: str,
        timestamp: datetime,
        call_id: str | None = None,
        kind: str = "error",
        attempts: int = 1,
    ) -> None:
        self.trigger_event(
            events.ModelCallFailed,
            error_type=error_type,
            message=message,
            partial_text=partial_text,
            call_id=call_id,
            kind=kind,
            attempts=attempts,
            timestamp=timestamp,
        )

    def take_emergency_checkpoint(
        self, *, description: str, timestamp: datetime, checkpoints: CheckpointConfig, mint: Mint
    ) -> str | None:
        """After a failed model call, a checkpoint to come back to while checkpoints are on;
        returns its id (None when they are off)."""
        if not checkpoints.enabled:
            return None
        checkpoint_id = mint.new_id("cp")
        self.create_checkpoint(
            checkpoint_id=checkpoint_id,
            checkpoint_type=CheckpointType.EMERGENCY,
            name="Model call failed",
            description=description[:200],
            timestamp=timestamp,
        )
        return checkpoint_id

    def record_model_response(
        self,
        *,
        call_id: str,
        message_id: str | None,
        stop_reason: str | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        latency_ms: float,
        attempts: int,
        timestamp: datetime,
    ) -> None:
        self.trigger_event(
            events.ModelResponded,
            call_id=call_id,
            message_id=message_id,
            stop_reason=stop_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=latency_ms,
            attempts=attempts,
            timestamp=timestamp,
        )


Conversation.Snapshot = ConversationSnapshot  # type: ignore[attr-defined]
register_topic(Conversation.TOPIC, Conversation)
