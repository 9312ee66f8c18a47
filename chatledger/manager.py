"""ConversationManager: Penguin's ConversationManager API over the event-sourced ledger.

Where Penguin's API returns False/None for a documented failure, the wrapper here catches the
typed error raised by the Ledger method it wraps; everything else propagates as a typed
ChatledgerError."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Any
from uuid import UUID

from chatledger.ledger import DEFAULT_MAX_MESSAGE_BYTES, Ledger, PreparedTurn, content_parts
from chatledger.message import Message
from chatledger.provider_selection import config_value, select_provider
from chatledger.providers import ChunkCallback, ModelReply, Provider, ProviderError, deliver
from domain.checkpoints import CheckpointConfig, CheckpointType
from domain.context_window import ContextItem, WindowConfig, fits_system
from domain.errors import FileInputError, InvalidInput, NotFound, NothingToCheckpoint
from domain.messages import Category
from infrastructure.files import DEFAULT_MAX_IMAGE_BYTES, list_context_files
from infrastructure.token_counting import context_window_for, tokenizer_for

#: Longest wait between two attempts of a model call, whatever the server asks.
MAX_RETRY_WAIT = 30.0
#: What can stop a turn from outside, and how its record says so.
_STOPS: dict[type[BaseException], str] = {
    KeyboardInterrupt: "interrupted by KeyboardInterrupt (Ctrl-C)",
    asyncio.CancelledError: "cancelled: the task awaiting the answer was cancelled",
    GeneratorExit: "the stream's consumer stopped reading",
}


def failure_answer(message: str) -> str:
    """What process_message returns, by Penguin's contract, when the model call failed."""
    return f"Error processing message: {message}"


def _config_text(model_config: Any, name: str) -> str | None:
    value = config_value(model_config, name)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"model_config {name} must be a string, not {type(value).__name__}.")
    return value


def _config_number(model_config: Any, kind: type[int] | type[float], *names: str) -> Any:
    """A number of model_config (None when it has none), as `kind`."""
    value = config_value(model_config, *names)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError
        number = kind(value)
        if not math.isfinite(number):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(
            f"model_config {names[0]} must be a finite number, not {type(value).__name__} "
            f"{str(value)[:50]!r}."
        ) from None
    return number


async def _single_chunk(text: str) -> AsyncGenerator[str, None]:
    yield text


class ConversationManager:
    def __init__(
        self,
        model_config: Any = None,
        api_client: Any = None,
        workspace_path: Path | str | None = None,
        system_prompt: str = "",
        max_messages_per_session: int = 5000,
        max_sessions_in_memory: int = 20,
        auto_save_interval: int = 60,
        checkpoint_config: CheckpointConfig | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        database_url: str | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_context_file_bytes: int | None = None,
    ) -> None:
        if not isinstance(system_prompt, str):
            raise InvalidInput("system_prompt must be a string.")
        default = workspace_path is None or workspace_path == ""
        workspace = Path.cwd() / ".chatledger" if default else workspace_path
        self.checkpoint_config = checkpoint_config or CheckpointConfig()
        model = _config_text(model_config, "model")
        provider = _config_text(model_config, "provider")
        window = _config_number(
            model_config, int, "context_window", "max_context_window_tokens", "max_history_tokens"
        )
        self.ledger = Ledger(
            workspace,  # type: ignore[arg-type]  # checked there
            checkpoint_config=checkpoint_config or self.checkpoint_config,
            max_messages_per_session=max_messages_per_session,
            cache_size=max_sessions_in_memory,
            window=WindowConfig(
                context_window=context_window_for(model, window or None),
                max_images=_config_number(model_config, int, "max_images") or 5,
            ),
            tokenizer=tokenizer_for(model, provider),
            max_message_bytes=max_message_bytes,
            database_url=database_url,
            max_image_bytes=max_image_bytes,
            max_context_file_bytes=max_context_file_bytes,
        )
        self.workspace = self.ledger.workspace
        # A refused manager is never closed by its caller, and its Ledger holds the store (on
        # PostgreSQL, connections and a pool thread) until closed.
        try:
            prompt_tokens = (
                self.ledger.tokens.count_parts("system", content_parts(system_prompt))
                if (system_prompt.strip())
                else 0
            )
            prompt = ContextItem("system prompt", Category.SYSTEM, prompt_tokens, 0, "system")
            if not fits_system([prompt], self.ledger.window):
                raise InvalidInput(
                    f"The system prompt needs {prompt_tokens} tokens but the usable window holds "
                    f"{self.ledger.window.usable}: the window cannot hold the SYSTEM messages."
                )
            self.model_config = model_config
            self.api_client = api_client
            self.provider: Provider = select_provider(model_config, api_client)
            #: Attempts per model call, and the first backoff in seconds (doubling).
            self.max_attempts = _config_number(model_config, int, "max_attempts") or 3
            self.retry_backoff = _config_number(model_config, float, "retry_backoff") or 0.5
            if self.max_attempts < 1 or not 0 <= self.retry_backoff <= MAX_RETRY_WAIT:
                raise InvalidInput(
                    "model_config max_attempts must be at least 1, and retry_backoff between 0 "
                    f"and {MAX_RETRY_WAIT} seconds."
                )
        except BaseException:
            self.ledger.close()
            raise
        self.system_prompt = system_prompt
        # Every event is durable when its call returns; kept for Penguin compatibility.
        self.auto_save_interval = auto_save_interval
        self._active: UUID | None = None

    # -- the active conversation -----------------------------------------------------------
    @property
    def active_id(self) -> UUID:
        if self._active is None:
            self._active = self.ledger.start_conversation(system_prompt=self.system_prompt)
        return self._active

    def get_conversation_id(self) -> str:
        return str(self.active_id)

    def load(self, conversation_id: str) -> bool:
        try:
            self._active = self.ledger.conversation(conversation_id).id
        except NotFound:
            return False
        return True

    def reset(self) -> None:
        """Starts a fresh conversation (the previous one stays in the log, listable)."""
        self._active = self.ledger.start_conversation(
            system_prompt=self.system_prompt, reset_from=self._active
        )

    def save(self) -> bool:
        return True

    def close(self) -> None:
        self.ledger.close()

    # -- messages ----------------------------------------------------------------------
    def add_message(
        self,
        role: str,
        content: Any,
        category: str | Category | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Message:
        appended = self.ledger.append_message(
            self.active_id, role, content, category=category, metadata=metadata
        )
        return Message.from_transcript(appended.row)

    def add_context(self, content: str, source: str | None = None) -> Message:
        return self.add_message(
            "system", content, Category.CONTEXT, {"source": source} if source else None
        )

    def get_history_rows(self) -> list[dict[str, Any]]:
        return self.ledger.history(self.active_id)

    def get_history(self) -> list[dict[str, Any]]:
        return [Message.from_transcript(row).to_dict() for row in self.get_history_rows()]

    def load_context_file(self, file_path: str | Path) -> bool:
        try:
            self.ledger.load_context_file(self.active_id, file_path)
        except FileInputError:
            return False
        return True

    def list_context_files(self) -> list[dict[str, Any]]:
        return list_context_files(self.workspace)

    # -- the model turn ----------------------------------------------------------------
    async def process_message(
        self,
        message: str,
        conversation_id: str | None = None,
        image_path: str | Path | list[str | Path] | None = None,
        streaming: bool = False,
        stream_callback: Callable[[str], Any] | None = None,
        context_files: list[str | Path] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str | AsyncGenerator[str, None]:
        """One turn. Bad input raises a typed error before anything is written; a failing
        model call does not raise: it returns "Error processing message: ...", keeps the user
        message, records the failure and takes an emergency checkpoint. A turn stopped by its
        caller (Ctrl-C, task cancellation, a stream no longer read) is recorded as cancelled
        and the stop propagates. A turn repeated with an `idempotency_key` already answered
        returns the recorded answer without a call; the key reused for a different request
        raises IdempotencyConflict."""
        # The conversation named becomes the active one once its turn is accepted.
        target = (
            self.active_id
            if conversation_id is None
            else self.ledger.conversation(conversation_id).id
        )
        images = [image_path] if isinstance(image_path, str | PathLike) else image_path or []
        turn = self.ledger.prepare_turn(
            target,
            message,
            image_paths=images,
            context_files=context_files or (),
            provider=self.provider.name,
            model=self.provider.model,
            parameters=self._parameters(),
            idempotency_key=idempotency_key,
        )
        self._active = target
        if turn.recorded_answer is not None:
            return self._replayed(turn.recorded_answer, streaming, stream_callback)
        if streaming and stream_callback is None:
            return self._stream_turn(turn)
        streamed: list[str] = []
        with self._stop_recorded(turn, streamed):
            answer = await self._answer(
                turn, self._call(turn, stream_callback if streaming else None, streamed)
            )
        return answer if isinstance(answer, str) else answer.text

    def _parameters(self) -> dict[str, Any]:
        parameters = {
            "max_tokens": config_value(self.model_config, "max_tokens", "max_output_tokens"),
            "temperature": config_value(self.model_config, "temperature"),
        }
        return {key: value for key, value in parameters.items() if value is not None}

    async def _call(
        self, turn: PreparedTurn, on_chunk: ChunkCallback | None, streamed: list[str]
    ) -> tuple[ModelReply, int, float]:
        """The provider call, retried with backoff while retrying is right: a retryable
        error (timeout, 429, 5xx) before any chunk reached the caller. Each chunk is added to
        `streamed` before it is passed on."""
        assert turn.request is not None
        parameters = self._parameters()

        async def relay(chunk: str) -> None:
            streamed.append(chunk)
            if on_chunk is not None:
                await deliver(on_chunk, chunk)

        for attempt in range(1, self.max_attempts + 1):
            started = time.perf_counter()
            try:
                reply = await self.provider.complete(
                    turn.request.messages,
                    max_tokens=parameters.get("max_tokens"),
                    temperature=parameters.get("temperature"),
                    on_chunk=relay if on_chunk is not None else None,
                )
            except ProviderError as error:
                error.attempts = attempt  # type: ignore[attr-defined]
                if not error.retryable or streamed or attempt == self.max_attempts:
                    raise
                backoff = self.retry_backoff * 2 ** (attempt - 1)
                await asyncio.sleep(min(error.retry_after or backoff, MAX_RETRY_WAIT))
                continue
            return reply, attempt, (time.perf_counter() - started) * 1000
        raise AssertionError("unreachable")  # pragma: no cover

    async def _stream_turn(self, turn: PreparedTurn) -> AsyncGenerator[str, None]:
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        streamed: list[str] = []
        call = asyncio.ensure_future(self._call(turn, queue.put_nowait, streamed))
        call.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            # The outcome is settled only once the reader has had every chunk: one that stops
            # reading early cancels the turn, even if the model had already finished.
            with self._stop_recorded(turn, streamed):
                while (chunk := await queue.get()) is not None:
                    yield chunk
                answer = await self._answer(turn, call)
        finally:
            call.cancel()
        if isinstance(answer, str):
            yield answer

    async def _answer(
        self, turn: PreparedTurn, call: Awaitable[tuple[ModelReply, int, float]]
    ) -> ModelReply | str:
        """Awaits the call and puts its outcome on record: the reply, or for a failed call
        Penguin's error text (stops pass through, see _stop_recorded)."""
        try:
            reply, attempts, latency = await call
        except Exception as error:
            return self._failed(turn, error)
        self.ledger.record_reply(
            turn.conversation_id, turn.call_id, reply, latency_ms=latency, attempts=attempts
        )
        return reply

    @contextmanager
    def _stop_recorded(self, turn: PreparedTurn, streamed: list[str]) -> Iterator[None]:
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
            self.ledger.record_model_failure(
                turn.conversation_id,
                stopped_by(reason),
                "".join(streamed),
                call_id=turn.call_id,
                kind="cancelled",
            )
            raise

    def _failed(self, turn: PreparedTurn, error: Exception) -> str:
        self.ledger.record_model_failure(
            turn.conversation_id,
            error,
            getattr(error, "partial_text", ""),
            call_id=turn.call_id,
            kind=getattr(error, "kind", "error"),
            attempts=getattr(error, "attempts", 1),
        )
        return failure_answer(str(error))

    def _replayed(
        self, answer: dict[str, Any], streaming: bool, callback: Callable[[str], Any] | None
    ) -> str | AsyncGenerator[str, None]:
        text = (
            answer["content"]
            if isinstance(answer["content"], str)
            else "".join(part.get("text", "") for part in answer["content"])
        )
        if streaming and callback is None:
            return _single_chunk(text)
        if streaming and callback is not None:
            callback(text)
        return text

    # -- checkpoints, branches, snapshots --------------------------------------------------
    async def create_manual_checkpoint(
        self, name: str | None = None, description: str | None = None
    ) -> str | None:
        # No conversation started yet has nothing to checkpoint: starting one would write.
        if not self.checkpoint_config.enabled or self._active is None:
            return None
        try:
            return self.ledger.create_checkpoint(
                self._active, CheckpointType.MANUAL, name, description
            )
        except NothingToCheckpoint:
            return None

    async def rollback_to_checkpoint(self, checkpoint_id: str) -> bool:
        try:
            self._active = self.ledger.rollback(checkpoint_id)
        except NotFound:
            return False
        return True

    async def branch_from_checkpoint(
        self, checkpoint_id: str, name: str | None = None, description: str | None = None
    ) -> str | None:
        try:
            self._active = self.ledger.branch(checkpoint_id, name, description)
        except NotFound:
            return None
        return str(self._active)

    def list_checkpoints(
        self,
        session_id: str | None = None,
        checkpoint_type: str | CheckpointType | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        conversation_id, segment = None, None
        if session_id is not None:
            try:
                conversation_id = UUID(str(session_id))
            except ValueError:
                segment = str(session_id)
        kind = (
            checkpoint_type.value
            if isinstance(checkpoint_type, CheckpointType)
            else checkpoint_type
        )
        rows = self.ledger.checkpoints(conversation_id, kind, limit, segment)
        return [row.as_dict() for row in rows]

    def create_snapshot(self, *, meta: dict[str, Any] | None = None) -> str | None:
        return self.ledger.take_snapshot(self.active_id, meta)

    def restore_snapshot(self, snapshot_id: str) -> bool:
        try:
            self._active = self.ledger.restore_snapshot(snapshot_id)
        except NotFound:
            return False
        return True

    def branch_from_snapshot(
        self, snapshot_id: str, *, meta: dict[str, Any] | None = None
    ) -> str | None:
        if meta is not None and not isinstance(meta, dict):
            raise InvalidInput(f"meta must be a dict, not {type(meta).__name__}.")
        title = (meta or {}).get("name") or (meta or {}).get("title")
        try:
            self._active = self.ledger.branch(snapshot_id, title)
        except NotFound:
            return None
        return str(self._active)

    # -- listings and usage ------------------------------------------------------------
    def list_conversations(
        self, limit: int = 100, offset: int = 0, search_term: str | None = None
    ) -> list[dict[str, Any]]:
        return self.ledger.list_conversations(limit, offset, search_term)

    def get_token_usage(self) -> dict[str, Any]:
        view = self.ledger.conversation(self.active_id).view
        usable = self.ledger.window.usable
        session = view.session
        categories = {c.value: session.tokens_by_category.get(c.value, 0) for c in Category}
        total = sum(categories.values())
        return {
            "current_total_tokens": total,
            "max_context_window_tokens": usable,
            "available_tokens": max(0, usable - total),
            "percentage": min(100.0, 100.0 * total / usable) if usable else 100.0,
            "categories": categories,
            "truncations": view.truncations.model_dump(),
            "sessions": [
                {
                    "session_id": s.session_id,
                    "number": s.number,
                    "message_count": s.message_count,
                    "tokens": s.tokens,
                }
                for s in view.sessions
            ],
            "chain_total": view.token_count,
            "model_calls": self.ledger.read.model_calls(self.active_id),
            "encoding": self.ledger.tokens.encoding_name,
            "tokenizer": self.ledger.tokens.describe(),
        }
