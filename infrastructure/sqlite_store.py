"""Opening the embedded store: one SQLite file in the workspace, checked before use."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

from domain.errors import StoreError, WorkspaceError
from infrastructure.event_store import EventStore

DB_FILE = "chatledger.db"
SCHEMA_VERSION = 1
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
                row = connection.execute(
                    "SELECT value FROM chatledger_meta WHERE key='schema_version'"
                ).fetchone()
                version = row[0] if row else None
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise StoreError(f"{path} is corrupt or unreadable: {error}.") from error
    if tables and not tables & _OUR_TABLES:
        raise StoreError(
            f"{path} is a SQLite database of another program (tables: {sorted(tables)[:5]})."
        )
    if version is not None and not str(version).isdigit():
        raise StoreError(f"{path} has an unreadable schema version {version!r}.")
    if version is not None and int(version) > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer chatledger (schema {version}; this one reads up to "
            f"{SCHEMA_VERSION}). Upgrade chatledger to open it."
        )


def open_event_store(path: Path, cache_size: int) -> EventStore:
    return EventStore(
        {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(path),
            "SQLITE_LOCK_TIMEOUT": str(int(LOCK_TIMEOUT)),
            "AGGREGATE_CACHE_MAXSIZE": str(max(1, cache_size)),
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
    connection.execute(
        "CREATE TABLE IF NOT EXISTS chatledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
    )
    connection.execute(
        "INSERT OR IGNORE INTO chatledger_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
    )
    return connection
