"""Chaos: several chat processes work on shared conversations at once (turns with the offline
model, checkpoints, rollbacks, branches) while the test kills them with SIGKILL at random
moments and starts new ones (docs/architecture.md §4, §7).

Each worker tells the parent, through a pipe, what it is about to do and then what came back,
each op named by a tag the write carries into the log (a turn's text, a checkpoint's name, a
branch's title). Afterwards every acknowledged write is in the log exactly once, nothing is
there that nobody tried, the chains verify, the projections equal a rebuild, and every
conversation still takes a turn and rebuilds its model context at every call.

Randomness is seeded: the seed is printed, and CHATLEDGER_CHAOS_SEED=<seed> repeats the same
choices of ops and kill times (the processes' interleaving still varies)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import count
from multiprocessing.connection import Connection, wait
from typing import Any

from chatledger import CheckpointType, ConcurrencyConflict, ConversationManager
from chatledger.ledger import Ledger
from domain.events import (
    BranchForked,
    CheckpointCreated,
    ConversationStarted,
    MessageAppended,
    RolledBack,
)
from domain.messages import TextPart
from tests.integration.processes import (
    RUN_TIMEOUT,
    SPAWN,
    assert_every_context_reproducible,
    assert_log_consistent,
    describe_error,
    type_name,
    wait_for_sessions_to_end,
)
from tests.stores import Store, StoreSpec

SEED = int(os.environ.get("CHATLEDGER_CHAOS_SEED") or 20250214)
WORKERS = 3
CONVERSATIONS = 2
KILLS = 6
#: Ops acknowledged between two kills (counted, not timed, so that a loaded machine still
#: gets work done between kills), then a pause in seconds so the kill lands mid-op.
OPS_BETWEEN_KILLS = (3, 12)
KILL_DELAY = (0.0, 0.05)
#: Each op and its weight.
OPS = {"turn": 6, "checkpoint": 2, "rollback": 1, "branch": 1}
#: How often a worker looks for the conversations (branches) the others made.
LOOK_AROUND = 0.1
#: What a worker may be refused without anything being wrong: the built-in retries gave up.
REFUSALS = (ConcurrencyConflict,)


# -- the worker side ---------------------------------------------------------------------------
def chaos_worker(
    spec: StoreSpec, worker: int, seed: int, conversations: list[str], pipe: Connection
) -> None:
    """Does random ops on the conversations it knows until it is killed. Sends ("ready",),
    then per op ("try", tag, op) before it and ("ok", tag, result), ("refused", tag, type)
    or ("error", tag, description) after it."""
    os.environ["PGAPPNAME"] = session_name(spec, worker)
    rng = random.Random(seed)
    try:
        manager = spec.manager()
    except Exception as error:
        pipe.send(("error", "opening", describe_error(error)))
        raise
    known = list(conversations)
    pipe.send(("ready",))
    for seq in count():
        tag = f"w{worker}s{seq}"
        op = rng.choices(list(OPS), list(OPS.values()))[0]
        pipe.send(("try", tag, op))
        try:
            if rng.random() < LOOK_AROUND:
                known = [c["id"] for c in manager.list_conversations(limit=1000)]
            result = do(manager, op, tag, rng.choice(known), rng)
        except REFUSALS as error:
            pipe.send(("refused", tag, type_name(error)))
        except Exception as error:
            pipe.send(("error", tag, describe_error(error)))
        else:
            pipe.send(("ok", tag, result))
            if op == "branch":
                known.append(result)


def do(
    manager: ConversationManager, op: str, tag: str, conversation_id: str, rng: random.Random
) -> Any:
    ledger = manager.ledger
    if op == "turn":
        return asyncio.run(
            manager.process_message(f"{tag} asks about the weather", conversation_id)
        )
    if op == "checkpoint":
        return ledger.create_checkpoint(conversation_id, name=tag)
    checkpoint = rng.choice(ledger.checkpoints(conversation_id, limit=10))
    if op == "rollback":
        ledger.rollback(checkpoint.checkpoint_id)
        return checkpoint.checkpoint_id
    return str(ledger.branch(checkpoint.checkpoint_id, title=tag))


def session_name(spec: StoreSpec, worker: int) -> str:
    """What the worker's PostgreSQL sessions are called, to tell when they end."""
    return f"chaos-{spec.schema}-{worker}"


# -- the parent side ---------------------------------------------------------------------------
@dataclass
class Ops:
    """What the workers said, by tag."""

    tried: dict[str, str] = field(default_factory=dict)
    acknowledged: dict[str, Any] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def hear(self, worker: int, message: tuple[Any, ...]) -> None:
        kind, tag, *rest = message
        if kind == "try":
            self.tried[tag] = rest[0]
        elif kind == "ok":
            self.acknowledged[tag] = rest[0]
        elif kind == "refused":
            self.refused[rest[0]] += 1
        else:
            error_type, text, _, tail = rest[0]
            self.errors.append(f"worker {worker}, {tag}: {error_type}: {text}\n{tail}")

    def tried_by_hand(self, tag: str, op: str) -> str:
        self.tried[tag] = op
        return tag

    def acknowledged_as(self, op: str) -> dict[str, Any]:
        return {tag: result for tag, result in self.acknowledged.items() if self.tried[tag] == op}


@dataclass
class Worker:
    number: int
    process: Any
    pipe: Connection
    ready: bool = False


class Chaos:
    def __init__(
        self, spec: StoreSpec, rng: random.Random, conversations: list[str], ops: Ops
    ) -> None:
        self.spec, self.rng, self.conversations, self.ops = spec, rng, conversations, ops
        self.workers: list[Worker] = []
        self.started = 0
        self.kills = 0

    def start(self) -> None:
        receiving, sending = SPAWN.Pipe(duplex=False)
        process = SPAWN.Process(
            target=chaos_worker,
            args=(
                self.spec,
                self.started,
                self.rng.randrange(2**32),
                self.conversations,
                sending,
            ),
            daemon=True,
        )
        process.start()
        sending.close()  # the worker holds the only writing end: its death ends the pipe
        self.workers.append(Worker(self.started, process, receiving))
        self.started += 1

    def listen(self, acknowledgements: int) -> None:
        """Until the workers have acknowledged that many more ops."""
        target = len(self.ops.acknowledged) + acknowledgements
        deadline = time.monotonic() + RUN_TIMEOUT
        while len(self.ops.acknowledged) < target:
            left = deadline - time.monotonic()
            assert left > 0, f"the workers stalled; they tried {len(self.ops.tried)} ops"
            for pipe in wait([w.pipe for w in self.workers], left):
                worker = next(w for w in self.workers if w.pipe is pipe)
                self.hear(worker)

    def hear(self, worker: Worker) -> None:
        try:
            message = worker.pipe.recv()
        except (EOFError, OSError):
            errors = "\n".join(self.ops.errors)
            raise AssertionError(f"worker {worker.number} died by itself:\n{errors}") from None
        if message == ("ready",):
            worker.ready = True
        else:
            self.ops.hear(worker.number, message)

    def kill(self, worker: Worker) -> None:
        worker.process.kill()  # SIGKILL
        worker.process.join(timeout=RUN_TIMEOUT)
        assert worker.process.exitcode == -9, worker.process.exitcode
        # What it sent before it died is still in the pipe: whole messages only.
        while True:
            try:
                message = worker.pipe.recv()
            except (EOFError, OSError):
                break
            if message != ("ready",):
                self.ops.hear(worker.number, message)
        worker.pipe.close()
        self.workers.remove(worker)
        self.kills += 1
        if self.spec.name == "postgres":
            wait_for_sessions_to_end(session_name(self.spec, worker.number))

    def run(self, kills: int) -> None:
        for _ in range(WORKERS):
            self.start()
        for _ in range(kills):
            self.listen(self.rng.randint(*OPS_BETWEEN_KILLS))
            time.sleep(self.rng.uniform(*KILL_DELAY))
            self.kill(self.rng.choice([w for w in self.workers if w.ready]))
            self.start()
        self.listen(self.rng.randint(*OPS_BETWEEN_KILLS))
        for worker in list(self.workers):
            self.kill(worker)


def whole_log(ledger: Ledger) -> list[Any]:
    """Every event of every conversation, read from the log itself (not the projections)."""
    notifications = ledger.store.recorder.select_notifications(start=1, limit=1_000_000)
    return [ledger.store.mapper.to_domain_event(n) for n in notifications]


def text_of(message: MessageAppended) -> str:
    return "".join(part.text for part in message.parts if isinstance(part, TextPart))


def assert_every_acknowledged_write_is_there_once(
    ledger: Ledger, ops: Ops, kills: int, conversations: list[str]
) -> None:
    log = whole_log(ledger)
    messages = [e for e in log if isinstance(e, MessageAppended)]
    # A tag is the first word of the turn's question; the offline model's answer quotes it.
    asked = Counter(text_of(e).split()[0] for e in messages if e.role == "user")
    answers = Counter(text_of(e) for e in messages if e.role == "assistant")
    named = Counter(
        e.name
        for e in log
        if isinstance(e, CheckpointCreated) and e.checkpoint_type is CheckpointType.MANUAL
    )
    branches = {
        str(e.originator_id): e.title
        for e in log
        if isinstance(e, ConversationStarted) and e.parent is not None
    }
    forks = Counter(str(e.branch_id) for e in log if isinstance(e, BranchForked))
    rollbacks = Counter(e.checkpoint_id for e in log if isinstance(e, RolledBack))

    turns = ops.acknowledged_as("turn")
    assert all(asked[tag] == 1 for tag in turns), "an answered turn's question is not there once"
    assert all(answers[answer] == 1 for answer in turns.values()), "an answer is not there once"
    checkpoints = ops.acknowledged_as("checkpoint")
    assert all(named[tag] == 1 for tag in checkpoints), "a checkpoint is not there once"
    for tag, branch_id in ops.acknowledged_as("branch").items():
        assert branches.get(branch_id) == tag and forks[branch_id] == 1, (tag, branch_id)
    acknowledged_rollbacks = Counter(ops.acknowledged_as("rollback").values())
    assert all(rollbacks[cp] >= n for cp, n in acknowledged_rollbacks.items())

    # Nothing is there that nobody tried, nor twice; what was tried but never acknowledged
    # (one op per kill or refusal at most) may or may not have been written.
    assert set(asked) <= set(ops.tried) and max(asked.values()) == 1
    assert set(named) <= set(ops.tried) and max(named.values(), default=1) == 1
    assert set(branches.values()) <= set(ops.tried)
    assert max(forks.values(), default=1) == 1
    unacknowledged = set(ops.tried) - set(ops.acknowledged)
    assert len(unacknowledged) <= kills + ops.refused.total()
    assert sum(rollbacks.values()) <= len(ops.acknowledged_as("rollback")) + len(unacknowledged)
    listed = {c["id"] for c in ledger.list_conversations(limit=1000)}
    assert listed == {*conversations, *branches}


def test_killed_and_racing_chat_processes_lose_nothing_acknowledged(store: Store) -> None:
    print(f"chaos seed {SEED} (CHATLEDGER_CHAOS_SEED={SEED} repeats its choices)")
    ops = Ops()
    manager = store.manager()
    try:
        conversations = []
        for number in range(CONVERSATIONS):
            manager.reset()
            tag = ops.tried_by_hand(f"opening{number}", "turn")
            answer = asyncio.run(manager.process_message(f"{tag} of a shared conversation"))
            ops.acknowledged[tag] = answer
            conversations.append(manager.get_conversation_id())
    finally:
        manager.close()

    chaos = Chaos(store.spec, random.Random(SEED), conversations, ops)
    started = time.monotonic()
    chaos.run(KILLS)
    print(
        f"{chaos.kills} kills, {len(ops.tried)} ops tried, {len(ops.acknowledged)} acknowledged "
        f"({Counter(ops.tried[t] for t in ops.acknowledged)}), refused: {dict(ops.refused)}, "
        f"{time.monotonic() - started:.1f}s"
    )
    assert not ops.errors, "workers saw unexpected errors:\n" + "\n".join(ops.errors)

    manager = store.manager()
    ledger = manager.ledger
    try:
        assert_every_acknowledged_write_is_there_once(ledger, ops, chaos.kills, conversations)
        assert_log_consistent(ledger, store.spec)
        for conversation in ledger.list_conversations(limit=1000):
            answer = asyncio.run(manager.process_message("still there?", conversation["id"]))
            assert isinstance(answer, str) and not answer.startswith("Error"), answer
            assert_every_context_reproducible(ledger, conversation["id"])
        assert ledger.verify().ok
    finally:
        manager.close()
    print(f"checked in {time.monotonic() - started:.1f}s")
