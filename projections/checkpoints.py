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
        """CREATE TABLE IF NOT EXISTS checkpoints (
            checkpoint_id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            type TEXT NOT NULL,
            created_at TEXT NOT NULL,
            session_id TEXT NOT NULL,
            message_count INTEGER NOT NULL,
            name TEXT,
            description TEXT,
            auto_ordinal INTEGER,
            pruned INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX IF NOT EXISTS checkpoints_by_conversation "
        "ON checkpoints (conversation_id, pruned, position)",
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
                event.checkpoint_id,
                event.originator_id.hex,
                event.originator_version,
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
