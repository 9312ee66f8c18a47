"""Multi-process append load on one store: N processes x M appends through their own Ledger.

Usage:
    python scripts/load_test.py --processes 4 --appends 500 --distinct
    python scripts/load_test.py --processes 4 --appends 500 --same-conversation
    python scripts/load_test.py --workspace /tmp/ws --time-limit 60 --json out.json
    python scripts/load_test.py --database-url postgresql://postgres@127.0.0.1/test \
        --processes 1,2,4 --appends 300

Every worker is a real process (multiprocessing, "spawn") with its own Ledger on the same
store: the workspace's SQLite file, or the PostgreSQL database of --database-url (loopback
only: nothing leaves the machine; a PostgreSQL run uses a fresh schema, dropped afterwards,
unless the URL names one). Appends are durable: each returns after its transaction (events
and projections) committed (SQLite synchronous=FULL; PostgreSQL's default fsync on commit).
Workers wait at a barrier, then append as fast as they can until they reach --appends or the
time limit. --processes takes a list (1,2,4) to measure how throughput scales with writers.

Reported: appends/s over the whole run (first start to last finish), p50/p99/max latency per
append, saves the Ledger retried after an optimistic-concurrency conflict (observed by
wrapping the worker's store method; nothing is changed), errors surfaced to callers by type,
then the checks: every returned append in its conversation's history exactly once at the
position it was given, `verify()`, projections equal to a rebuild, and the database's own
consistency (SQLite: PRAGMA integrity_check; PostgreSQL: notification ids unique, every
stream's positions 1..N without a gap).

Targets (docs/architecture.md §7, §9; issue 5): SQLite sustains >= 500 durable appends/s
across 4 processes with zero errors surfaced; PostgreSQL throughput grows with writer
processes on distinct conversations (printed as a ratio to the first --processes count of the
same run). Exit
status: 0 when every check passes and no error surfaced (the throughput targets are reported,
and enforced only with --require-target), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET_APPENDS_PER_SECOND = 500.0
SPAWN = multiprocessing.get_context("spawn")
_VOCABULARY = (
    "the a and but so if when then that it we you they is are was be have do can should will "
    "not just also really function class method value list string number error message "
    "request response server client database table query index cache file path config "
    "option test case bug fix change commit branch build deploy run start stop load save "
    "read write update check verify user assistant model token context window prompt answer "
    "question plan step first next last before after time day good better fast slow small "
    "large simple new old same different each every some many more think know want need"
)
_WORDS = _VOCABULARY.split()


@dataclass(frozen=True)
class StoreSpec:
    """Where a worker opens its Ledger: a SQLite workspace, or a PostgreSQL URL."""

    workspace: str
    dsn: str | None = None

    def open(self) -> Any:
        from chatledger.ledger import Ledger

        return Ledger(Path(self.workspace), database_url=self.dsn)

    @property
    def kind(self) -> str:
        return "PostgreSQL" if self.dsn else "SQLite"


@dataclass
class WorkerResult:
    worker: int
    conversation_id: str | None = None
    appended: list[tuple[str, int]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    retries: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    stopped_by_deadline: bool = False


def message_text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, words))).capitalize() + "."


def worker_main(
    spec: StoreSpec,
    worker: int,
    conversation_id: str | None,
    appends: int,
    words: int,
    deadline: float,
    barrier: Any,
    results: Any,
) -> None:
    from eventsourcing.persistence import RecordConflictError

    result = WorkerResult(worker=worker)
    rng = random.Random(worker)
    ledger = None
    try:
        ledger = spec.open()
        save = ledger.store.save_conversations

        def counting_save(*conversations: Any) -> Any:
            try:
                return save(*conversations)
            except RecordConflictError:
                result.retries += 1
                raise

        ledger.store.save_conversations = counting_save
        if conversation_id is None:
            conversation_id = str(ledger.start_conversation(title=f"load worker {worker}"))
        result.conversation_id = conversation_id
        texts = [message_text(rng, words) for _ in range(min(appends, 64))]
        ledger.tokens.count_text(texts[0])  # loads the encoding outside the timed region
        barrier.wait(max(1.0, deadline - time.time()))
        result.started = time.time()
        for seq in range(appends):
            if time.time() >= deadline:
                result.stopped_by_deadline = True
                break
            role = "user" if seq % 2 == 0 else "assistant"
            begin = time.perf_counter()
            try:
                appended = ledger.append_message(
                    conversation_id,
                    role,
                    f"[w{worker} #{seq}] {texts[seq % len(texts)]}",
                    metadata={"worker": worker, "seq": seq},
                )
            except Exception as error:
                result.errors.append(
                    (f"{type(error).__module__}.{type(error).__name__}", str(error))
                )
                continue
            finally:
                result.latencies_ms.append((time.perf_counter() - begin) * 1000)
            result.appended.append((appended.message_id, appended.position))
        result.finished = time.time()
    except BaseException as error:
        result.errors.append((type(error).__name__, "".join(traceback.format_exception(error))))
    finally:
        if ledger is not None:
            ledger.close()
        results.put(result)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def run(args: argparse.Namespace, spec: StoreSpec) -> dict[str, Any]:
    ledger = spec.open()
    try:
        shared = str(ledger.start_conversation(title="load: shared")) if args.same else None
    finally:
        ledger.close()
    conversations = [shared] * args.processes
    deadline = time.time() + args.time_limit
    barrier = SPAWN.Barrier(args.processes)
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(
            target=worker_main,
            args=(spec, w, cid, args.appends, args.words, deadline, barrier, results),
            daemon=True,
        )
        for w, cid in enumerate(conversations)
    ]
    for process in processes:
        process.start()
    reports: list[WorkerResult] = []
    try:
        for _ in processes:
            try:
                reports.append(results.get(timeout=max(1.0, deadline - time.time() + 30)))
            except queue.Empty:
                break
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    reports.sort(key=lambda r: r.worker)
    return check(spec, args, reports)


def check(spec: StoreSpec, args: argparse.Namespace, reports: list[WorkerResult]) -> dict[str, Any]:
    appended = sum(len(r.appended) for r in reports)
    starts = [r.started for r in reports if r.started]
    ends = [r.finished for r in reports if r.finished]
    seconds = (max(ends) - min(starts)) if starts and ends else float("nan")
    latencies = [x for r in reports for x in r.latencies_ms]
    errors = Counter(kind for r in reports for kind, _ in r.errors)
    problems: list[str] = []
    if len(reports) != args.processes:
        problems.append(f"only {len(reports)} of {args.processes} workers reported")
    samples: dict[str, str] = {}
    for report in reports:
        for kind, message in report.errors:
            samples.setdefault(kind, message.strip()[-300:])

    timings: dict[str, float] = {}
    ledger = spec.open()
    try:
        by_conversation: dict[str, list[tuple[str, int]]] = {}
        for report in reports:
            if report.conversation_id is not None:
                by_conversation.setdefault(report.conversation_id, []).extend(report.appended)
        begin = time.perf_counter()
        for cid, items in by_conversation.items():
            history = ledger.history(cid)
            at = {row["id"]: row["position"] for row in history}
            positions = [row["position"] for row in history]
            if len(at) != len(history):
                problems.append(f"{cid}: a message is in history twice")
            if not all(a < b for a, b in pairwise(positions)):
                problems.append(f"{cid}: positions do not strictly increase")
            returned = dict(items)
            if len(returned) != len(items):
                problems.append(f"{cid}: an id was returned twice")
            lost = set(returned) - set(at)
            extra = set(at) - set(returned)
            moved = [m for m, p in returned.items() if m in at and at[m] != p]
            if lost or extra or moved:
                problems.append(
                    f"{cid}: {len(lost)} returned appends missing, {len(extra)} unreturned "
                    f"messages, {len(moved)} at another position than returned"
                )
            if not args.same:
                workers = {row["metadata"]["worker"] for row in history}
                if len(workers) > 1:
                    problems.append(f"{cid}: holds messages of workers {sorted(workers)}")
        timings["history check s"] = time.perf_counter() - begin
        begin = time.perf_counter()
        report = ledger.verify()
        timings["verify s"] = time.perf_counter() - begin
        if not report.ok:
            problems.append(f"verify: {[str(b) for b in report.breaks[:3]]}")
        tables = ledger.projections.readable_tables()
        live = ledger.read.table_dump(tables)
        begin = time.perf_counter()
        ledger.rebuild_projections()
        timings["rebuild s"] = time.perf_counter() - begin
        rebuilt = ledger.read.table_dump(tables)
        differing = [t for t in tables if live[t] != rebuilt[t]]
        if differing:
            problems.append(f"projections differ from a rebuild in {differing}")
        events = report.events
    finally:
        ledger.close()
    problems.extend(database_consistency(spec))

    rate = appended / seconds if seconds and seconds > 0 else float("nan")
    return {
        "mode": "same-conversation" if args.same else "distinct",
        "processes": args.processes,
        "appends_requested": args.processes * args.appends,
        "appends_returned": appended,
        "stopped_by_time_limit": any(r.stopped_by_deadline for r in reports),
        "seconds": seconds,
        "appends_per_second": rate,
        "latency_ms": {
            "p50": percentile(latencies, 0.50),
            "p90": percentile(latencies, 0.90),
            "p99": percentile(latencies, 0.99),
            "max": max(latencies, default=float("nan")),
            "mean": statistics.fmean(latencies) if latencies else float("nan"),
        },
        "saves_retried_after_conflict": sum(r.retries for r in reports),
        "errors_surfaced": dict(errors),
        "error_samples": samples,
        "per_worker": [
            {
                "worker": r.worker,
                "appended": len(r.appended),
                "retries": r.retries,
                "errors": len(r.errors),
                "seconds": (r.finished - r.started) if r.started and r.finished else None,
            }
            for r in reports
        ],
        "events_in_log": events,
        "check_timings": timings,
        "problems": problems,
        "target": {
            "appends_per_second": TARGET_APPENDS_PER_SECOND,
            "met": rate >= TARGET_APPENDS_PER_SECOND and not errors,
        },
        "environment": {
            "store": spec.kind,
            "cpus": os.cpu_count(),
            "sqlite": sqlite3.sqlite_version,
            "python": sys.version.split()[0],
            "workspace": str(spec.workspace),
        },
    }


def database_consistency(spec: StoreSpec) -> list[str]:
    """The database's own view of the log: what no chatledger check can see."""
    if spec.dsn is None:
        with closing(sqlite3.connect(Path(spec.workspace) / "chatledger.db")) as raw:
            integrity = raw.execute("PRAGMA integrity_check").fetchall()
        return [] if integrity == [("ok",)] else [f"integrity_check: {integrity[:3]}"]
    ledger = spec.open()
    try:
        log = ledger.db.dialect.events_table
        duplicates = ledger.db.execute(
            f"SELECT count(*) - count(DISTINCT notification_id) FROM {log}"
        ).fetchone()[0]
        gaps = ledger.db.execute(
            f"SELECT count(*) FROM (SELECT originator_id, count(*) AS n, "
            f"max(originator_version) AS top FROM {log} GROUP BY originator_id) s "
            "WHERE n <> top"
        ).fetchone()[0]
    finally:
        ledger.close()
    problems = []
    if duplicates:
        problems.append(f"{duplicates} duplicated notification ids")
    if gaps:
        problems.append(f"{gaps} streams with a gap in their positions")
    return problems


def print_report(result: dict[str, Any]) -> None:
    lat = result["latency_ms"]
    env = result["environment"]
    database = "PostgreSQL" if env["store"] == "PostgreSQL" else f"SQLite {env['sqlite']}"
    print(
        f"chatledger load test: {result['processes']} processes, {result['mode']}, "
        f"{result['appends_requested']} appends requested "
        f"({database}, Python {env['python']}, {env['cpus']} CPUs)"
    )
    print(
        f"  appends returned      {result['appends_returned']} in {result['seconds']:.2f} s"
        + ("  (stopped by --time-limit)" if result["stopped_by_time_limit"] else "")
    )
    print(f"  throughput            {result['appends_per_second']:.0f} appends/s")
    print(
        f"  latency per append    p50 {lat['p50']:.2f} ms   p90 {lat['p90']:.2f} ms   "
        f"p99 {lat['p99']:.2f} ms   max {lat['max']:.2f} ms"
    )
    print(f"  saves retried         {result['saves_retried_after_conflict']} (conflicts absorbed)")
    print(f"  errors surfaced       {result['errors_surfaced'] or 'none'}")
    for kind, message in result["error_samples"].items():
        print(f"    e.g. {kind}: {message}")
    for worker in result["per_worker"]:
        seconds = worker["seconds"]
        print(
            f"    worker {worker['worker']}: {worker['appended']} appended, "
            f"{worker['retries']} retried, {worker['errors']} errors"
            + (f", {seconds:.2f} s" if seconds is not None else "")
        )
    timings = ", ".join(f"{k} {v:.2f}" for k, v in result["check_timings"].items())
    print(f"  checks                {result['events_in_log']} events in the log; {timings}")
    if result["problems"]:
        print("  PROBLEMS:")
        for problem in result["problems"]:
            print(f"    - {problem}")
    else:
        consistency = "integrity_check" if env["store"] == "SQLite" else "ids and positions"
        print(
            "  exactly-once + positions: ok; verify: ok; projections == rebuild: ok; "
            f"{consistency}: ok"
        )
    if env["store"] == "SQLite":
        target = result["target"]
        verdict = "MET" if target["met"] else "MISSED"
        print(
            f"  target                >= {target['appends_per_second']:.0f} durable appends/s "
            f"with zero errors surfaced: {verdict}"
        )


def print_scaling(results: list[dict[str, Any]]) -> bool:
    """Throughput per writer count, as a ratio to the first count of this run; returns
    whether it grew at every step."""
    base = results[0]
    print(f"scaling on {base['environment']['store']} ({base['mode']}):")
    grew = True
    for previous, result in zip([None, *results], results, strict=False):
        ratio = result["appends_per_second"] / base["appends_per_second"]
        if previous is not None and result["appends_per_second"] <= previous["appends_per_second"]:
            grew = False
        print(
            f"  {result['processes']:>2} processes  {result['appends_per_second']:7.0f} appends/s"
            f"  {ratio:5.2f}x of {base['processes']}  p99 {result['latency_ms']['p99']:.1f} ms"
            f"  retried {result['saves_retried_after_conflict']}"
        )
    print(f"  throughput grows with writer processes: {'MET' if grew else 'MISSED'}")
    return grew


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--processes",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[4],
        help="writer processes, or a list such as 1,2,4 (one run each)",
    )
    parser.add_argument("--appends", type=int, default=500, help="appends per process")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--same-conversation", dest="same", action="store_true")
    mode.add_argument("--distinct", dest="same", action="store_false", help="(default)")
    parser.set_defaults(same=False)
    parser.add_argument("--words", type=int, default=100, help="words per message")
    parser.add_argument(
        "--time-limit", type=float, default=120.0, help="seconds before workers stop appending"
    )
    parser.add_argument("--workspace", type=Path, help="default: a fresh temporary folder")
    parser.add_argument(
        "--database-url",
        help="a postgresql:// URL (default: the workspace's SQLite file); a run without "
        "?schema= in it uses a fresh schema, dropped afterwards",
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--require-target", action="store_true", help="exit 1 if missed")
    args = parser.parse_args(argv)
    if not all(1 <= n <= 64 for n in args.processes) or not 1 <= args.appends <= 100_000:
        parser.error("--processes must be 1..64 and --appends 1..100000")
    if not 0 < args.time_limit <= 3600:
        parser.error("--time-limit must be within (0, 3600] seconds")
    return args


@contextmanager
def store_for_run(args: argparse.Namespace, scratch: Path, run_number: int) -> Iterator[StoreSpec]:
    """A fresh store per run: a new workspace, or a new PostgreSQL schema dropped after."""
    workspace = args.workspace or scratch / f"workspace-{run_number}"
    if not args.database_url:
        yield StoreSpec(workspace=str(workspace))
        return
    if "schema=" in args.database_url:
        yield StoreSpec(workspace=str(workspace), dsn=args.database_url)
        return
    import psycopg

    schema = f"chatledger_load_{os.getpid()}_{run_number}"
    separator = "&" if "?" in args.database_url else "?"
    try:
        yield StoreSpec(str(workspace), f"{args.database_url}{separator}schema={schema}")
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="chatledger-load-") as scratch:
        for number, processes in enumerate(args.processes):
            with store_for_run(args, Path(scratch), number) as spec:
                result = run(argparse.Namespace(**{**vars(args), "processes": processes}), spec)
            print_report(result)
            results.append(result)
    grew = print_scaling(results) if len(results) > 1 else True
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    failed = any(result["problems"] or result["errors_surfaced"] for result in results)
    if args.require_target:
        on_sqlite = results[0]["environment"]["store"] == "SQLite"
        failed = failed or not grew or (on_sqlite and not results[-1]["target"]["met"])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
