"""How SQLite's projections keep their writes small (issue 11): messages reach the full-text
index in batches, yet every search finds them as soon as they are appended; a rebuild builds
its tables aside, a batch per transaction, while other writers go on appending; the WAL stays
bounded."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from chatledger.ledger import Ledger
from infrastructure import sqlite_store
from projections import runner, search


def matching(ledger: Ledger, term: str) -> set[UUID]:
    return {UUID(row["id"]) for row in ledger.list_conversations(search_term=term)}


def indexed_position(ledger: Ledger) -> int:
    return int(ledger.db.execute("SELECT position FROM message_search_indexed").fetchone()[0])


def test_search_finds_messages_before_and_after_they_are_indexed(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    try:
        first, second = ledger.start_conversation(), ledger.start_conversation()
        ledger.append_message(first, "user", "Ünïcode zebra")
        assert indexed_position(ledger) == 0  # not in the index yet...
        assert matching(ledger, "unicode zeb") == {first}  # ...and found all the same
        for index in range(search.INDEX_BATCH):
            ledger.append_message(second, "user", f"filler {index}")
        assert indexed_position(ledger) > 0
        assert matching(ledger, "zebra") == {first}
        assert matching(ledger, "filler") == {second}
        ledger.append_message(first, "user", "quagga")
        assert matching(ledger, "quagga") == {first}
        assert matching(ledger, "okapi") == set()
    finally:
        ledger.close()
    reader = Ledger(tmp_path, read_only=True)
    try:
        assert matching(reader, "quagga") == {first}
        assert matching(reader, "zebra") == {first}
    finally:
        reader.close()


def test_a_rebuild_lets_writers_in_between_its_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "BATCH_SIZE", 10)
    ledger = Ledger(tmp_path)
    writer = Ledger(tmp_path)
    try:
        conversation = ledger.start_conversation()
        for index in range(100):
            ledger.append_message(conversation, "user", f"before {index}")
        batches: list[int] = []
        done_after_batches: list[int] = []

        def append() -> None:
            writer.append_message(conversation, "user", "written during the rebuild zebra")
            done_after_batches.append(len(batches))

        thread = threading.Thread(target=append)
        apply_next_batch = ledger.projections._apply_next_batch

        def counted(cursor: Any) -> int:
            batches.append(1)
            if len(batches) == 2:
                thread.start()  # it waits for this batch's transaction, not the rebuild
            return apply_next_batch(cursor)

        ledger.projections._apply_next_batch = counted  # type: ignore[method-assign]
        ledger.rebuild_projections()
        thread.join(timeout=30)
        assert done_after_batches and done_after_batches[0] < len(batches) - 2
        # Nothing lost, nothing twice: the live tables equal a rebuild from scratch.
        tables = ledger.projections.readable_tables()
        live = ledger.read.table_dump(tables)
        assert len(ledger.history(conversation)) == 101
        assert matching(ledger, "zebra") == {conversation}
        ledger.projections._apply_next_batch = apply_next_batch  # type: ignore[method-assign]
        ledger.rebuild_projections()
        assert ledger.read.table_dump(tables) == live
        assert matching(ledger, "zebra") == {conversation}
        leftovers = ledger.db.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE ?", (runner.ASIDE_PREFIX + "%",)
        ).fetchall()
        assert leftovers == []
    finally:
        writer.close()
        ledger.close()


def test_the_wal_stays_a_fraction_of_the_database(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    try:
        conversation = ledger.start_conversation()
        for index in range(300):
            ledger.append_message(conversation, "user", f"message {index} " + "word " * 250)
        database = tmp_path / sqlite_store.DB_FILE
        wal = database.with_name(database.name + "-wal")
        limit = max(
            database.stat().st_size // sqlite_store.WAL_LIMIT_SHARE,
            sqlite_store.WAL_LIMIT_MIN_BYTES,
        )
        # The limit, plus at most one append's frames past it before the checkpoint.
        assert wal.stat().st_size <= limit + 256 * 1024
    finally:
        ledger.close()
