"""Full-text search over message text with SQLite FTS5.

The index is contentless and keyed by the event's notification id (the stored event's
rowid), so message text is not stored a second time: a hit joins back to the log."""

from __future__ import annotations

import sqlite3
from typing import Any

from domain import events
from domain.messages import text_of
from projections.base import Handler, Projection


class MessageSearch(Projection):
    name = "search"
    tables = ("message_search",)
    readable = False
    ddl = (
        # detail=none and columnsize=0 keep only which rows hold which words: matching words
        # and word prefixes needs no more, and the index is a fraction of the size.
        "CREATE VIRTUAL TABLE IF NOT EXISTS message_search USING fts5(text, content='', "
        "detail=none, columnsize=0, tokenize='unicode61 remove_diacritics 2')",
    )

    def handlers(self) -> dict[type, Handler]:
        return {events.MessageAppended: self._index}

    def _index(self, cursor: sqlite3.Cursor, event: Any, notification_id: int) -> None:
        text = text_of(event.parts)
        if text:
            cursor.execute(
                "INSERT INTO message_search (rowid, text) VALUES (?, ?)",
                (notification_id, text),
            )


def match_expression(search_term: str) -> str | None:
    """Every word of the term must appear, each as a word or word prefix, case-insensitively.
    Words are quoted so FTS5 operators in user input are taken literally."""
    words = [w for w in search_term.replace('"', " ").split() if w]
    if not words:
        return None
    return " ".join(f'"{word}"*' for word in words)
