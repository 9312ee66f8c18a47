"""The query side: transcripts (now and as of any position), what the model was sent, the
checkpoint index, the conversation listing, the branch tree and chain verification. Reads come
from the projections, or from the log replayed to a position; they never write."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import orjson

from chatledger import inputs
from chatledger.inputs import MAX_SEARCH_CHARS, parse_conversation_id
from chatledger.model_context import build_request
from chatledger.session_contexts import SessionContexts
from domain.context_window import WindowConfig
from domain.conversation import Conversation
from domain.errors import (
    CheckpointNotFound,
    ConversationNotFound,
    InvalidInput,
    NotFound,
    SnapshotNotFound,
)
from domain.view import ViewState
from infrastructure.database import Database
from infrastructure.event_store import EventStore
from infrastructure.verification import VerificationReport, verify
from projections.queries import CheckpointRow, ReadModel, SnapshotRow


class ConversationQueries:
    def __init__(
        self,
        store: EventStore,
        database: Database,
        read: ReadModel,
        contexts: SessionContexts,
        window: WindowConfig,
    ) -> None:
        self.store, self.database, self.read = store, database, read
        self.contexts, self.window = contexts, window

    def existing(self, conversation_id: str | UUID) -> UUID:
        cid = parse_conversation_id(conversation_id)
        if not self.read.conversation_exists(cid):
            raise ConversationNotFound(f"No conversation with id {cid}.")
        return cid

    def conversation(self, conversation_id: str | UUID) -> Conversation:
        """The write model caught up with every writer, for reads."""
        return self.store.conversation(self.existing(conversation_id), fresh=True)

    def view_at(self, conversation_id: UUID, position: int) -> ViewState:
        return self.store.conversation(conversation_id, version=position).view

    def _at(self, conversation_id: str | UUID, position: int | None) -> tuple[Conversation, int]:
        """The conversation now, and a position in it (None: its head), or InvalidInput."""
        head = self.conversation(conversation_id)
        at = head.version if position is None else position
        if not isinstance(at, int) or not 1 <= at <= head.version:
            raise InvalidInput(
                f"Position must be between 1 and {head.version} for conversation {head.id}."
            )
        return head, at

    def event_hash(self, conversation_id: UUID, position: int) -> str:
        """The stored hash of one event (a branch's first event chains to its fork's)."""
        return str(orjson.loads(self.store.stored_event(conversation_id, position).state)["hash"])

    def history(self, conversation_id: str | UUID) -> list[dict[str, Any]]:
        conversation = self.conversation(conversation_id)
        return self.read.transcript(
            conversation.view.segments(conversation.id, conversation.version)
        )

    def message(self, conversation_id: UUID, message_id: str) -> dict[str, Any]:
        """One message of the conversation's active transcript, as a transcript row."""
        for row in reversed(self.history(conversation_id)):
            if row["id"] == message_id:
                return row
        raise NotFound(f"Message {message_id} is not in conversation {conversation_id}.")

    def as_of(self, conversation_id: str | UUID, position: int) -> list[dict[str, Any]]:
        """The active transcript exactly as it was right after event `position`."""
        head, at = self._at(conversation_id, position)
        cid = head.id
        segments = self.read.segments_at(cid, at)
        if segments is None:  # pragma: no cover - every conversation starts with a view row
            raise ConversationNotFound(f"Conversation {cid} has no view at {at}.")
        return self.read.transcript(segments)

    def context_at(
        self, conversation_id: str | UUID, position: int | None = None
    ) -> dict[str, Any]:
        """What the model was (or would be) sent right after event `position` (default: now):
        the messages in the order sent, the session's messages left out and why, and the
        request's hash. Replaying a recorded turn's position gives its recorded manifest."""
        head, at = self._at(conversation_id, position)
        cid = head.id
        view = head.view if at == head.version else self.view_at(cid, at)
        context = self.contexts.from_log(cid, at, view)
        plan = context.plan(self.window)
        request = build_request(context, plan)
        replaced = set(plan.images_replaced)
        would_trim = {t.message_id: f"would be trimmed: {t.reason}" for t in plan.trimmed}
        left_out = [
            {**row, "reason": context.trimmed.get(row["id"]) or would_trim[row["id"]]}
            for row in self.read.transcript(view.segments(cid, at))
            if row["id"] in context.trimmed or row["id"] in would_trim
        ]
        return {
            "conversation_id": str(cid),
            "position": at,
            "session_id": context.session_id,
            "sent": [{**context.rows[mid], "image_replaced": mid in replaced} for mid in plan.kept],
            "left_out": left_out,
            "request": request.messages,
            "request_hash": request.hash,
            "tokens": plan.total_tokens,
            "usable_window": self.window.usable,
        }

    def checkpoint(self, checkpoint_id: str) -> CheckpointRow:
        key = inputs.stored_id(checkpoint_id)
        row = None if key is None else self.read.checkpoint(key)
        if row is None:
            raise CheckpointNotFound(
                f"No checkpoint {checkpoint_id!r} (unknown, or pruned by retention)."
            )
        return row

    def snapshot(self, snapshot_id: str) -> SnapshotRow:
        key = inputs.stored_id(snapshot_id)
        row = None if key is None else self.read.snapshot(key)
        if row is None:
            raise SnapshotNotFound(f"No snapshot {snapshot_id!r}.")
        return row

    def fork_point(self, source_id: str) -> tuple[UUID, int]:
        """Where a branch from a checkpoint or a snapshot starts: a conversation and position."""
        key = inputs.stored_id(source_id)
        checkpoint = None if key is None else self.read.checkpoint(key)
        if checkpoint is not None:
            return checkpoint.conversation_id, checkpoint.position
        snapshot = None if key is None else self.read.snapshot(key)
        if snapshot is not None:
            return snapshot.conversation_id, snapshot.position
        raise CheckpointNotFound(f"No checkpoint or snapshot {source_id!r} to branch from.")

    def checkpoints(
        self,
        conversation_id: str | UUID | None = None,
        checkpoint_type: str | None = None,
        limit: int | None = 50,
        session_id: str | None = None,
    ) -> list[CheckpointRow]:
        cid = self.existing(conversation_id) if conversation_id is not None else None
        if checkpoint_type is not None:
            checkpoint_type = inputs.checkpoint_type(checkpoint_type).value
        if limit is not None:
            inputs.count(limit, "limit")
        session_id = inputs.label(session_id, "A session id")
        return self.read.checkpoints(cid, checkpoint_type, limit, session_id)

    def list_conversations(
        self, limit: int = 100, offset: int = 0, search_term: str | None = None
    ) -> list[dict[str, Any]]:
        search_term = inputs.label(
            search_term, "A search term", MAX_SEARCH_CHARS, "MAX_SEARCH_CHARS"
        )
        return self.read.list_conversations(
            inputs.count(limit, "limit"), inputs.count(offset, "offset"), search_term
        )

    def branch_tree(self) -> list[dict[str, Any]]:
        return self.read.branches()

    def verify(
        self,
        conversation_id: str | UUID | None = None,
        anchor: Path | str | dict[str, Any] | None = None,
    ) -> VerificationReport:
        """Walks the hash chains of every conversation (or one and its ancestors). With an
        anchor (an anchor file's path, or its document as from `report.anchor()`), anchored
        heads must still be stored unchanged too, so tail truncation and a forged newest event
        are found. Raises FileInputError/InvalidInput for a missing or corrupt anchor.
        `report.anchor()` of an intact report is the anchor to export."""
        only = self.existing(conversation_id) if conversation_id is not None else None
        with self.database.failures():
            return verify(self.store.recorder, only, anchor)
