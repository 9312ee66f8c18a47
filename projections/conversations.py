"""The conversation index: one row per conversation with its title, times, counts and the
shape of its active view (segments), which is all a reader needs to load its transcript."""

from __future__ import annotations

from typing import Any

import orjson

from domain import events
from domain.messages import Role, text_of
from domain.view import ViewState
from infrastructure.database import Cursor
from projections.base import Handler, Projection


def view_columns(view: ViewState) -> dict[str, Any]:
    return {
        "closed": orjson.dumps([s.model_dump(mode="json") for s in view.closed]),
        "open_from": view.open_from,
        "message_count": view.message_count,
        "token_count": view.token_count,
    }


class ConversationIndex(Projection):
    name = "conversations"
    tables = ("conversations", "conversation_views")
    ddl = (
        """CREATE TABLE IF NOT EXISTS conversations (
            conversation_id TEXT PRIMARY KEY,
            title TEXT,
            first_user_text TEXT,
            created_at TEXT NOT NULL,
            last_active TEXT NOT NULL,
            head INTEGER NOT NULL,
            parent_id TEXT,
            parent_position INTEGER,
            closed BLOB NOT NULL,
            open_from INTEGER NOT NULL,
            message_count INTEGER NOT NULL,
            token_count INTEGER NOT NULL
        )""",
        # No index on last_active: every message moves its conversation's entry, a page
        # written per append, to spare list_conversations a sort of one row per conversation.
        # Every shape the view has had, by the position it took effect: "as of position N"
        # is the last row at or before N, its own stream cut at N. No replay needed.
        """CREATE TABLE IF NOT EXISTS conversation_views (
            conversation_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            closed BLOB NOT NULL,
            open_from INTEGER NOT NULL,
            PRIMARY KEY (conversation_id, position)
        ) WITHOUT ROWID""",
    )

    def handlers(self) -> dict[type, Handler]:
        return {
            events.ConversationStarted: self._started,
            events.MessageAppended: self._message,
            events.SessionStarted: self._session,
            events.RolledBack: self._replaced,
            events.SnapshotRestored: self._replaced,
            events.ConversationTitled: self._titled,
        }

    def _started(self, cursor: Cursor, event: Any, _: int) -> None:
        parent = event.parent
        columns = view_columns(event.view)
        cursor.execute(
            "INSERT INTO conversations VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                event.originator_id.hex,
                event.title,
                None,
                event.timestamp.isoformat(),
                event.timestamp.isoformat(),
                event.originator_version,
                parent.conversation_id.hex if parent else None,
                parent.position if parent else None,
                columns["closed"],
                columns["open_from"],
                columns["message_count"],
                columns["token_count"],
            ),
        )
        self._record_view(cursor, event, columns)

    @staticmethod
    def _record_view(cursor: Cursor, event: Any, columns: dict[str, Any]) -> None:
        cursor.execute(
            "INSERT INTO conversation_views VALUES (?,?,?,?)",
            (
                event.originator_id.hex,
                event.originator_version,
                columns["closed"],
                columns["open_from"],
            ),
        )

    def _message(self, cursor: Cursor, event: Any, _: int) -> None:
        first_user_text = text_of(event.parts) if event.role is Role.USER else None
        self._count(cursor, event, event.tokens, first_user_text)

    def _session(self, cursor: Cursor, event: Any, _: int) -> None:
        self._count(cursor, event, event.marker_tokens, None)

    @staticmethod
    def _count(cursor: Cursor, event: Any, tokens: int, first_user_text: str | None) -> None:
        cursor.execute(
            "UPDATE conversations SET message_count=message_count+1, token_count=token_count+?, "
            "last_active=?, head=?, first_user_text=COALESCE(first_user_text, ?) "
            "WHERE conversation_id=?",
            (
                tokens,
                event.timestamp.isoformat(),
                event.originator_version,
                first_user_text,
                event.originator_id.hex,
            ),
        )

    def _replaced(self, cursor: Cursor, event: Any, _: int) -> None:
        columns = view_columns(event.view)
        cursor.execute(
            "UPDATE conversations SET closed=?, open_from=?, message_count=?, token_count=?, "
            "last_active=?, head=? WHERE conversation_id=?",
            (
                columns["closed"],
                columns["open_from"],
                columns["message_count"],
                columns["token_count"],
                event.timestamp.isoformat(),
                event.originator_version,
                event.originator_id.hex,
            ),
        )
        self._record_view(cursor, event, columns)

    def _titled(self, cursor: Cursor, event: Any, _: int) -> None:
        cursor.execute(
            "UPDATE conversations SET title=? WHERE conversation_id=?",
            (event.title, event.originator_id.hex),
        )
