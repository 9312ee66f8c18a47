"""Keeps the projections caught up with the log, exactly once.

The eventsourcing library's ProjectionRunner needs recorder subscriptions, which its SQLite
recorder does not have, and its tracking recorder commits on its own connection. So this
runner pulls the notification log itself and commits every projection's rows together with
the tracking position in one transaction, on either database."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
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
            cursor.execute(
                self.dialect.ddl(
                    "CREATE TABLE IF NOT EXISTS projection_tracking "
                    "(name TEXT PRIMARY KEY, position INTEGER NOT NULL)"
                )
            )
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
        applied = self.rebuild()
        self.db.execute(
            "INSERT INTO chatledger_meta VALUES ('projections', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (self.fingerprint(),),
        )
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
        self, recorder_cursor: Any, events: Sequence[Any], notification_ids: Sequence[int]
    ) -> None:
        """Runs inside the transaction that inserts `events`: first applies anything other
        writers logged that is not yet projected, then the new events, then the position."""
        cursor = self.db.projection_cursor(recorder_cursor)
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
        """Drops every projection and replays the whole log into fresh tables, in one
        transaction: readers keep seeing the old tables until the new ones are complete."""
        applied = 0
        with self.db.transaction() as cursor:
            for projection in self.projections:
                projection.drop(cursor)
                projection.create(cursor, self.dialect)
            cursor.execute("UPDATE projection_tracking SET position=0")
            while batch := self._apply_next_batch(cursor):
                applied += batch
        return applied

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
