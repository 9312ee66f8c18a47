"""Full-text search over message text, with each database's own engine: SQLite's FTS5 or
PostgreSQL's tsvector. Either way every word of a search term must appear in a message, as a
word or a word prefix, case- and diacritic-insensitively, and operators in user input are
taken literally."""

from __future__ import annotations

import re
import unicodedata
from typing import Any, ClassVar

from domain import events
from domain.messages import text_of
from infrastructure.database import Cursor, Dialect
from projections.base import Handler, Projection

#: Runs of letters and digits: what both engines index as words. Splitting the term the same
#: way keeps every word a single token, so no engine sees a phrase or an operator in it.
_WORD = re.compile(r"[^\W_]+")


def search_words(search_term: str) -> list[str]:
    return _WORD.findall(search_term)


class MessageSearch(Projection):
    name = "search"
    tables = ("message_search",)

    def handlers(self) -> dict[type, Handler]:
        return {events.MessageAppended: self._index}

    def _index(self, cursor: Cursor, event: Any, notification_id: int) -> None:
        text = text_of(event.parts)
        if text:
            self.index(cursor, event, notification_id, text)

    def index(self, cursor: Cursor, event: Any, notification_id: int, text: str) -> None:
        raise NotImplementedError

    def conversations_matching(self, search_term: str) -> tuple[str, list[Any]]:
        """A subquery of the (hex) ids of conversations with a message matching the term,
        and its parameters."""
        raise NotImplementedError


class SQLiteMessageSearch(MessageSearch):
    """The index is contentless and keyed by the event's notification id (the stored event's
    rowid), so message text is not stored a second time: a hit joins back to the log."""

    readable: ClassVar[bool] = False
    ddl = (
        # detail=none and columnsize=0 keep only which rows hold which words: matching words
        # and word prefixes needs no more, and the index is a fraction of the size.
        "CREATE VIRTUAL TABLE IF NOT EXISTS message_search USING fts5(text, content='', "
        "detail=none, columnsize=0, tokenize='unicode61 remove_diacritics 2')",
    )

    def index(self, cursor: Cursor, event: Any, notification_id: int, text: str) -> None:
        cursor.execute(
            "INSERT INTO message_search (rowid, text) VALUES (?, ?)", (notification_id, text)
        )

    def conversations_matching(self, search_term: str) -> tuple[str, list[Any]]:
        words = search_words(search_term)
        expression = " ".join(f'"{word}"*' for word in words) if words else '""'
        return (
            "SELECT e.originator_id FROM message_search s JOIN stored_events e "
            "ON e.rowid = s.rowid WHERE message_search MATCH ?",
            [expression],
        )


def _fold(text: str) -> str:
    """Text without diacritics: the 'simple' configuration only lowercases, and the
    unaccent extension is not on every server."""
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


class PostgresMessageSearch(MessageSearch):
    """A tsvector per message with a GIN index. The vector holds the words, not the text, and
    the conversation, so a hit needs no join with the log."""

    ddl = (
        """CREATE TABLE IF NOT EXISTS message_search (
            notification_id BIGINT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            words TSVECTOR NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS message_search_words ON message_search USING GIN (words)",
    )

    def index(self, cursor: Cursor, event: Any, notification_id: int, text: str) -> None:
        # NUL separates words, as in FTS5; left in, it would be stored escaped, glued to the
        # words around it.
        cursor.execute(
            "INSERT INTO message_search VALUES (?, ?, to_tsvector('simple', ?))",
            (notification_id, event.originator_id.hex, _fold(text).replace("\x00", " ")),
        )

    def conversations_matching(self, search_term: str) -> tuple[str, list[Any]]:
        words = [_fold(word) for word in search_words(search_term)]
        query = " & ".join(f"'{word}':*" for word in words)
        if not query:
            return "SELECT conversation_id FROM message_search WHERE false", []
        return (
            "SELECT conversation_id FROM message_search WHERE words @@ to_tsquery('simple', ?)",
            [query],
        )


def message_search(dialect: Dialect) -> MessageSearch:
    return PostgresMessageSearch() if dialect.name == "postgres" else SQLiteMessageSearch()
