"""What a projection is: tables it owns, and a handler per event type."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, ClassVar

Handler = Callable[[sqlite3.Cursor, Any, int], None]


class Projection:
    """A read model. Subclasses list their tables' DDL and map event classes to handlers.

    Handlers run inside the runner's transaction and get (cursor, event, notification_id)."""

    name: ClassVar[str]
    tables: ClassVar[tuple[str, ...]] = ()
    ddl: ClassVar[tuple[str, ...]] = ()
    #: Whether SELECT * gives its rows back (a contentless full-text index does not).
    readable: ClassVar[bool] = True

    def handlers(self) -> dict[type, Handler]:
        raise NotImplementedError

    def create(self, cursor: sqlite3.Cursor) -> None:
        for statement in self.ddl:
            cursor.execute(statement)

    def drop(self, cursor: sqlite3.Cursor) -> None:
        for table in self.tables:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
