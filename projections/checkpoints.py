"""The checkpoint index and the snapshot index: named positions, newest first on read."""

from __future__ import annotations

from typing import Any

import orjson

from domain import events
from infrastructure.database import Cursor
from projections.base import Handler, Projection


class CheckpointIndex(Projection):
    name = "checkpoints"
    tables = ("checkpoints", "snapshots")
    ddl = (
        # Keyed as it is read: a conversation's checkpoints in position order (the position
        # is the CheckpointCreated event's own, unique in its conversation). An auto
        # checkpoint per message then writes this table's last page and a page of the id
        # index, not a table, a random page of its primary key index and a third index.
        # Pruning flags a row in place (a flag in the key would move the row and its entry).
        """CREATE TABLE IF NOT EXISTS checkpoints (
            conversation_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            checkpoint_id TEXT NOT NULL,
            type TEXT NOT NULL,
            created_at TEXT NOT NULL,
            session_id TEXT NOT NULL,
            message_count INTEGER NOT NULL,
            name TEXT,
            description TEXT,
            auto_ordinal INTEGER,
            pruned INTEGER NOT NULL,
            PRIMARY KEY (conversation_id, position)
        ) WITHOUT ROWID""",
        "CREATE UNIQUE INDEX IF NOT EXISTS checkpoints_by_id ON checkpoints (checkpoint_id)",
        """CREATE TABLE IF NOT EXISTS snapshots (
            snapshot_id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            meta BLOB NOT NULL
        )""",
    )

    def handlers(self) -> dict[type, Handler]:
        return {
            events.CheckpointCreated: self._created,
            events.CheckpointsPruned: self._pruned,
            events.SnapshotTaken: self._snapshot,
        }

    def _created(self, cursor: Cursor, event: Any, _: int) -> None:
        cursor.execute(
            "INSERT INTO checkpoints VALUES (?,?,?,?,?,?,?,?,?,?,0)",
            (
                event.originator_id.hex,
                event.originator_version,
                event.checkpoint_id,
                event.checkpoint_type.value,
                event.timestamp.isoformat(),
                event.session_id,
                event.message_count,
                event.name,
                event.description,
                event.auto_ordinal,
            ),
        )

    def _pruned(self, cursor: Cursor, event: Any, _: int) -> None:
        cursor.executemany(
            "UPDATE checkpoints SET pruned=1 WHERE checkpoint_id=?",
            [(checkpoint_id,) for checkpoint_id in event.checkpoint_ids],
        )

    def _snapshot(self, cursor: Cursor, event: Any, _: int) -> None:
        cursor.execute(
            "INSERT INTO snapshots VALUES (?,?,?,?,?)",
            (
                event.snapshot_id,
                event.originator_id.hex,
                event.originator_version,
                event.timestamp.isoformat(),
                orjson.dumps(event.meta),
            ),
        )
