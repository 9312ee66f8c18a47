"""Opening the embedded store: one SQLite file in the workspace, checked before use.

A file is chatledger's when it holds the chatledger_meta table, the first table chatledger
creates in a new file; anything else with tables (another eventsourcing application's
`stored_events` too) is another program's and is refused before anything is written to it.

Opened read-only, as the reading commands open it, nothing is created or written: no
workspace, no file, no table, no lock file."""

from __future__ import annotations

import fcntl
import os
import random
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

from eventsourcing.utils import get_topic

from domain.errors import StoreError, WorkspaceError
from infrastructure.database import Cursor, Database, Rows, SQLiteDialect
from infrastructure.event_store import EventStore
from infrastructure.projecting_recorder import ProjectingSQLiteRecorder
from infrastructure.schema import (
    MARKER_TABLE,
    META_TABLE_DDL,
    READ_SCHEMA_VERSION,
    RECORD_SCHEMA_VERSION,
    SCHEMA_VERSION,
    check_schema_version,
    no_store_in,
)

DB_FILE = "chatledger.db"
#: Held by every command from deciding to saving (see SQLiteDatabase.writer_lock).
WRITER_LOCK_FILE = "chatledger.lock"
#: Held by a rebuild of the projections from start to end (see SQLiteDatabase.rebuild_lock).
REBUILD_LOCK_FILE = "chatledger.rebuild.lock"
_SQLITE_HEADER = b"SQLite format 3\x00"
_TO_WRITE_ONCE = "open it for writing once (`chatledger rebuild` does) and read it again"


def prepare_workspace(workspace: Path, *, create: bool = True) -> Path:
    """The database path in the workspace folder, creating the folder if asked."""
    workspace = Path(workspace).expanduser()
    try:
        not_a_folder = workspace.exists() and not workspace.is_dir()
    except OSError as error:  # a name too long for the file system, ...
        raise WorkspaceError(f"Cannot use workspace {workspace}: {error.strerror}.") from error
    if not_a_folder:
        raise WorkspaceError(f"Workspace {workspace} is a file; give a folder path instead.")
    if create:
        try:
            workspace.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise WorkspaceError(
                f"Cannot create workspace {workspace}: {error.strerror}."
            ) from error
    return workspace / DB_FILE


def failure(path: Path, error: BaseException) -> StoreError:
    """What a failure of the file means for a person, naming the file. The event library
    wraps SQLite's errors: the SQLite error is then the cause."""
    cause = error if isinstance(error, sqlite3.Error) else error.__cause__ or error
    name = getattr(cause, "sqlite_errorname", "")
    if name == "SQLITE_READONLY_ROLLBACK":
        return StoreError(
            f"{path} holds a write left unfinished by a process that stopped; {_TO_WRITE_ONCE}."
        )
    if name.startswith("SQLITE_READONLY"):
        return StoreError(f"{path} is read-only: {cause}.")
    if name.startswith("SQLITE_BUSY"):
        return StoreError(
            f"{path} stayed locked by another process for {LOCK_TIMEOUT:.0f} s; retry."
        )
    return StoreError(f"{path} is corrupt or unreadable: {cause}.")


def read_only_uri(path: Path) -> str:
    """How to open the file without writing to it. mode=ro reads it as its writers leave it
    (through its WAL), but a WAL reader needs the -shm file beside it and creates it if it
    can. A file nobody may write here (it or its folder read-only), with no WAL beside it,
    cannot change while it is read: immutable reads it as it is and needs no side file."""
    uri = path.resolve().as_uri()
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    if writable or path.with_name(f"{path.name}-wal").exists():
        return f"{uri}?mode=ro"
    return f"{uri}?immutable=1"


def check_writable(path: Path) -> None:
    """Refuses, before it is opened for writing, a store chatledger may not write (SQLite
    would only find out at the first write, and say "attempt to write a readonly
    database")."""
    if path.exists() and not os.access(path, os.W_OK):
        raise StoreError(
            f"{path} is read-only: the reading commands (ls, show, verify, ...) open it, "
            "the writing ones cannot. Make it writable to go on writing to it."
        )
    if not os.access(path.parent, os.W_OK):
        raise WorkspaceError(
            f"Workspace {path.parent} is read-only: the reading commands (ls, show, verify, "
            "...) open its store, the writing ones cannot. Make it writable to write."
        )


def check_database_file(path: Path, *, read_only: bool = False, must_exist: bool = False) -> None:
    """Refuses a file that is not SQLite, is corrupt, is another program's, or was written by
    a newer chatledger, before anything is written to it; `must_exist` (implied by
    `read_only`) refuses one that holds no store yet, which opening it would create."""
    must_exist = must_exist or read_only
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a database file; move it aside.")
    if not path.exists() or path.stat().st_size == 0:
        if must_exist:
            raise no_store_in(path.parent)
        return
    with path.open("rb") as file:
        header = file.read(20)
    if header[:16] != _SQLITE_HEADER:
        raise StoreError(
            f"{path} is not a SQLite database; move it aside or pick another workspace."
        )
    # Read-write (never create) unless read-only: a crash during a first write can leave a
    # hot journal, which only a connection that may write can roll back. Nothing here writes.
    uri = read_only_uri(path) if read_only else f"file:{path}?mode=rw"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=LOCK_TIMEOUT)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
            version = None
            if MARKER_TABLE in tables:
                row = connection.execute(READ_SCHEMA_VERSION).fetchone()
                version = row[0] if row else None
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise failure(path, error) from error
    if tables and MARKER_TABLE not in tables:
        raise StoreError(
            f"{path} is a SQLite database of another program (tables: {sorted(tables)[:5]})."
        )
    if must_exist and not tables:
        raise no_store_in(path.parent)
    check_schema_version(version, str(path))
    # Every store chatledger opens for writing is switched to WAL (the header's version bytes
    # say 2); opening one that is not, the event library would switch it, which is a write.
    if read_only and header[18] != 2:
        raise StoreError(f"{path} was written by an older chatledger; {_TO_WRITE_ONCE}.")


def open_event_store(path: Path, cache_size: int, *, read_only: bool = False) -> EventStore:
    return EventStore(
        {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": read_only_uri(path) if read_only else str(path),
            "SQLITE_LOCK_TIMEOUT": str(int(LOCK_TIMEOUT)),
            "AGGREGATE_CACHE_MAXSIZE": str(max(1, cache_size)),
            "APPLICATION_RECORDER_TOPIC": get_topic(ProjectingSQLiteRecorder),
            "CREATE_TABLE": "n" if read_only else "y",
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


#: A chat message event is about 2 KB, its auto checkpoint's 0.4 KB: on 4 KiB pages a leaf
#: holds one of each and is 58 % full, on 8 KiB pages three of each (87 %). Every page an
#: append touches is written whole to the WAL: 16 KiB pages double the WAL bytes of 8 KiB
#: ones for no smaller file (measured: 2.32x vs 2.23x the payload at 2k messages). A store
#: created with another page size keeps it.
PAGE_SIZE = 8192
#: The WAL is checkpointed into the database once it holds a tenth of the database (and
#: truncated back to that after), within these bounds: the workspace on disk, WAL included,
#: then stays within 1.1 times the database. SQLite's default, 1000 pages whatever the
#: database's size, left a 16 MB WAL beside a 2 MB database. A checkpoint costs two fsyncs:
#: below the minimum they came every 3 appends and doubled the append p50 at 1k messages on a
#: busy disk, so a small store's WAL may weigh more than a tenth of it.
WAL_LIMIT_MIN_BYTES = 1 << 20
WAL_LIMIT_MAX_BYTES = 8 << 20
WAL_LIMIT_SHARE = 10


def bound_wal(connection: sqlite3.Connection) -> None:
    """Bounds the WAL of a connection that writes (each connection checkpoints what its own
    commits push past the limit); called again as the database grows."""
    page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
    pages = int(connection.execute("PRAGMA page_count").fetchone()[0])
    limit = min(max(pages * page_size // WAL_LIMIT_SHARE, WAL_LIMIT_MIN_BYTES), WAL_LIMIT_MAX_BYTES)
    connection.execute(f"PRAGMA wal_autocheckpoint={max(16, limit // page_size)}")
    connection.execute(f"PRAGMA journal_size_limit={limit}")


ProjectingSQLiteRecorder.configure_connection = bound_wal


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
    bound_wal(connection)
    connection.execute(META_TABLE_DDL)
    connection.execute(RECORD_SCHEMA_VERSION, (str(SCHEMA_VERSION),))
    return connection


class _FetchedRows:
    """A statement's rows, all read while it runs: a damaged page then fails inside
    `execute`, where the failure is named, and not midway through a caller's loop."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = iter(rows)

    def fetchone(self) -> Any:
        return next(self._rows, None)

    def fetchall(self) -> list[Any]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Any]:
        return self._rows


class SQLiteDatabase(Database):
    """The workspace's SQLite file, on one connection in autocommit mode."""

    dialect = SQLiteDialect()
    driver_errors = (sqlite3.Error,)
    rebuilds_aside = True

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.where = str(path)
        self.read_only = read_only
        with self.failures():
            self.connection = (
                sqlite3.connect(
                    read_only_uri(path),
                    uri=True,
                    isolation_level=None,
                    timeout=LOCK_TIMEOUT,
                    check_same_thread=False,
                )
                if read_only
                else open_projection_connection(path)
            )
        # Opened by the first command, so that reading creates no lock file.
        self._lock_file: TextIO | None = None
        #: data_version seen right after this process's last commit (None: unknown).
        self._own_data_version: int | None = None

    def failed(self, error: Exception) -> StoreError:
        return failure(self.path, error)

    def execute(self, statement: str, parameters: Sequence[Any] = ()) -> Rows:
        with self.failures():
            return _FetchedRows(self.connection.execute(statement, parameters).fetchall())

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        self.refuse_if_read_only()
        with self.failures():
            # IMMEDIATE takes the write lock at once: inserts of events wait for it, and so
            # the projections see the log as it stands.
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection.cursor()
            except BaseException:
                # A damaged page can end the transaction before this does.
                if self.connection.in_transaction:
                    self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        self.refuse_if_read_only()
        if self._lock_file is None:
            self._lock_file = (self.path.parent / WRITER_LOCK_FILE).open("a")
        lock_file = self._lock_file
        # SQLite has one writer at a time anyway; deciding inside a lock held across
        # processes means processes on this host never lose the race for a conversation's
        # next position. POSIX only: fcntl.
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)

    @contextmanager
    def rebuild_lock(self) -> Iterator[None]:
        self.refuse_if_read_only()
        with (self.path.parent / REBUILD_LOCK_FILE).open("a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

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
        if self._lock_file is not None:
            self._lock_file.close()


def open_sqlite(
    workspace: Path, cache_size: int, *, read_only: bool = False, must_exist: bool = False
) -> tuple[SQLiteDatabase, EventStore]:
    """The workspace's database, checked, then its event store. Read-only, or when it must
    exist, nothing is created."""
    path = prepare_workspace(workspace, create=not (read_only or must_exist))
    check_database_file(path, read_only=read_only, must_exist=must_exist)
    if not read_only:
        check_writable(path)
    database = SQLiteDatabase(path, read_only=read_only)
    try:
        with database.failures():
            store = open_event_store(path, cache_size, read_only=read_only)
    except BaseException:
        database.close()
        raise
    store.failures = database.failures
    return database, store
