"""What a projection is: tables it owns, and a handler per event type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from infrastructure.database import Cursor, Dialect

Handler = Callable[[Cursor, Any, int], None]


class Projection:
    """A read model. Subclasses list their tables' DDL and map event classes to handlers.

    Handlers run inside the runner's transaction and get (cursor, event, notification_id).
    DDL is written in SQLite's SQL; the dialect turns it into the database's own."""

    name: ClassVar[str]
    tables: ClassVar[tuple[str, ...]] = ()
    ddl: ClassVar[tuple[str, ...]] = ()
    #: Whether SELECT * gives its rows back (a contentless full-text index does not).
    readable: ClassVar[bool] = True
    #: True while a rebuild replays the whole log into fresh tables.
    replaying: bool = False

    def handlers(self) -> dict[type, Handler]:
        raise NotImplementedError

    def create(self, cursor: Cursor, dialect: Dialect) -> None:
        for statement in self.ddl:
            cursor.execute(dialect.ddl(statement))

    def replayed(self, cursor: Cursor, position: int) -> None:
        """Called when a rebuild has replayed the log up to `position`."""

    def drop(self, cursor: Cursor) -> None:
        for table in self.tables:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
