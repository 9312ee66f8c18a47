"""The session contexts of recently used conversations: what a turn builds its request from,
kept current by the events each command saves instead of being re-read from the log.

A context is rebuilt from the log when its conversation changed under it: a rollback or
restore (it marks itself stale), or another writer's events that this process never saw."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from uuid import UUID

from eventsourcing.persistence import Recording

from chatledger.model_context import SessionContext
from domain.conversation import Conversation
from domain.events import ContextTrimmed, ConversationStarted, ModelCalled
from domain.view import ViewState
from projections.queries import ReadModel


class SessionContexts:
    """A least-recently-used cache of SessionContexts, by conversation."""

    def __init__(self, read: ReadModel, size: int) -> None:
        self.read = read
        self.size = max(1, size)
        #: Least recently used first.
        self._contexts: OrderedDict[UUID, SessionContext] = OrderedDict()

    def get(self, conversation_id: UUID) -> SessionContext | None:
        """The cached context, if any, as it is (it may be stale)."""
        return self._contexts.get(conversation_id)

    def of(self, conversation: Conversation) -> SessionContext:
        """The conversation's current session context: the cached one if it is current,
        else one rebuilt from the log (and cached)."""
        new = conversation.pending_events[:1]
        if new and isinstance(new[0], ConversationStarted):
            # Started in the command's own transaction: none of it is in the log to read yet,
            # and it is not cached before it is saved.
            started = new[0]
            context = SessionContext(
                conversation.id,
                started.originator_version,
                conversation.view.session.session_id,
                {},
                {},
            )
            for event in conversation.pending_events[1:]:
                context.apply(event)
            return context
        cached = self._contexts.get(conversation.id)
        if cached is not None and not cached.stale and cached.version == conversation.version:
            self._contexts.move_to_end(conversation.id)
            return cached
        context = self.from_log(conversation.id, conversation.version, conversation.view)
        self._contexts[conversation.id] = context
        while len(self._contexts) > self.size:
            self._contexts.popitem(last=False)
        return context

    def from_log(self, cid: UUID, position: int, view: ViewState) -> SessionContext:
        """The session context right after event `position`, whose view is `view`."""
        segments = view.segments(cid, position)
        records = self.read.documents(segments, (ContextTrimmed.TOPIC, ModelCalled.TOPIC))
        return SessionContext.from_log(
            cid,
            position,
            view.session.session_id,
            {pin.message_id for pin in view.pinned},
            self.read.transcript(segments),
            [doc for _, topic, _, doc in records if topic == ContextTrimmed.TOPIC],
            [doc for _, topic, _, doc in records if topic == ModelCalled.TOPIC],
        )

    def saved(self, recordings: Sequence[Recording[UUID]]) -> None:
        """Follows the events a command just saved."""
        for recording in recordings:
            event = recording.domain_event
            context = self._contexts.get(event.originator_id)
            if context is None:
                continue
            # A command that did not read the context (a reply, a checkpoint) saves after
            # other writers' events it never saw: a context that skipped them is dropped,
            # to be rebuilt from the log, or it would build and record the next turn on a
            # transcript and a previous call that are not the log's.
            if context.version == event.originator_version - 1:
                context.apply(event)
            else:
                del self._contexts[event.originator_id]

    def forget(self, conversation_id: UUID) -> None:
        self._contexts.pop(conversation_id, None)


class Follower:
    """Keeps a command's working copy of a session context in step with the events the
    command triggers, before they are saved."""

    def __init__(self, conversation: Conversation, context: SessionContext) -> None:
        self.conversation, self.context = conversation, context
        self.seen = len(conversation.pending_events)

    def __call__(self) -> None:
        for event in self.conversation.pending_events[self.seen :]:
            self.context.apply(event)
        self.seen = len(self.conversation.pending_events)
