"""The unit of work: every command decides on the aggregates it loads through a Batch, and the
UnitOfWork saves what it decided in one transaction, or forgets all of it if anything fails.

A conflict with another writer (a position taken first) decides again on fresh state, after a
short random pause; a database that gives up is a StoreError; after MAX_ATTEMPTS lost races
the command fails with ConcurrencyConflict, having written nothing."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar
from uuid import UUID

from eventsourcing.persistence import PersistenceError, RecordConflictError, Recording

from domain.conversation import Conversation
from domain.errors import ConcurrencyConflict
from infrastructure.database import Database
from infrastructure.event_store import EventStore

T = TypeVar("T")
MAX_ATTEMPTS = 30
#: First pause (seconds) before deciding again after a conflict; doubles, capped at 50 ms.
CONFLICT_BACKOFF = 0.001


@dataclass
class Batch:
    """The aggregates one command touched: saved together in one transaction, or forgotten
    together if the command fails."""

    store: EventStore
    database: Database
    #: Whether cached aggregates must first catch up with other writers' events.
    fresh: bool = True
    aggregates: dict[UUID, Conversation] = field(default_factory=dict)
    #: Conversations started by the first command that gets them (UnitOfWork.start_later).
    unstarted: dict[UUID, Callable[[Batch], Conversation]] = field(default_factory=dict)

    def get(self, conversation_id: UUID) -> Conversation:
        if conversation_id not in self.aggregates and conversation_id in self.unstarted:
            return self.unstarted[conversation_id](self)
        if conversation_id not in self.aggregates:
            self.database.lock_conversation(conversation_id)
            self.aggregates[conversation_id] = self.store.conversation(
                conversation_id, fresh=self.fresh
            )
        return self.aggregates[conversation_id]

    def add(self, conversation: Conversation) -> Conversation:
        self.aggregates[conversation.id] = conversation
        return conversation


class Observer(Protocol):
    """Something kept in step with what commands save (the session-context cache)."""

    def saved(self, recordings: Sequence[Recording[UUID]]) -> None: ...

    def forget(self, conversation_id: UUID) -> None: ...


class UnitOfWork:
    def __init__(self, store: EventStore, database: Database, observer: Observer) -> None:
        self.store, self.database, self.observer = store, database, observer
        self.unstarted: dict[UUID, Callable[[Batch], Conversation]] = {}

    def start_later(self, conversation_id: UUID, start: Callable[[Batch], Conversation]) -> None:
        """The conversation is started (by `start`, which adds it to the batch) in the
        transaction of the first command that gets it, so a refused command writes nothing."""
        self.unstarted[conversation_id] = start

    def started(self, conversation_id: UUID) -> bool:
        return conversation_id not in self.unstarted

    def run(self, decide: Callable[[Batch], T]) -> T:
        """Runs `decide` on a fresh Batch and saves what it triggered, in one transaction;
        returns what `decide` returned."""
        for attempt in range(MAX_ATTEMPTS):
            batch = Batch(self.store, self.database, unstarted=self.unstarted)
            try:
                # Decide and save under the database's writer lock (see its writer_lock);
                # where there is none, optimistic concurrency on positions decides.
                with self.database.writer_lock():
                    # Cached aggregates catch up first unless nobody else can have committed
                    # since this process's last save.
                    batch.fresh = self.database.changed_by_others()
                    result = decide(batch)
                    recordings = self.store.save_conversations(*batch.aggregates.values())
                    self.database.note_own_commit()
            except RecordConflictError:
                # Another writer got there first: decide again on fresh state, after a short
                # random pause so that writers racing for one conversation spread out.
                self.forget(batch)
                time.sleep(min(CONFLICT_BACKOFF * 2**attempt, 0.05) * random.random())
                continue
            except PersistenceError as error:
                # The library gave up on the database (it retries dropped connections).
                self.forget(batch)
                raise self.database.failed(error) from error
            except BaseException:
                self.forget(batch)
                raise
            for conversation_id in batch.aggregates:
                self.unstarted.pop(conversation_id, None)
            self.observer.saved(recordings)
            return result
        raise ConcurrencyConflict(
            f"Gave up after {MAX_ATTEMPTS} attempts: other writers kept appending to the same "
            "conversation. Retry the call."
        )

    def forget(self, batch: Batch) -> None:
        self.database.forget_commits()
        for conversation_id in batch.aggregates:
            self.store.forget(conversation_id)
            self.observer.forget(conversation_id)
