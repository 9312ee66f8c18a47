"""The event catalogue: every fact chatledger records, as immutable pydantic models.

Each event has an explicit, stable TOPIC (so moving a class never orphans stored events) and a
class_version (older stored versions are upcast on read by `upcast_vN_vN+1` class methods).
Ids, clocks and token counts are decided by the command and carried in the event: `apply`
only copies them onto the aggregate, so a replay always rebuilds the same state."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import CanInitAggregate, CanMutateAggregate
from eventsourcing.utils import register_topic
from pydantic import Field

from domain.checkpoints import CheckpointType
from domain.hashing import event_hash
from domain.messages import ELIGIBLE_ROLES, Category, ContentPart, Immutable, Role
from domain.view import ViewState


class ConversationEvent(Immutable, CanMutateAggregate[UUID]):
    TOPIC: ClassVar[str] = ""
    class_version: ClassVar[int] = 1

    originator_id: UUID
    originator_version: int
    timestamp: datetime
    prev_hash: str
    hash: str = ""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "TOPIC" in cls.__dict__:
            register_topic(cls.TOPIC, cls)

    def model_post_init(self, context: Any, /) -> None:
        if not self.hash:
            object.__setattr__(self, "hash", self.compute_hash())

    def document(self) -> dict[str, Any]:
        """The event as a JSON document, without its hash. None values are left out to keep
        stored events small: every optional field of an event defaults to None, so they come
        back on read."""
        return self.model_dump(mode="json", exclude={"hash"}, exclude_none=True)

    def compute_hash(self) -> str:
        # The topic is hashed too: changing what kind of event a record is must show.
        return event_hash({**self.document(), "topic": self.TOPIC})

    def apply(self, aggregate: Any) -> None:
        aggregate.chain_tip = self.hash


class ForkPoint(Immutable):
    """Where a branch starts: a position of its parent, named by a checkpoint or snapshot."""

    conversation_id: UUID
    position: int
    source_id: str


class ConversationStarted(ConversationEvent, CanInitAggregate[UUID]):
    TOPIC = "chatledger:ConversationStarted"

    originator_topic: str
    title: str | None = None
    parent: ForkPoint | None = None
    reset_from: UUID | None = None
    view: ViewState

    def apply(self, aggregate: Any) -> None:
        super().apply(aggregate)
        aggregate.title = self.title
        aggregate.parent = self.parent
        aggregate.view = self.view
        aggregate.live_auto_checkpoints = 0
        aggregate.auto_checkpoints_taken = 0


class MessageAppended(ConversationEvent):
    TOPIC = "chatledger:MessageAppended"
    #: v1 (release 0.1) also stored `pinned` and `eligible`, which v2 derives.
    class_version = 2

    @staticmethod
    def upcast_v1_v2(document: dict[str, Any]) -> None:
        document.pop("pinned", None)
        document.pop("eligible", None)

    message_id: str
    role: Role
    category: Category
    parts: tuple[ContentPart, ...]
    tokens: int
    encoding: str
    session_id: str
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def pinned(self) -> bool:
        """Carried into every new session: SYSTEM and CONTEXT messages."""
        return self.category in (Category.SYSTEM, Category.CONTEXT)

    @property
    def eligible(self) -> bool:
        """Counts towards automatic checkpoints: dialog and tool messages."""
        return self.role in ELIGIBLE_ROLES

    def apply(self, aggregate: Any) -> None:
        super().apply(aggregate)
        aggregate.view = aggregate.view.with_message(
            self.message_id, self.category, self.tokens, eligible=self.eligible, pinned=self.pinned
        )


class SessionStarted(ConversationEvent):
    """A new session segment. It carries the pinned messages by reference and adds exactly one
    transition marker message (never the previous session's marker)."""

    TOPIC = "chatledger:SessionStarted"

    session_id: str
    previous_session_id: str
    reason: str
    marker_message_id: str
    marker_text: str
    marker_tokens: int
    encoding: str

    def apply(self, aggregate: Any) -> None:
        super().apply(aggregate)
        aggregate.view = aggregate.view.with_new_session(self.session_id).with_message(
            self.marker_message_id,
            Category.SYSTEM,
            self.marker_tokens,
            eligible=False,
            pinned=False,
        )


class CheckpointCreated(ConversationEvent):
    TOPIC = "chatledger:CheckpointCreated"

    checkpoint_id: str
    checkpoint_type: CheckpointType
    name: str | None = None
    description: str | None = None
    session_id: str
    message_count: int
    #: 1, 2, 3... over the conversation's auto checkpoints; "keep every nth" uses it.
    auto_ordinal: int | None = None

    def apply(self, aggregate: Any) -> None:
        super().apply(aggregate)
        if self.checkpoint_type is CheckpointType.AUTO:
            aggregate.view = aggregate.view.after_auto_checkpoint()
            aggregate.live_auto_checkpoints += 1
            aggregate.auto_checkpoints_taken += 1


class CheckpointsPruned(ConversationEvent):
    """Retention removed these auto checkpoints from the index (never from the log)."""

    TOPIC = "chatledger:CheckpointsPruned"

    checkpoint_ids: tuple[str, ...]
    reason: str

    def apply(self, aggregate: Any) -> None:
        super().apply(aggregate)
        aggregate.live_auto_checkpoints -= len(self.checkpoint_ids)


class ViewReplaced(ConversationEvent):
    """Base of rollback and restore: the view becomes the state at `target_position`.
    `view` is what that resolves to, so no reader has to replay to find out."""

    target_position: int
    view: ViewState

    def apply(self, aggregate: Any) -> None:
        super().apply(aggregate)
        aggregate.view = self.view


class RolledBack(ViewReplaced):
    TOPIC = "chatledger:RolledBack"

    checkpoint_id: str
    undo_checkpoint_id: str


class SnapshotRestored(ViewReplaced):
    TOPIC = "chatledger:SnapshotRestored"

    snapshot_id: str


class BranchForked(ConversationEvent):
    """Recorded on the parent when a branch starts from one of its positions."""

    TOPIC = "chatledger:BranchForked"

    branch_id: UUID
    position: int
    source_id: str


class SnapshotTaken(ConversationEvent):
    TOPIC = "chatledger:SnapshotTaken"

    snapshot_id: str
    meta: dict[str, Any] = Field(default_factory=dict)


class ContextFileLoaded(ConversationEvent):
    TOPIC = "chatledger:ContextFileLoaded"

    path: str
    name: str
    location: str
    size: int
    modified: float
    message_id: str


class ConversationTitled(ConversationEvent):
    TOPIC = "chatledger:ConversationTitled"

    title: str

    def apply(self, aggregate: Any) -> None:
        super().apply(aggregate)
        aggregate.title = self.title


class ModelCallFailed(ConversationEvent):
    """A model call that finally failed (after any retries), or was cancelled by its consumer.
    `partial_text` is what a stream delivered before it stopped."""

    TOPIC = "chatledger:ModelCallFailed"

    error_type: str
    message: str
    partial_text: str = ""
    call_id: str | None = None
    kind: str = "error"
    attempts: int = 1


class ModelResponded(ConversationEvent):
    """The answer to a recorded call: the assistant message it became (its text and tool
    calls live there, once), and what the provider reported about it."""

    TOPIC = "chatledger:ModelResponded"

    call_id: str
    message_id: str | None = None
    stop_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float
    attempts: int = 1


class ContextTrimmed(ConversationEvent):
    """A trim decision: these messages are left out of the model's context from here on in
    this session. The transcript keeps them."""

    TOPIC = "chatledger:ContextTrimmed"

    session_id: str
    message_ids: tuple[str, ...]
    category: Category
    tokens_freed: int
    budget: int
    reason: str

    def apply(self, aggregate: Any) -> None:
        super().apply(aggregate)
        aggregate.view = aggregate.view.with_trim(
            self.category, len(self.message_ids), self.tokens_freed
        )


class ModelCalled(ConversationEvent):
    """What was sent to a model: the messages, in order, and a hash of the exact request.

    The ordered message ids are recorded in full for a session's first call, and otherwise
    as a change to the session's previous call (`base_call_id`): its ids without
    `removed_ids`, then `added_ids`. A window holds hundreds of messages, so recording them
    in full every turn would make the log grow with the window at every turn.
    `domain.manifests.sent_ids` rebuilds the full list."""

    TOPIC = "chatledger:ModelCalled"

    call_id: str
    session_id: str
    provider: str
    model: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    message_count: int
    message_ids: tuple[str, ...] = ()
    base_call_id: str | None = None
    added_ids: tuple[str, ...] = ()
    removed_ids: tuple[str, ...] = ()
    images_replaced: tuple[str, ...] = ()
    request_hash: str
    prompt_tokens: int
    #: Names one logical call across retries of the whole turn: a call already answered
    #: under this key is not made (or billed) again.
    idempotency_key: str | None = None
    #: What the turn asked (its message, images by content, context files loaded with it),
    #: so a retry under the same key can be told from a different request reusing it.
    input_hash: str | None = None


#: Events that put a message into the transcript.
MESSAGE_TOPICS = (MessageAppended.TOPIC, SessionStarted.TOPIC)
