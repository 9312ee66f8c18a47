"""The active view of a conversation, as a small value object.

A view never holds message bodies. It names which stretches of which streams make up the
transcript (segments), and keeps the running counts that invariants and token usage need.
Branching and rollback only rewrite this small object, which is what makes them O(1)."""

from __future__ import annotations

from uuid import UUID

from pydantic import Field

from domain.messages import Category, Immutable


class Segment(Immutable):
    """Positions first..last (inclusive) of one conversation stream belong to the view."""

    conversation_id: UUID
    first: int
    last: int


class PinnedMessage(Immutable):
    """A SYSTEM or CONTEXT message that every new session carries forward."""

    message_id: str
    category: Category
    tokens: int


class SessionSummary(Immutable):
    session_id: str
    number: int
    message_count: int = 0
    #: Tokens of what the session holds for the model: carried pinned messages plus its own.
    tokens_by_category: dict[str, int] = Field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(self.tokens_by_category.values())


def _add_tokens(totals: dict[str, int], category: Category, tokens: int) -> dict[str, int]:
    updated = dict(totals)
    updated[category.value] = updated.get(category.value, 0) + tokens
    return updated


class Truncations(Immutable):
    """What trimming has left out of the model's context in this view (history keeps it)."""

    total_truncations: int = 0
    messages_removed: int = 0
    tokens_freed: int = 0
    by_category: dict[str, int] = Field(default_factory=dict)


class ViewState(Immutable):
    """What a conversation shows at one position.

    `closed` segments come from ancestors or from before a rollback; the conversation's own
    stream contributes everything from `open_from` onwards."""

    closed: tuple[Segment, ...] = ()
    open_from: int = 2
    message_count: int = 0
    token_count: int = 0
    tokens_by_category: dict[str, int] = Field(default_factory=dict)
    pinned: tuple[PinnedMessage, ...] = ()
    sessions: tuple[SessionSummary, ...] = ()
    eligible_since_auto_checkpoint: int = 0
    truncations: Truncations = Truncations()

    @property
    def session(self) -> SessionSummary:
        return self.sessions[-1]

    @property
    def only_system_messages(self) -> bool:
        """Holds nothing but SYSTEM messages (the system prompt): no dialog, tool output or
        context yet, so nothing a checkpoint could take the user back to."""
        system = sum(1 for pin in self.pinned if pin.category == Category.SYSTEM)
        return self.message_count == system

    def segments(self, conversation_id: UUID, head: int) -> tuple[Segment, ...]:
        """All segments, the open one cut at `head`."""
        own = Segment(conversation_id=conversation_id, first=self.open_from, last=head)
        return (*self.closed, own) if head >= self.open_from else self.closed

    def cut(self, conversation_id: UUID, position: int, from_: int) -> ViewState:
        """This view frozen at `position`; the stream that owns the result contributes
        everything from `from_` on."""
        return self.model_copy(
            update={"closed": self.segments(conversation_id, position), "open_from": from_}
        )

    def with_message(
        self, message_id: str, category: Category, tokens: int, *, eligible: bool, pinned: bool
    ) -> ViewState:
        session = self.session.model_copy(
            update={
                "message_count": self.session.message_count + 1,
                "tokens_by_category": _add_tokens(
                    self.session.tokens_by_category, category, tokens
                ),
            }
        )
        pins = self.pinned
        if pinned:
            pins = (*pins, PinnedMessage(message_id=message_id, category=category, tokens=tokens))
        return self.model_copy(
            update={
                "message_count": self.message_count + 1,
                "token_count": self.token_count + tokens,
                "tokens_by_category": _add_tokens(self.tokens_by_category, category, tokens),
                "pinned": pins,
                "sessions": (*self.sessions[:-1], session),
                "eligible_since_auto_checkpoint": self.eligible_since_auto_checkpoint
                + int(eligible),
            }
        )

    def with_new_session(self, session_id: str) -> ViewState:
        carried: dict[str, int] = {}
        for pin in self.pinned:
            carried = _add_tokens(carried, pin.category, pin.tokens)
        number = self.session.number + 1 if self.sessions else 1
        fresh = SessionSummary(session_id=session_id, number=number, tokens_by_category=carried)
        return self.model_copy(update={"sessions": (*self.sessions, fresh)})

    def with_trim(self, category: Category, messages: int, tokens: int) -> ViewState:
        """Trimmed messages leave the session's window (not the transcript)."""
        session = self.session.model_copy(
            update={
                "tokens_by_category": _add_tokens(
                    self.session.tokens_by_category, category, -tokens
                )
            }
        )
        totals = self.truncations
        truncations = Truncations(
            total_truncations=totals.total_truncations + 1,
            messages_removed=totals.messages_removed + messages,
            tokens_freed=totals.tokens_freed + tokens,
            by_category=_add_tokens(totals.by_category, category, messages),
        )
        return self.model_copy(
            update={"sessions": (*self.sessions[:-1], session), "truncations": truncations}
        )

    def after_auto_checkpoint(self) -> ViewState:
        return self.model_copy(update={"eligible_since_auto_checkpoint": 0})
