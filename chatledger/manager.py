"""ConversationManager: Penguin's ConversationManager API over the event-sourced ledger.

Where Penguin's API returns False/None for a documented failure, the wrapper here catches the
typed error raised by the Ledger method it wraps; everything else propagates as a typed
ChatledgerError. A model turn is chatledger.turns' operation: `take_turn` gives its typed
outcome, `process_message` Penguin's string.

A little over 400 lines, kept whole: Penguin's API is some thirty public methods, each a few
lines over the Ledger, plus the checks of Penguin's loosely typed model_config."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Callable
from os import PathLike
from pathlib import Path
from typing import Any
from uuid import UUID

from chatledger.inputs import DEFAULT_MAX_MESSAGE_BYTES, content_parts
from chatledger.ledger import Ledger
from chatledger.message import Message
from chatledger.provider_selection import config_value, select_provider
from chatledger.turn_records import PreparedTurn
from chatledger.turns import MAX_RETRY_WAIT, RetryPolicy, TurnAnswer, TurnFailure
from domain.checkpoints import CheckpointConfig, CheckpointType
from domain.context_window import ContextItem, WindowConfig, fits_system
from domain.errors import FileInputError, InvalidInput, NotFound, NothingToCheckpoint
from domain.messages import Category
from infrastructure.files import DEFAULT_MAX_IMAGE_BYTES, list_context_files
from infrastructure.providers.port import ChunkCallback, Provider
from infrastructure.token_counting import context_window_for, tokenizer_for


def failure_answer(message: str) -> str:
    """What process_message returns, by Penguin's contract, when the model call failed."""
    return f"Error processing message: {message}"


def penguin_answer(outcome: TurnAnswer | TurnFailure) -> str:
    """A turn's outcome as Penguin's process_message returns it."""
    if isinstance(outcome, TurnFailure):
        return failure_answer(outcome.error)
    return outcome.text


async def _penguin_stream(
    stream: AsyncGenerator[str | TurnAnswer | TurnFailure, None],
) -> AsyncGenerator[str, None]:
    """A turn's stream as Penguin's: the chunks, then a failure's error text."""
    try:
        async for item in stream:
            if isinstance(item, str):
                yield item
            elif isinstance(item, TurnFailure):
                yield penguin_answer(item)
    finally:
        # Closed here, not left to the event loop, so a reader that stops early has the
        # turn recorded as cancelled by the time its aclose() returns.
        await stream.aclose()


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
            self.retry = RetryPolicy(
                _config_number(model_config, int, "max_attempts") or 3,
                _config_number(model_config, float, "retry_backoff") or 0.5,
            )
            if self.retry.max_attempts < 1 or not 0 <= self.retry.backoff <= MAX_RETRY_WAIT:
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
        """The active conversation, started by now (a fresh manager's is started here)."""
        return self.ledger.ensure_started(self._command_target)

    @property
    def _command_target(self) -> UUID:
        """The active conversation for a command. A fresh manager's is started by its first
        command, in that command's transaction: a refused command writes nothing."""
        if self._active is None:
            self._active = self.ledger.start_conversation(
                system_prompt=self.system_prompt, lazily=True
            )
        return self._active

    def _started(self) -> UUID | None:
        """The active conversation if one was started (None on a fresh manager)."""
        if self._active is None or not self.ledger.unit_of_work.started(self._active):
            return None
        return self._active

    def get_conversation_id(self) -> str:
        return str(self.active_id)

    def activate(self, conversation_id: str | UUID) -> UUID:
        """Makes a conversation the active one (ConversationNotFound if there is none)."""
        self._active = self.ledger.conversation(conversation_id).id
        return self._active

    def load(self, conversation_id: str) -> bool:
        try:
            self.activate(conversation_id)
        except NotFound:
            return False
        return True

    def reset(self) -> None:
        """Starts a fresh conversation (the previous one stays in the log, listable)."""
        self._active = self.ledger.start_conversation(
            system_prompt=self.system_prompt, reset_from=self._started()
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
            self._command_target, role, content, category=category, metadata=metadata
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
            self.ledger.load_context_file(self._command_target, file_path)
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
        """One turn, as Penguin's API gives it: the answer's text, or for a failed model call
        "Error processing message: ..." (the failure is recorded and an emergency checkpoint
        taken; it does not raise). Streaming without a callback returns an async generator of
        the chunks. See `take_turn` for the rest, and for the typed outcome."""
        if streaming and stream_callback is not None and not callable(stream_callback):
            # A caller's mistake, not a failed model call to record.
            kind = type(stream_callback).__name__
            raise InvalidInput(f"stream_callback must be a function, not {kind}.")
        if streaming and stream_callback is None:
            turn = self._prepare(
                message, conversation_id, image_path, context_files, idempotency_key
            )
            return _penguin_stream(self.ledger.turns.stream(turn, self.provider, retry=self.retry))
        outcome = await self.take_turn(
            message,
            conversation_id=conversation_id,
            image_path=image_path,
            on_chunk=stream_callback if streaming else None,
            context_files=context_files,
            idempotency_key=idempotency_key,
        )
        return penguin_answer(outcome)

    async def take_turn(
        self,
        message: Any,
        *,
        conversation_id: str | UUID | None = None,
        image_path: str | Path | list[str | Path] | None = None,
        on_chunk: ChunkCallback | None = None,
        context_files: list[str | Path] | None = None,
        idempotency_key: str | None = None,
    ) -> TurnAnswer | TurnFailure:
        """One turn on the active conversation (or the one named, which becomes active once
        its turn is accepted), answered by this manager's provider: a TurnAnswer, or a
        TurnFailure for a failed model call. Bad input raises a typed error before anything is
        written. A turn stopped by its caller (Ctrl-C, task cancellation) is recorded as
        cancelled and the stop propagates. A turn repeated with an `idempotency_key` already
        answered returns the recorded answer without a call; the key reused for a different
        request raises IdempotencyConflict. `on_chunk` (plain or async) gets each chunk."""
        turn = self._prepare(message, conversation_id, image_path, context_files, idempotency_key)
        return await self.ledger.turns.answer(
            turn, self.provider, on_chunk=on_chunk, retry=self.retry
        )

    def _prepare(
        self,
        message: Any,
        conversation_id: str | UUID | None,
        image_path: str | Path | list[str | Path] | None,
        context_files: list[str | Path] | None,
        idempotency_key: str | None,
    ) -> PreparedTurn:
        """The user's side of a turn, written; the conversation becomes the active one."""
        target = (
            self._command_target
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
        return turn

    def _parameters(self) -> dict[str, Any]:
        parameters = {
            "max_tokens": config_value(self.model_config, "max_tokens", "max_output_tokens"),
            "temperature": config_value(self.model_config, "temperature"),
        }
        return {key: value for key, value in parameters.items() if value is not None}

    # -- checkpoints, branches, snapshots --------------------------------------------------
    async def create_manual_checkpoint(
        self, name: str | None = None, description: str | None = None
    ) -> str | None:
        # No conversation started yet has nothing to checkpoint: starting one would write.
        active = self._started()
        if not self.checkpoint_config.enabled or active is None:
            return None
        try:
            return self.ledger.create_checkpoint(active, CheckpointType.MANUAL, name, description)
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
        return self.ledger.take_snapshot(self._command_target, meta)

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
