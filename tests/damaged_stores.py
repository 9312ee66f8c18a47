"""Stores that are not chatledger's, or are damaged, and how to tell a folder was left untouched.

`another_eventsourcing_application` builds the SQLite file another program built on the same
library would write (its own `stored_events`, no chatledger marker); `damage_pages_of`
overwrites every page of one table of a SQLite file with garbage, as damage in the middle of
the file would. `files` digests every file of a folder, so that a test can compare the folder
before and after and see that nothing was written; `tables` names a SQLite file's tables
without writing to it."""

from __future__ import annotations

import hashlib
import random
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from infrastructure.sqlite_store import DB_FILE


class Dog(Aggregate):
    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name


def another_eventsourcing_application(workspace: Path) -> Path:
    """The file another program built on the same library writes: its own `stored_events`."""
    workspace.mkdir(parents=True, exist_ok=True)
    path = workspace / DB_FILE
    application: Application[Any] = Application(
        env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
    )
    application.save(Dog(name="Fido"))
    application.close()
    return path


def tables(path: Path) -> set[str]:
    """The names of the SQLite file's tables, read without writing to it."""
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def files(folder: Path) -> dict[str, str]:
    """Every file in the folder and a digest of its bytes, SQLite's -wal/-shm side files
    aside (any reader of a WAL database may leave them)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if not p.name.endswith(("-wal", "-shm"))
    }


def damage_pages_of(path: Path, table: str, seed: int) -> None:
    """Overwrites every page of the table (never the file's first page, its header and
    schema) with garbage drawn from `seed`. Skips the test where SQLite cannot say which
    pages those are."""
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        try:
            pages = db.execute("SELECT pageno FROM dbstat WHERE name=?", (table,)).fetchall()
        except sqlite3.OperationalError:
            pytest.skip("this SQLite has no dbstat table to locate a table's pages")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    assert pages and all(page > 1 for (page,) in pages), pages
    garbage = random.Random(seed)
    with path.open("r+b") as file:
        for (page,) in pages:
            file.seek((page - 1) * page_size)
            file.write(garbage.randbytes(page_size))
