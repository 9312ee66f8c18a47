"""Token usage over time: the size of each conversation's active view after every change,
so a viewer can plot it and a reader can ask what it was at any position."""

from __future__ import annotations

import sqlite3
from typing import Any

from domain import events
from projections.base import Handler, Projection


class TokenUsageHistory(Projection):
    name = "token_usage"
    tables = ("token_usage",)
    ddl = (
        """CREATE TABLE IF NOT EXISTS token_usage (
            conversation_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            recorded_at TEXT NOT NULL,
            message_count INTEGER NOT NULL,
            token_count INTEGER NOT NULL,
            PRIMARY KEY (conversation_id, position)
        ) WITHOUT ROWID""",
    )

    def handlers(self) -> dict[type, Handler]:
        return {
            events.ConversationStarted: self._reset,
            events.RolledBack: self._reset,
            events.SnapshotRestored: self._reset,
            events.MessageAppended: self._grow,
            events.SessionStarted: self._grow,
        }

    def _reset(self, cursor: sqlite3.Cursor, event: Any, _: int) -> None:
        self._insert(cursor, event, event.view.message_count, event.view.token_count)

    def _grow(self, cursor: sqlite3.Cursor, event: Any, _: int) -> None:
        tokens = getattr(event, "tokens", None)
        if tokens is None:
            tokens = event.marker_tokens
        cursor.execute(
            "INSERT INTO token_usage SELECT conversation_id, ?, ?, message_count + 1, "
            "token_count + ? FROM token_usage WHERE conversation_id=? "
            "ORDER BY position DESC LIMIT 1",
            (
                event.originator_version,
                event.timestamp.isoformat(),
                tokens,
                event.originator_id.hex,
            ),
        )

    @staticmethod
    def _insert(cursor: sqlite3.Cursor, event: Any, messages: int, tokens: int) -> None:
        cursor.execute(
            "INSERT INTO token_usage VALUES (?,?,?,?,?)",
            (
                event.originator_id.hex,
                event.originator_version,
                event.timestamp.isoformat(),
                messages,
                tokens,
            ),
        )
