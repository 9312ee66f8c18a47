"""Stores that several real processes open at once, and what is checked on them once the
processes are done (or killed): shared by the concurrency, crash-safety and chaos tests.

A test asks for the `store` fixture (tests/conftest.py) to run on both stores; the processes
it spawns open the same store through `store.spec`, a `StoreSpec` (picklable, so it crosses a
spawn), and the checks here take that spec too."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
import traceback
from contextlib import closing
from typing import Any

import psycopg

from chatledger import Ledger
from chatledger.replay import recorded_calls
from domain.events import CheckpointCreated, MessageAppended
from tests import postgres
from tests.stores import StoreSpec

SPAWN = multiprocessing.get_context("spawn")
#: Seconds a whole worker run may take before the test gives up on it.
RUN_TIMEOUT = 60.0
#: How long the server may take to notice a killed process's connections are gone.
SESSIONS_END_TIMEOUT = 30.0


def postgres_admin() -> psycopg.Connection[Any]:
    """A connection beside the store's own, to look at the server's view of the store."""
    assert postgres.DSN is not None
    return psycopg.connect(postgres.DSN, autocommit=True)


def wait_for_sessions_to_end(session_name: str) -> None:
    """The server ends a killed client's sessions (rolling back what they had open, releasing
    their locks) once it notices the closed socket, a moment after the kill. (A process names
    its sessions by setting PGAPPNAME before it connects.)"""
    deadline = time.monotonic() + SESSIONS_END_TIMEOUT
    with postgres_admin() as admin:
        while sessions := admin.execute(
            "SELECT pid, state, wait_event_type, left(query, 60) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (session_name,),
        ).fetchall():
            assert time.monotonic() < deadline, f"a killed process's sessions live on: {sessions}"
            time.sleep(0.01)


def type_name(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__qualname__}"


def describe_error(error: BaseException) -> tuple[str, str, tuple[str, ...], str]:
    """An exception as a picklable report: its type, message, chain and traceback's tail."""
    chain: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(chain) < 10:
        chain.append(f"{type_name(seen)}: {seen}")
        seen = seen.__cause__ or seen.__context__
    tail = "".join(traceback.format_exception(error)[-6:])
    return type_name(error), str(error), tuple(chain), tail


def assert_log_consistent(ledger: Ledger, spec: StoreSpec) -> None:
    """The hash chains verify, every dialog message's event is followed by its auto
    checkpoint (the same transaction), the projections equal a rebuild, and the database
    itself is sound: SQLite finds no corruption, PostgreSQL's log is well formed and nobody
    holds its locks."""
    report = ledger.verify()
    assert report.ok, [str(b) for b in report.breaks]
    for conversation in ledger.list_conversations(limit=1000):
        events = list(ledger.store.events.get(ledger.conversation(conversation["id"]).id))
        assert [event.originator_version for event in events] == list(range(1, len(events) + 1))
        for event, following in zip(events, [*events[1:], None], strict=True):
            if isinstance(event, MessageAppended) and event.eligible:
                assert isinstance(following, CheckpointCreated), (
                    conversation["id"],
                    event.originator_version,
                )
    assert_projections_rebuild_equal(ledger)
    path = spec.sqlite_path
    if path is not None:
        with closing(sqlite3.connect(path)) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    else:
        assert_postgres_log_sound(spec)
        assert_postgres_unlocked(spec)


def assert_postgres_log_sound(spec: StoreSpec) -> None:
    """What PRAGMA integrity_check stands for on PostgreSQL, read straight from the tables:
    every event has its own notification id, every conversation's positions run 1..N with
    no gap or repeat, and the projections have seen the whole log."""
    log = f'"{spec.schema}".chatledger_events'
    with postgres_admin() as admin:
        events, numbered, distinct = admin.execute(
            f"SELECT count(*), count(notification_id), count(DISTINCT notification_id) FROM {log}"
        ).fetchone() or (0, 0, 0)
        assert events == numbered == distinct, (events, numbered, distinct)
        gapped = admin.execute(
            "SELECT originator_id, count(*), count(DISTINCT originator_version), "
            f"min(originator_version), max(originator_version) FROM {log} "
            "GROUP BY originator_id HAVING min(originator_version) <> 1 "
            "OR max(originator_version) <> count(*) "
            "OR count(DISTINCT originator_version) <> count(*)"
        ).fetchall()
        assert not gapped, f"streams whose positions are not 1..N: {gapped}"
        projected, logged = admin.execute(
            f'SELECT (SELECT min(position) FROM "{spec.schema}".projection_tracking), '
            f"(SELECT max(notification_id) FROM {log})"
        ).fetchone() or (None, None)
        assert projected == (logged or 0), f"projected up to {projected}, log ends at {logged}"


def assert_postgres_unlocked(spec: StoreSpec) -> None:
    """No session is left holding a lock on the store: on its tables (a transaction left
    open, or aborted and never rolled back), on the advisory lock that serialises creating
    them, or on any of its conversations' writer locks. Idle connections of open Ledgers
    hold none, so any lock here is a leak that would stall the next writer."""
    schema = spec.schema
    with postgres_admin() as admin:
        streams = admin.execute(
            f'SELECT DISTINCT originator_id FROM "{schema}".chatledger_events'
        ).fetchall()
        # Keyed as PostgresDatabase.lock_conversation and setup_lock key them.
        keys = [int.from_bytes(stream.bytes[:8], "big", signed=True) for (stream,) in streams]
        (setup_key,) = admin.execute(
            "SELECT hashtext(%s)::bigint", (f"chatledger:{schema}",)
        ).fetchone() or (0,)
        holders = admin.execute(
            "SELECT a.pid, a.application_name, a.state, l.locktype, c.relname, l.mode "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "LEFT JOIN pg_class c ON c.oid = l.relation "
            "LEFT JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE l.pid <> pg_backend_pid() AND l.granted AND (n.nspname = %s "
            "OR (l.locktype = 'advisory' AND l.objsubid = 1 "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = ANY(%s)))",
            (schema, [setup_key, *keys]),
        ).fetchall()
    assert not holders, f"sessions still hold locks on the store in {schema}: {holders}"


def assert_projections_rebuild_equal(ledger: Ledger) -> None:
    tables = ledger.projections.readable_tables()
    live = ledger.read.table_dump(tables)
    ledger.rebuild_projections()
    rebuilt = ledger.read.table_dump(tables)
    differing = {
        table: (len(live[table]), len(rebuilt[table]))
        for table in tables
        if live[table] != rebuilt[table]
    }
    assert not differing, f"projections differ from a rebuild (rows live, rebuilt): {differing}"


def assert_every_context_reproducible(ledger: Ledger, conversation_id: str) -> None:
    """The model's context is derived state: at every position of the conversation it is
    rebuilt from the log, and at each recorded call it is exactly what that call sent (so
    every turn was decided on the log as it then was)."""
    head = ledger.conversation(conversation_id).version
    for position in range(1, head + 1):
        ledger.context_at(conversation_id, position)
    for call in recorded_calls(ledger, conversation_id):
        replayed = ledger.context_at(call.stream_id, call.position)
        assert tuple(m["id"] for m in replayed["sent"]) == call.message_ids, call.turn
        assert replayed["request_hash"] == call.request_hash, call.turn
