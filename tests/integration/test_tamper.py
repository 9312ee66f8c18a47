"""Tampering with the database behind chatledger's back is found and located by `verify`, on
every store chatledger can keep its log in (the SQLite file and PostgreSQL).

Every test builds one small store (a parent conversation with a branch) through the Ledger,
tampers with the rows of the log's table directly, as anyone with write access to the database
could, and then checks exactly which (conversation, position) `verify` names, through the
Ledger and through the CLI. The tests are written once; `RawLog` is all that differs between
the stores."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from uuid import UUID

import orjson
import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from rich.console import Console
from typer.testing import CliRunner

from chatledger import cli
from chatledger.ledger import Ledger
from domain.checkpoints import CheckpointConfig, CheckpointType
from domain.errors import FileInputError, InvalidInput, StoreError
from domain.hashing import event_hash
from infrastructure.sqlite_store import DB_FILE
from infrastructure.stores import DATABASE_URL_VARIABLE
from infrastructure.verification import anchor_of, hashed_document
from tests.postgres import DSN, fresh_schema, requires_postgres

HASH_MISMATCH = "hash does not match the payload"
PREV_MISMATCH = "prev_hash does not match the previous event's hash"

PARENT_TEXTS = ("msg 0", "msg 1", "msg 2", "msg 3")
BRANCH_TEXT = "branch msg"
AFTER_FORK_TEXT = "parent after fork"


# -- the log's table, row by row, on each store ----------------------------------------------
class RawLog(ABC):
    """The table the eventsourcing recorder keeps the log in, read and changed with plain SQL
    (written with `?` parameters and a `{table}` placeholder). Every change must hit exactly
    the rows it names, so a test can never pass by tampering with nothing."""

    #: The URL a Ledger opens this store with (None: the workspace's SQLite file).
    url: str | None

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Any]:
        """A connection (with `execute`) whose statements commit together on a clean exit."""

    @abstractmethod
    def _statement(self, statement: str) -> str:
        """`statement` with this store's table name and parameter style."""

    @abstractmethod
    def _key(self, conversation: UUID) -> Any:
        """A conversation id as the originator_id column holds it."""

    def _rows(self, statement: str, *parameters: Any) -> list[Any]:
        with self._transaction() as db:
            return list(db.execute(self._statement(statement), parameters).fetchall())

    def _change(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        with self._transaction() as db:
            for statement, parameters in statements:
                changed = db.execute(self._statement(statement), parameters).rowcount
                assert changed == 1, f"{statement} {parameters} changed {changed} rows"

    def events(self, conversation: UUID) -> list[tuple[int, str]]:
        """(position, topic) of every stored event of the conversation, in position order."""
        return [
            (int(position), str(topic))
            for position, topic in self._rows(
                "SELECT originator_version, topic FROM {table} WHERE originator_id=? "
                "ORDER BY originator_version",
                self._key(conversation),
            )
        ]

    def _column(self, column: str, conversation: UUID, position: int) -> Any:
        rows = self._rows(
            f"SELECT {column} FROM {{table}} WHERE originator_id=? AND originator_version=?",
            self._key(conversation),
            position,
        )
        assert len(rows) == 1, f"no event {conversation} @ {position}"
        return rows[0][0]

    def state(self, conversation: UUID, position: int) -> bytes:
        return bytes(self._column("state", conversation, position))

    def topic(self, conversation: UUID, position: int) -> str:
        return str(self._column("topic", conversation, position))

    def write_state(self, conversation: UUID, position: int, state: bytes) -> None:
        self._change(
            (
                "UPDATE {table} SET state=? WHERE originator_id=? AND originator_version=?",
                (state, self._key(conversation), position),
            )
        )

    def write_topic(self, conversation: UUID, position: int, topic: str) -> None:
        self._change(
            (
                "UPDATE {table} SET topic=? WHERE originator_id=? AND originator_version=?",
                (topic, self._key(conversation), position),
            )
        )

    def delete(self, conversation: UUID, position: int) -> None:
        self._change(
            (
                "DELETE FROM {table} WHERE originator_id=? AND originator_version=?",
                (self._key(conversation), position),
            )
        )

    def swap_positions(self, conversation: UUID, first: int, second: int) -> None:
        """The two rows trade positions, each keeping its payload. Position -1 parks the first
        row, as no two rows may share a position even for a moment."""
        key = self._key(conversation)
        renumber = (
            "UPDATE {table} SET originator_version=? WHERE originator_id=? AND originator_version=?"
        )
        self._change(
            (renumber, (-1, key, first)),
            (renumber, (first, key, second)),
            (renumber, (second, key, -1)),
        )


class SQLiteLog(RawLog):
    """`stored_events` in the workspace's file; the id is the uuid's hex."""

    url = None

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path)) as db, db:
            yield db

    def _statement(self, statement: str) -> str:
        return statement.format(table="stored_events")

    def _key(self, conversation: UUID) -> Any:
        return conversation.hex


class PostgresLog(RawLog):
    """`chatledger_events` in the schema the URL names; the id is a uuid."""

    def __init__(self, url: str) -> None:
        self.url = url
        schema = dict(parse_qsl(urlsplit(url).query))["schema"]
        self.table = f'"{schema}".chatledger_events'

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        assert DSN is not None
        with psycopg.connect(DSN) as db:
            yield db

    def _statement(self, statement: str) -> str:
        return statement.format(table=self.table).replace("?", "%s")

    def _key(self, conversation: UUID) -> Any:
        return conversation


# -- the store every test tampers with -------------------------------------------------------
@dataclass(frozen=True)
class Store:
    workspace: Path
    log: RawLog
    parent: UUID
    branch: UUID
    fork_position: int
    parent_events: int
    branch_events: int

    def ledger(self, **kwargs: Any) -> Ledger:
        return Ledger(self.workspace, database_url=self.log.url, **kwargs)


def _build(workspace: Path, log: RawLog) -> Store:
    """Parent: started, system prompt, four messages, a manual checkpoint (the fork point),
    the BranchForked record, one more message. Branch: started, its branch checkpoint, one
    message. Auto checkpoints are off so the layout is small and fixed."""
    config = CheckpointConfig(enabled=False)
    with closing(Ledger(workspace, database_url=log.url, checkpoint_config=config)) as ledger:
        parent = ledger.start_conversation(title="parent", system_prompt="You are terse.")
        for index, text in enumerate(PARENT_TEXTS):
            ledger.append_message(parent, "user" if index % 2 == 0 else "assistant", text)
        checkpoint = ledger.create_checkpoint(parent, CheckpointType.MANUAL, "fork here")
        fork_position = ledger.checkpoint(checkpoint).position
        branch = ledger.branch(checkpoint, "branch")
        ledger.append_message(branch, "user", BRANCH_TEXT)
        ledger.append_message(parent, "user", AFTER_FORK_TEXT)
        assert ledger.verify().ok

    topics = {cid: [topic for _, topic in log.events(cid)] for cid in (parent, branch)}
    assert topics[parent] == [
        "chatledger:ConversationStarted",
        *["chatledger:MessageAppended"] * 5,
        "chatledger:CheckpointCreated",
        "chatledger:BranchForked",
        "chatledger:MessageAppended",
    ]
    assert topics[branch] == [
        "chatledger:ConversationStarted",
        "chatledger:CheckpointCreated",
        "chatledger:MessageAppended",
    ]
    assert fork_position == 7
    return Store(workspace, log, parent, branch, fork_position, len(topics[parent]), 3)


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("postgres", marks=[requires_postgres, pytest.mark.postgres]),
    ]
)
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    """A new store per test (a few dozen milliseconds on either). The CLI finds it as a user
    would: by its workspace, and on PostgreSQL by CHATLEDGER_DATABASE_URL, which must not be
    set when the store is the SQLite file."""
    workspace = tmp_path / "ws"
    if request.param == "sqlite":
        monkeypatch.delenv(DATABASE_URL_VARIABLE, raising=False)
        yield _build(workspace, SQLiteLog(workspace / DB_FILE))
        return
    with fresh_schema() as url:
        monkeypatch.setenv(DATABASE_URL_VARIABLE, url)
        yield _build(workspace, PostgresLog(url))


# -- tampering with payloads -----------------------------------------------------------------
def _position_of_text(store: Store, conversation: UUID, text: str) -> int:
    for position, topic in store.log.events(conversation):
        if topic == "chatledger:MessageAppended":
            parts = orjson.loads(store.log.state(conversation, position))["parts"]
            if parts[0].get("text") == text:
                return position
    raise AssertionError(f"{text!r} not in {conversation}")


def _edit_text(store: Store, conversation: UUID, position: int, new_text: str) -> dict[str, Any]:
    """Changes the message text inside the JSON payload, leaving valid JSON and the stored
    hash as it was. Returns the edited document."""
    document = orjson.loads(store.log.state(conversation, position))
    assert document["parts"][0]["type"] == "text"
    document["parts"][0]["text"] = new_text
    store.log.write_state(conversation, position, orjson.dumps(document))
    return document


def _forge(store: Store, conversation: UUID, position: int, change: dict[str, Any]) -> None:
    """Edits the payload and recomputes the event's own hash the way chatledger does, so the
    event is self-consistent; only the chain to the next event can give it away."""
    document = orjson.loads(store.log.state(conversation, position))
    document.update(change)
    document["hash"] = event_hash(hashed_document(_stored(store, conversation, position, document)))
    store.log.write_state(conversation, position, orjson.dumps(document))
    # The forged event really is self-consistent: recomputing gives the stored hash.
    forged = _stored(
        store, conversation, position, orjson.loads(store.log.state(conversation, position))
    )
    assert document["hash"] == event_hash(hashed_document(forged))


def _stored(
    store: Store, conversation: UUID, position: int, document: dict[str, Any]
) -> StoredEvent:
    topic = store.log.topic(conversation, position)
    return StoredEvent(conversation, position, topic, orjson.dumps(document))


# -- what verify says -------------------------------------------------------------------------
def _breaks(
    store: Store,
    conversation: UUID | None = None,
    anchor: Path | str | dict[str, Any] | None = None,
) -> list[tuple[UUID, int, str]]:
    with closing(store.ledger()) as ledger:
        report = ledger.verify(conversation, anchor=anchor)
    return [(b.conversation_id, b.position, b.problem) for b in report.breaks]


def _anchor(store: Store) -> dict[str, Any]:
    """The anchor of the store as it is now (taken before a test tampers with it)."""
    with closing(store.ledger()) as ledger:
        report = ledger.verify()
    assert report.ok
    return report.anchor()


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("chatledger")
    assert executable, "the chatledger console script is not installed"
    return subprocess.run(
        [executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"},
        check=False,
    )


def _invoke_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    """The same CLI app in-process, printing to a wide console so no line is wrapped."""
    monkeypatch.setattr(cli, "console", Console(width=250, no_color=True))
    result = CliRunner().invoke(cli.app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, " ".join((result.stdout + result.stderr).split())


# -- the untouched store -----------------------------------------------------------------
def test_untouched_store_verifies_ok(store: Store) -> None:
    with closing(store.ledger()) as ledger:
        report = ledger.verify()
        assert report.ok
        assert report.breaks == ()
        assert report.conversations == 2
        assert report.events == store.parent_events + store.branch_events
        assert ledger.verify(store.parent).ok
        assert ledger.verify(store.branch).ok


# -- (a) an edited payload -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("which", "text"),
    [
        pytest.param("parent", "msg 1", id="parent-before-fork"),
        pytest.param("parent", AFTER_FORK_TEXT, id="parent-after-fork"),
        pytest.param("branch", BRANCH_TEXT, id="branch-own-event"),
    ],
)
def test_edited_message_text_is_located(store: Store, which: str, text: str) -> None:
    conversation = store.parent if which == "parent" else store.branch
    position = _position_of_text(store, conversation, text)
    _edit_text(store, conversation, position, text.upper() + " (edited)")

    assert _breaks(store) == [(conversation, position, HASH_MISMATCH)]
    assert _breaks(store, conversation) == [(conversation, position, HASH_MISMATCH)]


def test_edited_timestamp_only_is_located(store: Store) -> None:
    """Not only the text: any field of the payload is covered by the hash."""
    document = orjson.loads(store.log.state(store.parent, 4))
    document["timestamp"] = "2001-01-01T00:00:00Z"
    store.log.write_state(store.parent, 4, orjson.dumps(document))
    assert _breaks(store) == [(store.parent, 4, HASH_MISMATCH)]


def test_payload_that_is_not_json_is_located(store: Store) -> None:
    store.log.write_state(store.parent, 5, b"{not json")
    assert _breaks(store) == [(store.parent, 5, "payload is not valid JSON")]


# -- (b) a deleted event -------------------------------------------------------------------
@pytest.mark.parametrize("position", [1, 4, 6])
def test_deleted_event_is_located(store: Store, position: int) -> None:
    store.log.delete(store.parent, position)
    assert _breaks(store) == [
        (store.parent, position, f"event missing (next stored position is {position + 1})")
    ]


def test_deleted_last_event_is_detected(store: Store) -> None:
    """Tail truncation leaves a shorter chain that is still consistent: only an anchor of the
    head, exported before the deletion, shows it."""
    anchor = _anchor(store)
    store.log.delete(store.parent, store.parent_events)
    assert _breaks(store) == []  # the chain alone cannot see its own end
    assert _breaks(store, anchor=anchor) == [
        (
            store.parent,
            store.parent_events,
            f"truncated: anchored head {store.parent_events} missing",
        )
    ]
    assert _breaks(store, store.parent, anchor=anchor) == [
        (
            store.parent,
            store.parent_events,
            f"truncated: anchored head {store.parent_events} missing",
        )
    ]


def test_truncated_tail_of_several_events_is_detected(store: Store) -> None:
    anchor = _anchor(store)
    for position in (store.parent_events, store.parent_events - 1):
        store.log.delete(store.parent, position)
    assert _breaks(store, anchor=anchor) == [
        (
            store.parent,
            store.parent_events,
            f"truncated: anchored head {store.parent_events} missing",
        )
    ]


def test_conversation_missing_entirely_is_reported(store: Store) -> None:
    anchor = _anchor(store)
    for position in range(1, store.branch_events + 1):
        store.log.delete(store.branch, position)
    assert _breaks(store) == []  # its notifications went with it: nothing names it any more
    missing = (
        store.branch,
        1,
        f"conversation missing: no events stored, the anchor has its head at {store.branch_events}",
    )
    assert _breaks(store, anchor=anchor) == [missing]
    # Asked for by id (the read model still knows it), it is reported the same way.
    assert _breaks(store, store.branch, anchor=anchor) == [missing]


# -- (c) two adjacent events reordered ---------------------------------------------------
@pytest.mark.parametrize(("conversation_name", "first"), [("parent", 3), ("branch", 2)])
def test_swapped_adjacent_events_are_located_at_the_first(
    store: Store, conversation_name: str, first: int
) -> None:
    conversation = store.parent if conversation_name == "parent" else store.branch
    a, b = store.log.state(conversation, first), store.log.state(conversation, first + 1)
    store.log.write_state(conversation, first, b)
    store.log.write_state(conversation, first + 1, a)
    assert _breaks(store) == [(conversation, first, HASH_MISMATCH)]


def test_swapped_rows_with_their_positions_are_located(store: Store) -> None:
    """Reordering by renumbering the rows (positions 3 and 4 trade places, payloads kept)."""
    store.log.swap_positions(store.parent, 3, 4)
    assert _breaks(store) == [(store.parent, 3, HASH_MISMATCH)]


# -- (d) a forged event (payload edited and its own hash recomputed) -----------------------
def test_forged_event_breaks_the_link_to_the_next_event(store: Store) -> None:
    document = orjson.loads(store.log.state(store.parent, 4))
    document["parts"][0]["text"] = "forged text"
    _forge(store, store.parent, 4, {"parts": document["parts"]})
    assert _breaks(store) == [(store.parent, 5, PREV_MISMATCH)]


def test_forged_last_event_is_detected(store: Store) -> None:
    """A self-consistent forgery of a stream's NEWEST event: no successor contradicts it, but
    the anchor exported before it still holds the old hash."""
    anchor = _anchor(store)
    document = orjson.loads(store.log.state(store.branch, 3))
    document["parts"][0]["text"] = "forged text"
    _forge(store, store.branch, 3, {"parts": document["parts"]})
    assert _breaks(store) == []  # the chain alone cannot tell
    assert _breaks(store, anchor=anchor) == [
        (store.branch, 3, "event at anchored head 3 differs from the anchor")
    ]


def test_reforged_tail_is_detected_at_the_anchored_head(store: Store) -> None:
    """Rewriting the last two events and re-chaining them (every hash recomputed) passes the
    walk; the anchored head's hash gives it away."""
    anchor = _anchor(store)
    last = store.parent_events
    _forge(store, store.parent, last - 1, {"name": "forged name"})
    new_prev = orjson.loads(store.log.state(store.parent, last - 1))["hash"]
    _forge(store, store.parent, last, {"prev_hash": new_prev})
    assert _breaks(store) == []
    assert _breaks(store, anchor=anchor) == [
        (store.parent, last, f"event at anchored head {last} differs from the anchor")
    ]


def test_anchor_keeps_the_earliest_break(store: Store) -> None:
    """A break the walk finds before the anchored head is the one named."""
    anchor = _anchor(store)
    document = orjson.loads(store.log.state(store.parent, 4))
    document["parts"][0]["text"] = "forged text"
    _forge(store, store.parent, 4, {"parts": document["parts"]})
    assert _breaks(store, anchor=anchor) == [(store.parent, 5, PREV_MISMATCH)]


# -- anchors ----------------------------------------------------------------------------------
def test_anchor_of_the_untouched_store(store: Store, tmp_path: Path) -> None:
    anchor = _anchor(store)
    assert anchor["format"] == "chatledger-anchor"
    assert anchor["version"] == 1
    assert isinstance(anchor["taken_at"], str)
    heads = anchor["conversations"]
    assert set(heads) == {str(store.parent), str(store.branch)}
    for conversation, count in ((store.parent, store.parent_events), (store.branch, 3)):
        assert heads[str(conversation)] == {
            "position": count,
            "hash": orjson.loads(store.log.state(conversation, count))["hash"],
        }
    # From a dict, from a file (Path or str): all verify ok.
    path = tmp_path / "anchor.json"
    path.write_bytes(orjson.dumps(anchor))
    assert _breaks(store, anchor=anchor) == []
    assert _breaks(store, anchor=path) == []
    assert _breaks(store, anchor=str(path)) == []


def test_anchor_of_older_history_allows_growth(store: Store) -> None:
    """Anchors do not forbid growth: new events, new branches and new conversations after the
    anchor verify ok, and the grown store can be anchored again."""
    anchor = _anchor(store)
    with closing(store.ledger(checkpoint_config=CheckpointConfig(enabled=False))) as ledger:
        ledger.append_message(store.parent, "assistant", "later answer")
        ledger.append_message(store.branch, "assistant", "later branch answer")
        newcomer = ledger.start_conversation(title="after the anchor")
        ledger.append_message(newcomer, "user", "hello")
        checkpoint = ledger.create_checkpoint(store.branch, CheckpointType.MANUAL, "again")
        ledger.branch(checkpoint, "grandchild")
        report = ledger.verify(anchor=anchor)
        assert report.ok, report.breaks
        assert report.conversations == 4
        assert ledger.verify(store.branch, anchor=anchor).ok
        newer = report.anchor()
        assert len(newer["conversations"]) == 4
        assert newer["conversations"][str(store.parent)]["position"] == store.parent_events + 1
        assert ledger.verify(anchor=newer).ok


def test_anchor_checks_only_the_conversations_in_scope(store: Store) -> None:
    """Verifying one conversation checks the anchored heads of its lineage only."""
    anchor = _anchor(store)
    store.log.delete(store.branch, store.branch_events)
    assert _breaks(store, store.parent, anchor=anchor) == []
    assert [
        (cid, position) for cid, position, _ in _breaks(store, store.branch, anchor=anchor)
    ] == [(store.branch, store.branch_events)]


def test_report_of_a_broken_store_cannot_be_anchored(store: Store) -> None:
    _edit_text(store, store.parent, _position_of_text(store, store.parent, "msg 2"), "tampered")
    with closing(store.ledger()) as ledger:
        report = ledger.verify()
        with pytest.raises(StoreError, match="broken"):
            report.anchor()
        with pytest.raises(StoreError):
            anchor_of(ledger.store.recorder)


def test_unusable_anchor_is_a_typed_error(store: Store, tmp_path: Path) -> None:
    with closing(store.ledger()) as ledger:
        with pytest.raises(FileInputError, match="Cannot read anchor file"):
            ledger.verify(anchor=tmp_path / "nowhere.json")
        corrupt = tmp_path / "corrupt.json"
        corrupt.write_text('{"format": "chatledger-anchor", "versi')
        with pytest.raises(FileInputError, match="not valid JSON"):
            ledger.verify(anchor=corrupt)
        with pytest.raises(InvalidInput, match="format"):
            ledger.verify(anchor={"conversations": {}})


# -- (e) the parent, the fork and the branch ---------------------------------------------
def test_parent_edit_before_fork_is_reported_on_the_parent_only(store: Store) -> None:
    """The branch's own chain still links to the fork event's stored hash, so the whole-store
    verify names the parent at the edited position and nothing in the branch."""
    position = _position_of_text(store, store.parent, "msg 1")
    assert position < store.fork_position
    _edit_text(store, store.parent, position, "EVIL")
    assert _breaks(store) == [(store.parent, position, HASH_MISMATCH)]


def test_verifying_only_the_branch_covers_the_parent_prefix(store: Store) -> None:
    position = _position_of_text(store, store.parent, "msg 1")
    _edit_text(store, store.parent, position, "EVIL")
    with closing(store.ledger()) as ledger:
        assert "EVIL" in [m["content"] for m in ledger.history(store.branch)]
        report = ledger.verify(store.branch)
    assert not report.ok


def test_forged_fork_event_breaks_parent_and_branch(store: Store) -> None:
    """A self-consistent forgery of the fork event itself: the parent's next event and the
    branch's first event both chained to the old hash, so both are named."""
    _forge(store, store.parent, store.fork_position, {"name": "forged name"})
    assert _breaks(store) == [
        (store.parent, store.fork_position + 1, PREV_MISMATCH),
        (store.branch, 1, PREV_MISMATCH),
    ]
    # Verifying the branch walks its ancestors too, so the parent's break is named as well.
    assert _breaks(store, store.branch) == [
        (store.branch, 1, PREV_MISMATCH),
        (store.parent, store.fork_position + 1, PREV_MISMATCH),
    ]


def test_deleted_fork_event_breaks_parent_and_branch(store: Store) -> None:
    store.log.delete(store.parent, store.fork_position)
    assert _breaks(store) == [
        (
            store.parent,
            store.fork_position,
            f"event missing (next stored position is {store.fork_position + 1})",
        ),
        (store.branch, 1, PREV_MISMATCH),
    ]


def test_branch_first_event_repointed_to_another_parent_position(store: Store) -> None:
    """Re-parenting the branch (its first event's fork position edited) is an edit too."""
    document = orjson.loads(store.log.state(store.branch, 1))
    document["parent"]["position"] = store.fork_position - 1
    store.log.write_state(store.branch, 1, orjson.dumps(document))
    assert _breaks(store) == [(store.branch, 1, HASH_MISMATCH)]


# -- what the hash does not cover ----------------------------------------------------------
def test_edited_topic_is_detected(store: Store) -> None:
    position = _position_of_text(store, store.parent, "msg 2")
    store.log.write_topic(store.parent, position, "chatledger:SnapshotTaken")
    assert [(cid, p) for cid, p, _ in _breaks(store)] == [(store.parent, position)]


# -- the CLI -------------------------------------------------------------------------------
def _normalised(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stdout + result.stderr).split())


def test_cli_verify_ok_then_broken(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = _invoke_cli(monkeypatch, "verify", "--workspace", str(store.workspace))
    assert code == 0, output
    assert "BROKEN" not in output
    assert f"{store.parent_events + store.branch_events} events in 2 conversations" in output

    position = _position_of_text(store, store.parent, "msg 2")
    _edit_text(store, store.parent, position, "tampered")

    # The installed console script, in a real process: exit code 1 and the position named.
    broken = _run_cli("verify", "--workspace", str(store.workspace))
    output = _normalised(broken)
    assert broken.returncode == 1, output
    assert f"BROKEN conversation {store.parent} position {position}: {HASH_MISMATCH}" in output
    assert str(store.branch) not in output
    assert "Traceback" not in output

    # Only the branch: its own chain is intact, but its view includes the broken parent prefix.
    code, output = _invoke_cli(monkeypatch, "verify", "-w", str(store.workspace), str(store.branch))
    assert code == 1, output
    assert f"BROKEN conversation {store.parent} position {position}" in output
    # Only the parent: broken at the same position.
    code, output = _invoke_cli(monkeypatch, "verify", "-w", str(store.workspace), str(store.parent))
    assert code == 1, output
    assert f"BROKEN conversation {store.parent} position {position}:" in output
    assert "1 conversations checked" in output


def test_cli_verify_names_the_deleted_position(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.log.delete(store.parent, 4)
    code, output = _invoke_cli(monkeypatch, "verify", "-w", str(store.workspace))
    assert code == 1, output
    assert f"BROKEN conversation {store.parent} position 4: event missing" in output


def test_cli_anchor_round_trip(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    anchor = store.workspace.parent / "anchor.json"
    code, output = _invoke_cli(
        monkeypatch, "verify", "-w", str(store.workspace), "--export-anchor", str(anchor)
    )
    assert code == 0, output
    assert "Anchor of 2 heads written to" in output
    heads = orjson.loads(anchor.read_bytes())["conversations"]
    assert heads[str(store.parent)]["position"] == store.parent_events

    code, output = _invoke_cli(
        monkeypatch, "verify", "-w", str(store.workspace), "--anchor", str(anchor)
    )
    assert code == 0, output
    assert "BROKEN" not in output

    store.log.delete(store.parent, store.parent_events)
    # Without the anchor the truncation passes; with it, exit 1 naming the position.
    assert _invoke_cli(monkeypatch, "verify", "-w", str(store.workspace))[0] == 0
    broken = _run_cli("verify", "--workspace", str(store.workspace), "--anchor", str(anchor))
    output = _normalised(broken)
    assert broken.returncode == 1, output
    position = store.parent_events
    assert (
        f"BROKEN conversation {store.parent} position {position}: "
        f"truncated: anchored head {position} missing"
    ) in output
    assert str(store.branch) not in output
    assert "Traceback" not in output

    # A broken store is never anchored: exit 1 and no file written.
    fresh = store.workspace.parent / "fresh.json"
    code, output = _invoke_cli(
        monkeypatch,
        "verify",
        "-w",
        str(store.workspace),
        "--anchor",
        str(anchor),
        "--export-anchor",
        str(fresh),
    )
    assert code == 1, output
    assert "anchor not exported" in output
    assert not fresh.exists()


def test_cli_forged_newest_event_against_anchor(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    anchor = store.workspace.parent / "anchor.json"
    assert (
        _run_cli("verify", "-w", str(store.workspace), "--export-anchor", str(anchor)).returncode
        == 0
    )
    _forge(store, store.branch, store.branch_events, {"metadata": {"forged": True}})
    code, output = _invoke_cli(
        monkeypatch, "verify", "-w", str(store.workspace), "--anchor", str(anchor)
    )
    assert code == 1, output
    assert (
        f"BROKEN conversation {store.branch} position {store.branch_events}: "
        f"event at anchored head {store.branch_events} differs from the anchor"
    ) in output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "Cannot read anchor file", id="missing"),
        pytest.param(b"", "is not valid JSON", id="empty"),
        pytest.param(b'{"format": "chatledger-anchor", "ver', "is not valid JSON", id="cut"),
        pytest.param(b"[1, 2]", "must be a JSON object", id="not-an-object"),
        pytest.param(b'{"format": "something-else"}', "is not a chatledger anchor", id="foreign"),
        pytest.param(
            b'{"format": "chatledger-anchor", "version": 1, "taken_at": "2024-01-01T00:00:00Z",'
            b' "conversations": {"not-a-uuid": {"position": 1, "hash": "00"}}}',
            "is not a conversation id",
            id="bad-id",
        ),
    ],
)
def test_cli_unusable_anchor_exits_2(
    store: Store, monkeypatch: pytest.MonkeyPatch, content: bytes | None, message: str
) -> None:
    anchor = store.workspace.parent / "anchor.json"
    if content is not None:
        anchor.write_bytes(content)
    code, output = _invoke_cli(
        monkeypatch, "verify", "-w", str(store.workspace), "--anchor", str(anchor)
    )
    assert code == 2, output
    assert "error:" in output and message in output, output
    assert "BROKEN" not in output
