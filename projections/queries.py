"""Reads: every question the application asks of the read models, in one place.

Transcripts are read straight from the log by segment (a range scan on the stream's primary
key), decoded with orjson without building pydantic models: the log is the one source of
truth, and that path is as fast as a raw SELECT + JSON decode."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson

from domain.events import MESSAGE_TOPICS, ContextTrimmed, MessageAppended
from domain.messages import Category, Role
from domain.titles import conversation_title
from domain.view import Segment
from infrastructure.database import Database
from projections.search import message_search


@dataclass(frozen=True)
class CheckpointRow:
    checkpoint_id: str
    conversation_id: UUID
    position: int
    type: str
    created_at: str
    session_id: str
    message_count: int
    name: str | None
    description: str | None
    auto_ordinal: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.checkpoint_id,
            "type": self.type,
            "created_at": self.created_at,
            "session_id": self.session_id,
            "message_count": self.message_count,
            "name": self.name,
            "description": self.description,
            "auto": self.type == "auto",
            "conversation_id": str(self.conversation_id),
            "position": self.position,
        }


@dataclass(frozen=True)
class SnapshotRow:
    snapshot_id: str
    conversation_id: UUID
    position: int
    created_at: str
    meta: dict[str, Any]


def message_row(
    topic: str, position: int, conversation_id: str, doc: dict[str, Any]
) -> dict[str, Any]:
    """A transcript row from a MessageAppended or SessionStarted event's JSON document."""
    if topic == MessageAppended.TOPIC:
        parts = doc["parts"]
        content: Any = parts[0]["text"] if len(parts) == 1 and parts[0]["type"] == "text" else parts
        return {
            "id": doc["message_id"],
            "role": doc["role"],
            "content": content,
            "category": doc["category"],
            "metadata": doc["metadata"],
            "tokens": doc["tokens"],
            "session_id": doc["session_id"],
            "timestamp": doc["timestamp"],
            "conversation_id": conversation_id,
            "position": position,
        }
    return {
        "id": doc["marker_message_id"],
        "role": Role.SYSTEM.value,
        "content": doc["marker_text"],
        "category": Category.SYSTEM.value,
        "metadata": {"session_transition": True, "previous_session_id": doc["previous_session_id"]},
        "tokens": doc["marker_tokens"],
        "session_id": doc["session_id"],
        "timestamp": doc["timestamp"],
        "conversation_id": conversation_id,
        "position": position,
    }


class ReadModel:
    def __init__(self, database: Database) -> None:
        self.db = database
        self.dialect = database.dialect
        self.search = message_search(self.dialect)

    # -- transcripts -------------------------------------------------------------------
    def transcript(self, segments: Iterable[Segment]) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        placeholders = ",".join("?" * len(MESSAGE_TOPICS))
        statement = (
            f"SELECT originator_version, topic, state FROM {self.dialect.events_table} "
            "WHERE originator_id=? AND originator_version BETWEEN ? AND ? "
            f"AND topic IN ({placeholders}) ORDER BY originator_version"
        )
        for segment in segments:
            stream = self.dialect.stream_key(segment.conversation_id)
            named = str(segment.conversation_id)
            rows = self.db.execute(
                statement, (stream, segment.first, segment.last, *MESSAGE_TOPICS)
            )
            messages.extend(
                message_row(topic, pos, named, orjson.loads(state)) for pos, topic, state in rows
            )
        return messages

    def trims(self, segments: Iterable[Segment]) -> list[dict[str, Any]]:
        """The trim decisions recorded in these segments, oldest first."""
        return [doc for _, _, _, doc in self.documents(segments, (ContextTrimmed.TOPIC,))]

    def documents(
        self, segments: Iterable[Segment], topics: Sequence[str]
    ) -> list[tuple[UUID, str, int, dict[str, Any]]]:
        """(stream, topic, position, JSON document) of these segments' events of these
        topics, in view order."""
        placeholders = ",".join("?" * len(topics))
        found: list[tuple[UUID, str, int, dict[str, Any]]] = []
        for segment in segments:
            rows = self.db.execute(
                f"SELECT topic, originator_version, state FROM {self.dialect.events_table} "
                "WHERE originator_id=? AND originator_version BETWEEN ? AND ? "
                f"AND topic IN ({placeholders}) ORDER BY originator_version",
                (
                    self.dialect.stream_key(segment.conversation_id),
                    segment.first,
                    segment.last,
                    *topics,
                ),
            )
            found.extend(
                (segment.conversation_id, topic, pos, orjson.loads(state))
                for topic, pos, state in rows
            )
        return found

    def segments_at(self, conversation_id: UUID, position: int) -> tuple[Segment, ...] | None:
        """The view's segments right after event `position`, from the view history."""
        row = self.db.execute(
            "SELECT closed, open_from FROM conversation_views WHERE conversation_id=? "
            "AND position<=? ORDER BY position DESC LIMIT 1",
            (conversation_id.hex, position),
        ).fetchone()
        if row is None:
            return None
        closed = tuple(Segment.model_validate(s) for s in orjson.loads(row[0]))
        own = Segment(conversation_id=conversation_id, first=row[1], last=position)
        return (*closed, own) if position >= row[1] else closed

    # -- conversations -----------------------------------------------------------------
    def conversation_exists(self, conversation_id: UUID) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM conversations WHERE conversation_id=?", (conversation_id.hex,)
            ).fetchone()
            is not None
        )

    def list_conversations(
        self, limit: int, offset: int, search_term: str | None
    ) -> list[dict[str, Any]]:
        where, params = "", []
        if search_term and search_term.strip():
            self.search.prepare_search(self.db)
            matching, search_params = self.search.conversations_matching(search_term)
            part = search_term.strip().lower()
            contains = self.dialect.contains
            where = (
                f"WHERE {contains('lower(title)')} OR {contains('lower(first_user_text)')} "
                f"OR conversation_id IN ({matching})"
            )
            params = [part, part, *search_params]
        rows = self.db.execute(
            "SELECT conversation_id, title, first_user_text, created_at, last_active, "
            f"message_count, token_count FROM conversations {where} "
            "ORDER BY last_active DESC, conversation_id LIMIT ? OFFSET ?",
            (*params, limit, offset),
        ).fetchall()
        return [
            {
                "id": str(UUID(cid)),
                "title": conversation_title(title, first_text, str(UUID(cid))),
                "created_at": created,
                "last_active": active,
                "message_count": messages,
                "token_count": tokens,
            }
            for cid, title, first_text, created, active, messages, tokens in rows
        ]

    def sessions(self, conversation_id: UUID) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT session_id, number, started_position, started_at, previous_session_id, reason "
            "FROM sessions WHERE conversation_id=? ORDER BY number",
            (conversation_id.hex,),
        )
        keys = ("session_id", "number", "started_position", "started_at", "previous", "reason")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def model_calls(self, conversation_id: UUID) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT call_id, position, called_at, provider, model, messages, prompt_tokens, "
            "request_hash, status, reply_message_id, reported_prompt_tokens, completion_tokens, "
            "latency_ms, attempts FROM model_calls WHERE conversation_id=? ORDER BY position",
            (conversation_id.hex,),
        )
        keys = (
            "call_id",
            "position",
            "called_at",
            "provider",
            "model",
            "messages",
            "prompt_tokens",
            "request_hash",
            "status",
            "reply_message_id",
            "reported_prompt_tokens",
            "completion_tokens",
            "latency_ms",
            "attempts",
        )
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def answered_call(
        self, conversation_id: UUID, idempotency_key: str
    ) -> tuple[str, str, str | None] | None:
        """(call id, reply message id, input hash) of a call made under this key and
        answered."""
        row = self.db.execute(
            "SELECT call_id, reply_message_id, input_hash FROM model_calls WHERE "
            "conversation_id=? AND idempotency_key=? AND status='responded' "
            "AND reply_message_id IS NOT NULL",
            (conversation_id.hex, idempotency_key),
        ).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def branches(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT branch_id, parent_id, position, source_id, created_at FROM branches "
            "ORDER BY created_at"
        )
        return [
            {
                "branch_id": str(UUID(b)),
                "parent_id": str(UUID(p)),
                "position": pos,
                "source_id": src,
                "created_at": at,
            }
            for b, p, pos, src, at in rows
        ]

    # -- checkpoints and snapshots -------------------------------------------------------
    _CHECKPOINT_COLUMNS = (
        "checkpoint_id, conversation_id, position, type, created_at, session_id, "
        "message_count, name, description, auto_ordinal"
    )

    def checkpoint(self, checkpoint_id: str) -> CheckpointRow | None:
        row = self.db.execute(
            f"SELECT {self._CHECKPOINT_COLUMNS} FROM checkpoints "
            "WHERE checkpoint_id=? AND pruned=0",
            (checkpoint_id,),
        ).fetchone()
        return self._checkpoint(row) if row else None

    def checkpoints(
        self,
        conversation_id: UUID | None,
        checkpoint_type: str | None = None,
        limit: int | None = 50,
        session_id: str | None = None,
        *,
        oldest_first: bool = False,
    ) -> list[CheckpointRow]:
        clauses: list[str] = ["pruned=0"]
        params: list[Any] = []
        if conversation_id is not None:
            clauses.append("conversation_id=?")
            params.append(conversation_id.hex)
        if checkpoint_type is not None:
            clauses.append("type=?")
            params.append(checkpoint_type)
        if session_id is not None:
            clauses.append("session_id=?")
            params.append(session_id)
        statement = (
            f"SELECT {self._CHECKPOINT_COLUMNS} FROM checkpoints WHERE {' AND '.join(clauses)} "
            + self._checkpoint_order(conversation_id is not None, oldest_first)
        )
        if limit is not None:
            statement += " LIMIT ?"
            params.append(limit)
        return [self._checkpoint(row) for row in self.db.execute(statement, params)]

    @staticmethod
    def _checkpoint_order(one_conversation: bool, oldest_first: bool) -> str:
        # Within one conversation positions grow with time and the index covers them.
        keys = ("position",) if one_conversation else ("created_at", "position")
        direction = "" if oldest_first else " DESC"
        return "ORDER BY " + ", ".join(key + direction for key in keys)

    @staticmethod
    def _checkpoint(row: tuple[Any, ...]) -> CheckpointRow:
        return CheckpointRow(row[0], UUID(row[1]), *row[2:])

    def snapshot(self, snapshot_id: str) -> SnapshotRow | None:
        row = self.db.execute(
            "SELECT snapshot_id, conversation_id, position, created_at, meta FROM snapshots "
            "WHERE snapshot_id=?",
            (snapshot_id,),
        ).fetchone()
        if row is None:
            return None
        return SnapshotRow(row[0], UUID(row[1]), row[2], row[3], orjson.loads(row[4]))

    def table_dump(self, tables: Iterable[str]) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the given tables, ordered: for comparing a rebuild with live views."""
        return {
            table: sorted(self.db.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for table in tables
        }
