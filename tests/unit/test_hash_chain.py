"""The hash chain against its specification, docs/hash-chain.md: the known-answer vectors
there are read from the document itself, so the code and the spec cannot drift apart."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import cast
from uuid import UUID

import pytest

from domain import events
from domain.checkpoints import CheckpointType
from domain.conversation import Conversation
from domain.hashing import GENESIS_HASH, canonical_bytes, event_hash
from domain.messages import Category, Role, TextPart
from domain.view import ViewState

ROOT = Path(__file__).resolve().parents[2]
SPEC = (ROOT / "docs" / "hash-chain.md").read_text(encoding="utf-8")

A = UUID("00000000-0000-4000-8000-00000000000a")
B = UUID("00000000-0000-4000-8000-00000000000b")
WHEN = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def blocks(kind: str) -> dict[str, str]:
    """Fenced blocks tagged `vector <id> <kind>`, by vector id."""
    pattern = rf"```\w+ vector (\w+) {kind}\n(.*?)\n```"
    return dict(re.findall(pattern, SPEC, flags=re.DOTALL))


def table_hashes() -> dict[str, str]:
    """The last column of the vector tables: vector id -> sha256."""
    rows = re.findall(r"^\| (\w\d) \|.*\| ([0-9a-f]{64}) \|$", SPEC, flags=re.MULTILINE)
    return dict(rows)


def spec_events() -> list[events.ConversationEvent]:
    """E1..E4 of the spec, built the way the Ledger builds them."""
    root = Conversation.start(
        conversation_id=A,
        view=ViewState().with_new_session("sess-1"),
        prev_hash=GENESIS_HASH,
        timestamp=WHEN,
        title="Trip to Lisbon",
    )
    root.append_message(
        message_id="msg-1",
        role=Role.USER,
        category=Category.DIALOG,
        parts=(TextPart(text='Olá, "Lisboa" 😀\nDay 2'),),
        tokens=12,
        encoding="cl100k_base",
        timestamp=WHEN,
        metadata={"client": "cli", "note": None, "score": 0.25},
    )
    fork_at = root.create_checkpoint(
        checkpoint_id="cp-1",
        checkpoint_type=CheckpointType.MANUAL,
        name="before day trips",
        timestamp=WHEN,
    )
    recorded = [cast(events.ConversationEvent, e) for e in root.collect_events()]
    branch = Conversation.start(
        conversation_id=B,
        view=root.view.cut(A, fork_at, 2),
        prev_hash=recorded[-1].hash,
        timestamp=WHEN,
        title="Porto instead",
        parent=events.ForkPoint(conversation_id=A, position=fork_at, source_id="cp-1"),
    )
    return [*recorded, *(cast(events.ConversationEvent, e) for e in branch.collect_events())]


def hashed(event: events.ConversationEvent) -> dict[str, object]:
    return {**event.document(), "topic": event.TOPIC}


def test_the_spec_has_every_vector_it_lists() -> None:
    hashes = table_hashes()
    assert sorted(hashes) == ["E1", "E2", "E3", "E4", "X1", "X2", "X3", "X4"]
    assert sorted(blocks("document")) == sorted(blocks("hex")) == ["X1", "X2", "X3", "X4"]
    assert sorted(blocks("canonical")) == ["E1", "E2", "E3", "E4"]


@pytest.mark.parametrize("vector", ["X1", "X2", "X3", "X4"])
def test_encoding_vectors(vector: str) -> None:
    document = json.loads(blocks("document")[vector])
    expected = bytes.fromhex(blocks("hex")[vector])
    assert canonical_bytes(document) == expected
    assert hashlib.sha256(expected).hexdigest() == table_hashes()[vector]
    assert event_hash(document) == table_hashes()[vector]


def test_event_vectors_encode_byte_for_byte() -> None:
    canonical = blocks("canonical")
    hashes = table_hashes()
    for name, event in zip(["E1", "E2", "E3", "E4"], spec_events(), strict=True):
        expected = canonical[name].encode("utf-8")
        assert canonical_bytes(hashed(event)) == expected, name
        assert hashlib.sha256(expected).hexdigest() == hashes[name], name
        assert event.hash == event.compute_hash() == hashes[name], name


def test_the_chain_starts_at_genesis_and_a_branch_chains_to_the_fork() -> None:
    first, message, checkpoint, branch_start = spec_events()
    assert GENESIS_HASH == "0" * 64
    assert first.prev_hash == GENESIS_HASH
    assert message.prev_hash == first.hash
    assert checkpoint.prev_hash == message.hash
    assert isinstance(branch_start, events.ConversationStarted)
    assert branch_start.parent == events.ForkPoint(conversation_id=A, position=3, source_id="cp-1")
    assert branch_start.prev_hash == checkpoint.hash


def test_none_fields_are_left_out_but_nulls_inside_metadata_stay() -> None:
    first, message, checkpoint, branch_start = spec_events()
    assert {"parent", "reset_from", "hash"}.isdisjoint(first.document())
    assert "parent" in branch_start.document()
    assert {"description", "auto_ordinal"}.isdisjoint(checkpoint.document())
    assert message.document()["metadata"] == {"client": "cli", "note": None, "score": 0.25}


def test_every_field_and_the_topic_are_covered() -> None:
    """Changing any field, the position, the stream or the kind of event changes the hash."""
    _, message, checkpoint, _ = spec_events()
    document = hashed(message)
    for key, changed in [
        ("originator_id", str(B)),
        ("originator_version", 3),
        ("topic", "chatledger:SessionStarted"),
        ("tokens", 13),
        ("metadata", {"client": "cli", "score": 0.25}),
        ("prev_hash", checkpoint.hash),
    ]:
        assert event_hash({**document, key: changed}) != message.hash, key


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "verify_bundle", ROOT / "scripts/verify_bundle.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_standalone_verifier_encodes_the_vectors_identically() -> None:
    script = _script()
    assert script.GENESIS_HASH == GENESIS_HASH
    for vector, text in blocks("document").items():
        assert script.canonical_bytes(json.loads(text)) == bytes.fromhex(blocks("hex")[vector])
    for name, event in zip(["E1", "E2", "E3", "E4"], spec_events(), strict=True):
        assert script.canonical_bytes(hashed(event)) == blocks("canonical")[name].encode()
