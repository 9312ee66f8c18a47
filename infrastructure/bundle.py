"""Bundles: a conversation's stored events as JSON Lines that anyone can verify without
chatledger (format in docs/hash-chain.md; verifier in scripts/verify_bundle.py).

A bundle of a branch holds its ancestors' events too, each up to the position its child forked
from: that is the part of the ancestors the branch's view (and its chain) stands on. Ancestors
come first, root first; the conversation's whole stream comes last."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from uuid import UUID

import orjson
from eventsourcing.persistence import ApplicationRecorder, StoredEvent

from domain.errors import ConversationNotFound, StoreError
from infrastructure.verification import hashed_document


def bundle_line(event: StoredEvent) -> dict[str, Any]:
    """One stored event as a bundle line: its stored hash, the document that hash was
    computed over, and its class_version when it is not 1 (not hashed: it names upcasters)."""
    try:
        state = orjson.loads(event.state)
        line: dict[str, Any] = {"hash": state.get("hash"), "document": hashed_document(event)}
    except (ValueError, AttributeError) as error:
        raise StoreError(
            f"The stored event at position {event.originator_version} of conversation "
            f"{event.originator_id} is not a JSON object ({error}); run `chatledger verify`."
        ) from None
    class_version = state.get("class_version", 1)
    if class_version != 1:
        line["class_version"] = class_version
    return line


def lineage(recorder: ApplicationRecorder, conversation_id: UUID) -> list[tuple[UUID, int | None]]:
    """The conversation and its ancestors, root first, each with the last position the bundle
    takes from it (None: all of it)."""
    chain: list[tuple[UUID, int | None]] = [(conversation_id, None)]
    while True:
        first = recorder.select_events(chain[-1][0], lte=1, limit=1)
        if not first:
            if len(chain) == 1:
                raise ConversationNotFound(f"No conversation with id {conversation_id}.")
            raise StoreError(f"Conversation {chain[-1][0]}, an ancestor, has no events stored.")
        parent = orjson.loads(first[0].state).get("parent")
        if not isinstance(parent, dict):
            return chain[::-1]
        parent_id = UUID(str(parent["conversation_id"]))
        if any(parent_id == seen for seen, _ in chain):
            raise StoreError(f"Conversation {parent_id} is its own ancestor.")
        chain.append((parent_id, int(parent["position"])))


def bundle_lines(recorder: ApplicationRecorder, conversation_id: UUID) -> Iterator[dict[str, Any]]:
    for stream, last in lineage(recorder, conversation_id):
        for event in recorder.select_events(stream, lte=last):
            yield bundle_line(event)


def dump_bundle(recorder: ApplicationRecorder, conversation_id: UUID, file: BinaryIO) -> int:
    """Writes the bundle of `conversation_id` to an open binary file; returns the number of
    events. The lineage is resolved first, so an unknown conversation writes nothing."""
    lines = bundle_lines(recorder, conversation_id)
    count = 0
    for line in lines:
        file.write(orjson.dumps(line) + b"\n")
        count += 1
    return count


def write_bundle(recorder: ApplicationRecorder, conversation_id: UUID, path: Path) -> int:
    """Writes the bundle of `conversation_id` to `path`; returns the number of events."""
    lineage(recorder, conversation_id)  # an unknown conversation leaves no file behind
    with path.open("wb") as file:
        return dump_bundle(recorder, conversation_id, file)
