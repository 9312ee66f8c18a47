"""Keeps the projections caught up with the log, exactly once.

The eventsourcing library's ProjectionRunner needs recorder subscriptions, which its SQLite
recorder does not have, and its tracking recorder commits on its own connection. So this
runner pulls the notification log itself and commits every projection's rows together with
the tracking position in one transaction, on either database."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, Mapper, Notification

from domain.errors import StoreError
from infrastructure.database import Cursor, Database, Dialect
from projections.base import Handler, Projection
from projections.branches import BranchTree
from projections.checkpoints import CheckpointIndex
from projections.conversations import ConversationIndex
from projections.search import message_search
from projections.sessions import SessionIndex
from projections.token_usage import TokenUsage

BATCH_SIZE = 1000
#: Seconds a rebuild leaves between two of its batches for writers waiting their turn.
WRITERS_TURN = 0.001
_TRACKING_DDL = (
    "CREATE TABLE IF NOT EXISTS projection_tracking "
    "(name TEXT PRIMARY KEY, position INTEGER NOT NULL)"
)
#: Where a rebuild builds a table (or index) before it replaces the old one.
ASIDE_PREFIX = "rebuilding_"
_INDEX_DDL = re.compile(r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.I)


class _Aside:
    """The projections' tables and indexes under other names: a cursor whose statements name
    them instead of the live ones, and the swap that puts them in place."""

    def __init__(self, projections: Sequence[Projection]) -> None:
        self.projections = projections
        self.tables = [t for p in projections for t in p.tables]
        self.indexes = [m[1] for p in projections for s in p.ddl for m in _INDEX_DDL.finditer(s)]
        # The rebuild's own position is kept aside too, in a projection_tracking of its own.
        names = [*self.tables, *self.indexes, "projection_tracking"]
        names_pattern = "|".join(sorted(names, key=len, reverse=True))
        self._names = re.compile(rf"\b({names_pattern})\b")

    def rename(self, statement: str) -> str:
        return self._names.sub(lambda m: ASIDE_PREFIX + m[1], statement)

    def cursor(self, cursor: Cursor) -> Cursor:
        return _RenamingCursor(cursor, self)

    def drop(self, cursor: Cursor) -> None:
        """Whatever an interrupted rebuild left aside."""
        for table in [*self.tables, "projection_tracking"]:
            cursor.execute(f"DROP TABLE IF EXISTS {ASIDE_PREFIX}{table}")

    def swap(self, cursor: Cursor, dialect: Dialect) -> None:
        """The new tables in place of the old; their indexes, which kept their aside names,
        made again under their own."""
        for projection in self.projections:
            projection.drop(cursor)
        cursor.execute(f"DROP TABLE {ASIDE_PREFIX}projection_tracking")
        for table in self.tables:
            cursor.execute(f"ALTER TABLE {ASIDE_PREFIX}{table} RENAME TO {table}")
        for index in self.indexes:
            cursor.execute(f"DROP INDEX IF EXISTS {ASIDE_PREFIX}{index}")
        for projection in self.projections:
            for statement in projection.ddl:
                if _INDEX_DDL.match(statement.strip()):
                    cursor.execute(dialect.ddl(statement))


class _RenamingCursor:
    def __init__(self, cursor: Cursor, aside: _Aside) -> None:
        self._cursor, self._aside = cursor, aside

    def execute(self, statement: str, parameters: Sequence[Any] = ()) -> Any:
        return self._cursor.execute(self._aside.rename(statement), parameters)

    def executemany(self, statement: str, parameters: Iterable[Sequence[Any]]) -> Any:
        return self._cursor.executemany(self._aside.rename(statement), parameters)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cursor)


def all_projections(dialect: Dialect) -> list[Projection]:
    return [
        ConversationIndex(),
        CheckpointIndex(),
        SessionIndex(),
        BranchTree(),
        TokenUsage(),
        message_search(dialect),
    ]


class ProjectionRunner:
    def __init__(
        self,
        database: Database,
        recorder: ApplicationRecorder,
        mapper: Mapper[Any],
        projections: Sequence[Projection] | None = None,
    ) -> None:
        self.db = database
        self.dialect = database.dialect
        self.recorder = recorder
        self.mapper = mapper
        self.projections = list(projections or all_projections(self.dialect))
        self._dispatch: dict[type, list[Handler]] = {}
        for projection in self.projections:
            for event_type, handler in projection.handlers().items():
                self._dispatch.setdefault(event_type, []).append(handler)
        self._rebuild_needed = self._schema_changed()

    def _create_tables(self) -> None:
        with self.db.transaction() as cursor:
            cursor.execute(self.dialect.ddl(_TRACKING_DDL))
            for projection in self.projections:
                projection.create(cursor, self.dialect)
                cursor.execute(
                    "INSERT INTO projection_tracking VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
                    (projection.name,),
                )

    def fingerprint(self) -> str:
        """Names the projections' current schema: when it changes, the tables are rebuilt."""
        ddl = "\n".join(self.dialect.ddl(s) for p in self.projections for s in p.ddl)
        return hashlib.sha256(ddl.encode()).hexdigest()

    def _schema_changed(self) -> bool:
        row = self.db.execute(
            "SELECT value FROM chatledger_meta WHERE key='projections'"
        ).fetchone()
        return row is None or row[0] != self.fingerprint()

    def catch_up_or_rebuild(self) -> int:
        """Brings the projections up to date: rebuilt from the log when their schema changed
        since the store was last opened (a newer chatledger), else caught up."""
        self._create_tables()
        if not self._rebuild_needed:
            return self.catch_up()
        with self.db.rebuild_lock():
            if self._schema_changed():
                applied = self._rebuild()
                self.db.execute(
                    "INSERT INTO chatledger_meta VALUES ('projections', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (self.fingerprint(),),
                )
            else:  # another process rebuilt them while this one waited its turn
                applied = self.catch_up()
        self._rebuild_needed = False
        return applied

    def require_current(self) -> None:
        """What a store opened read-only needs instead of catch_up_or_rebuild, which writes:
        projections of this schema that have applied the whole log."""
        if not self._rebuild_needed:
            log, number = self.dialect.events_table, self.dialect.notification_column
            logged = self.db.execute(f"SELECT MAX({number}) FROM {log}").fetchone()[0]
            if self.position() >= (logged or 0):
                return
        raise StoreError(
            f"The read models of {self.db.where} are behind its log (it was last written by "
            "another chatledger), and opened read-only they cannot be brought up to date: "
            "open it for writing once (`chatledger rebuild` does) and read it again."
        )

    def readable_tables(self) -> list[str]:
        """Every projection table whose rows can be read back, for comparing a rebuild with
        the incrementally maintained views."""
        return [t for p in self.projections if p.readable for t in p.tables]

    def position(self) -> int:
        rows = self.db.execute("SELECT MIN(position) FROM projection_tracking").fetchone()
        return int(rows[0] or 0)

    def project_in_transaction(
        self,
        recorder_cursor: Any,
        events: Sequence[Any],
        notification_ids: Sequence[int] | None,
    ) -> None:
        """Runs inside the transaction that inserts `events`. Where the database projects
        before the log's lock (PostgreSQL), it is called twice: first without notification
        ids, before the lock, to write the projections' rows (which need none), then with
        them, under the lock, to apply anything other writers logged that is not projected
        and to move the position. Elsewhere (SQLite) once, with the ids, for all of it."""
        cursor = self.db.projection_cursor(recorder_cursor)
        if notification_ids is None:
            self._apply(cursor, ((event, 0) for event in events))
            return
        position = cursor.execute("SELECT MIN(position) FROM projection_tracking").fetchone()[0]
        first = notification_ids[0]
        if position is not None and position < first - 1:
            log, number = self.dialect.events_table, self.dialect.notification_column
            rows = cursor.execute(
                f"SELECT {number}, originator_id, originator_version, topic, state "
                f"FROM {log} WHERE {number} > ? AND {number} < ? ORDER BY {number}",
                (position, first),
            ).fetchall()
            self._apply(
                cursor,
                ((self.mapper.to_domain_event(self._notification(row)), row[0]) for row in rows),
            )
        if not self.db.projects_before_lock:
            self._apply(cursor, zip(events, notification_ids, strict=True))
        cursor.execute("UPDATE projection_tracking SET position=?", (notification_ids[-1],))

    def _notification(self, row: tuple[Any, ...]) -> Notification:
        return Notification(
            id=row[0],
            originator_id=self.dialect.stream_id(row[1]),
            originator_version=row[2],
            topic=row[3],
            state=row[4],
        )

    def catch_up(self) -> int:
        """Applies every notification not yet applied, a batch per transaction; returns how
        many were applied."""
        applied = 0
        while True:
            with self.db.transaction() as cursor:
                batch = self._apply_next_batch(cursor)
            if not batch:
                return applied
            applied += batch

    def rebuild(self) -> int:
        """Replays the whole log into fresh tables; readers keep seeing the old tables until
        the new ones are complete. On SQLite the new tables are built aside, a batch per
        transaction, while writers go on appending (and projecting into the old tables); the
        last batch and the swap share one transaction. Elsewhere, in one transaction."""
        with self.db.rebuild_lock():
            return self._rebuild()

    def _rebuild(self) -> int:
        if self.db.rebuilds_aside:
            return self._rebuild_aside()
        applied = 0
        with self.db.transaction() as cursor:
            for projection in self.projections:
                projection.drop(cursor)
                projection.create(cursor, self.dialect)
            cursor.execute("UPDATE projection_tracking SET position=0")
            with self._replaying():
                while batch := self._apply_next_batch(cursor):
                    applied += batch
            position = self._tracked(cursor)
            for projection in self.projections:
                projection.replayed(cursor, position)
        return applied

    @contextmanager
    def _replaying(self) -> Iterator[None]:
        for projection in self.projections:
            projection.replaying = True
        try:
            yield
        finally:
            for projection in self.projections:
                projection.replaying = False

    def _rebuild_aside(self) -> int:
        aside = _Aside(self.projections)
        with self.db.transaction() as cursor:
            aside.drop(cursor)
            building = aside.cursor(cursor)
            building.execute(_TRACKING_DDL)
            for projection in self.projections:
                projection.create(building, self.dialect)
                building.execute(
                    "INSERT INTO projection_tracking VALUES (?, 0)", (projection.name,)
                )
        applied = 0
        with self._replaying():
            while True:
                # Writers queue on the writer lock (SQLite's own busy wait is not a queue:
                # between two batches it would hardly ever get a writer in).
                time.sleep(WRITERS_TURN)
                with self.db.writer_lock(), self.db.transaction() as cursor:
                    building = aside.cursor(cursor)
                    batch = self._apply_next_batch(building)
                    applied += batch
                    if batch < BATCH_SIZE:
                        # The log's end: inserts wait for this transaction, so nothing is
                        # logged after it before the new tables replace the old ones.
                        position = self._tracked(building)
                        for projection in self.projections:
                            projection.replayed(building, position)
                        aside.swap(cursor, self.dialect)
                        cursor.execute("UPDATE projection_tracking SET position=?", (position,))
                        return applied

    @staticmethod
    def _tracked(cursor: Cursor) -> int:
        row = cursor.execute("SELECT MIN(position) FROM projection_tracking").fetchone()
        return int(row[0] or 0)

    def _apply_next_batch(self, cursor: Cursor) -> int:
        position = int(
            cursor.execute("SELECT MIN(position) FROM projection_tracking").fetchone()[0] or 0
        )
        notifications = self.recorder.select_notifications(start=position + 1, limit=BATCH_SIZE)
        if notifications:
            self._apply(cursor, ((self.mapper.to_domain_event(n), n.id) for n in notifications))
            cursor.execute("UPDATE projection_tracking SET position=?", (notifications[-1].id,))
        return len(notifications)

    def _apply(self, cursor: Cursor, batch: Iterable[tuple[Any, int]]) -> None:
        for event, notification_id in batch:
            for handler in self._dispatch.get(type(event), ()):
                handler(cursor, event, notification_id)
