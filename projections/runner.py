"""Keeps the projections caught up with the log, exactly once.

The eventsourcing library's ProjectionRunner needs recorder subscriptions, which its SQLite
recorder does not have, and its tracking recorder commits on its own connection. So this
runner pulls the notification log itself and commits every projection's rows together with
the tracking position in one transaction on the projections' connection."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, Mapper, Notification

from projections.base import Handler, Projection
from projections.branches import BranchTree
from projections.checkpoints import CheckpointIndex
from projections.conversations import ConversationIndex
from projections.search import MessageSearch
from projections.sessions import SessionIndex
from projections.token_usage import TokenUsage

BATCH_SIZE = 1000


def all_projections() -> list[Projection]:
    return [
        ConversationIndex(),
        CheckpointIndex(),
        SessionIndex(),
        BranchTree(),
        TokenUsage(),
        MessageSearch(),
    ]


class ProjectionRunner:
    def __init__(
        self,
        connection: sqlite3.Connection,
        recorder: ApplicationRecorder,
        mapper: Mapper[Any],
        projections: Sequence[Projection] | None = None,
    ) -> None:
        self.db = connection
        self.recorder = recorder
        self.mapper = mapper
        self.projections = list(projections or all_projections())
        self._dispatch: dict[type, list[Handler]] = {}
        for projection in self.projections:
            for event_type, handler in projection.handlers().items():
                self._dispatch.setdefault(event_type, []).append(handler)
        self._rebuild_needed = self._schema_changed()
        with self._transaction() as cursor:
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS projection_tracking "
                "(name TEXT PRIMARY KEY, position INTEGER NOT NULL)"
            )
            for projection in self.projections:
                projection.create(cursor)
                cursor.execute(
                    "INSERT OR IGNORE INTO projection_tracking VALUES (?, 0)", (projection.name,)
                )

    def fingerprint(self) -> str:
        """Names the projections' current schema: when it changes, the tables are rebuilt."""
        ddl = "\n".join(statement for p in self.projections for statement in p.ddl)
        return hashlib.sha256(ddl.encode()).hexdigest()

    def _schema_changed(self) -> bool:
        row = self.db.execute(
            "SELECT value FROM chatledger_meta WHERE key='projections'"
        ).fetchone()
        return row is None or row[0] != self.fingerprint()

    def catch_up_or_rebuild(self) -> int:
        """Brings the projections up to date: rebuilt from the log when their schema changed
        since the store was last opened (a newer chatledger), else caught up."""
        if not self._rebuild_needed:
            return self.catch_up()
        applied = self.rebuild()
        self.db.execute(
            "INSERT OR REPLACE INTO chatledger_meta VALUES ('projections', ?)",
            (self.fingerprint(),),
        )
        self._rebuild_needed = False
        return applied

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db.cursor()
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def readable_tables(self) -> list[str]:
        """Every projection table whose rows can be read back, for comparing a rebuild with
        the incrementally maintained views."""
        return [t for p in self.projections if p.readable for t in p.tables]

    def position(self) -> int:
        rows = self.db.execute("SELECT MIN(position) FROM projection_tracking").fetchone()
        return int(rows[0] or 0)

    def project_in_transaction(
        self, cursor: sqlite3.Cursor, events: Sequence[Any], notification_ids: Sequence[int]
    ) -> None:
        """Runs inside the transaction that inserts `events`: first applies anything other
        writers logged that is not yet projected, then the new events, then the position."""
        position = cursor.execute("SELECT MIN(position) FROM projection_tracking").fetchone()[0]
        first = notification_ids[0]
        if position is not None and position < first - 1:
            rows = cursor.execute(
                "SELECT rowid, originator_id, originator_version, topic, state "
                "FROM stored_events WHERE rowid > ? AND rowid < ? ORDER BY rowid",
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
            originator_id=self.recorder.convert_originator_id(row[1]),  # type: ignore[attr-defined]
            originator_version=row[2],
            topic=row[3],
            state=row[4],
        )

    def catch_up(self) -> int:
        """Applies every notification not yet applied, a batch per transaction; returns how
        many were applied."""
        applied = 0
        while True:
            with self._transaction() as cursor:
                batch = self._apply_next_batch(cursor)
            if not batch:
                return applied
            applied += batch

    def rebuild(self) -> int:
        """Drops every projection and replays the whole log into fresh tables, in one
        transaction: readers keep seeing the old tables until the new ones are complete."""
        applied = 0
        with self._transaction() as cursor:
            for projection in self.projections:
                projection.drop(cursor)
                projection.create(cursor)
            cursor.execute("UPDATE projection_tracking SET position=0")
            while batch := self._apply_next_batch(cursor):
                applied += batch
        return applied

    def _apply_next_batch(self, cursor: sqlite3.Cursor) -> int:
        position = int(
            cursor.execute("SELECT MIN(position) FROM projection_tracking").fetchone()[0] or 0
        )
        notifications = self.recorder.select_notifications(start=position + 1, limit=BATCH_SIZE)
        if notifications:
            self._apply(cursor, ((self.mapper.to_domain_event(n), n.id) for n in notifications))
            cursor.execute("UPDATE projection_tracking SET position=?", (notifications[-1].id,))
        return len(notifications)

    def _apply(self, cursor: sqlite3.Cursor, batch: Iterable[tuple[Any, int]]) -> None:
        for event, notification_id in batch:
            for handler in self._dispatch.get(type(event), ()):
                handler(cursor, event, notification_id)
