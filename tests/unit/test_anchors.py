"""Anchor documents: built from an intact verification report, written and read back, and
checked strictly when read (a damaged anchor must not quietly pin nothing)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson
import pytest

from domain.errors import FileInputError, InvalidInput, StoreError
from infrastructure.verification import (
    ANCHOR_FORMAT,
    ANCHOR_VERSION,
    Anchor,
    ChainBreak,
    Head,
    VerificationReport,
    load_anchor,
    parse_anchor,
    read_anchor,
    write_anchor,
)

A, B = UUID(int=1), UUID(int=2)
HASH_A, HASH_B = "a" * 64, "0123456789abcdef" * 4
TAKEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def _report() -> VerificationReport:
    return VerificationReport(
        conversations=2, events=12, breaks=(), heads=(Head(A, 9, HASH_A), Head(B, 3, HASH_B))
    )


def _document(**changes: Any) -> dict[str, Any]:
    document = _report().anchor(TAKEN)
    document.update(changes)
    return document


def test_report_anchor_document() -> None:
    assert _report().anchor(TAKEN) == {
        "format": ANCHOR_FORMAT,
        "version": ANCHOR_VERSION,
        "taken_at": "2024-05-06T07:08:09+00:00",
        "conversations": {
            str(A): {"position": 9, "hash": HASH_A},
            str(B): {"position": 3, "hash": HASH_B},
        },
    }
    # Without a time given, it is taken now.
    taken_at = datetime.fromisoformat(_report().anchor()["taken_at"])
    assert abs((datetime.now(UTC) - taken_at).total_seconds()) < 60


def test_broken_report_is_never_anchored() -> None:
    broken = VerificationReport(1, 4, (ChainBreak(A, 2, "hash does not match the payload"),))
    with pytest.raises(StoreError, match=f"conversation {A} position 2"):
        broken.anchor(TAKEN)


def test_parse_round_trip() -> None:
    anchor = parse_anchor(_document())
    assert anchor == Anchor(TAKEN, {A: Head(A, 9, HASH_A), B: Head(B, 3, HASH_B)})
    assert load_anchor(anchor) is anchor
    assert load_anchor(_document()) == anchor
    # An empty store has an empty anchor, and that is a valid one.
    assert parse_anchor(_document(conversations={})).heads == {}
    # Unknown extra fields are ignored.
    assert parse_anchor(_document(note="kept off-site")) == anchor


def test_write_then_read(tmp_path: Path) -> None:
    path = tmp_path / "anchor.json"
    write_anchor(path, _document())
    assert orjson.loads(path.read_bytes()) == _document()
    assert (
        read_anchor(path)
        == load_anchor(path)
        == load_anchor(str(path))
        == parse_anchor(_document())
    )
    # Overwriting leaves exactly the new anchor and no temporary file behind.
    write_anchor(path, _document(conversations={}))
    assert read_anchor(path).heads == {}
    assert [p.name for p in tmp_path.iterdir()] == ["anchor.json"]


def test_write_into_a_missing_folder_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(FileInputError, match="Cannot write anchor file"):
        write_anchor(tmp_path / "no" / "such" / "anchor.json", _document())


@pytest.mark.parametrize(
    ("document", "message"),
    [
        pytest.param([], "must be a JSON object", id="list"),
        pytest.param(_document(format="other"), "format", id="format"),
        pytest.param(_document(version=None), "version", id="no-version"),
        pytest.param(_document(version=True), "version", id="bool-version"),
        pytest.param(_document(version=ANCHOR_VERSION + 1), "newer", id="newer-version"),
        pytest.param(_document(taken_at="yesterday"), "taken_at", id="bad-time"),
        pytest.param(_document(taken_at=None), "taken_at", id="no-time"),
        pytest.param(_document(conversations=[]), "conversations", id="conversations-list"),
        pytest.param(
            _document(conversations={"nope": {"position": 1, "hash": HASH_A}}),
            "not a conversation id",
            id="bad-id",
        ),
        pytest.param(_document(conversations={str(A): 9}), "object", id="head-not-object"),
        pytest.param(
            _document(conversations={str(A): {"position": 0, "hash": HASH_A}}),
            "position",
            id="position-0",
        ),
        pytest.param(
            _document(conversations={str(A): {"position": "9", "hash": HASH_A}}),
            "position",
            id="position-string",
        ),
        pytest.param(
            _document(conversations={str(A): {"position": True, "hash": HASH_A}}),
            "position",
            id="position-bool",
        ),
        pytest.param(
            _document(conversations={str(A): {"position": 9, "hash": HASH_A.upper()}}),
            "sha256",
            id="hash-uppercase",
        ),
        pytest.param(
            _document(conversations={str(A): {"position": 9, "hash": HASH_A[:-1]}}),
            "sha256",
            id="hash-short",
        ),
        pytest.param(
            _document(conversations={str(A): {"position": 9}}), "sha256", id="hash-missing"
        ),
    ],
)
def test_malformed_documents_are_invalid_input(document: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_anchor(document)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"", "not valid JSON", id="empty"),
        pytest.param(b"\xff\xfe garbage", "not valid JSON", id="binary"),
        pytest.param(b'{"format": "chatledger-anchor"', "not valid JSON", id="cut"),
        pytest.param(b'"just a string"', "not a chatledger anchor", id="string"),
        pytest.param(orjson.dumps(_document(version=0)), "not a chatledger anchor", id="version"),
    ],
)
def test_corrupt_files_are_file_input_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "anchor.json"
    path.write_bytes(content)
    with pytest.raises(FileInputError, match=message):
        read_anchor(path)


def test_unreadable_paths_are_file_input_errors(tmp_path: Path) -> None:
    with pytest.raises(FileInputError, match="Cannot read anchor file"):
        read_anchor(tmp_path / f"{uuid4()}.json")
    with pytest.raises(FileInputError, match="Cannot read anchor file"):
        read_anchor(tmp_path)  # a folder
