"""The branch tree: which conversation forked from which, where, and from what."""

from __future__ import annotations

from typing import Any

from domain import events
from infrastructure.database import Cursor
from projections.base import Handler, Projection


class BranchTree(Projection):
    name = "branches"
    tables = ("branches",)
    ddl = (
        """CREATE TABLE IF NOT EXISTS branches (
            branch_id TEXT PRIMARY KEY,
            parent_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            source_id TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS branches_by_parent ON branches (parent_id)",
    )

    def handlers(self) -> dict[type, Handler]:
        return {events.BranchForked: self._forked}

    def _forked(self, cursor: Cursor, event: Any, _: int) -> None:
        cursor.execute(
            "INSERT INTO branches VALUES (?,?,?,?,?)",
            (
                event.branch_id.hex,
                event.originator_id.hex,
                event.position,
                event.source_id,
                event.timestamp.isoformat(),
            ),
        )
