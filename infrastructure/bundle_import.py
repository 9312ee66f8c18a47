"""Importing a bundle (docs/hash-chain.md §5): a conversation's stored events, its ancestors'
up to their forks included, written into another store exactly as they were stored (same
streams, positions, topics and payloads), so their hashes and chains hold there too.

Nothing is written until the whole bundle is checked: its lines are bundle events, its
chains are intact (by the rules of infrastructure/verification.py, walked over the bundle
itself), its conversations are one lineage, root first, each event reads as a chatledger
event, and where the store already holds a conversation of the bundle it holds the same
events. Then the events the store lacks are inserted in one transaction through the
application recorder, with the projections applied in that transaction (as a command's save
does), so each is projected exactly once. Importing what the store already holds writes
nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import orjson
from eventsourcing.persistence import (
    ApplicationRecorder,
    PersistenceError,
    RecordConflictError,
    StoredEvent,
)

from domain.errors import BundleConflict, ConcurrencyConflict, FileInputError, StoreError
from infrastructure.database import Database
from infrastructure.event_store import EventStore
from infrastructure.files import read_within
from infrastructure.verification import verify

#: Largest bundle file read (the whole file is checked before anything is written, so it is
#: read whole); a device or a runaway file is refused instead of read until memory runs out.
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
_LINE_KEYS = {"hash", "document", "class_version"}
#: Document keys that the store keeps elsewhere than in the payload, or never in a document.
_NOT_IN_DOCUMENT = ("hash", "class_version")


@dataclass(frozen=True)
class BundleImport:
    """What an import did: the bundle's conversations (root first; the last is the one the
    bundle is of), how many events it held and how many of them were written."""

    conversations: tuple[UUID, ...]
    events: int
    written: int

    @property
    def conversation_id(self) -> UUID:
        return self.conversations[-1]


def read_bundle(path: Path, limit: int = MAX_BUNDLE_BYTES) -> list[StoredEvent]:
    """The stored events a bundle file describes, in its order (FileInputError if the file
    cannot be read, is too large, or a line is not a bundle event). Their chains are not
    checked here: see `check_bundle`."""
    try:
        data, _ = read_within(path.expanduser(), limit, "bundle", "MAX_BUNDLE_BYTES")
    except (ValueError, RuntimeError) as error:  # a NUL in the name, "~nosuchuser", ...
        raise FileInputError(f"Cannot read bundle {path!r}: {error}.") from None
    events = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if raw.strip():
            try:
                events.append(_stored_event(raw))
            except ValueError as error:  # orjson's JSONDecodeError is one too
                raise FileInputError(
                    f"Bundle {path} line {number} is not a bundle event: {error}"
                ) from None
    if not events:
        raise FileInputError(f"Bundle {path} holds no events.")
    return events


def _stored_event(raw: bytes) -> StoredEvent:
    """One bundle line as the event the store held: the document back into a payload (stream
    id and position out, its hash and class_version in), the inverse of `bundle_line`."""
    line = orjson.loads(raw)
    if not isinstance(line, dict) or not {"hash", "document"} <= line.keys() <= _LINE_KEYS:
        raise ValueError("a line is an object with a hash, a document and maybe a class_version.")
    document, hash_ = line["document"], line["hash"]
    if not isinstance(document, dict) or not isinstance(hash_, str):
        raise ValueError("its document must be an object and its hash a string.")
    if any(key in document for key in _NOT_IN_DOCUMENT):
        raise ValueError("its document holds a hash or class_version of its own.")
    class_version = line.get("class_version", 1)
    if type(class_version) is not int or class_version < 1:
        raise ValueError(f"its class_version {class_version!r} is not a positive integer.")
    state = dict(document)
    originator_id, position, topic = (
        state.pop("originator_id", None),
        state.pop("originator_version", None),
        state.pop("topic", None),
    )
    if type(position) is not int or position < 1:
        raise ValueError(f"its originator_version {position!r} is not a positive integer.")
    if not isinstance(topic, str) or not isinstance(originator_id, str):
        raise ValueError("its document needs an originator_id and a topic.")
    stream = UUID(originator_id)  # ValueError if it is not one
    if str(stream) != originator_id:
        raise ValueError(f"its originator_id {originator_id!r} is not a lowercase UUID.")
    state["hash"] = hash_
    if class_version != 1:
        state["class_version"] = class_version
    return StoredEvent(
        originator_id=stream,
        originator_version=position,
        topic=topic,
        state=orjson.dumps(state),
    )


class _BundleRecorder:
    """The part of an application recorder verification reads, over a bundle's events. Each
    stream's events come in the bundle's order, not sorted, so a reordered bundle shows."""

    def __init__(self, events: Sequence[StoredEvent]) -> None:
        self.streams: dict[UUID, list[StoredEvent]] = {}
        for event in events:
            self.streams.setdefault(UUID(str(event.originator_id)), []).append(event)

    def select_events(
        self,
        originator_id: UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        selected = [
            event
            for event in self.streams.get(originator_id, [])
            if (gt is None or event.originator_version > gt)
            and (lte is None or event.originator_version <= lte)
        ]
        if desc:
            selected.reverse()
        return selected[:limit] if limit is not None else selected


def check_bundle(events: Sequence[StoredEvent]) -> tuple[UUID, ...]:
    """Checks a bundle's chains and shape; returns its conversations, root first. Raises
    FileInputError naming the first problem."""
    recorder = _BundleRecorder(events)
    order: list[UUID] = []
    for event in events:
        stream = UUID(str(event.originator_id))
        if not order or order[-1] != stream:
            if stream in order:
                raise FileInputError(
                    f"The bundle is broken: the events of conversation {stream} are not "
                    "consecutive."
                )
            order.append(stream)
    try:
        report = verify(cast(ApplicationRecorder, recorder), only=order[-1])
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        # A parent that is no {conversation_id, position} object, under a recomputed hash.
        raise FileInputError(f"The bundle is broken: {error!r}.") from None
    if not report.ok:
        raise FileInputError(f"The bundle is broken: {report.breaks[0]}.")
    lineage = [head.conversation_id for head in report.heads][::-1]
    if lineage != order:
        raise FileInputError(
            "The bundle is broken: its conversations are not the lineage of its last one, "
            f"root first ({', '.join(map(str, order))})."
        )
    return tuple(order)


#: A projector as EventStore holds one: (cursor, domain events, notification ids or None).
Projector = Callable[[Any, Sequence[Any], Sequence[int] | None], None]


def import_bundle(
    store: EventStore, database: Database, events: Sequence[StoredEvent]
) -> BundleImport:
    """Checks a bundle's events (`check_bundle`), then writes the ones the store lacks, in one
    transaction, projected in it. BundleConflict if the store holds any of the bundle's
    positions with another event, or events the bundle's own would have to follow."""
    database.refuse_if_read_only()
    conversations = check_bundle(events)
    # Every event must read as a chatledger event (a topic it knows, fields it accepts).
    domain_events = {id(event): _domain_event(store, event) for event in events}
    missing: list[StoredEvent] = []
    try:
        with database.writer_lock(), database.failures():
            for conversation_id in conversations:
                database.lock_conversation(conversation_id)
                missing += _missing(store.recorder, conversation_id, events)
            if missing:
                _insert(store, missing, [domain_events[id(event)] for event in missing])
            database.note_own_commit()
    except RecordConflictError:
        database.forget_commits()
        raise ConcurrencyConflict(
            "Another writer appended to a conversation of the bundle meanwhile; import again."
        ) from None
    except PersistenceError as error:
        database.forget_commits()
        raise database.failed(error) from error
    except BaseException:
        database.forget_commits()
        raise
    for conversation_id in conversations:
        store.forget(conversation_id)
    return BundleImport(conversations, len(events), len(missing))


def _domain_event(store: EventStore, event: StoredEvent) -> Any:
    try:
        return store.mapper.to_domain_event(event)
    except StoreError:
        raise FileInputError(
            f"The bundle's event at position {event.originator_version} of conversation "
            f"{event.originator_id} is not a chatledger event this version reads."
        ) from None


def _missing(
    recorder: ApplicationRecorder, conversation_id: UUID, events: Sequence[StoredEvent]
) -> list[StoredEvent]:
    """The bundle's events of one conversation that the store lacks, after checking that what
    it holds at the bundle's positions are the same events."""
    bundled = [e for e in events if e.originator_id == conversation_id]
    stored = {
        e.originator_version: e for e in recorder.select_events(conversation_id, lte=len(bundled))
    }
    for event in bundled:
        held = stored.get(event.originator_version)
        if held is not None and _hash(held) != _hash(event):
            raise BundleConflict(
                f"Conversation {conversation_id} is already stored with another event at "
                f"position {event.originator_version}: the bundle conflicts with this store."
            )
    missing = [e for e in bundled if e.originator_version not in stored]
    if missing and len(stored) != missing[0].originator_version - 1:
        raise BundleConflict(
            f"Conversation {conversation_id} is stored with a gap before position "
            f"{missing[0].originator_version}: run `chatledger verify`."
        )
    return missing


def _hash(event: StoredEvent) -> object:
    try:
        return orjson.loads(event.state).get("hash")
    except (ValueError, AttributeError):
        return None


def _insert(store: EventStore, stored: list[StoredEvent], domain_events: list[Any]) -> None:
    """Inserts stored events as they are, with the projections in the same transaction (the
    way EventStore._record has a command's events projected)."""
    projector = store.projector
    kwargs: dict[str, Any] = {}
    if projector is not None:
        kwargs["project"] = lambda cursor, ids: projector(cursor, domain_events, ids)
    store.recorder.insert_events(stored, **kwargs)
