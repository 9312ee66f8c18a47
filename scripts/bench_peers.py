"""chatledger against its peers on the same messages (issue 11): a benchmark anyone can rerun.

Usage:
    python -m pip install -e '.[bench]'
    python scripts/bench_peers.py                        # 1k and 10k messages
    python scripts/bench_peers.py --sizes 1000,10000,100000 --stores raw,agents,chatledger
    python scripts/bench_peers.py --sizes 200            # a smoke run (seconds)

Stores (each in its own phase, never interleaved, each in a fresh temporary folder):
  raw          SQLite WAL, synchronous=FULL, one INSERT + COMMIT of the message's JSON, plus one
               tiktoken count of the text (the floor docs/architecture.md §9 names)
  agents       OpenAI Agents SDK SQLiteSession.add_items (no branches: a fork copies items)
  advanced     Agents SDK AdvancedSQLiteSession (branches by copying a turn's messages)
  langgraph    LangGraph SqliteSaver through graph.update_state (slow: only sizes <= 1000)
  chatledger   ConversationManager.add_message with its defaults (an auto checkpoint per
               message, snapshots, projections, full-text search, hash chain)

Per store and size: durable append p50/p99 (wall clock; and the process's CPU time, which a
busy machine's fsync queue does not inflate) and the p50 of the first and last 1 % of appends
(growth = last/first), load latest (the whole transcript), as-of the middle, fork from the
middle and load the fork (medians of warm repetitions), bytes on disk with the WAL (-shm is
shared memory, not data) against the JSON payload at the end and at its worst while appending
(sampled every 1 %, from the first 1 % on and from the first 10 % on: an empty store's own
tables weigh more than a few messages), and WAL bytes per append (the WAL's frames, 24 bytes +
one page each, counted after every one of APPENDS_FOR_WAL appends that follow a TRUNCATE
checkpoint, checkpoints in between included). Ratios against `agents` are
printed from the same run; the process exits 0: a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from bench import make_messages, role, tokenizer  # noqa: E402

ALL_STORES = ("raw", "agents", "advanced", "langgraph", "chatledger")
LANGGRAPH_MAX = 1000
REPETITIONS = 5
APPENDS_FOR_WAL = 50
SESSION = "bench"


def run(awaitable: Any) -> Any:
    return asyncio.get_event_loop().run_until_complete(awaitable)


def median_ms(action: Callable[[], object], repetitions: int = REPETITIONS) -> float:
    samples = []
    for _ in range(repetitions):
        start = time.perf_counter_ns()
        action()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(samples)


def disk_bytes(folder: Path) -> int:
    return sum(
        f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.name.endswith("-shm")
    )


def truncate_wal(path: Path) -> None:
    with closing(sqlite3.connect(path, timeout=30)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def wal_frames(path: Path) -> tuple[bytes, int, int]:
    """(salt, frames, page size) of the WAL as it stands: the frames from its start that carry
    its header's salt (after a checkpoint SQLite writes the WAL again from its start, with a
    new salt, and leaves older frames behind them)."""
    wal = path.with_name(path.name + "-wal")
    if not wal.exists() or wal.stat().st_size < 32:
        return b"", 0, 0
    with wal.open("rb") as file:
        header = file.read(32)
        page_size, salt = int.from_bytes(header[8:12], "big"), header[16:24]
        frames = 0
        while True:
            file.seek(32 + frames * (24 + page_size))
            frame = file.read(24)
            if len(frame) < 24 or frame[8:16] != salt:
                return salt, frames, page_size
            frames += 1


# -- the stores ----------------------------------------------------------------------------
class Peer:
    name = ""
    #: The SQLite file whose WAL is measured.
    db: Path

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def append(self, index: int, text: str, body: str) -> None:
        raise NotImplementedError

    def mark_middle(self, index: int) -> None:
        """Called (untimed) after the middle message."""

    def load_latest(self) -> int:
        raise NotImplementedError

    def as_of_middle(self) -> int | None:
        return None

    def fork_middle(self) -> object | None:
        return None

    def load_fork(self, fork: object) -> int | None:
        return None

    def close(self) -> None:
        """Nothing by default."""


class Raw(Peer):
    name = "raw"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.db = folder / "raw.db"
        self.connection = sqlite3.connect(self.db, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT)")
        self.count = tokenizer()
        self.middle = 0

    def append(self, index: int, text: str, body: str) -> None:
        self.connection.execute("BEGIN")
        self.connection.execute("INSERT INTO messages (body) VALUES (?)", (body,))
        self.connection.execute("COMMIT")
        self.count(text)

    def mark_middle(self, index: int) -> None:
        self.middle = index + 1

    def _load(self, limit: int) -> int:
        rows = self.connection.execute("SELECT body FROM messages ORDER BY id LIMIT ?", (limit,))
        return len([json.loads(body) for (body,) in rows])

    def load_latest(self) -> int:
        return self._load(-1)

    def as_of_middle(self) -> int:
        return self._load(self.middle)

    def close(self) -> None:
        self.connection.close()


class Agents(Peer):
    name = "agents"

    def __init__(self, folder: Path) -> None:
        from agents.memory import SQLiteSession

        super().__init__(folder)
        self.db = folder / "agents.db"
        self.session: Any = SQLiteSession(SESSION, self.db)
        self.middle = 0
        self.forks = 0

    def append(self, index: int, text: str, body: str) -> None:
        item: Any = {"role": role(index), "content": text}
        run(self.session.add_items([item]))

    def mark_middle(self, index: int) -> None:
        self.middle = index + 1

    def load_latest(self) -> int:
        return len(run(self.session.get_items()))

    def fork_middle(self) -> object:
        """No branches: a fork copies the first half into a new session."""
        from agents.memory import SQLiteSession

        self.forks += 1
        fork = SQLiteSession(f"fork{self.forks}", self.db)
        items = run(self.session.get_items())[: self.middle]
        run(fork.add_items(items))
        return fork

    def load_fork(self, fork: object) -> int:
        return len(run(fork.get_items()))  # type: ignore[attr-defined]

    def close(self) -> None:
        self.session.close()


class Advanced(Agents):
    name = "advanced"

    def __init__(self, folder: Path) -> None:
        from agents.extensions.memory import AdvancedSQLiteSession

        Peer.__init__(self, folder)
        self.db = folder / "advanced.db"
        self.session = AdvancedSQLiteSession(
            session_id=SESSION, db_path=self.db, create_tables=True
        )
        self.middle_turn = 0
        self.forks = 0

    def mark_middle(self, index: int) -> None:
        self.middle_turn = index // 2 + 1  # a turn starts at each user message

    def fork_middle(self) -> object:
        self.forks += 1
        branch = run(self.session.create_branch_from_turn(self.middle_turn, f"fork{self.forks}"))
        run(self.session.switch_to_branch("main"))
        return branch

    def load_fork(self, fork: object) -> int:
        return len(run(self.session.get_items(branch_id=fork)))


class LangGraph(Peer):
    name = "langgraph"

    def __init__(self, folder: Path) -> None:
        from langgraph.checkpoint.sqlite import SqliteSaver
        from langgraph.graph import START, MessagesState, StateGraph

        super().__init__(folder)
        self.db = folder / "langgraph.db"
        self.connection = sqlite3.connect(self.db, check_same_thread=False)
        self.connection.execute("PRAGMA journal_mode=WAL")
        builder = StateGraph(MessagesState)
        builder.add_node("noop", lambda state: {})
        builder.add_edge(START, "noop")
        self.graph: Any = builder.compile(checkpointer=SqliteSaver(self.connection))
        self.config: Any = {"configurable": {"thread_id": SESSION}}
        self.middle: Any = {}

    def append(self, index: int, text: str, body: str) -> None:
        message = {"role": role(index), "content": text}
        self.config = self.graph.update_state(self.config, {"messages": [message]})

    def mark_middle(self, index: int) -> None:
        self.middle = self.config

    def load_latest(self) -> int:
        return len(self.graph.get_state(self.config).values["messages"])

    def as_of_middle(self) -> int:
        return len(self.graph.get_state(self.middle).values["messages"])

    def fork_middle(self) -> object:
        return self.graph.update_state(self.middle, {"messages": []})

    def load_fork(self, fork: object) -> int:
        return len(self.graph.get_state(fork).values["messages"])

    def close(self) -> None:
        self.connection.close()


class Chatledger(Peer):
    name = "chatledger"

    def __init__(self, folder: Path) -> None:
        from chatledger import ConversationManager

        super().__init__(folder)
        self.manager = ConversationManager(workspace_path=folder / "ws")
        self.ledger = self.manager.ledger
        self.cid = self.manager.active_id
        self.db = folder / "ws" / "chatledger.db"
        self.middle_position = 0
        self.checkpoint = ""

    def append(self, index: int, text: str, body: str) -> None:
        self.manager.add_message(role(index), text)

    def mark_middle(self, index: int) -> None:
        from domain.checkpoints import CheckpointType

        self.middle_position = self.ledger.conversation(self.cid).version
        self.checkpoint = self.ledger.create_checkpoint(self.cid, CheckpointType.MANUAL, "mid")

    def load_latest(self) -> int:
        return len(self.ledger.history(self.cid))

    def as_of_middle(self) -> int:
        return len(self.ledger.as_of(self.cid, self.middle_position))

    def fork_middle(self) -> object:
        return self.ledger.branch(self.checkpoint)

    def load_fork(self, fork: object) -> int:
        return len(self.ledger.history(fork))  # type: ignore[arg-type]

    def close(self) -> None:
        self.manager.close()


PEERS: dict[str, type[Peer]] = {p.name: p for p in (Raw, Agents, Advanced, LangGraph, Chatledger)}


# -- one store, one size -------------------------------------------------------------------
@contextmanager
def fresh_folder(base: Path | None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="chatledger-peers-", dir=base) as name:
        yield Path(name)


def measure(name: str, texts: list[str], bodies: list[str], base: Path | None) -> dict[str, Any]:
    size = len(texts) - APPENDS_FOR_WAL
    with fresh_folder(base) as folder:
        peer = PEERS[name](folder)
        try:
            times: list[float] = []
            cpu: list[float] = []
            payload = 0
            worst_disk = worst_disk_10 = 0.0
            sample_every = max(size // 100, 1)
            for index in range(size):
                text, body = texts[index], bodies[index]
                start, start_cpu = time.perf_counter_ns(), time.process_time_ns()
                peer.append(index, text, body)
                times.append((time.perf_counter_ns() - start) / 1e6)
                cpu.append((time.process_time_ns() - start_cpu) / 1e6)
                payload += len(body.encode())
                if index + 1 == size // 2:
                    peer.mark_middle(index)
                if (index + 1) % sample_every == 0 and index + 1 >= sample_every:
                    on_disk = disk_bytes(folder) / payload
                    worst_disk = max(worst_disk, on_disk)
                    if index + 1 >= size // 10:
                        worst_disk_10 = max(worst_disk_10, on_disk)
            disk = disk_bytes(folder)
            window = max(size // 100, 10)
            result: dict[str, Any] = {
                "p50": statistics.median(times),
                "p99": sorted(times)[int(len(times) * 0.99) - 1],
                "cpu_p50": statistics.median(cpu),
                "first": statistics.median(times[:window]),
                "last": statistics.median(times[-window:]),
                "disk_ratio": disk / payload,
                "worst_disk_ratio": worst_disk,
                "worst_disk_ratio_10": worst_disk_10,
                "load_ms": median_ms(peer.load_latest),
                "loaded": peer.load_latest(),
            }
            result["growth"] = result["last"] / result["first"]
            if peer.as_of_middle() is not None:
                result["as_of_ms"] = median_ms(peer.as_of_middle)
            forks: list[object] = []
            if peer.fork_middle() is not None:
                result["fork_ms"] = median_ms(lambda: forks.append(peer.fork_middle()))
                result["load_fork_ms"] = median_ms(lambda: peer.load_fork(forks[-1]))
                result["fork_rows"] = peer.load_fork(forks[-1])
            # WAL bytes per append, at this history size.
            truncate_wal(peer.db)
            salt, frames, page_size = wal_frames(peer.db)
            written = 0
            for index in range(size, size + APPENDS_FOR_WAL):
                peer.append(index, texts[index], bodies[index])
                now_salt, now_frames, page_size = wal_frames(peer.db)
                written += now_frames - (frames if now_salt == salt else 0)
                salt, frames = now_salt, now_frames
            result["wal_kib_per_append"] = written * (24 + page_size) / APPENDS_FOR_WAL / 1024
            result["payload_b"] = payload / size
        finally:
            peer.close()
    return result


# -- report --------------------------------------------------------------------------------
COLUMNS = (
    ("p50", "append p50 ms", "{:.3f}"),
    ("p99", "p99 ms", "{:.2f}"),
    ("cpu_p50", "append CPU p50 ms", "{:.3f}"),
    ("growth", "last/first 1%", "{:.2f}"),
    ("load_ms", "load latest ms", "{:.1f}"),
    ("as_of_ms", "as-of mid ms", "{:.1f}"),
    ("fork_ms", "fork mid ms", "{:.1f}"),
    ("load_fork_ms", "load fork ms", "{:.1f}"),
    ("disk_ratio", "disk/payload end", "{:.2f}"),
    ("worst_disk_ratio", "disk/payload worst from 1%", "{:.2f}"),
    ("worst_disk_ratio_10", "disk/payload worst from 10%", "{:.2f}"),
    ("wal_kib_per_append", "WAL KiB/append", "{:.1f}"),
)


def table(size: int, results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    lines = [
        f"| {size} messages | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for key, label, fmt in COLUMNS:
        cells = [fmt.format(results[n][key]) if key in results[n] else "n/a" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "agents" in results:
        base = results["agents"]["p50"]
        cells = [f"{results[n]['p50'] / base:.2f}x" for n in names]
        lines.append("| append p50 / agents | " + " | ".join(cells) + " |")
    if "raw" in results:
        base = results["raw"]["p50"]
        cells = [f"{results[n]['p50'] / base:.2f}x" for n in names]
        lines.append("| append p50 / raw | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated message counts")
    parser.add_argument("--stores", default=",".join(ALL_STORES), help="comma-separated")
    parser.add_argument("--dir", type=Path, help="where the temporary folders go")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    stores = [s for s in args.stores.split(",") if s]
    unknown = set(stores) - set(PEERS)
    if unknown:
        parser.error(f"unknown stores {sorted(unknown)}; choose from {ALL_STORES}")
    asyncio.set_event_loop(asyncio.new_event_loop())
    load = os.getloadavg()
    print(
        f"# bench_peers {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, load average {load[0]:.2f} at start",
        flush=True,
    )
    everything: dict[int, dict[str, dict[str, Any]]] = {}
    for size in sizes:
        texts = make_messages(size + APPENDS_FOR_WAL)
        bodies = [json.dumps({"role": role(i), "content": t}) for i, t in enumerate(texts)]
        results: dict[str, dict[str, Any]] = {}
        for name in stores:
            if name == "langgraph" and size > LANGGRAPH_MAX:
                continue
            started = time.perf_counter()
            results[name] = measure(name, texts, bodies, args.dir)
            print(
                f"  {size} {name}: {time.perf_counter() - started:.0f} s, "
                f"p50 {results[name]['p50']:.3f} ms",
                file=sys.stderr,
                flush=True,
            )
        everything[size] = results
        print("\n" + table(size, results), flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    if args.out:
        args.out.write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
