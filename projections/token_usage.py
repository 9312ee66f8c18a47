"""Token usage: tokens per category of each conversation's active view, kept current message
by message and reset whenever the view is replaced; and the prompt of every model call."""

from __future__ import annotations

from typing import Any

from domain import events
from domain.messages import Category
from infrastructure.database import Cursor
from projections.base import Handler, Projection


class TokenUsage(Projection):
    name = "token_usage"
    tables = ("token_usage", "model_calls")
    ddl = (
        """CREATE TABLE IF NOT EXISTS token_usage (
            conversation_id TEXT NOT NULL,
            category TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            PRIMARY KEY (conversation_id, category)
        ) WITHOUT ROWID""",
        """CREATE TABLE IF NOT EXISTS model_calls (
            call_id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            called_at TEXT NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            messages INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            request_hash TEXT NOT NULL,
            idempotency_key TEXT,
            status TEXT NOT NULL,
            reply_message_id TEXT,
            reported_prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency_ms REAL,
            attempts INTEGER,
            input_hash TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS model_calls_by_key "
        "ON model_calls (conversation_id, idempotency_key)",
        "CREATE INDEX IF NOT EXISTS model_calls_by_conversation "
        "ON model_calls (conversation_id, position)",
    )

    def handlers(self) -> dict[type, Handler]:
        return {
            events.ConversationStarted: self._reset,
            events.RolledBack: self._reset,
            events.SnapshotRestored: self._reset,
            events.MessageAppended: self._message,
            events.SessionStarted: self._marker,
            events.ModelCalled: self._called,
            events.ModelResponded: self._responded,
            events.ModelCallFailed: self._failed,
        }

    def _reset(self, cursor: Cursor, event: Any, _: int) -> None:
        conversation = event.originator_id.hex
        cursor.execute("DELETE FROM token_usage WHERE conversation_id=?", (conversation,))
        cursor.executemany(
            "INSERT INTO token_usage VALUES (?,?,?)",
            [(conversation, c, t) for c, t in sorted(event.view.tokens_by_category.items())],
        )

    def _message(self, cursor: Cursor, event: Any, _: int) -> None:
        self._add(cursor, event, event.category, event.tokens)

    def _marker(self, cursor: Cursor, event: Any, _: int) -> None:
        self._add(cursor, event, Category.SYSTEM, event.marker_tokens)

    @staticmethod
    def _add(cursor: Cursor, event: Any, category: Category, tokens: int) -> None:
        cursor.execute(
            "INSERT INTO token_usage VALUES (?,?,?) ON CONFLICT (conversation_id, category) "
            "DO UPDATE SET tokens = token_usage.tokens + excluded.tokens",
            (event.originator_id.hex, category.value, tokens),
        )

    @staticmethod
    def _called(cursor: Cursor, event: Any, _: int) -> None:
        cursor.execute(
            "INSERT INTO model_calls VALUES "
            "(?,?,?,?,?,?,?,?,?,?,'called',NULL,NULL,NULL,NULL,NULL,?)",
            (
                event.call_id,
                event.originator_id.hex,
                event.originator_version,
                event.timestamp.isoformat(),
                event.provider,
                event.model,
                event.message_count,
                event.prompt_tokens,
                event.request_hash,
                event.idempotency_key,
                event.input_hash,
            ),
        )

    @staticmethod
    def _responded(cursor: Cursor, event: Any, _: int) -> None:
        cursor.execute(
            "UPDATE model_calls SET status='responded', reply_message_id=?, "
            "reported_prompt_tokens=?, completion_tokens=?, latency_ms=?, attempts=? "
            "WHERE call_id=?",
            (
                event.message_id,
                event.prompt_tokens,
                event.completion_tokens,
                event.latency_ms,
                event.attempts,
                event.call_id,
            ),
        )

    @staticmethod
    def _failed(cursor: Cursor, event: Any, _: int) -> None:
        if event.call_id is not None:
            cursor.execute(
                "UPDATE model_calls SET status=?, attempts=? WHERE call_id=?",
                (
                    "cancelled" if event.kind == "cancelled" else "failed",
                    event.attempts,
                    event.call_id,
                ),
            )
