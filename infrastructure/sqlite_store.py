"""Opening the embedded store: one SQLite file in the workspace, checked before use."""

from __future__ import annotations

import fcntl
import random
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from domain.errors import StoreError, WorkspaceError
from infrastructure.database import Cursor, Database, SQLiteDialect
from infrastructure.event_store import EventStore
from infrastructure.projecting_recorder import ProjectingSQLiteRecorder
from infrastructure.schema import (
    META_TABLE_DDL,
    READ_SCHEMA_VERSION,
    RECORD_SCHEMA_VERSION,
    SCHEMA_VERSION,
    check_schema_version,
)

DB_FILE = "chatledger.db"
#: Held by every command from deciding to saving (see SQLiteDatabase.writer_lock).
WRITER_LOCK_FILE = "chatledger.lock"
_SQLITE_HEADER = b"SQLite format 3\x00"
_OUR_TABLES = {"stored_events", "stored_snapshots", "projection_tracking", "chatledger_meta"}


def prepare_workspace(workspace: Path) -> Path:
    """Creates the workspace folder if needed and returns the database path in it."""
    workspace = Path(workspace).expanduser()
    if workspace.exists() and not workspace.is_dir():
        raise WorkspaceError(f"Workspace {workspace} is a file; give a folder path instead.")
    try:
        workspace.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WorkspaceError(f"Cannot create workspace {workspace}: {error.strerror}.") from error
    return workspace / DB_FILE


def check_database_file(path: Path) -> None:
    """Refuses a file that is not SQLite, is corrupt, holds someone else's tables, or was
    written by a newer chatledger, before anything is written to it."""
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a database file; move it aside.")
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb") as file:
        if file.read(16) != _SQLITE_HEADER:
            raise StoreError(
                f"{path} is not a SQLite database; move it aside or pick another workspace."
            )
    try:
        # Read-write (never create): a crash during a first write can leave a hot journal,
        # which only a connection that may write can roll back. Nothing here writes.
        connection = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=LOCK_TIMEOUT)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
            version = None
            if "chatledger_meta" in tables:
                row = connection.execute(READ_SCHEMA_VERSION).fetchone()
                version = row[0] if row else None
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise StoreError(f"{path} is corrupt or unreadable: {error}.") from error
    if tables and not tables & _OUR_TABLES:
        raise StoreError(
            f"{path} is a SQLite database of another program (tables: {sorted(tables)[:5]})."
        )
    check_schema_version(version, str(path))


def open_event_store(path: Path, cache_size: int) -> EventStore:
    return EventStore(
        {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(path),
            "SQLITE_LOCK_TIMEOUT": str(int(LOCK_TIMEOUT)),
            "AGGREGATE_CACHE_MAXSIZE": str(max(1, cache_size)),
            "APPLICATION_RECORDER_TOPIC": get_topic(ProjectingSQLiteRecorder),
        }
    )


#: Seconds a connection waits for another process's lock before giving up.
LOCK_TIMEOUT = 30.0


def _switch_to_wal(connection: sqlite3.Connection, path: Path) -> None:
    """Switching a new file to WAL while another process writes it fails at once with
    "database is locked" (SQLite does not wait on its busy timeout there), so wait here."""
    deadline = time.monotonic() + LOCK_TIMEOUT
    delay = 0.001
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise StoreError(f"Cannot open {path}: {error}.") from error
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.05)


#: A chat message event is about 2 KB: on 4 KB pages a third of every leaf page stays empty.
PAGE_SIZE = 16384


def open_projection_connection(path: Path) -> sqlite3.Connection:
    """Opens (creating if new) the database; call it before the event store opens the file,
    since the page size can only be chosen before the first table exists."""
    connection = sqlite3.connect(
        path, isolation_level=None, timeout=LOCK_TIMEOUT, check_same_thread=False
    )
    connection.execute(f"PRAGMA page_size={PAGE_SIZE}")
    _switch_to_wal(connection, path)
    # Projections are rebuildable from the log, so their commits skip the fsync.
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(META_TABLE_DDL)
    connection.execute(RECORD_SCHEMA_VERSION, (str(SCHEMA_VERSION),))
    return connection


class SQLiteDatabase(Database):
    """The workspace's SQLite file, on one connection in autocommit mode."""

    dialect = SQLiteDialect()

    def __init__(self, path: Path) -> None:
        self.connection = open_projection_connection(path)
        self._lock_file = (path.parent / WRITER_LOCK_FILE).open("a")
        #: data_version seen right after this process's last commit (None: unknown).
        self._own_data_version: int | None = None

    def execute(self, statement: str, parameters: Sequence[Any] = ()) -> Cursor:
        return self.connection.execute(statement, parameters)

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        # IMMEDIATE takes the write lock at once: inserts of events wait for it, and so the
        # projections see the log as it stands.
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield self.connection.cursor()
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        # SQLite has one writer at a time anyway; deciding inside a lock held across
        # processes means processes on this host never lose the race for a conversation's
        # next position. POSIX only: fcntl.
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def lock_conversation(self, conversation_id: UUID) -> None:
        """Nothing more to lock: writer_lock already holds the whole workspace."""

    def _data_version(self) -> int:
        return int(self.connection.execute("PRAGMA data_version").fetchone()[0])

    def changed_by_others(self) -> bool:
        # data_version changes when another connection commits: a cheap way to know that
        # cached aggregates are still current.
        return self._own_data_version != self._data_version()

    def note_own_commit(self) -> None:
        self._own_data_version = self._data_version()

    def forget_commits(self) -> None:
        self._own_data_version = None

    def close(self) -> None:
        self.connection.close()
        self._lock_file.close()


def open_sqlite(workspace: Path, cache_size: int) -> tuple[SQLiteDatabase, EventStore]:
    """The workspace's database, checked, then its event store."""
    path = prepare_workspace(workspace)
    check_database_file(path)
    database = SQLiteDatabase(path)
    try:
        return database, open_event_store(path, cache_size)
    except BaseException:
        database.close()
        raise
