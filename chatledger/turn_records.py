"""A turn's writes, one transaction each, around its model call (chatledger.turns makes the
call): before it, the user's side, all or nothing (context files, the user message, in a new
session when the current one is full, the trims that make the context fit, and the record of
the call about to be made: ModelCalled, with what is sent and the request's hash); after it,
the outcome (the assistant message and ModelResponded, or ModelCallFailed and an emergency
checkpoint). A turn repeated with an idempotency key already answered writes nothing and gets
the recorded answer; the key reused for a different request raises IdempotencyConflict."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict, Unpack
from uuid import UUID

from chatledger import inputs
from chatledger.commands import AppendedMessage, ConversationCommands
from chatledger.inputs import MAX_KEY_CHARS, parse_conversation_id
from chatledger.model_context import ModelRequest, build_request
from chatledger.queries import ConversationQueries
from chatledger.session_contexts import Follower, SessionContexts
from chatledger.unit_of_work import Batch, UnitOfWork
from domain.checkpoints import CheckpointConfig
from domain.context_window import Trim, WindowConfig
from domain.errors import IdempotencyConflict, InvalidInput
from domain.hashing import canonical_bytes
from domain.manifests import encode as encode_manifest
from domain.messages import Category, ContentPart, Role, TextPart, ToolCallPart
from infrastructure.files import ContextFile
from infrastructure.providers.port import ModelReply
from infrastructure.token_counting import ModelTokenizer


class TurnOptions(TypedDict, total=False):
    """What a turn may bring besides its text: images, context files to load first, the
    call's parameters (max_tokens, temperature) and an idempotency key."""

    image_paths: Sequence[str | Path]
    context_files: Sequence[str | Path]
    parameters: dict[str, Any] | None
    idempotency_key: str | None


@dataclass(frozen=True)
class _Asked:
    """A turn's input, checked and read, with the call it is to make."""

    conversation_id: UUID
    parts: tuple[ContentPart, ...]
    files: Sequence[ContextFile]
    provider: str
    model: str
    parameters: dict[str, Any]
    idempotency_key: str | None
    input_hash: str | None


@dataclass(frozen=True)
class PreparedTurn:
    """A turn ready for its model call, or, when its idempotency key was already answered,
    the recorded answer (then nothing was written and no call is to be made)."""

    conversation_id: UUID
    message_id: str | None
    call_id: str
    request: ModelRequest | None
    recorded_answer: dict[str, Any] | None = None
    #: The call's parameters (max_tokens, temperature), as recorded.
    parameters: dict[str, Any] = field(default_factory=dict)


def input_hash(parts: Sequence[ContentPart], files: Sequence[ContextFile]) -> str:
    """What a turn asks: its parts (images by their content, not where they lie or what
    they cost) and the context files loaded with it."""
    document = {
        "parts": [part.model_dump(mode="json", exclude={"path", "tokens"}) for part in parts],
        "context_files": [{"path": file.path, "text": file.text} for file in files],
    }
    return hashlib.sha256(canonical_bytes(document)).hexdigest()


def _by_category(trims: Sequence[Trim]) -> dict[Category, list[Trim]]:
    grouped: dict[Category, list[Trim]] = {}
    for trim in trims:
        grouped.setdefault(trim.category, []).append(trim)
    return grouped


class TurnRecords:
    def __init__(
        self,
        unit_of_work: UnitOfWork,
        commands: ConversationCommands,
        queries: ConversationQueries,
        contexts: SessionContexts,
        *,
        window: WindowConfig,
        tokens: ModelTokenizer,
        clock: Callable[[], datetime],
        checkpoints: CheckpointConfig,
        max_messages_per_session: int,
    ) -> None:
        self.unit_of_work, self.commands, self.queries = unit_of_work, commands, queries
        self.contexts, self.window, self.tokens, self.clock = contexts, window, tokens, clock
        self.checkpoints = checkpoints
        self.max_messages_per_session = max_messages_per_session

    def prepare(
        self,
        conversation_id: str | UUID,
        content: Any,
        *,
        provider: str = "offline",
        model: str = "offline",
        **options: Unpack[TurnOptions],
    ) -> PreparedTurn:
        """The user's side of a turn, decided and written in one transaction (all or
        nothing): context files, the user message (in a new session when the current one is
        full), the trims that make the context fit, and the record of the model call about to
        be made (what is sent, and the request's hash)."""
        unknown = sorted(options.keys() - TurnOptions.__annotations__.keys())
        if unknown:  # what a signature of named parameters would refuse
            raise TypeError(f"prepare() got unexpected keyword arguments {unknown}")
        cid = parse_conversation_id(conversation_id)
        key = inputs.label(
            options.get("idempotency_key"), "An idempotency key", MAX_KEY_CHARS, "MAX_KEY_CHARS"
        )
        provider = inputs.label(provider, "A provider name") or ""
        model = inputs.label(model, "A model name") or ""
        parameters = inputs.metadata(options.get("parameters"))
        parts = self.commands.parts(content, options.get("image_paths", ()))
        paths = inputs.file_paths(options.get("context_files", ()), "context_files")
        files = [self.commands.read_context(path) for path in paths]
        asked = None
        if key is not None:
            asked = input_hash(parts, files)
            answered = self._answered(cid, key, asked)
            if answered is not None:
                return answered
        turn = _Asked(cid, parts, files, provider, model, parameters, key, asked)
        return self.unit_of_work.run(lambda batch: self._decide_turn(batch, turn))

    def record_reply(
        self,
        conversation_id: UUID,
        call_id: str,
        reply: ModelReply,
        *,
        latency_ms: float,
        attempts: int = 1,
    ) -> AppendedMessage | None:
        """The answer to a recorded call: the assistant message (its text and tool calls,
        once, whole) and the response's record, in one transaction."""
        parts: tuple[ContentPart, ...] = tuple(
            ToolCallPart(call_id=c.call_id, name=c.name, arguments=c.arguments)
            for c in reply.tool_calls
        )
        if reply.text.strip():
            parts = (TextPart(text=reply.text), *parts)
        if parts:
            inputs.check_json([part.model_dump() for part in parts], "The model's answer")

        def decide(batch: Batch) -> AppendedMessage | None:
            conversation = batch.get(conversation_id)
            metadata = {"call_id": call_id}
            appended = (
                self.commands.add(conversation, Role.ASSISTANT, parts, None, metadata)
                if parts
                else None
            )
            conversation.record_model_response(
                call_id=call_id,
                message_id=appended.message_id if appended else None,
                stop_reason=reply.stop_reason,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                latency_ms=latency_ms,
                attempts=attempts,
                timestamp=self.clock(),
            )
            return appended

        return self.unit_of_work.run(decide)

    def record_failure(
        self,
        conversation_id: UUID,
        error: BaseException,
        partial_text: str = "",
        *,
        call_id: str | None = None,
        kind: str = "error",
        attempts: int = 1,
    ) -> str | None:
        """Records the failure; the conversation takes an emergency checkpoint if checkpoints
        are on (its id is returned)."""

        def decide(batch: Batch) -> str | None:
            now = self.clock()
            conversation = batch.get(conversation_id)
            conversation.record_model_failure(
                error_type=type(error).__name__,
                message=str(error),
                partial_text=partial_text,
                call_id=call_id,
                kind=kind,
                attempts=attempts,
                timestamp=now,
            )
            return conversation.take_emergency_checkpoint(
                description=str(error),
                timestamp=now,
                checkpoints=self.checkpoints,
                mint=self.commands.mint,
            )

        return self.unit_of_work.run(decide)

    # -- the parts ---------------------------------------------------------------------
    def _answered(self, cid: UUID, key: str, asked: str) -> PreparedTurn | None:
        """The turn already answered under this idempotency key, if any."""
        answered = self.queries.read.answered_call(cid, key)
        if answered is None:
            return None
        call_id, reply_id, recorded = answered
        # A call recorded before input hashes were kept cannot be compared.
        if recorded not in (None, asked):
            raise IdempotencyConflict(
                f"The idempotency key {key!r} already names an answered turn of "
                f"conversation {cid} that made a different request (its message, "
                "images or context files differ). Use a new key for a new request, "
                "or resend the same request to get its recorded answer."
            )
        return PreparedTurn(cid, None, call_id, None, self.queries.message(cid, reply_id))

    def _decide_turn(self, batch: Batch, turn: _Asked) -> PreparedTurn:
        conversation = batch.get(turn.conversation_id)
        context = self.contexts.of(conversation).copy()
        follow = Follower(conversation, context)
        now = self.clock()
        for file in turn.files:
            self.commands.add_context_file(conversation, file)
        follow()
        appended = self.commands.add(conversation, Role.USER, turn.parts, None, {})
        follow()
        plan = context.plan(self.window)
        if not plan.fits:
            # What trimming cannot remove (SYSTEM messages, the newest user message, their
            # tool partners) a new session carries too, so a new session would not fit it
            # either. Raising here saves nothing: the turn is refused whole.
            raise InvalidInput(
                f"This turn cannot fit the model's usable window of {self.window.usable} "
                f"tokens even after trimming: the message needs {appended.event.tokens}, and what "
                f"cannot be trimmed {plan.total_tokens} in all. Shorten it, or use a model "
                "with a larger window."
            )
        for category, trims in _by_category(plan.trimmed).items():
            conversation.trim_context(
                message_ids=tuple(t.message_id for t in trims),
                category=category,
                tokens_freed=sum(t.tokens for t in trims),
                budget=plan.budget.get(category, 0),
                reason=trims[0].reason,
                timestamp=now,
            )
        follow()
        request = build_request(context, plan)
        call_id = self.commands.mint.new_id("call")
        conversation.record_model_call(
            call_id=call_id,
            provider=turn.provider,
            model=turn.model,
            parameters={**self._window_parameters(), **turn.parameters},
            manifest=encode_manifest(request.message_ids, context.last_call),
            message_count=len(request.message_ids),
            images_replaced=request.images_replaced,
            request_hash=request.hash,
            prompt_tokens=request.tokens,
            timestamp=now,
            idempotency_key=turn.idempotency_key,
            input_hash=turn.input_hash,
        )
        return PreparedTurn(
            turn.conversation_id, appended.message_id, call_id, request, None, turn.parameters
        )

    def _window_parameters(self) -> dict[str, Any]:
        """What shaped the context, recorded with each call so a replay can shape it alike."""
        return {
            "context_window": self.window.context_window,
            "max_images": self.window.max_images,
            "max_messages_per_session": self.max_messages_per_session,
            "tokenizer": self.tokens.describe(),
        }
