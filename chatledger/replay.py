"""Replaying a recorded conversation: the same turns again, answered from the record (or by
another model), with every request compared with the one recorded.

The replay runs in a scratch workspace of its own, so the recorded store is only read."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from chatledger.ledger import Ledger
from chatledger.manager import ConversationManager, failure_answer, penguin_answer
from chatledger.model_context import request_hash
from chatledger.turns import TurnAnswer, TurnFailure, reply_of
from domain.checkpoints import CheckpointConfig
from domain.errors import ChatledgerError, InvalidInput, StoreError
from domain.events import ModelCalled, ModelCallFailed, ModelResponded
from domain.manifests import ManifestRecord, resolve
from domain.view import Segment
from infrastructure.providers.port import (
    ChunkCallback,
    ModelReply,
    Provider,
    ProviderError,
    deliver,
)


class ReplayMismatch(ChatledgerError):
    """A replayed request differs from the recorded one; the message names the turn and the
    first message that differs."""


@dataclass(frozen=True)
class RecordedFailure:
    """How a call failed, which a replay of it must repeat. The exception's class is not part
    of it: a replay raises every failure as a ProviderError (a recorded Ctrl-C must not stop
    the replay)."""

    kind: str
    message: str
    partial_text: str

    def error(self) -> ProviderError:
        return ProviderError(
            self.message, kind=self.kind, retryable=False, partial_text=self.partial_text
        )


@dataclass(frozen=True)
class RecordedCall:
    turn: int
    #: Where the call is recorded: a stream (the conversation's or an ancestor's) and position.
    stream_id: UUID
    position: int
    request_hash: str
    message_ids: tuple[str, ...]
    parameters: dict[str, Any]
    #: The call's outcome: its reply, or its failure; neither when the process making the
    #: call stopped before recording one.
    reply: ModelReply | None
    failure: RecordedFailure | None

    @property
    def answer(self) -> str:
        """What process_message returned for the call."""
        if self.failure is not None:
            return failure_answer(self.failure.message)
        return self.reply.text if self.reply else ""


def recorded_calls(ledger: Ledger, conversation_id: str | UUID) -> list[RecordedCall]:
    """The model calls in a conversation's active view (its ancestors' included), in order,
    with the answers they got or how they failed."""
    conversation = ledger.conversation(conversation_id)
    segments = conversation.view.segments(conversation.id, conversation.version)
    rows = {row["id"]: row for row in ledger.read.transcript(segments)}
    topics = (ModelCalled.TOPIC, ModelResponded.TOPIC, ModelCallFailed.TOPIC)
    documents = ledger.read.documents(segments, topics)
    answers = {
        doc["call_id"]: doc.get("message_id")
        for _, topic, _, doc in documents
        if topic == ModelResponded.TOPIC
    }
    failures = {
        doc["call_id"]: RecordedFailure(
            doc.get("kind", "error"), doc["message"], doc.get("partial_text", "")
        )
        for _, topic, _, doc in documents
        if topic == ModelCallFailed.TOPIC and doc.get("call_id")
    }
    sent = _sent_ids(ledger, segments)
    calls: list[RecordedCall] = []
    for stream_id, topic, position, doc in documents:
        if topic != ModelCalled.TOPIC:
            continue
        message_ids = sent[doc["call_id"]]
        if message_ids is None:
            raise StoreError(
                f"The model call at position {position} of conversation {stream_id} is "
                f"recorded against call {doc['base_call_id']}, which is nowhere before it in "
                "the log, so what it sent cannot be rebuilt and the conversation cannot be "
                "replayed. `chatledger verify` says whether the log was altered."
            )
        answer = rows.get(answers.get(doc["call_id"]) or "")
        calls.append(
            RecordedCall(
                turn=len(calls) + 1,
                stream_id=stream_id,
                position=position,
                request_hash=doc["request_hash"],
                message_ids=message_ids,
                parameters=doc.get("parameters", {}),
                # An answer with no text nor tool calls became no message.
                reply=reply_of(answer)
                if answer
                else (ModelReply("") if doc["call_id"] in answers else None),
                failure=failures.get(doc["call_id"]),
            )
        )
    return calls


def _sent_ids(ledger: Ledger, segments: Sequence[Segment]) -> dict[str, tuple[str, ...] | None]:
    """The ids each model call of the segments' streams sent, by call id. Resolved over each
    stream from its start, not over the view alone: a call may be recorded against one that a
    rollback has since left out of the view (issue 9 let a process miss another's rollback)."""
    reach: dict[UUID, int] = {}
    for segment in segments:
        reach[segment.conversation_id] = max(reach.get(segment.conversation_id, 0), segment.last)
    streams = [Segment(conversation_id=cid, first=1, last=last) for cid, last in reach.items()]
    made = [doc for _, _, _, doc in ledger.read.documents(streams, (ModelCalled.TOPIC,))]
    sent = resolve([(doc["call_id"], ManifestRecord.of(doc)) for doc in made])
    return dict(zip((doc["call_id"] for doc in made), sent, strict=True))


def _as_recorded(
    outcome: TurnAnswer | TurnFailure,
) -> tuple[ModelReply | None, RecordedFailure | None]:
    """A turn's outcome as the record keeps it (and recorded_calls reads it back): a reply's
    text only when it is not blank, and its tool calls; a failure's kind, message and
    partial text."""
    if isinstance(outcome, TurnFailure):
        return None, RecordedFailure(outcome.kind, outcome.error, outcome.partial_text)
    reply = outcome.reply
    return ModelReply(reply.text if reply.text.strip() else "", reply.tool_calls), None


def _summary(message: dict[str, Any] | None) -> str:
    if message is None:
        return "(nothing)"
    text = message["content"] if isinstance(message["content"], str) else str(message["content"])
    text = " ".join(text.split())
    return f"{message['role']}: {text[:80]}{'...' if len(text) > 80 else ''}"


class ReplayProvider:
    """Answers each call with the recorded answer of the same turn, if the request is the
    very one recorded; otherwise raises ReplayMismatch naming the first differing message."""

    name = "replay"
    model = "replay"

    def __init__(self, source: Ledger, calls: list[RecordedCall]) -> None:
        self.source, self.calls = source, calls
        self.turn = 0

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelReply:
        if self.turn >= len(self.calls):
            raise ReplayMismatch(
                f"Turn {self.turn + 1} makes a model call, but the recording has only "
                f"{len(self.calls)}."
            )
        recorded = self.calls[self.turn]
        self.turn += 1
        if request_hash(messages) != recorded.request_hash:
            raise ReplayMismatch(self._difference(recorded, messages))
        if recorded.failure is not None:
            raise recorded.failure.error()
        if recorded.reply is None:
            raise ReplayMismatch(
                f"Turn {recorded.turn} was recorded without an answer or a failure: the "
                "process making the call stopped before either was recorded."
            )
        if on_chunk is not None and recorded.reply.text:
            await deliver(on_chunk, recorded.reply.text)
        return recorded.reply

    def _difference(self, recorded: RecordedCall, messages: list[dict[str, Any]]) -> str:
        before = self.source.context_at(recorded.stream_id, recorded.position)["request"]
        index = next(
            (i for i, (a, b) in enumerate(zip(before, messages, strict=False)) if a != b),
            min(len(before), len(messages)),
        )
        return (
            f"Turn {recorded.turn}: the request differs from the recorded one at message "
            f"{index + 1}: recorded {_summary(before[index] if index < len(before) else None)!r}"
            f", now {_summary(messages[index] if index < len(messages) else None)!r}."
        )


@dataclass
class TurnResult:
    turn: int
    request_matches: bool
    answer_matches: bool
    recorded_answer: str
    answer: str


@dataclass
class ReplayReport:
    source_id: str
    turns: list[TurnResult] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return all(t.request_matches and t.answer_matches for t in self.turns)


async def replay(
    source: Ledger,
    conversation_id: str | UUID,
    *,
    provider: Provider | None = None,
    system_prompt: str | None = None,
    workspace: Path | None = None,
    on_turn: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Re-runs the conversation's turns in a scratch workspace. With no provider, answers come
    from the record and any differing request raises ReplayMismatch; with one (another model),
    the report says per turn where requests and answers diverge. `system_prompt` replaces the
    recorded one (to see what a prompt change does). A call recorded as failed (or
    cancelled) fails again the same way. `on_turn(done, total)` follows the progress of a
    long replay."""
    source_conversation = source.conversation(conversation_id)
    calls = recorded_calls(source, source_conversation.id)
    if not calls:
        raise InvalidInput(f"Conversation {source_conversation.id} has no recorded model calls.")
    settings = calls[0].parameters
    answered = {call.message_ids[-1]: call for call in calls}
    rows = source.history(source_conversation.id)
    replies = {row["id"] for row in rows if row["metadata"].get("call_id")}
    prompt, rest = _system_prompt(rows)
    scratch = workspace or Path(tempfile.mkdtemp(prefix="chatledger-replay-"))
    manager = ConversationManager(
        workspace_path=scratch,
        # The scratch workspace's own SQLite file, even where CHATLEDGER_DATABASE_URL names
        # the recorded store: a replay must not write there.
        database_url="",
        system_prompt=prompt if system_prompt is None else system_prompt,
        model_config={
            "context_window": settings.get("context_window"),
            "max_attempts": 1,
            **({"max_images": settings["max_images"]} if "max_images" in settings else {}),
        },
        api_client=provider or ReplayProvider(source, calls),
        max_messages_per_session=int(settings.get("max_messages_per_session") or 5000),
        checkpoint_config=CheckpointConfig(enabled=False),
    )
    report = ReplayReport(str(source_conversation.id))
    try:
        for row in rest:
            if row["id"] in replies or row["metadata"].get("session_transition"):
                continue
            call = answered.get(row["id"])
            if call is None:
                manager.add_message(row["role"], row["content"], row["category"], row["metadata"])
                continue
            text, images = _turn_input(row)
            outcome = await manager.take_turn(text, image_path=list(images))
            reply, failure = _as_recorded(outcome)
            if isinstance(outcome, TurnFailure) and failure != call.failure:
                if isinstance(outcome.exception, ReplayMismatch):
                    raise outcome.exception
                raise ReplayMismatch(f"Turn {call.turn}: {penguin_answer(outcome)}")
            report.turns.append(
                TurnResult(
                    call.turn,
                    outcome.request_hash == call.request_hash,
                    (reply, failure) == (call.reply, call.failure),
                    call.answer,
                    penguin_answer(outcome),
                )
            )
            if on_turn is not None:
                on_turn(len(report.turns), len(calls))
    finally:
        manager.close()
    return report


def _system_prompt(rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    if rows and rows[0]["role"] == "system" and rows[0]["category"] == "SYSTEM":
        return str(rows[0]["content"]), rows[1:]
    return "", rows


def _turn_input(row: dict[str, Any]) -> tuple[str, list[str | Path]]:
    content = row["content"]
    if isinstance(content, str):
        return content, []
    text = "\n".join(part["text"] for part in content if part["type"] == "text")
    return text, [part["path"] for part in content if part["type"] == "image"]
