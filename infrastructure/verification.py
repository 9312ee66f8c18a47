"""Walks the hash chains in the log and names the first position where one breaks.

Each event's hash covers its canonical document (stream id and position included), and its
prev_hash names the event before it (a branch's first event names its parent's event at the
fork). So an edited payload, a deleted event, a reordered pair or a forged hash all show.

The chain alone cannot see its own end: deleting a stream's last events, or forging its newest
event with a recomputed hash, leaves a shorter or different chain that is still consistent.
An anchor closes that gap: a small JSON document, exported after a successful verify, holding
every conversation's head position and the hash of the event there. Verifying against it also
checks that each anchored head is still stored with that hash (streams may have grown since;
anchors do not forbid growth, and conversations started after it are just walked)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import ApplicationRecorder, StoredEvent

from domain.errors import FileInputError, InvalidInput, StoreError
from domain.hashing import GENESIS_HASH, event_hash
from infrastructure.files import read_within
from infrastructure.mapping import event_document

_SCAN_BATCH = 5000

#: Largest anchor file read: about 150 bytes per anchored conversation, so room for ~400,000;
#: a device or a runaway file is refused instead of read until memory runs out.
MAX_ANCHOR_BYTES = 64 * 1024 * 1024
#: The "format" field of an anchor document, and the only version of it there is so far.
ANCHOR_FORMAT = "chatledger-anchor"
ANCHOR_VERSION = 1
_HASH_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ChainBreak:
    conversation_id: UUID
    position: int
    problem: str

    def __str__(self) -> str:
        return f"conversation {self.conversation_id} position {self.position}: {self.problem}"


@dataclass(frozen=True)
class Head:
    """A conversation's newest event: its position and the hash stored with it."""

    conversation_id: UUID
    position: int
    hash: str


@dataclass(frozen=True)
class Anchor:
    """A parsed anchor document: the heads it pins, by conversation."""

    taken_at: datetime
    heads: Mapping[UUID, Head]


@dataclass(frozen=True)
class VerificationReport:
    conversations: int
    events: int
    breaks: tuple[ChainBreak, ...]
    #: The head of every conversation whose chain was walked without a break.
    heads: tuple[Head, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.breaks

    def anchor(self, taken_at: datetime | None = None) -> dict[str, Any]:
        """The anchor document of what this report verified (JSON-ready). Refuses a broken
        store: an anchor must only ever pin heads whose chains were found intact."""
        if not self.ok:
            raise StoreError(
                f"Cannot anchor a broken store ({len(self.breaks)} broken conversations; "
                f"first: {self.breaks[0]})."
            )
        return {
            "format": ANCHOR_FORMAT,
            "version": ANCHOR_VERSION,
            "taken_at": (taken_at or datetime.now(UTC)).isoformat(),
            "conversations": {
                str(head.conversation_id): {"position": head.position, "hash": head.hash}
                for head in self.heads
            },
        }


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


AnchorSource = Anchor | Mapping[str, Any] | Path | str


def verify(
    recorder: ApplicationRecorder,
    only: UUID | None = None,
    anchor: AnchorSource | None = None,
) -> VerificationReport:
    """Checks every conversation, or `only` one together with its ancestors (whose events
    before the fork are part of its view). With an anchor (parsed, a document, or the path of
    an anchor file), each anchored conversation in scope must also still hold its anchored
    head; anchored conversations with no events left at all are reported too. At most one
    break is named per conversation: the earliest position found."""
    pinned = load_anchor(anchor).heads if anchor is not None else {}
    ids = _lineage(recorder, only) if only is not None else conversation_ids(recorder)
    if only is None:
        present = set(ids)
        ids += [conversation_id for conversation_id in pinned if conversation_id not in present]
    breaks: list[ChainBreak] = []
    heads: list[Head] = []
    count = 0
    for conversation_id in ids:
        stored = list(recorder.select_events(conversation_id))
        count += len(stored)
        problem = _check(recorder, conversation_id, stored, pinned.get(conversation_id))
        if problem is not None:
            breaks.append(problem)
        else:
            heads.append(_head_of(stored[-1]))
    return VerificationReport(
        conversations=len(ids), events=count, breaks=tuple(breaks), heads=tuple(heads)
    )


def anchor_of(
    recorder: ApplicationRecorder, only: UUID | None = None, taken_at: datetime | None = None
) -> dict[str, Any]:
    """Verifies the store (or `only` one conversation's lineage) and returns the anchor
    document of its heads. Raises StoreError when a chain is broken."""
    return verify(recorder, only).anchor(taken_at)


def load_anchor(source: AnchorSource) -> Anchor:
    """An anchor from a parsed Anchor, a document (InvalidInput if it is not one) or a file
    (FileInputError if it is missing, unreadable or not an anchor)."""
    if isinstance(source, Anchor):
        return source
    if isinstance(source, Path | str):
        return read_anchor(Path(source))
    return parse_anchor(source)


def read_anchor(path: Path) -> Anchor:
    try:
        data, _ = read_within(
            path.expanduser(), MAX_ANCHOR_BYTES, "anchor file", "MAX_ANCHOR_BYTES"
        )
    except (ValueError, RuntimeError) as error:  # a NUL in the name, "~nosuchuser", ...
        raise FileInputError(f"Cannot read anchor file {path!r}: {error}.") from None
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise FileInputError(f"Anchor file {path} is not valid JSON ({error}).") from None
    try:
        return parse_anchor(document)
    except InvalidInput as error:
        raise FileInputError(f"Anchor file {path} is not a chatledger anchor: {error}") from None


def parse_anchor(document: Any) -> Anchor:
    """Checks an anchor document's shape strictly: a damaged anchor must not quietly pin
    nothing (or the wrong thing)."""
    if not isinstance(document, Mapping):
        raise InvalidInput(f"An anchor must be a JSON object, not {type(document).__name__}.")
    if document.get("format") != ANCHOR_FORMAT:
        raise InvalidInput(f"its format is {document.get('format')!r}, not {ANCHOR_FORMAT!r}.")
    version = document.get("version")
    if type(version) is not int or version < 1:
        raise InvalidInput(f"its version {version!r} is not a positive integer.")
    if version > ANCHOR_VERSION:
        raise InvalidInput(
            f"its version {version} is newer than this chatledger reads ({ANCHOR_VERSION})."
        )
    taken_at = document.get("taken_at")
    try:
        when = datetime.fromisoformat(taken_at) if isinstance(taken_at, str) else None
    except ValueError:
        when = None
    if when is None:
        raise InvalidInput(f"its taken_at {taken_at!r} is not an ISO 8601 time.")
    conversations = document.get("conversations")
    if not isinstance(conversations, Mapping):
        raise InvalidInput("its conversations must be an object keyed by conversation id.")
    heads: dict[UUID, Head] = {}
    for key, head in conversations.items():
        conversation_id = _anchored_id(key)
        heads[conversation_id] = _anchored_head(conversation_id, head)
    return Anchor(taken_at=when, heads=heads)


def write_anchor(path: Path, document: Mapping[str, Any]) -> None:
    """Writes an anchor document atomically (a temporary file renamed over `path`), so an
    interrupted export never leaves half an anchor behind."""
    path = path.expanduser()
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    try:
        handle, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise FileInputError(f"Cannot write anchor file {path}: {reason}.") from None


def _anchored_id(key: Any) -> UUID:
    try:
        return UUID(str(key))
    except ValueError:
        raise InvalidInput(f"{key!r} is not a conversation id.") from None


def _anchored_head(key: UUID, head: Any) -> Head:
    if not isinstance(head, Mapping):
        raise InvalidInput(f"the head of {key} must be an object with a position and a hash.")
    position, hash_ = head.get("position"), head.get("hash")
    if type(position) is not int or position < 1:
        raise InvalidInput(f"the head position of {key} ({position!r}) is not a positive integer.")
    if not isinstance(hash_, str) or not _HASH_RE.fullmatch(hash_):
        raise InvalidInput(f"the head hash of {key} ({hash_!r}) is not a sha256 hex digest.")
    return Head(key, position, hash_)


def _stored_hash(event: StoredEvent) -> str | None:
    try:
        stored_hash = orjson.loads(event.state).get("hash")
    except (ValueError, AttributeError):
        return None
    return stored_hash if isinstance(stored_hash, str) else None


def _head_of(event: StoredEvent) -> Head:
    return Head(UUID(str(event.originator_id)), event.originator_version, str(_stored_hash(event)))


def _check(
    recorder: ApplicationRecorder,
    conversation_id: UUID,
    stored: list[StoredEvent],
    head: Head | None,
) -> ChainBreak | None:
    """The first break of one conversation: the chain walk's, or the anchor's when it is at
    a lower position (a missing conversation, a missing or different anchored head)."""
    if head is not None and not stored:
        return ChainBreak(
            conversation_id,
            1,
            f"conversation missing: no events stored, the anchor has its head at {head.position}",
        )
    walked = _first_break(recorder, conversation_id, stored)
    anchored = _anchor_break(head, stored) if head is not None else None
    if walked is None or anchored is None:
        return walked or anchored
    return anchored if anchored.position < walked.position else walked


def _anchor_break(head: Head, stored: list[StoredEvent]) -> ChainBreak | None:
    at_head = next((e for e in reversed(stored) if e.originator_version == head.position), None)
    if at_head is None:
        return ChainBreak(
            head.conversation_id, head.position, f"truncated: anchored head {head.position} missing"
        )
    if _stored_hash(at_head) != head.hash:
        return ChainBreak(
            head.conversation_id,
            head.position,
            f"event at anchored head {head.position} differs from the anchor",
        )
    return None


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
