"""The event store: an eventsourcing Application configured for chatledger.

SQLite (one WAL file in the workspace) is the default, PostgreSQL the alternative (see
sqlite_store.py and postgres_store.py); either way the library's recorder does the optimistic
concurrency on (stream, position) and gives every event a notification id."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import Recording, StoredEvent
from eventsourcing.utils import get_topic

from domain.conversation import Conversation
from domain.errors import ConversationNotFound
from infrastructure.mapping import OrjsonTranscoder, PydanticMapper

#: Snapshot every this many events, so loading the write model (and "state at position N")
#: replays at most this many events, whatever the history length.
SNAPSHOT_INTERVAL = 25


def _replay(aggregate: Any, events: Iterable[Any]) -> Any:
    """Folds events into the aggregate. The library's default projector checks every event
    against a runtime Protocol, which costs more than applying it; ours are all
    ConversationEvents."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


class EventStore(Application[UUID]):
    name = "chatledger"
    env: ClassVar[dict[str, str]] = {
        "TRANSCODER_TOPIC": get_topic(OrjsonTranscoder),
        "MAPPER_TOPIC": get_topic(PydanticMapper),
        # Commands use the cached aggregate as it is: if another process appended meanwhile,
        # the save conflicts on the position and the command is retried on fresh state.
        # Reads catch the cached aggregate up first (see `conversation(fresh=True)`).
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
        "AGGREGATE_CACHE_FASTFORWARD": "n",
        "IS_SNAPSHOTTING_ENABLED": "y",
    }

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        #: Set by the owner of the projections: runs inside every insert transaction with
        #: (cursor, domain events, notification ids).
        self.projector: Callable[[Any, Sequence[Any], Sequence[int] | None], None] | None = None
        #: Set by the store's opener: turns the database's failures under the library into
        #: StoreErrors naming the store (see Database.failures).
        self.failures: Callable[[], AbstractContextManager[None]] = nullcontext

    def save_conversations(self, *conversations: Conversation) -> list[Recording[UUID]]:
        """Application.save for aggregates known to be Conversations: the library's save
        tells aggregates from events with runtime Protocol checks, a tenth of an append's
        CPU; here the type is known."""
        processing_event: ProcessingEvent[UUID] = ProcessingEvent()
        for conversation in conversations:
            processing_event.events.extend(conversation.collect_events())
            processing_event.aggregates[conversation.id] = conversation
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        return recordings

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        projector = self.projector
        if projector is not None:
            events = processing_event.events
            processing_event.saved_kwargs["project"] = lambda cursor, ids: projector(
                cursor, events, ids
            )
        return super()._record(processing_event)

    def conversation(
        self, conversation_id: UUID, version: int | None = None, *, fresh: bool = False
    ) -> Conversation:
        with self.failures():
            try:
                aggregate: Conversation = self.repository.get(
                    conversation_id, version=version, projector_func=_replay
                )
            except AggregateNotFoundError:
                raise ConversationNotFound(f"No conversation with id {conversation_id}.") from None
            if fresh and version is None:
                for event in self.events.get(conversation_id, gt=aggregate.version):
                    event.mutate(aggregate)  # type: ignore[attr-defined]
        return aggregate

    def forget(self, conversation_id: UUID) -> None:
        """Drops a cached aggregate whose pending changes were not saved."""
        if self.repository.cache is not None:
            with suppress(KeyError):
                self.repository.cache.get(conversation_id, evict=True)

    def stored_event(self, conversation_id: UUID, position: int) -> StoredEvent:
        events = self.stored_events(conversation_id, position, position)
        if not events:
            raise ConversationNotFound(
                f"Conversation {conversation_id} has no event at position {position}."
            )
        return events[0]

    def stored_events(self, conversation_id: UUID, first: int, last: int) -> Sequence[StoredEvent]:
        with self.failures():
            return self.recorder.select_events(conversation_id, gt=first - 1, lte=last)

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        # The library would re-read the aggregate from the store to snapshot it; the saved
        # aggregate in hand already is that state, so snapshot it directly.
        assert self.snapshots is not None
        for aggregate in processing_event.aggregates.values():
            versions = [
                e.originator_version
                for e in processing_event.events
                if e.originator_id == aggregate.id
            ]
            if not versions:  # read but left unchanged (a title set to what it was)
                continue
            first, last = min(versions), max(versions)
            if last // SNAPSHOT_INTERVAL > (first - 1) // SNAPSHOT_INTERVAL:
                snapshot: Any = Conversation.Snapshot.take(aggregate)  # type: ignore[attr-defined]
                self.snapshots.put([snapshot])
