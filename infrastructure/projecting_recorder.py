"""Application recorders that let the projections write in the same transaction as the events
they project.

Committing the events and the projections' rows together costs one commit (one fsync)
instead of two, and a crash can never leave a projection behind its log."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor
from psycopg import Cursor
from psycopg.rows import DictRow

#: Called inside the insert transaction with (cursor, notification ids).
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


class ProjectingPostgresRecorder(PostgresApplicationRecorder):
    """The library inserts under an EXCLUSIVE lock on the events table, so notification ids
    commit in order; projecting after the insert, in that transaction, projects every event
    exactly once and in log order, whichever process or host wrote it."""

    def _fetch_ids_after_insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        notification_ids = super()._fetch_ids_after_insert_events(curs, stored_events)
        project: InTransactionProjector | None = kwargs.get("project")
        if project is not None and notification_ids:
            project(curs, notification_ids)
        return notification_ids
