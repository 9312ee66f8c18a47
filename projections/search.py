"""Full-text search over message text, with each database's own engine: SQLite's FTS5 or
PostgreSQL's tsvector. Either way every word of a search term must appear in a message, as a
word or a word prefix, case- and diacritic-insensitively, and operators in user input are
taken literally."""

from __future__ import annotations

import re
import unicodedata
from typing import Any, ClassVar
from uuid import UUID

import orjson
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from domain import events
from domain.messages import text_of
from infrastructure.database import Cursor, Dialect
from infrastructure.mapping import OrjsonTranscoder, PydanticMapper
from projections.base import Handler, Projection

#: Runs of letters and digits: what both engines index as words. Splitting the term the same
#: way keeps every word a single token, so no engine sees a phrase or an operator in it.
_WORD = re.compile(r"[^\W_]+")


def search_words(search_term: str) -> list[str]:
    return _WORD.findall(search_term)


class MessageSearch(Projection):
    name = "search"
    tables: ClassVar[tuple[str, ...]] = ("message_search",)

    def handlers(self) -> dict[type, Handler]:
        return {events.MessageAppended: self._index}

    def _index(self, cursor: Cursor, event: Any, notification_id: int) -> None:
        text = text_of(event.parts)
        if text:
            self.index(cursor, event, notification_id, text)

    def prepare_search(self, database: Any) -> None:
        """Called on the reading database before a search's subquery runs."""

    def index(self, cursor: Cursor, event: Any, notification_id: int, text: str) -> None:
        raise NotImplementedError

    def conversations_matching(self, search_term: str) -> tuple[str, list[Any]]:
        """A subquery of the (hex) ids of conversations with a message matching the term,
        and its parameters."""
        raise NotImplementedError


#: SQLite indexes messages in batches: FTS5 writes a new segment (and its structure record)
#: for every transaction, about four 8 KiB pages per message indexed one at a time; a batch of
#: this many notifications writes them once. Search reads the batch not yet indexed from the
#: log, so it finds every message as soon as it is appended.
INDEX_BATCH = 64
_MESSAGE_TOPIC = get_topic(events.MessageAppended)
_MAPPER = PydanticMapper(transcoder=OrjsonTranscoder())
_FTS5 = "fts5(text, {options}tokenize='unicode61 remove_diacritics 2')"


def _stored_text(rowid: int, originator_id: str, version: int, state: bytes) -> str:
    """A stored MessageAppended's text, as text_of gives it for the event."""
    document = orjson.loads(state)
    if "class_version" not in document:  # as written today: read it without pydantic
        return "\n".join(
            part["text"] if part["type"] == "text" else part["content"]
            for part in document["parts"]
            if part["type"] in ("text", "tool_result")
        )
    event: Any = _MAPPER.to_domain_event(
        StoredEvent(UUID(originator_id), version, _MESSAGE_TOPIC, state)
    )
    return text_of(event.parts)


class SQLiteMessageSearch(MessageSearch):
    """The index is contentless and keyed by the event's notification id (the stored event's
    rowid), so message text is not stored a second time: a hit joins back to the log.

    Messages after `message_search_indexed.position` (fewer than INDEX_BATCH notifications)
    are not in it yet; a search indexes them in a temporary table first (see
    `prepare_search`), with the same tokenizer, so the two match alike."""

    readable: ClassVar[bool] = False
    tables = ("message_search", "message_search_indexed")
    ddl = (
        # detail=none and columnsize=0 keep only which rows hold which words: matching words
        # and word prefixes needs no more, and the index is a fraction of the size.
        "CREATE VIRTUAL TABLE IF NOT EXISTS message_search USING "
        + _FTS5.format(options="content='', detail=none, columnsize=0, "),
        "CREATE TABLE IF NOT EXISTS message_search_indexed (position INTEGER NOT NULL)",
    )

    def create(self, cursor: Cursor, dialect: Dialect) -> None:
        super().create(cursor, dialect)
        cursor.execute(
            "INSERT INTO message_search_indexed SELECT 0 "
            "WHERE NOT EXISTS (SELECT 1 FROM message_search_indexed)"
        )

    def _index(self, cursor: Cursor, event: Any, notification_id: int) -> None:
        if self.replaying:  # a rebuild: one transaction, one segment for the lot
            super()._index(cursor, event, notification_id)
            return
        indexed = cursor.execute("SELECT position FROM message_search_indexed").fetchone()[0]
        if notification_id - indexed >= INDEX_BATCH:
            self._index_logged(cursor, indexed, notification_id)

    def replayed(self, cursor: Cursor, position: int) -> None:
        cursor.execute("UPDATE message_search_indexed SET position=?", (position,))

    @staticmethod
    def _logged_messages(cursor: Any, after: int, upto: int | None) -> list[tuple[int, str]]:
        rows = cursor.execute(
            "SELECT rowid, originator_id, originator_version, state FROM stored_events "
            "WHERE rowid > ? AND rowid <= ? AND topic = ?",
            (after, upto if upto is not None else 2**63 - 1, _MESSAGE_TOPIC),
        ).fetchall()
        texts = [(row[0], _stored_text(*row)) for row in rows]
        return [(rowid, text) for rowid, text in texts if text]

    def _index_logged(self, cursor: Cursor, after: int, upto: int) -> None:
        cursor.executemany(
            "INSERT INTO message_search (rowid, text) VALUES (?, ?)",
            self._logged_messages(cursor, after, upto),
        )
        cursor.execute("UPDATE message_search_indexed SET position=?", (upto,))

    def index(self, cursor: Cursor, event: Any, notification_id: int, text: str) -> None:
        cursor.execute(
            "INSERT INTO message_search (rowid, text) VALUES (?, ?)", (notification_id, text)
        )

    def prepare_search(self, database: Any) -> None:
        """Indexes the messages not yet in the index, in this connection's temporary table."""
        connection = database.connection
        with database.failures():
            connection.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS temp.message_search_pending USING "
                + _FTS5.format(options="content='', detail=none, columnsize=0, ")
            )
            connection.execute("BEGIN")  # the position and the log after it, as one read
            try:
                indexed = connection.execute(
                    "SELECT position FROM main.message_search_indexed"
                ).fetchone()[0]
                pending = self._logged_messages(connection, indexed, None)
                connection.execute(
                    "INSERT INTO temp.message_search_pending (message_search_pending) "
                    "VALUES ('delete-all')"
                )
                connection.executemany(
                    "INSERT INTO temp.message_search_pending (rowid, text) VALUES (?, ?)",
                    pending,
                )
            finally:
                connection.execute("COMMIT")

    def conversations_matching(self, search_term: str) -> tuple[str, list[Any]]:
        words = search_words(search_term)
        expression = " ".join(f'"{word}"*' for word in words) if words else '""'
        return (
            "SELECT e.originator_id FROM message_search s JOIN stored_events e "
            "ON e.rowid = s.rowid WHERE message_search MATCH ? "
            "UNION ALL SELECT e.originator_id FROM temp.message_search_pending p "
            "JOIN stored_events e ON e.rowid = p.rowid WHERE message_search_pending MATCH ?",
            [expression, expression],
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
    the conversation, so a hit needs no join with the log. Keyed by the message's place in
    its conversation, not its notification id: rows are written before the log's table lock
    that assigns notification ids (see ProjectingPostgresRecorder)."""

    ddl = (
        """CREATE TABLE IF NOT EXISTS message_search (
            conversation_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            words TSVECTOR NOT NULL,
            PRIMARY KEY (conversation_id, position)
        )""",
        "CREATE INDEX IF NOT EXISTS message_search_words ON message_search USING GIN (words)",
    )

    def index(self, cursor: Cursor, event: Any, notification_id: int, text: str) -> None:
        # NUL separates words, as in FTS5; left in, it would be stored escaped, glued to the
        # words around it.
        cursor.execute(
            "INSERT INTO message_search VALUES (?, ?, to_tsvector('simple', ?))",
            (
                event.originator_id.hex,
                event.originator_version,
                _fold(text).replace("\x00", " "),
            ),
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
