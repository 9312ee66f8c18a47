"""Walks the hash chains in the log and names the first position where one breaks.

Each event's hash covers its canonical document (stream id and position included), and its
prev_hash names the event before it (a branch's first event names its parent's event at the
fork). So an edited payload, a deleted event, a reordered pair or a forged hash all show."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import ApplicationRecorder, StoredEvent

from domain.hashing import GENESIS_HASH, event_hash
from infrastructure.mapping import event_document

_SCAN_BATCH = 5000


@dataclass(frozen=True)
class ChainBreak:
    conversation_id: UUID
    position: int
    problem: str

    def __str__(self) -> str:
        return f"conversation {self.conversation_id} position {self.position}: {self.problem}"


@dataclass(frozen=True)
class VerificationReport:
    conversations: int
    events: int
    breaks: tuple[ChainBreak, ...]

    @property
    def ok(self) -> bool:
        return not self.breaks


def conversation_ids(recorder: ApplicationRecorder) -> list[UUID]:
    """Every stream id in the log, in order of first appearance."""
    seen: dict[UUID, None] = {}
    start = 1
    while True:
        batch = recorder.select_notifications(start=start, limit=_SCAN_BATCH)
        if not batch:
            return list(seen)
        for notification in batch:
            seen.setdefault(UUID(str(notification.originator_id)), None)
        start = batch[-1].id + 1


def verify(recorder: ApplicationRecorder, only: UUID | None = None) -> VerificationReport:
    """Checks every conversation, or `only` one together with its ancestors (whose events
    before the fork are part of its view)."""
    ids = _lineage(recorder, only) if only is not None else conversation_ids(recorder)
    breaks: list[ChainBreak] = []
    count = 0
    for conversation_id in ids:
        stored = recorder.select_events(conversation_id)
        count += len(stored)
        problem = _first_break(recorder, conversation_id, stored)
        if problem is not None:
            breaks.append(problem)
    return VerificationReport(conversations=len(ids), events=count, breaks=tuple(breaks))


def _lineage(recorder: ApplicationRecorder, conversation_id: UUID) -> list[UUID]:
    lineage = [conversation_id]
    while True:
        first = recorder.select_events(lineage[-1], lte=1, limit=1)
        parent = _parent_of(first[0]) if first else None
        if parent is None or parent in lineage:
            return lineage
        lineage.append(parent)


def _parent_of(event: StoredEvent) -> UUID | None:
    try:
        parent = orjson.loads(event.state).get("parent")
    except orjson.JSONDecodeError:
        return None
    return UUID(parent["conversation_id"]) if isinstance(parent, dict) else None


def hashed_document(event: StoredEvent) -> dict[str, Any]:
    """The document an event's hash was computed over (stream id, position and topic in,
    its own hash and class_version out), rebuilt from the stored record."""
    document = event_document(event.state, event.originator_id, event.originator_version)
    document.pop("hash", None)
    document.pop("class_version", None)
    document["topic"] = event.topic
    return document


def _documents(
    stored: list[StoredEvent],
) -> Iterator[tuple[int, str | None, dict[str, Any] | None]]:
    for event in stored:
        try:
            stored_hash = orjson.loads(event.state).get("hash")
            yield event.originator_version, stored_hash, hashed_document(event)
        except (ValueError, AttributeError):
            yield event.originator_version, None, None


def _first_break(
    recorder: ApplicationRecorder, conversation_id: UUID, stored: Any
) -> ChainBreak | None:
    if not stored:
        return ChainBreak(conversation_id, 1, "no events recorded for this conversation")
    expected_prev: str | None = None
    expected_position = 1
    for position, stored_hash, document in _documents(list(stored)):
        if position != expected_position:
            return ChainBreak(
                conversation_id,
                expected_position,
                f"event missing (next stored position is {position})",
            )
        if document is None:
            return ChainBreak(conversation_id, position, "payload is not valid JSON")
        if stored_hash != event_hash(document):
            return ChainBreak(conversation_id, position, "hash does not match the payload")
        if expected_prev is None:
            expected_prev = _genesis_of(recorder, document)
        if document.get("prev_hash") != expected_prev:
            return ChainBreak(
                conversation_id, position, "prev_hash does not match the previous event's hash"
            )
        expected_prev = stored_hash
        expected_position += 1
    return None


def _genesis_of(recorder: ApplicationRecorder, first: dict[str, Any]) -> str:
    """What the first event must chain to: genesis, or the parent's event at the fork."""
    parent = first.get("parent")
    if not parent:
        return GENESIS_HASH
    fork = recorder.select_events(
        UUID(parent["conversation_id"]),
        gt=parent["position"] - 1,
        lte=parent["position"],
        limit=1,
    )
    if not fork:
        return "<parent event missing>"
    document = event_document(fork[0].state, fork[0].originator_id, fork[0].originator_version)
    return str(document.get("hash"))
