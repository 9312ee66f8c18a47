"""The Conversation aggregate: the write model.

It holds only what its invariants need (the view's segments and counts, the session, the chain
tip), never message bodies, so loading it costs the same at 10 and at 100k messages."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

from eventsourcing.domain import BaseAggregate, CanSnapshotAggregate
from eventsourcing.utils import get_topic, register_topic, resolve_topic

from domain import events
from domain.checkpoints import CheckpointType
from domain.errors import InvalidInput
from domain.manifests import ManifestRecord
from domain.messages import Category, ContentPart, Immutable, Role
from domain.view import ViewState


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


class ConversationSnapshot(Immutable, CanSnapshotAggregate[UUID]):
    """The aggregate's whole state at a version, so loads replay only the events after it."""

    TOPIC: ClassVar[str] = "chatledger:ConversationSnapshot"

    originator_id: UUID
    originator_version: int
    timestamp: datetime
    topic: str
    state: ConversationState

    @classmethod
    def take(cls, aggregate: Any) -> ConversationSnapshot:
        return cls(
            originator_id=aggregate.id,
            originator_version=aggregate.version,
            timestamp=cls.create_timestamp(),
            topic=get_topic(type(aggregate)),
            state=ConversationState(
                created_on=aggregate.created_on,
                modified_on=aggregate.modified_on,
                view=aggregate.view,
                chain_tip=aggregate.chain_tip,
                title=aggregate.title,
                parent=aggregate.parent,
                live_auto_checkpoints=aggregate.live_auto_checkpoints,
                auto_checkpoints_taken=aggregate.auto_checkpoints_taken,
            ),
        )

    def mutate(self, _: None) -> Conversation:
        aggregate: Conversation = object.__new__(resolve_topic(self.topic))
        state = self.state
        aggregate.__base_init__(self.originator_id, self.originator_version, state.created_on)
        aggregate.modified_on = state.modified_on
        aggregate.view = state.view
        aggregate.chain_tip = state.chain_tip
        aggregate.title = state.title
        aggregate.parent = state.parent
        aggregate.live_auto_checkpoints = state.live_auto_checkpoints
        aggregate.auto_checkpoints_taken = state.auto_checkpoints_taken
        return aggregate


class ConversationState(Immutable):
    created_on: datetime
    modified_on: datetime
    view: ViewState
    chain_tip: str
    title: str | None
    parent: events.ForkPoint | None
    live_auto_checkpoints: int
    auto_checkpoints_taken: int


ConversationSnapshot.model_rebuild()
Conversation.Snapshot = ConversationSnapshot  # type: ignore[attr-defined]
register_topic(Conversation.TOPIC, Conversation)
register_topic(ConversationSnapshot.TOPIC, ConversationSnapshot)
