"""A SQLite application recorder that lets the projections write in the same transaction as
the events they project.

Committing the events and the projections' rows together costs one commit (one fsync)
instead of two, and a crash can never leave a projection behind its log."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor

#: Called inside the insert transaction with (raw sqlite3 cursor, notification ids).
InTransactionProjector = Callable[[Any, Sequence[int]], None]


class ProjectingSQLiteRecorder(SQLiteApplicationRecorder):
    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        notification_ids = super()._insert_events(c, stored_events)
        project: InTransactionProjector | None = kwargs.get("project")
        if project is not None and notification_ids:
            project(c.sqlite_cursor, notification_ids)
        return notification_ids
