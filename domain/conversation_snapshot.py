"""The Conversation aggregate's snapshot: its whole state at a version, stored so that loading
it replays only the events after that version. Its stable topic (not this module's path) names
it in the store."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

from eventsourcing.domain import CanSnapshotAggregate
from eventsourcing.utils import get_topic, register_topic, resolve_topic

from domain import events
from domain.messages import Immutable
from domain.view import ViewState

if TYPE_CHECKING:
    from domain.conversation import Conversation


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
register_topic(ConversationSnapshot.TOPIC, ConversationSnapshot)
