"""The turn: one operation from a user's message to the model's answer or a typed failure.

    outcome = await ledger.turns.take_turn(conversation_id, "Hi!", provider=provider)
    async for item in ledger.turns.stream_turn(conversation_id, "Hi!", provider=provider):
        ...  # each chunk of text (str), then the TurnAnswer or TurnFailure

A turn is written in two transactions around the model call (chatledger.turn_records).
Before it, the user's side, all or nothing: context files, the user message (in a new session
when the current one is full), the trims that make the context fit, and the record of the call
about to be made (ModelCalled: what is sent and the request's hash). Bad input raises a typed
error before anything is written. After it, the outcome: the answer (the assistant message,
once, whole, and ModelResponded), or the failure (ModelCallFailed and an emergency
checkpoint), returned as a TurnFailure, never raised. Timeouts, 429s and 5xx are retried with
backoff, until a chunk has reached the caller. A turn stopped by its caller (Ctrl-C, a
cancelled task, a stream no longer read) is recorded as a call failed with kind "cancelled"
and the text streamed so far, and the stop goes on to the caller. A turn repeated with an
idempotency key already answered returns the recorded answer without a call; the key reused
for a different request raises IdempotencyConflict."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Unpack
from uuid import UUID

from chatledger.turn_records import PreparedTurn, TurnOptions, TurnRecords
from infrastructure.providers.port import (
    ChunkCallback,
    ModelReply,
    Provider,
    ProviderError,
    ToolCall,
    deliver,
)

#: Longest wait between two attempts of a model call, whatever the server asks.
MAX_RETRY_WAIT = 30.0
#: What can stop a turn from outside, and how its record says so.
_STOPS: dict[type[BaseException], str] = {
    KeyboardInterrupt: "interrupted by KeyboardInterrupt (Ctrl-C)",
    asyncio.CancelledError: "cancelled: the task awaiting the answer was cancelled",
    GeneratorExit: "the stream's consumer stopped reading",
}


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per model call, and the first pause in seconds before another (doubling,
    or the server's retry-after; at most MAX_RETRY_WAIT)."""

    max_attempts: int = 3
    backoff: float = 0.5


@dataclass(frozen=True)
class TurnAnswer:
    """The model answered. `message_id` names the assistant message recorded (None when the
    answer had neither text nor tool calls). A `replayed` answer is the one already recorded
    for the turn's idempotency key: no call was made (`attempts` 0)."""

    conversation_id: UUID
    call_id: str
    message_id: str | None
    reply: ModelReply
    attempts: int
    latency_ms: float
    #: The hash of the request sent (None for a replayed answer).
    request_hash: str | None = None
    replayed: bool = False

    @property
    def text(self) -> str:
        return self.reply.text


@dataclass(frozen=True)
class TurnFailure:
    """The model call failed; the user message stays, the failure is on record
    (ModelCallFailed) and `checkpoint_id` names the emergency checkpoint taken (None when
    checkpoints are off)."""

    conversation_id: UUID
    call_id: str
    #: The error's message, its class name, and its kind ("rate_limit", "bad_request", ...).
    error: str
    error_type: str
    kind: str
    #: What a stream delivered before it broke.
    partial_text: str
    attempts: int
    checkpoint_id: str | None
    request_hash: str | None = None
    exception: Exception | None = field(default=None, compare=False, repr=False)


TurnOutcome = TurnAnswer | TurnFailure


@dataclass
class _Call:
    """A model call under way: the chunks that reached the caller, and attempts so far."""

    streamed: list[str] = field(default_factory=list)
    attempts: int = 0


def reply_of(row: dict[str, Any]) -> ModelReply:
    """An assistant message (a transcript row) as the reply it recorded: its text and tool
    calls."""
    content = row["content"]
    if isinstance(content, str):
        return ModelReply(content)
    text = "".join(part["text"] for part in content if part["type"] == "text")
    calls = tuple(
        ToolCall(part["call_id"], part["name"], part["arguments"])
        for part in content
        if part["type"] == "tool_call"
    )
    return ModelReply(text, calls)


class TurnService:
    """The turn as one operation (see the module's docstring); its writes are TurnRecords'."""

    def __init__(self, records: TurnRecords) -> None:
        self.records = records

    # -- the operation -----------------------------------------------------------------
    async def take_turn(
        self,
        conversation_id: str | UUID,
        content: Any,
        *,
        provider: Provider,
        on_chunk: ChunkCallback | None = None,
        retry: RetryPolicy = RetryPolicy(),
        **options: Unpack[TurnOptions],
    ) -> TurnOutcome:
        """One turn (see the module's docstring). With `on_chunk` (a plain or coroutine
        function) the answer streams to it as it arrives."""
        turn = self.records.prepare(
            conversation_id, content, provider=provider.name, model=provider.model, **options
        )
        return await self.answer(turn, provider, on_chunk=on_chunk, retry=retry)

    def stream_turn(
        self,
        conversation_id: str | UUID,
        content: Any,
        *,
        provider: Provider,
        retry: RetryPolicy = RetryPolicy(),
        **options: Unpack[TurnOptions],
    ) -> AsyncGenerator[str | TurnOutcome, None]:
        """The turn as a stream: its user side is written (or refused) now; the stream then
        yields each chunk of text, and last the TurnAnswer or TurnFailure. Closing it early,
        or cancelling its reader, records the turn as cancelled."""
        turn = self.records.prepare(
            conversation_id, content, provider=provider.name, model=provider.model, **options
        )
        return self.stream(turn, provider, retry=retry)

    # -- its steps: the user's side, the call, the outcome -------------------------------
    # -- its steps: the call and its outcome, for a prepared turn ------------------------
    async def answer(
        self,
        turn: PreparedTurn,
        provider: Provider,
        *,
        on_chunk: ChunkCallback | None = None,
        retry: RetryPolicy = RetryPolicy(),
    ) -> TurnOutcome:
        """The model call of a prepared turn, retried as the policy allows, and its outcome
        put on record."""
        if turn.recorded_answer is not None:
            answer = self._recorded(turn)
            if on_chunk is not None:
                await deliver(on_chunk, answer.text)
            return answer
        call = _Call()
        with self._stop_recorded(turn, call):
            return await self._settle(turn, call, self._call(turn, provider, on_chunk, call, retry))

    async def stream(
        self, turn: PreparedTurn, provider: Provider, *, retry: RetryPolicy = RetryPolicy()
    ) -> AsyncGenerator[str | TurnOutcome, None]:
        """The model call of a prepared turn as a stream of chunks, then its outcome."""
        if turn.recorded_answer is not None:
            answer = self._recorded(turn)
            yield answer.text
            yield answer
            return
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        call = _Call()
        task = asyncio.ensure_future(self._call(turn, provider, queue.put_nowait, call, retry))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            # The outcome is settled only once the reader has had every chunk: one that stops
            # reading early cancels the turn, even if the model had already finished.
            with self._stop_recorded(turn, call):
                while (chunk := await queue.get()) is not None:
                    yield chunk
                outcome = await self._settle(turn, call, task)
        finally:
            task.cancel()
        yield outcome

    # -- the parts ---------------------------------------------------------------------
    def _recorded(self, turn: PreparedTurn) -> TurnAnswer:
        assert turn.recorded_answer is not None
        return TurnAnswer(
            conversation_id=turn.conversation_id,
            call_id=turn.call_id,
            message_id=turn.recorded_answer["id"],
            reply=reply_of(turn.recorded_answer),
            attempts=0,
            latency_ms=0.0,
            replayed=True,
        )

    async def _call(
        self,
        turn: PreparedTurn,
        provider: Provider,
        on_chunk: ChunkCallback | None,
        call: _Call,
        retry: RetryPolicy,
    ) -> tuple[ModelReply, float]:
        """The provider call, retried with backoff while retrying is right: a retryable
        error (timeout, 429, 5xx) before any chunk reached the caller. Each chunk is added to
        `call.streamed` before it is passed on. Returns the reply and its latency in ms."""
        assert turn.request is not None

        async def relay(chunk: str) -> None:
            call.streamed.append(chunk)
            if on_chunk is not None:
                await deliver(on_chunk, chunk)

        while True:
            call.attempts += 1
            started = time.perf_counter()
            try:
                reply = await provider.complete(
                    turn.request.messages,
                    max_tokens=turn.parameters.get("max_tokens"),
                    temperature=turn.parameters.get("temperature"),
                    on_chunk=relay if on_chunk is not None else None,
                )
            except ProviderError as error:
                if not error.retryable or call.streamed or call.attempts >= retry.max_attempts:
                    raise
                backoff = retry.backoff * 2 ** (call.attempts - 1)
                await asyncio.sleep(min(error.retry_after or backoff, MAX_RETRY_WAIT))
                continue
            return reply, (time.perf_counter() - started) * 1000

    async def _settle(
        self, turn: PreparedTurn, call: _Call, answered: Awaitable[tuple[ModelReply, float]]
    ) -> TurnOutcome:
        """Awaits the call and puts its outcome on record: the reply, or the failure (stops
        pass through, see _stop_recorded)."""
        request_hash = turn.request.hash if turn.request is not None else None
        try:
            reply, latency = await answered
        except Exception as error:
            partial = getattr(error, "partial_text", "")
            kind = getattr(error, "kind", "error")
            checkpoint_id = self.records.record_failure(
                turn.conversation_id,
                error,
                partial,
                call_id=turn.call_id,
                kind=kind,
                attempts=call.attempts,
            )
            return TurnFailure(
                conversation_id=turn.conversation_id,
                call_id=turn.call_id,
                error=str(error),
                error_type=type(error).__name__,
                kind=kind,
                partial_text=partial,
                attempts=call.attempts,
                checkpoint_id=checkpoint_id,
                request_hash=request_hash,
                exception=error,
            )
        appended = self.records.record_reply(
            turn.conversation_id, turn.call_id, reply, latency_ms=latency, attempts=call.attempts
        )
        return TurnAnswer(
            conversation_id=turn.conversation_id,
            call_id=turn.call_id,
            message_id=appended.message_id if appended else None,
            reply=reply,
            attempts=call.attempts,
            latency_ms=latency,
            request_hash=request_hash,
        )

    @contextmanager
    def _stop_recorded(self, turn: PreparedTurn, call: _Call) -> Iterator[None]:
        """A turn stopped by its caller (Ctrl-C, a cancelled task, a stream reader that stops
        reading) is recorded as a cancelled call with the text streamed so far; the stop goes
        on to the caller, whose decision it was."""
        try:
            yield
        except tuple(_STOPS) as stop:
            # These rarely carry a message: the record says what stopped the call instead.
            stopped_by, reason = next(
                (kind, reason) for kind, reason in _STOPS.items() if isinstance(stop, kind)
            )
            self.records.record_failure(
                turn.conversation_id,
                stopped_by(reason),
                "".join(call.streamed),
                call_id=turn.call_id,
                kind="cancelled",
                attempts=max(call.attempts, 1),
            )
            raise
