"""Sessions: the segments each conversation's stream was cut into, in order."""

from __future__ import annotations

from typing import Any

from domain import events
from infrastructure.database import Cursor
from projections.base import Handler, Projection


class SessionIndex(Projection):
    name = "sessions"
    tables = ("sessions",)
    ddl = (
        """CREATE TABLE IF NOT EXISTS sessions (
            session_id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            number INTEGER NOT NULL,
            started_position INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            previous_session_id TEXT,
            reason TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS sessions_by_conversation ON sessions (conversation_id)",
    )

    def handlers(self) -> dict[type, Handler]:
        return {events.ConversationStarted: self._first, events.SessionStarted: self._next}

    def _first(self, cursor: Cursor, event: Any, _: int) -> None:
        session = event.view.session
        # A branch continues its parent's session; only a root conversation opens one.
        if event.parent is None:
            self._insert(cursor, event, session.session_id, session.number, None, "started")

    def _next(self, cursor: Cursor, event: Any, _: int) -> None:
        number = cursor.execute(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM sessions WHERE conversation_id=?",
            (event.originator_id.hex,),
        ).fetchone()[0]
        self._insert(
            cursor, event, event.session_id, number, event.previous_session_id, event.reason
        )

    @staticmethod
    def _insert(
        cursor: Cursor,
        event: Any,
        session_id: str,
        number: int,
        previous: str | None,
        reason: str,
    ) -> None:
        cursor.execute(
            "INSERT INTO sessions VALUES (?,?,?,?,?,?,?)",
            (
                session_id,
                event.originator_id.hex,
                number,
                event.originator_version,
                event.timestamp.isoformat(),
                previous,
                reason,
            ),
        )
