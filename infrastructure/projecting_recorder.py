"""Application recorders that let the projections write in the same transaction as the events
they project.

Committing the events and the projections' rows together costs one commit (one fsync)
instead of two, and a crash can never leave a projection behind its log."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor
from eventsourcing.utils import retry

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
    exactly once and in log order, whichever process or host wrote it.

    The library's own insert_events keeps an error raised after the insert until its
    transaction has committed (so that psycopg's pipeline ends quietly): the events of a
    failed projection would stay in the log with nothing projected. Here any error rolls the
    whole insert back."""

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not stored_events:
            return None
        with (
            self.datastore.get_connection() as connection,
            connection.pipeline() as pipeline,
            connection.transaction(),
            connection.cursor() as cursor,
        ):
            self._insert_stored_events(cursor, stored_events)
            # A conflict on a stream's position is an IntegrityError here, not at commit.
            pipeline.sync()
            notification_ids = self._fetch_ids_after_insert_events(cursor, stored_events)
            project: InTransactionProjector | None = kwargs.get("project")
            if project is not None and notification_ids:
                project(cursor, notification_ids)
            return notification_ids
