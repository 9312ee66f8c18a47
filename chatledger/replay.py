"""Replaying a recorded conversation: the same turns again, answered from the record (or by
another model), with every request compared with the one recorded.

The replay runs in a scratch workspace of its own, so the recorded store is only read."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from chatledger.ledger import Ledger
from chatledger.model_context import request_hash
from chatledger.providers import ChunkCallback, ModelReply, Provider, ToolCall, deliver
from domain.checkpoints import CheckpointConfig
from domain.errors import ChatledgerError, InvalidInput
from domain.events import ModelCalled, ModelResponded
from domain.manifests import sent_ids


class ReplayMismatch(ChatledgerError):
    """A replayed request differs from the recorded one; the message names the turn and the
    first message that differs."""


@dataclass(frozen=True)
class RecordedCall:
    turn: int
    #: Where the call is recorded: a stream (the conversation's or an ancestor's) and position.
    stream_id: UUID
    position: int
    request_hash: str
    message_ids: tuple[str, ...]
    parameters: dict[str, Any]
    reply: ModelReply | None


def recorded_calls(ledger: Ledger, conversation_id: str | UUID) -> list[RecordedCall]:
    """The model calls in a conversation's active view (its ancestors' included), in order,
    with the answers they got."""
    conversation = ledger.conversation(conversation_id)
    segments = conversation.view.segments(conversation.id, conversation.version)
    rows = {row["id"]: row for row in ledger.read.transcript(segments)}
    topics = (ModelCalled.TOPIC, ModelResponded.TOPIC)
    documents = ledger.read.documents(segments, topics)
    answers = {
        doc["call_id"]: doc.get("message_id")
        for _, topic, _, doc in documents
        if topic == ModelResponded.TOPIC
    }
    calls: list[RecordedCall] = []
    known: dict[str, tuple[str, ...]] = {}
    for stream_id, topic, position, doc in documents:
        if topic != ModelCalled.TOPIC:
            continue
        known[doc["call_id"]] = sent_ids(
            doc.get("message_ids", ()),
            doc.get("base_call_id"),
            doc.get("added_ids", ()),
            doc.get("removed_ids", ()),
            known,
        )
        answer = rows.get(answers.get(doc["call_id"]) or "")
        calls.append(
            RecordedCall(
                turn=len(calls) + 1,
                stream_id=stream_id,
                position=position,
                request_hash=doc["request_hash"],
                message_ids=known[doc["call_id"]],
                parameters=doc.get("parameters", {}),
                reply=_reply_of(answer) if answer else None,
            )
        )
    return calls


def _reply_of(row: dict[str, Any]) -> ModelReply:
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
        if recorded.reply is None:
            raise ReplayMismatch(f"Turn {recorded.turn} was recorded without an answer.")
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
) -> ReplayReport:
    """Re-runs the conversation's turns in a scratch workspace. With no provider, answers come
    from the record and any differing request raises ReplayMismatch; with one (another model),
    the report says per turn where requests and answers diverge. `system_prompt` replaces the
    recorded one (to see what a prompt change does)."""
    from chatledger.manager import ConversationManager

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
            answer = await manager.process_message(text, image_path=list(images))
            if isinstance(answer, str) and answer.startswith("Error processing message:"):
                raise ReplayMismatch(f"Turn {call.turn}: {answer}")
            made = recorded_calls(manager.ledger, manager.get_conversation_id())[-1]
            recorded_text = call.reply.text if call.reply else ""
            report.turns.append(
                TurnResult(
                    call.turn,
                    made.request_hash == call.request_hash,
                    answer == recorded_text,
                    recorded_text,
                    str(answer),
                )
            )
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
