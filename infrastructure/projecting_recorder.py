"""Application recorders that let the projections write in the same transaction as the events
they project.

Committing the events and the projections' rows together costs one commit (one fsync)
instead of two, and a crash can never leave a projection behind its log."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteConnection,
    SQLiteCursor,
    SQLiteDatastore,
)
from eventsourcing.utils import retry

#: Every this many events, a connection's settings that depend on the database's size are
#: set again (see configure_connection).
RECONFIGURE_EVERY = 256

#: Called inside the insert transaction with (cursor, notification ids).
InTransactionProjector = Callable[[Any, Sequence[int]], None]
#: The same, called first with None before the log's lock, then with the ids under it.
TwoPhaseProjector = Callable[[Any, Sequence[int] | None], None]


class ProjectingSQLiteRecorder(SQLiteApplicationRecorder):
    #: Set by the store's opener: configures every connection the library opens (bounds the
    #: WAL, see sqlite_store.bound_wal).
    configure_connection: ClassVar[Callable[[sqlite3.Connection], None] | None] = None

    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        pool = datastore.pool
        create = pool._create_connection
        configure = type(self).configure_connection

        def create_configured() -> SQLiteConnection:
            connection = create()
            if configure is not None:
                configure(connection._sqlite_conn)
            return connection

        pool._create_connection = create_configured  # type: ignore[method-assign]

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        notification_ids = super()._insert_events(c, stored_events)
        project: InTransactionProjector | None = kwargs.get("project")
        if project is not None and notification_ids:
            project(c.sqlite_cursor, notification_ids)
        configure = type(self).configure_connection
        if (
            configure is not None
            and notification_ids
            and (notification_ids[0] - 1) // RECONFIGURE_EVERY
            != notification_ids[-1] // RECONFIGURE_EVERY
        ):
            configure(c.sqlite_cursor.connection)  # the database has grown: bound its WAL anew
        return notification_ids


class ProjectingPostgresRecorder(PostgresApplicationRecorder):
    """The library inserts under an EXCLUSIVE lock on the events table, so notification ids
    commit in order, and every writer on every host waits for it. So the projections write
    their rows first, in the insert's transaction but before the lock (rows keyed by
    conversation and position need no notification id; writers of one conversation are
    already queued by its advisory lock), and under the lock only the insert, the tracking
    position and whatever other writers logged unprojected remain: every event is still
    projected exactly once, in the transaction that logs it.

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
        project: TwoPhaseProjector | None = kwargs.get("project")
        with (
            self.datastore.get_connection() as connection,
            connection.pipeline() as pipeline,
            connection.transaction(),
            connection.cursor() as cursor,
        ):
            if project is not None:
                project(cursor, None)  # the rows, before the lock
            self._insert_stored_events(cursor, stored_events)  # LOCK TABLE, INSERT
            # A conflict on a stream's position is an IntegrityError here, not at commit.
            pipeline.sync()
            notification_ids = self._fetch_ids_after_insert_events(cursor, stored_events)
            if project is not None and notification_ids:
                project(cursor, notification_ids)  # the position, under the lock
            return notification_ids
