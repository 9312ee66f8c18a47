"""Per-turn cost of context assembly and token counting throughput (docs/architecture.md §9,
issue 3).

Usage:
    python scripts/bench_context.py                      # 1k, 10k and 100k of history (~2 min;
                                                         # building 100k takes ~100 s of it)
    python scripts/bench_context.py --quick              # 1k and 3k (under 30 s)
    python scripts/bench_context.py --turn-sizes 1000,10000
    python scripts/bench_context.py --profile            # + cProfile of the turns at 10k
    python scripts/bench.py --context                    # after the append bench, same run

Per history size, a fresh workspace gets one conversation: a system prompt, then N
alternating user/assistant messages of ~250 words (the texts of scripts/bench.py, a pool
of HISTORY_POOL cycled) appended with Ledger.append_message, checkpoints off and one session
for the whole history (the worst case for a session), with a realistic window
(context_window=128000). Then TURNS rounds, each one turn per history size (rotating who
goes first, so that load on a shared machine hits every size alike), of what
ConversationManager.process_message does besides calling the model: prepare_turn (user
message, trims, ModelCalled, one transaction), request.for_client() where ModelRequest has
it, then the answer's write: Ledger.record_reply where the Ledger has it (the
provider-protocol manager), else append_message(cid, "assistant", text); the caption says
which. Next to each turn (before or after it, alternating) the durable append floor is timed
twice over: a raw SQLite INSERT+COMMIT at WAL/FULL of the message's JSON plus one tiktoken
count, for each of the turn's two writes. Reported apart: the first turn after the build
(it trims the whole backlog out of the session), the garbage collector's share, the event
log bytes a turn writes, the pure steps of a turn timed on the warm session context, and
cold turns (a new Ledger on the same workspace: its first turn rebuilds the session context
from the log, which may be O(session)).

Token counting: infrastructure.token_counting.tokenizer_for(None).count_text against a plain
`len(enc.encode(text, disallowed_special=()))` loop on the same texts, alternating every
COUNT_CHUNK texts (so load drift hits both alike); median of the rounds' totals.
Medians throughout; the process exits 0 whatever the targets say: a report, not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import sqlite3
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bench import (
    ENCODING,
    REPO,
    SEED,
    RawStore,
    Results,
    Row,
    fresh_dir,
    git_commit,
    make_messages,
    payloads,
    ratio,
    render_table,
    role,
    table_rows,
    timed_ms,
)

if TYPE_CHECKING:
    from uuid import UUID

    from chatledger.ledger import Ledger
    from chatledger.model_context import ModelRequest

Item = TypeVar("Item")

CONTEXT_WINDOW = 128_000
#: Distinct history texts, cycled: generating 100k texts would take longer than the turns.
HISTORY_POOL = 2000
#: A conversation is one session however long it gets (the worst case for a session).
ONE_SESSION = 10**9
DEFAULT_TURN_SIZES = "1000,10000,100000"
QUICK_TURN_SIZES = "1000,3000"
P50_TARGET_MS = 3.0
#: Flatness: turn p50 over the p50 at the smallest history, by history size.
FLAT_TARGETS = ((10_000, ("≤", 1.2)), (10**12, ("≤", 1.5)))
PROFILE_LINES = 25
#: Token counting alternates between the two counters every this many texts.
COUNT_CHUNK = 20


@dataclass(frozen=True)
class ContextSettings:
    turns: int
    cold_turns: int
    repetitions: int
    count_texts: int
    count_rounds: int
    base: Path | None
    profile_size: int | None = None

    @classmethod
    def make(cls, quick: bool, turns: int | None, base: Path | None) -> ContextSettings:
        if quick:
            return cls(turns or 50, 2, 9, 200, 3, base)
        return cls(turns or 50, 5, 21, 1000, 5, base)


# -- one turn ------------------------------------------------------------------------------
def open_ledger(workspace: Path) -> Ledger:
    from chatledger.ledger import Ledger
    from domain.checkpoints import CheckpointConfig
    from domain.context_window import WindowConfig

    return Ledger(
        workspace,
        checkpoint_config=CheckpointConfig(enabled=False),
        max_messages_per_session=ONE_SESSION,
        window=WindowConfig(context_window=CONTEXT_WINDOW),
    )


def answer_path() -> str:
    """How the answer is written: Ledger.record_reply where the Ledger has it (the
    provider-protocol manager), else Ledger.append_message(cid, "assistant", text)."""
    from chatledger.ledger import Ledger

    return "record_reply" if hasattr(Ledger, "record_reply") else "append_message"


def turn(ledger: Ledger, cid: UUID, user: str, answer: str) -> ModelRequest:
    """process_message without the model: the user's side, the client's view of the request
    where the request offers one (for_client), the answer. Returns the request."""
    prepared = ledger.prepare_turn(cid, user, provider="offline", model="offline")
    request = prepared.request
    if request is None:
        raise RuntimeError("prepare_turn made no request (a replayed idempotency key?)")
    for_client = getattr(request, "for_client", None)
    if for_client is not None:
        for_client()
    record_reply = getattr(ledger, "record_reply", None)
    if record_reply is None:
        ledger.append_message(cid, "assistant", answer)
    else:
        from chatledger.providers import ModelReply

        record_reply(cid, prepared.call_id, ModelReply(text=answer), latency_ms=0.0)
    return request


@dataclass
class TurnTexts:
    """Distinct user/answer texts for the turns, cycled."""

    texts: list[str]
    bodies: list[str]
    at: int = 0

    @classmethod
    def make(cls, count: int) -> TurnTexts:
        texts = make_messages(2 * count, seed=SEED + 1)
        return cls(texts, payloads(texts))

    def next(self) -> tuple[int, int]:
        user = (2 * self.at) % len(self.texts)
        self.at += 1
        return user, user + 1


class GcClock:
    """Time this process spends in the cyclic garbage collector, and its collections."""

    def __init__(self) -> None:
        self.ns, self.started, self.collections = 0, 0, [0, 0, 0]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter_ns()
        else:
            self.ns += time.perf_counter_ns() - self.started
            self.collections[info["generation"]] += 1

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self)


def measure(action: Callable[[], object]) -> tuple[float, float]:
    """(wall ms, this process's CPU ms) of one call."""
    wall, cpu = time.perf_counter_ns(), time.process_time_ns()
    action()
    return (time.perf_counter_ns() - wall) / 1e6, (time.process_time_ns() - cpu) / 1e6


def p95(samples: Sequence[float]) -> float:
    return statistics.quantiles(samples, n=20)[18] if len(samples) > 1 else max(samples)


# -- the histories, measured in interleaved rounds ----------------------------------------
@dataclass
class History:
    """One conversation of `size` messages in its own workspace, with its own floor."""

    size: int
    workspace: Path
    floor: RawStore
    texts: TurnTexts
    ledger: Ledger | None = None
    cid: UUID | None = None
    results: Results = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    last: ModelRequest | None = None
    gc_ns: int = 0
    gc_full: int = 0

    @property
    def open(self) -> tuple[Ledger, UUID]:
        assert self.ledger is not None and self.cid is not None
        return self.ledger, self.cid

    def turn(self, user: int, answer: int) -> None:
        ledger, cid = self.open
        self.last = turn(ledger, cid, self.texts.texts[user], self.texts.texts[answer])

    def floor_pair(self, user: int, answer: int) -> None:
        self.floor.append(user, self.texts.texts[user], self.texts.bodies[user])
        self.floor.append(answer, self.texts.texts[answer], self.texts.bodies[answer])

    def next_turn(self) -> float:
        """One turn, untimed but for its wall time (ms)."""
        user, answer = self.texts.next()
        return timed_ms(partial(self.turn, user, answer))[1]

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None


def build_history(history: History, pool: Sequence[str]) -> None:
    """The conversation, then its first turn (which trims the whole backlog), both timed."""
    size = history.size
    started = time.perf_counter()
    history.ledger = ledger = open_ledger(history.workspace)
    history.cid = cid = ledger.start_conversation(title="bench", system_prompt=pool[-1])
    step = max(size // 10, 1)
    for index in range(size):
        ledger.append_message(cid, role(index), pool[index % len(pool)])
        if size >= 50_000 and (index + 1) % step == 0:
            elapsed = time.perf_counter() - started
            print(f"  history {index + 1:,}/{size:,}: {elapsed:.0f} s", file=sys.stderr)
    build_s = time.perf_counter() - started
    history.results |= {"build_s": build_s, "build_rate": size / build_s}
    history.results["first_turn_ms"] = history.next_turn()
    print(f"history={size:,}: built in {build_s:.1f} s", file=sys.stderr)


def rotated(items: Sequence[Item], index: int) -> list[Item]:
    """`items`, starting at `index` (modulo their number) and wrapping around."""
    shift = index % len(items)
    return [*items[shift:], *items[:shift]]


def timed_turns(histories: Sequence[History], count: int) -> None:
    """`count` rounds; in each, one turn per history (rotating who goes first), each next to
    a floor pair (before or after it, alternating), so that load on a shared machine hits
    every size alike."""
    with GcClock() as gc_clock:
        for index in range(count):
            for history in rotated(histories, index):
                user, answer = history.texts.next()
                steps = [("turn", history.turn), ("floor", history.floor_pair)]
                gc_ns, gc_full = gc_clock.ns, gc_clock.collections[2]
                for name, action in steps if index % 2 == 0 else steps[::-1]:
                    wall, cpu = measure(partial(action, user, answer))
                    history.samples.setdefault(name, []).append(wall)
                    history.samples.setdefault(f"{name}_cpu", []).append(cpu)
                history.gc_ns += gc_clock.ns - gc_ns
                history.gc_full += gc_clock.collections[2] - gc_full
    for history in histories:
        samples = history.samples
        history.results |= {
            "turn_p50_ms": statistics.median(samples["turn"]),
            "turn_p95_ms": p95(samples["turn"]),
            "turn_cpu_p50_ms": statistics.median(samples["turn_cpu"]),
            "floor2_p50_ms": statistics.median(samples["floor"]),
            "floor2_cpu_ms": statistics.median(samples["floor_cpu"]),
            "gc_ms": history.gc_ns / 1e6 / count,
            "gc_full": history.gc_full,
        }
        if history.last is not None:
            history.results["in_context"] = len(history.last.messages)
            history.results["request_tokens"] = history.last.tokens


EVENT_BYTES_SQL = "SELECT topic, COUNT(*), SUM(length(state)) FROM stored_events GROUP BY topic"
TOPICS = {
    "chatledger:MessageAppended": "message_b",
    "chatledger:ContextTrimmed": "trimmed_b",
    "chatledger:ModelCalled": "called_b",
}


def event_bytes(workspace: Path) -> dict[str, tuple[int, int]]:
    """Per event topic: (events, bytes of their stored state)."""
    from infrastructure.sqlite_store import DB_FILE

    with closing(sqlite3.connect(workspace / DB_FILE)) as connection:
        return {topic: (count, size) for topic, count, size in connection.execute(EVENT_BYTES_SQL)}


def log_growth(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], turns: int
) -> Results:
    """Bytes of stored event state written per turn, in all and by topic (per event)."""
    results: Results = {}
    total = 0
    for topic, (count, size) in after.items():
        events, written = count - before.get(topic, (0, 0))[0], size - before.get(topic, (0, 0))[1]
        total += written
        if topic in TOPICS and events:
            results[TOPICS[topic]] = written / events
    results["log_per_turn_b"] = total / turns
    return results


def step_actions(history: History) -> dict[str, Callable[[], object]]:
    """The pure steps of a turn on the warm session context (read-only calls)."""
    from chatledger.model_context import build_request
    from domain.context_window import select_context

    ledger, cid = history.open
    # The session-context cache: Ledger.contexts since issue 10, Ledger._contexts before.
    contexts = getattr(ledger, "contexts", None) or getattr(ledger, "_contexts", {})
    context = contexts.get(cid)
    if context is None:
        return {}
    items = context.items()
    plan = select_context(items, ledger.window)
    request = build_request(context, plan)
    actions: dict[str, Callable[[], object]] = {
        "copy_ms": context.copy,
        "items_ms": context.items,
        "select_ms": partial(select_context, items, ledger.window),
        "request_ms": partial(build_request, context, plan),
        "hash_ms": lambda: request.hash,
    }
    for_client = getattr(request, "for_client", None)
    if for_client is not None:
        actions["for_client_ms"] = for_client
    return actions


def time_steps(histories: Sequence[History], repetitions: int) -> None:
    actions = [(history, step_actions(history)) for history in histories]
    samples: dict[int, dict[str, list[float]]] = {h.size: {} for h in histories}
    for index in range(repetitions):
        for history, steps in rotated(actions, index):
            for name, action in steps.items():
                samples[history.size].setdefault(name, []).append(timed_ms(action)[1])
    for history in histories:
        history.results |= {name: statistics.median(v) for name, v in samples[history.size].items()}


def _short_paths(text: str) -> str:
    site = sysconfig.get_paths()["purelib"]
    return text.replace(str(REPO) + os.sep, "").replace(site + os.sep, "site-packages/")


def profile_turns(history: History, count: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        history.next_turn()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(PROFILE_LINES)
    stats.sort_stats("tottime").print_stats(15)
    return _short_paths(out.getvalue())


def cold_turns(histories: Sequence[History], count: int) -> None:
    """Rounds of: a new Ledger on each workspace (timed apart), then its first turn."""
    opens: dict[int, list[float]] = {h.size: [] for h in histories}
    turns: dict[int, list[float]] = {h.size: [] for h in histories}
    for index in range(count):
        for history in rotated(histories, index):
            history.ledger, open_ms = timed_ms(partial(open_ledger, history.workspace))
            try:
                turns[history.size].append(history.next_turn())
            finally:
                history.close()
            opens[history.size].append(open_ms)
    for history in histories:
        history.results["cold_open_ms"] = statistics.median(opens[history.size])
        history.results["cold_turn_ms"] = statistics.median(turns[history.size])


def bench_histories(
    sizes: Sequence[int], pool: Sequence[str], settings: ContextSettings
) -> tuple[dict[int, Results], dict[int, str]]:
    """The measures per history size, and the profile's text at the size asked for."""
    profiles: dict[int, str] = {}
    with ExitStack() as stack:
        histories = []
        for size in sizes:
            floor_db = stack.enter_context(fresh_dir(settings.base)) / "raw.db"
            history = History(
                size,
                stack.enter_context(fresh_dir(settings.base)),
                RawStore("floor", floor_db, True),
                TurnTexts.make(settings.turns + 1),
            )
            stack.callback(history.floor.close)
            stack.callback(history.close)
            histories.append(history)
            build_history(history, pool)
        before = [event_bytes(history.workspace) for history in histories]
        timed_turns(histories, settings.turns)
        for history, old in zip(histories, before, strict=True):
            history.results |= log_growth(old, event_bytes(history.workspace), settings.turns)
            bodies = history.texts.bodies
            history.results["payload_per_turn_b"] = statistics.mean(
                len(bodies[i].encode()) + len(bodies[i + 1].encode())
                for i in range(0, len(bodies), 2)
            )
        time_steps(histories, settings.repetitions)
        for history in histories:
            if history.size == settings.profile_size:
                profiles[history.size] = profile_turns(history, settings.turns)
            history.close()
        cold_turns(histories, settings.cold_turns)
    return {history.size: history.results for history in histories}, profiles


def derived(results: dict[int, Results]) -> None:
    sizes = list(results)
    first = results[sizes[0]]
    for size in sizes:
        r = results[size]
        r["turn_vs_floor"] = ratio(r.get("turn_p50_ms"), r.get("floor2_p50_ms"))
        turn_ms, floor_ms = r.get("turn_p50_ms"), r.get("floor2_p50_ms")
        r["overhead_ms"] = turn_ms - floor_ms if turn_ms is not None and floor_ms else None
        r["log_vs_payload"] = ratio(r.get("log_per_turn_b"), r.get("payload_per_turn_b"))
        r["cold_vs_warm"] = ratio(r.get("cold_turn_ms"), r.get("turn_p50_ms"))
        if size != sizes[0]:
            r["flat"] = ratio(r.get("turn_p50_ms"), first.get("turn_p50_ms"))
            r["flat_cpu"] = ratio(r.get("turn_cpu_p50_ms"), first.get("turn_cpu_p50_ms"))


# -- token counting throughput -------------------------------------------------------------
def token_throughput(texts: Sequence[str], rounds: int) -> Results:
    """count_text vs a plain tiktoken loop over the same texts, alternating every chunk."""
    import tiktoken

    from infrastructure.token_counting import tokenizer_for

    counter = tokenizer_for(None)
    encoding = tiktoken.get_encoding(ENCODING)

    def chatledger_pass(chunk: Sequence[str]) -> int:
        total = 0
        for text in chunk:
            total += counter.count_text(text)
        return total

    def plain_pass(chunk: Sequence[str]) -> int:
        total = 0
        for text in chunk:
            total += len(encoding.encode(text, disallowed_special=()))
        return total

    tokens = chatledger_pass(texts)
    if plain_pass(texts) != tokens:
        print("token counts differ between count_text and tiktoken", file=sys.stderr)
    chunks = [texts[i : i + COUNT_CHUNK] for i in range(0, len(texts), COUNT_CHUNK)]
    passes = [("chatledger", chatledger_pass), ("plain", plain_pass)]
    seconds: dict[str, list[float]] = {"chatledger": [], "plain": []}
    for _ in range(rounds):
        spent = dict.fromkeys(seconds, 0.0)
        for index, chunk in enumerate(chunks):
            for name, action in passes if index % 2 == 0 else passes[::-1]:
                spent[name] += timed_ms(partial(action, chunk))[1] / 1000
        for name, total in spent.items():
            seconds[name].append(total)
    results: Results = {"tokens_per_message": tokens / len(texts)}
    for name, samples in seconds.items():
        median = statistics.median(samples)
        results[f"{name}_tps"] = tokens / median
        results[f"{name}_mps"] = len(texts) / median
        results[f"{name}_ms"] = median * 1000 / len(texts)
    results["tps_ratio"] = ratio(results["chatledger_tps"], results["plain_tps"])
    return results


# -- the report ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SizedRow(Row):
    """A row whose target depends on the column's history size: (up to size, target)."""

    targets: tuple[tuple[int, tuple[str, float] | None], ...] = ()
    target_label: str = ""

    def target_for(self, size: int | None) -> tuple[str, float] | None:
        if size is None:
            return None
        return next((target for limit, target in self.targets if size <= limit), None)

    def target_text(self) -> str:
        return self.target_label


CONTEXT_ROWS = (
    Row("build_rate", "history build: append_message rate", "msg/s"),
    Row("build_s", "history build: seconds", "s"),
    Row("first_turn_ms", "first turn after the build (trims the backlog)", "ms"),
    Row("in_context", "messages sent per turn (window 128k)", ""),
    Row("request_tokens", "tokens sent per turn", ""),
    SizedRow(
        "turn_p50_ms",
        "turn p50: prepare_turn (+ for_client) + the answer",
        "ms",
        targets=((10_000, ("≤", P50_TARGET_MS)),),
        target_label=f"≤ {P50_TARGET_MS:g} ms (≤10k)",
    ),
    Row("turn_p95_ms", "turn p95", "ms"),
    SizedRow(
        "flat",
        "  p50 ÷ p50 at the smallest history",
        "x",
        missing="(reference)",
        targets=FLAT_TARGETS,
        target_label="≤ 1.2x (≤10k), ≤ 1.5x (100k)",
    ),
    Row("turn_cpu_p50_ms", "turn CPU p50", "ms"),
    Row("flat_cpu", "  CPU p50 ÷ CPU p50 at the smallest history", "x", missing="(reference)"),
    Row("gc_ms", "  garbage collector per turn (mean; turns and floor)", "ms"),
    Row("gc_full", "  full (generation 2) collections during the turns", ""),
    Row("floor2_p50_ms", "floor x2: (INSERT+COMMIT WAL/FULL + count) twice, p50", "ms"),
    Row("floor2_cpu_ms", "floor x2: CPU p50", "ms"),
    Row("turn_vs_floor", "  turn p50 ÷ floor x2", "x"),
    Row("overhead_ms", "  turn p50 - floor x2 p50 (beyond two durable appends)", "ms"),
    Row("copy_ms", "  step: SessionContext.copy()", "ms"),
    Row("items_ms", "  step: SessionContext.items() (a ContextItem per row)", "ms"),
    Row("select_ms", "  step: select_context()", "ms"),
    Row("request_ms", "  step: build_request()", "ms"),
    Row("hash_ms", "  step: ModelRequest.hash", "ms"),
    Row("for_client_ms", "  step: ModelRequest.for_client()", "ms", missing="n/a (none)"),
    Row("payload_per_turn_b", "JSON payload per turn (user + answer)", "B"),
    Row("log_per_turn_b", "event log written per turn (stored state, all events)", "B"),
    Row("log_vs_payload", "  ÷ JSON payload per turn", "x"),
    Row("message_b", "  MessageAppended event", "B"),
    Row("trimmed_b", "  ContextTrimmed event", "B"),
    Row("called_b", "  ModelCalled event", "B"),
    Row("cold_open_ms", "cold: Ledger() on the workspace", "ms"),
    Row("cold_turn_ms", "cold: first turn of a new Ledger (O(session) allowed)", "ms"),
    Row("cold_vs_warm", "  ÷ warm turn p50", "x"),
)

COUNT_ROWS = (
    Row("tokens_per_message", f"{ENCODING} tokens per message", ""),
    Row("plain_tps", "plain tiktoken loop: tokens/s", "tok/s"),
    Row("chatledger_tps", "tokenizer_for(None).count_text: tokens/s", "tok/s"),
    Row("tps_ratio", "  ÷ plain tiktoken loop", "x", ("≥", 0.9)),
    Row("plain_mps", "plain tiktoken loop: messages/s", "msg/s"),
    Row("chatledger_mps", "count_text: messages/s", "msg/s"),
    Row("plain_ms", "plain tiktoken loop: ms per message", "ms"),
    Row("chatledger_ms", "count_text: ms per message", "ms"),
)


@dataclass
class ContextReport:
    turns: dict[int, Results]
    profiles: dict[int, str]
    counting: Results
    count_texts: int
    load: tuple[float, float]
    seconds: float
    settings: ContextSettings

    def caption(self) -> str:
        return (
            f"commit {git_commit()}; {self.settings.turns} rounds of timed turns, interleaved "
            f"across sizes, after one untimed; answer written with Ledger.{answer_path()}; window "
            f"{CONTEXT_WINDOW:,}; one session; checkpoints off; steps: "
            f"median of {self.settings.repetitions} on the warm context; cold: median of "
            f"{self.settings.cold_turns}. 1-min load average at start/end: "
            f"{self.load[0]:.1f}/{self.load[1]:.1f} on {os.cpu_count()} CPUs; "
            f"{self.seconds:.0f} s in all."
        )

    def print(self) -> None:
        header, rows = table_rows(self.turns, CONTEXT_ROWS, "history")
        title = "context assembly per turn, model call excluded (docs/architecture.md §9, issue 3)"
        render_table(title, header, rows, self.caption())
        header, rows = table_rows({self.count_texts: self.counting}, COUNT_ROWS, "texts")
        render_table(
            "token counting throughput",
            header,
            rows,
            f"same texts, alternating every {COUNT_CHUNK}; median of rounds",
        )
        for size, profile in self.profiles.items():
            print(f"\ncProfile of {self.settings.turns} turns at {size:,} messages of history:")
            print(profile)

    def as_json(self) -> dict[str, Any]:
        return {"turns": self.turns, "counting": self.counting, "seconds": self.seconds}


def run(sizes: Sequence[int], settings: ContextSettings) -> ContextReport:
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    pool = make_messages(min(max(sizes), HISTORY_POOL))
    results, profiles = bench_histories(sizes, pool, settings)
    derived(results)
    counting = token_throughput(pool[: settings.count_texts], settings.count_rounds)
    count_texts = min(len(pool), settings.count_texts)
    load = (load_at_start, os.getloadavg()[0])
    seconds = time.perf_counter() - started
    return ContextReport(results, profiles, counting, count_texts, load, seconds, settings)


# -- main ----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this bench that scripts/bench.py passes on."""
    parser.add_argument(
        "--turn-sizes",
        help=f"comma-separated history sizes (default {DEFAULT_TURN_SIZES}; --quick "
        f"{QUICK_TURN_SIZES}); building a 100000-message history takes ~100 s",
    )
    parser.add_argument("--turns", type=int, help="timed turns per history size (default 50)")
    parser.add_argument(
        "--profile",
        nargs="?",
        type=int,
        const=10_000,
        metavar="SIZE",
        help="also cProfile the turns at this history size (default 10000, or the largest)",
    )


def run_from_args(args: argparse.Namespace) -> ContextReport:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    default = QUICK_TURN_SIZES if args.quick else DEFAULT_TURN_SIZES
    sizes = [int(size) for size in (args.turn_sizes or default).split(",")]
    settings = ContextSettings.make(args.quick, args.turns, args.dir)
    if args.profile is not None:
        profile_size = args.profile if args.profile in sizes else max(sizes)
        settings = replace(settings, profile_size=profile_size)
    report = run(sizes, settings)
    report.print()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"histories of {QUICK_TURN_SIZES}")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--dir", type=Path, help="where the temporary databases go")
    add_arguments(parser)
    args = parser.parse_args(argv)
    report = run_from_args(args)
    if args.out:
        args.out.write_text(json.dumps(report.as_json(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
