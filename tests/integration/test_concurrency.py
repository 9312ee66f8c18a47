"""Several processes appending at once, each through its own Ledger (DESIGN §6: two writers
never lose or duplicate an event; a conflicting command is retried on fresh state or fails
with a typed conflict error).

Workers are real processes (multiprocessing, "spawn"), never threads: one Ledger shared by
threads is not supported. Each worker reports what it got back and every exception it saw,
by type; the parent then checks the log, the transcripts and the projections.

Stores are described by a `StoreSpec` so the same workers can run against PostgreSQL once a
DSN can select it (add a param to STORES with the `postgres` marker)."""

from __future__ import annotations

import multiprocessing
import queue
import sqlite3
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import RecordConflictError

from chatledger import ConcurrencyConflict
from chatledger.ledger import Ledger
from domain.events import CheckpointCreated, MessageAppended

SPAWN = multiprocessing.get_context("spawn")
WORKERS = 4
APPENDS = 40
#: Seconds a whole worker run may take before the test gives up on it.
RUN_TIMEOUT = 60.0


# -- where a process opens its ledger ---------------------------------------------------------
@dataclass(frozen=True)
class StoreSpec:
    """Everything a fresh process needs to open the same store (picklable, so it crosses a
    spawn). SQLite: the workspace folder. PostgreSQL will add `dsn`."""

    workspace: str
    dsn: str | None = None

    def open(self) -> Ledger:
        if self.dsn is not None:  # pragma: no cover - PostgreSQL is not wired in yet
            raise NotImplementedError("Ledger cannot open a PostgreSQL DSN yet.")
        return Ledger(Path(self.workspace))

    def sqlite_path(self) -> Path | None:
        return None if self.dsn is not None else Path(self.workspace) / "chatledger.db"


STORES = [pytest.param("sqlite", id="sqlite")]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    return StoreSpec(workspace=str(tmp_path / "workspace"))


# -- the worker side ------------------------------------------------------------------------
@dataclass
class WorkerReport:
    worker: int
    conversation_id: str | None = None
    #: (message id, position) of every append that returned, in call order.
    appended: list[tuple[str, int]] = field(default_factory=list)
    #: (type with its module, message, exception chain types, last traceback lines).
    errors: list[tuple[str, str, tuple[str, ...], str]] = field(default_factory=list)
    #: ConcurrencyConflict raised to the caller (the built-in retries gave up).
    conflicts: int = 0
    #: The sequence numbers of the appends that raised anything.
    failed: list[int] = field(default_factory=list)
    #: Conflicting saves that Ledger._run retried internally (observed, not an error).
    retries: int = 0
    seconds: float = 0.0


def _type_name(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__qualname__}"


def _describe(error: BaseException) -> tuple[str, str, tuple[str, ...], str]:
    chain: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(chain) < 10:
        chain.append(f"{_type_name(seen)}: {seen}")
        seen = seen.__cause__ or seen.__context__
    tail = "".join(traceback.format_exception(error)[-6:])
    return _type_name(error), str(error), tuple(chain), tail


def count_retries(ledger: Ledger, report: WorkerReport) -> None:
    """Counts the conflicting saves Ledger._run retries: wraps this instance's store method
    (instrumentation only, nothing is changed)."""
    save = ledger.store.save_conversations

    def counting(*conversations: Any) -> Any:
        try:
            return save(*conversations)
        except RecordConflictError:
            report.retries += 1
            raise

    ledger.store.save_conversations = counting  # type: ignore[method-assign]


def append_worker(
    spec: StoreSpec,
    worker: int,
    conversation_id: str | None,
    appends: int,
    barrier: Any,
    results: Any,
    open_after_barrier: bool = False,
) -> None:
    """Opens its own Ledger, waits for the others (or waits first, then opens), then appends
    `appends` messages to `conversation_id` (or to a conversation it starts) and reports."""
    report = WorkerReport(worker=worker)
    ledger: Ledger | None = None
    try:
        if open_after_barrier:
            barrier.wait(RUN_TIMEOUT)
        ledger = spec.open()
        count_retries(ledger, report)
        if not open_after_barrier:
            barrier.wait(RUN_TIMEOUT)
        started = time.perf_counter()
        if conversation_id is None:
            conversation_id = str(ledger.start_conversation(title=f"worker {worker}"))
        report.conversation_id = conversation_id
        for seq in range(appends):
            try:
                appended = ledger.append_message(
                    conversation_id,
                    "user" if seq % 2 == 0 else "assistant",
                    f"tokenw{worker} message {seq} from worker {worker}",
                    metadata={"worker": worker, "seq": seq},
                )
            except ConcurrencyConflict as error:
                report.conflicts += 1
                report.failed.append(seq)
                report.errors.append(_describe(error))
            except Exception as error:
                report.failed.append(seq)
                report.errors.append(_describe(error))
            else:
                report.appended.append((appended.message_id, appended.position))
        report.seconds = time.perf_counter() - started
    except BaseException as error:
        report.errors.append(_describe(error))
    finally:
        if ledger is not None:
            try:
                ledger.close()
            except BaseException as error:
                report.errors.append(_describe(error))
        results.put(report)


def run_workers(
    spec: StoreSpec,
    conversations: Sequence[str | None],
    appends: int,
    *,
    open_after_barrier: bool = False,
) -> list[WorkerReport]:
    """One process per entry of `conversations` (None: the worker starts its own), all
    appending at once; returns their reports, by worker."""
    barrier = SPAWN.Barrier(len(conversations))
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(
            target=append_worker,
            args=(spec, worker, conversation_id, appends, barrier, results, open_after_barrier),
            daemon=True,
        )
        for worker, conversation_id in enumerate(conversations)
    ]
    for process in processes:
        process.start()
    reports: list[WorkerReport] = []
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        for _ in processes:
            try:
                reports.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                codes = [p.exitcode for p in processes]
                pytest.fail(f"Only {len(reports)} workers reported in time (exit codes {codes}).")
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    assert [p.exitcode for p in processes] == [0] * len(processes)
    return sorted(reports, key=lambda r: r.worker)


# -- the parent's checks ----------------------------------------------------------------------
def assert_no_errors(reports: Sequence[WorkerReport], max_conflicts: int = 0) -> None:
    """No raw `database is locked` reached a worker, nothing but ConcurrencyConflict was
    raised, and at most `max_conflicts` of those (the built-in retries absorb most)."""
    errors = [(r.worker, *e) for r in reports for e in r.errors]
    locked = [e for e in errors if any("database is locked" in link for link in e[3])]
    assert not locked, f"'database is locked' reached workers: {locked}"
    raw = [e for e in errors if any(link.startswith("sqlite3.") for link in e[3])]
    assert not raw, f"raw sqlite3 errors reached workers: {raw}"
    unexpected = [e for e in errors if e[1] != _type_name(ConcurrencyConflict("x"))]
    assert not unexpected, "workers saw unexpected exceptions:\n" + "\n".join(
        f"worker {w}: {kind}: {message}\n{tail}" for w, kind, message, _, tail in unexpected
    )
    conflicts = sum(r.conflicts for r in reports)
    assert conflicts <= max_conflicts, (
        f"{conflicts} ConcurrencyConflict surfaced: {summary(reports)}"
    )


def assert_history_exact(
    ledger: Ledger, conversation_id: str, appended: list[tuple[str, int]]
) -> list[dict[str, Any]]:
    """Every append that returned is in the history exactly once, at the position it was
    given; positions strictly increase; nothing else is there."""
    history = ledger.history(conversation_id)
    ids = [row["id"] for row in history]
    duplicates = [mid for mid, n in Counter(ids).items() if n > 1]
    assert not duplicates, f"duplicated in history: {duplicates}"
    positions = [row["position"] for row in history]
    assert all(a < b for a, b in pairwise(positions)), positions
    assert {row["conversation_id"] for row in history} <= {str(conversation_id)}
    returned = dict(appended)
    assert len(returned) == len(appended), "an id was returned twice"
    missing = set(returned) - set(ids)
    assert not missing, f"{len(missing)} returned appends are not in history: {sorted(missing)}"
    extra = set(ids) - set(returned)
    assert not extra, f"history holds messages no append returned: {sorted(extra)}"
    at = {row["id"]: row["position"] for row in history}
    moved = {mid: (pos, at[mid]) for mid, pos in returned.items() if at[mid] != pos}
    assert not moved, f"returned position != history position: {moved}"
    return history


def assert_log_consistent(ledger: Ledger, spec: StoreSpec) -> None:
    """The hash chains verify, every message event is followed by its auto checkpoint (the
    same transaction), the projections equal a rebuild and SQLite finds no corruption."""
    report = ledger.verify()
    assert report.ok, [str(b) for b in report.breaks]
    for conversation in ledger.list_conversations(limit=1000):
        stored = ledger.store.recorder.select_events(ledger.conversation(conversation["id"]).id)
        topics = [event.topic for event in stored]
        assert [event.originator_version for event in stored] == list(range(1, len(stored) + 1))
        for index, topic in enumerate(topics):
            if topic == MessageAppended.TOPIC:
                following = topics[index + 1] if index + 1 < len(topics) else None
                assert following == CheckpointCreated.TOPIC, (conversation["id"], index + 1)
    assert_projections_rebuild_equal(ledger)
    path = spec.sqlite_path()
    if path is not None:
        with closing(sqlite3.connect(path)) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


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


def summary(reports: Sequence[WorkerReport]) -> str:
    totals = (
        f"{sum(len(r.appended) for r in reports)} appended, "
        f"{sum(r.retries for r in reports)} saves retried, "
        f"{sum(r.conflicts for r in reports)} ConcurrencyConflict"
    )
    return (
        totals
        + " ("
        + ", ".join(
            f"w{r.worker}: {len(r.appended)} ok, {r.retries} retried, {r.conflicts} conflicts, "
            f"{r.seconds:.2f}s"
            for r in reports
        )
        + ")"
    )


# -- the tests --------------------------------------------------------------------------------
def test_processes_appending_to_the_same_conversation(store: StoreSpec) -> None:
    ledger = store.open()
    try:
        conversation_id = str(ledger.start_conversation(title="shared"))
    finally:
        ledger.close()

    reports = run_workers(store, [conversation_id] * WORKERS, APPENDS)
    print(summary(reports))

    # Five attempts without backoff sometimes lose five races in a row on 2 cores; a
    # conflict surfaced that way must have written nothing (checked below), and stay rare.
    assert_no_errors(reports)
    ledger = store.open()
    try:
        appended = [item for r in reports for item in r.appended]
        assert len(appended) == WORKERS * APPENDS - sum(len(r.failed) for r in reports)
        history = assert_history_exact(ledger, conversation_id, appended)
        # Each worker's own appends come back in the order it made them.
        for report in reports:
            positions = [position for _, position in report.appended]
            assert positions == sorted(set(positions))
        seqs = Counter((row["metadata"]["worker"], row["metadata"]["seq"]) for row in history)
        assert seqs == Counter(
            (r.worker, s) for r in reports for s in range(APPENDS) if s not in r.failed
        )
        [listed] = ledger.list_conversations()
        assert listed["message_count"] == len(appended)
        assert_log_consistent(ledger, store)
    finally:
        ledger.close()


def test_processes_appending_to_their_own_conversations(store: StoreSpec) -> None:
    reports = run_workers(store, [None] * WORKERS, APPENDS)
    print(summary(reports))

    assert_no_errors(reports)
    assert all(r.retries == 0 for r in reports), "distinct conversations should never conflict"
    ledger = store.open()
    try:
        ids = [r.conversation_id for r in reports]
        assert None not in ids and len(set(ids)) == WORKERS
        for report in reports:
            assert report.conversation_id is not None
            assert len(report.appended) == APPENDS
            history = assert_history_exact(ledger, report.conversation_id, report.appended)
            assert {row["metadata"]["worker"] for row in history} == {report.worker}
            assert [row["metadata"]["seq"] for row in history] == list(range(APPENDS))
            # A conversation's own message is found by search, and only there.
            found = ledger.list_conversations(search_term=f"tokenw{report.worker}")
            assert [c["id"] for c in found] == [report.conversation_id]
        listed = {c["id"]: c["message_count"] for c in ledger.list_conversations()}
        assert listed == dict.fromkeys(ids, APPENDS)
        assert_log_consistent(ledger, store)
    finally:
        ledger.close()


WAL_SWITCH_BUG = (
    "the bug once found here: Ledger() on a new workspace runs PRAGMA journal_mode=WAL "
    "(infrastructure/sqlite_store.py open_projection_connection), which fails at once with a "
    "raw sqlite3.OperationalError 'database is locked', ignoring the 30 s timeout, while "
    "another process holds a write lock on the not-yet-WAL file (e.g. its own first open)"
)


def _is_wal_switch_lock(error: tuple[str, str, tuple[str, ...], str]) -> bool:
    kind, message, _, tail = error
    return (
        kind == "sqlite3.OperationalError"
        and message == "database is locked"
        and "journal_mode=WAL" in tail
    )


def test_processes_opening_a_fresh_workspace_at_once(store: StoreSpec) -> None:
    """The first open creates the file, switches it to WAL and creates the tables: several
    processes doing that at once (released together by the barrier) must not trip over each
    other. One known bug loses this race now and then (see the strict repro below): when it
    is the only thing that went wrong, everything else is still checked and the test xfails."""
    reports = run_workers(store, [None] * WORKERS, 5, open_after_barrier=True)
    print(summary(reports))

    hit_wal_bug = [r.worker for r in reports if any(map(_is_wal_switch_lock, r.errors))]
    for report in reports:
        if report.worker in hit_wal_bug:
            assert all(map(_is_wal_switch_lock, report.errors)) and not report.appended
            report.errors.clear()
    assert_no_errors(reports)
    ledger = store.open()
    try:
        for report in reports:
            if report.worker not in hit_wal_bug:
                assert report.conversation_id is not None
                assert_history_exact(ledger, report.conversation_id, report.appended)
        assert_log_consistent(ledger, store)
    finally:
        ledger.close()
    assert not hit_wal_bug, f"workers {hit_wal_bug} hit {WAL_SWITCH_BUG}"


#: Holds a write lock on a new database file (rollback-journal mode, as every new SQLite
#: file starts) for a moment, like a process in the middle of its first write to it.
HOLD_WRITE_LOCK = r"""
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA page_size=16384")
connection.execute("BEGIN IMMEDIATE")
connection.execute("CREATE TABLE IF NOT EXISTS chatledger_meta (key TEXT PRIMARY KEY, value TEXT)")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("COMMIT")
"""


def test_opening_a_new_workspace_waits_for_another_process_first_write(
    store: StoreSpec,
) -> None:
    path = store.sqlite_path()
    assert path is not None
    path.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE_LOCK, str(path), "1.0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        started = time.monotonic()
        # Every other write waits up to 30 s for the lock; today this raises within 1 ms.
        ledger = store.open()
        ledger.close()
        assert time.monotonic() - started < 25
    finally:
        holder.wait(timeout=30)
    assert holder.returncode == 0


def read_when_told(spec: StoreSpec, conversation_id: str, go: Any, results: Any) -> None:
    """A long-lived reader process: opens its Ledger, then on each `go` reads the
    conversation's history and the conversation list and reports what it saw."""
    ledger = spec.open()
    try:
        results.put("ready")
        while go.get(timeout=RUN_TIMEOUT):
            try:
                seen: Any = (
                    len(ledger.history(conversation_id)),
                    len(ledger.list_conversations()),
                )
            except Exception as error:
                seen = _type_name(error)
            results.put(seen)
    finally:
        ledger.close()


def test_a_rebuild_in_one_process_does_not_hide_conversations_from_others(
    store: StoreSpec,
) -> None:
    ledger = store.open()
    try:
        conversation_id = str(ledger.start_conversation(title="visible"))
        for seq in range(3):
            ledger.append_message(conversation_id, "user", f"message {seq}")
        go, results = SPAWN.Queue(), SPAWN.Queue()
        reader = SPAWN.Process(
            target=read_when_told, args=(store, conversation_id, go, results), daemon=True
        )
        reader.start()
        try:
            assert results.get(timeout=RUN_TIMEOUT) == "ready"
            go.put(True)
            before = results.get(timeout=RUN_TIMEOUT)
            # The other process reads in the middle of this process's rebuild: the tables
            # are dropped and being refilled, in a transaction not yet committed.
            seen_during: list[Any] = []
            apply_next_batch = ledger.projections._apply_next_batch

            def read_elsewhere_then_apply(cursor: Any) -> int:
                if not seen_during:
                    go.put(True)
                    seen_during.append(results.get(timeout=RUN_TIMEOUT))
                return apply_next_batch(cursor)

            ledger.projections._apply_next_batch = read_elsewhere_then_apply  # type: ignore[method-assign]
            ledger.rebuild_projections()
            go.put(True)
            after = results.get(timeout=RUN_TIMEOUT)
            go.put(False)
        finally:
            reader.join(timeout=10)
            if reader.is_alive():
                reader.kill()
    finally:
        ledger.close()
    assert before == after == (3, 1)
    assert seen_during == [(3, 1)]
