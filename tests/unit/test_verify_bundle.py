"""What an auditor runs: scripts/verify_bundle.py (standard library only) on a bundle of a
conversation's stored events, clean and tampered in every way the chain is meant to show.

The store is an in-memory event recorder filled through chatledger's own mapper, so the lines
are exactly what a real store holds; one test exports from a real Ledger too."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.popo import POPOApplicationRecorder

from chatledger.ledger import Ledger
from domain import events
from domain.checkpoints import CheckpointType
from domain.conversation import Conversation
from domain.errors import ConversationNotFound
from domain.hashing import GENESIS_HASH
from domain.messages import Category, Role, TextPart
from domain.view import ViewState
from infrastructure.bundle import bundle_lines, lineage, write_bundle
from infrastructure.mapping import OrjsonTranscoder, PydanticMapper

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "verify_bundle.py"
NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
Line = dict[str, Any]


class Family:
    """A root conversation, a branch of it from position 3, and a branch of that branch from
    its position 2; the root goes on after the fork."""

    def __init__(self) -> None:
        self.recorder = POPOApplicationRecorder()
        self.mapper = PydanticMapper(transcoder=OrjsonTranscoder())
        root = self._start(uuid4(), None, GENESIS_HASH)
        for text in ("first", "second", "third"):  # positions 2, 3, 4
            self._say(root, text)
        self.root = root.id
        self._save(root)
        branch = self._start(uuid4(), (root.id, 3), self._hash(root.id, 3))
        self._say(branch, "in the branch")
        self._say(branch, "more in the branch")
        self.branch = branch.id
        self._save(branch)
        nested = self._start(uuid4(), (branch.id, 2), self._hash(branch.id, 2))
        self._say(nested, "nested")
        nested.create_checkpoint(
            checkpoint_id="cp-n", checkpoint_type=CheckpointType.AUTO, timestamp=NOW
        )
        self.nested = nested.id
        self._save(nested)
        root.fork(branch_id=branch.id, position=3, source_id="cp", timestamp=NOW)
        self._say(root, "the root goes on")
        self._save(root)

    def _start(self, cid: UUID, parent: tuple[UUID, int] | None, prev: str) -> Conversation:
        fork = None
        if parent is not None:
            fork = events.ForkPoint(conversation_id=parent[0], position=parent[1], source_id="cp")
        return Conversation.start(
            conversation_id=cid,
            view=ViewState().with_new_session("s1"),
            prev_hash=prev,
            timestamp=NOW,
            title="Ünïcode title 😀",
            parent=fork,
        )

    @staticmethod
    def _say(conversation: Conversation, text: str) -> None:
        conversation.append_message(
            message_id=f"m-{text}",
            role=Role.USER,
            category=Category.DIALOG,
            parts=(TextPart(text=text),),
            tokens=len(text),
            encoding="test",
            timestamp=NOW,
            metadata={"ratio": 0.5, "missing": None},
        )

    def _save(self, conversation: Conversation) -> None:
        recorded = conversation.collect_events()
        self.recorder.insert_events([self.mapper.to_stored_event(e) for e in recorded])

    def _hash(self, cid: UUID, position: int) -> str:
        stored = self.recorder.select_events(cid, gt=position - 1, lte=position)
        return str(json.loads(stored[0].state)["hash"])

    def bundle(self, of: UUID) -> list[Line]:
        return list(bundle_lines(self.recorder, of))


def verify(tmp_path: Path, lines: list[Line] | str) -> subprocess.CompletedProcess[str]:
    bundle = tmp_path / "bundle.jsonl"
    text = lines if isinstance(lines, str) else "".join(json.dumps(x) + "\n" for x in lines)
    bundle.write_text(text, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(bundle)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rehash(line: Line) -> None:
    """What a forger does after an edit: make the event consistent with itself again."""
    text = json.dumps(line["document"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    line["hash"] = hashlib.sha256(text.encode("utf-8")).hexdigest()


def at(lines: list[Line], conversation: UUID, position: int) -> Line:
    return next(
        line
        for line in lines
        if line["document"]["originator_id"] == str(conversation)
        and line["document"]["originator_version"] == position
    )


@pytest.fixture(scope="module")
def family() -> Family:
    return Family()


def test_a_bundle_holds_the_ancestors_up_to_each_fork_root_first(family: Family) -> None:
    lines = family.bundle(family.nested)
    stream = [
        (UUID(x["document"]["originator_id"]), x["document"]["originator_version"]) for x in lines
    ]
    assert stream == [
        (family.root, 1),
        (family.root, 2),
        (family.root, 3),
        (family.branch, 1),
        (family.branch, 2),
        (family.nested, 1),
        (family.nested, 2),
        (family.nested, 3),
    ]
    assert lineage(family.recorder, family.nested) == [
        (family.root, 3),
        (family.branch, 2),
        (family.nested, None),
    ]
    message = at(lines, family.nested, 2)
    assert message["class_version"] == 2  # MessageAppended v2; not hashed, kept for readers
    assert "class_version" not in at(lines, family.nested, 3)
    assert message["document"]["topic"] == "chatledger:MessageAppended"
    assert message["document"]["metadata"] == {"ratio": 0.5, "missing": None}


def test_there_is_no_bundle_of_an_unknown_conversation(family: Family) -> None:
    with pytest.raises(ConversationNotFound):
        family.bundle(uuid4())


def test_a_clean_bundle_verifies_and_names_each_head(family: Family, tmp_path: Path) -> None:
    lines = family.bundle(family.nested)
    result = verify(tmp_path, lines)
    assert result.returncode == 0, result.stdout + result.stderr
    heads = [line for line in result.stdout.splitlines() if line.startswith("OK ")]
    assert heads == [
        f"OK {family.root} head 3 {at(lines, family.root, 3)['hash']}",
        f"OK {family.branch} head 2 {at(lines, family.branch, 2)['hash']}",
        f"OK {family.nested} head 3 {at(lines, family.nested, 3)['hash']}",
    ]
    assert "Intact: 8 events in 3 conversation(s)." in result.stdout


def test_a_root_conversation_alone_verifies(family: Family, tmp_path: Path) -> None:
    lines = family.bundle(family.root)
    assert len(lines) == 6  # its own stream, the fork record and what came after included
    assert verify(tmp_path, lines).returncode == 0


def _edit(family: Family, lines: list[Line]) -> None:
    at(lines, family.branch, 2)["document"]["parts"][0]["text"] = "what I never said"


def _delete(family: Family, lines: list[Line]) -> None:
    lines.remove(at(lines, family.root, 2))


def _reorder(family: Family, lines: list[Line]) -> None:
    i, j = lines.index(at(lines, family.nested, 2)), lines.index(at(lines, family.nested, 3))
    lines[i], lines[j] = lines[j], lines[i]


def _forge(family: Family, lines: list[Line]) -> None:
    line = at(lines, family.root, 2)
    line["document"]["parts"][0]["text"] = "forged"
    rehash(line)


def _graft(family: Family, lines: list[Line]) -> None:
    """The branch claims to start from the root's position 3, but chains to position 2."""
    line = at(lines, family.branch, 1)
    line["document"]["prev_hash"] = at(lines, family.root, 2)["hash"]
    rehash(line)


def _renumber(family: Family, lines: list[Line]) -> None:
    """Swapped and renumbered to look in order: the hashes cover the positions."""
    first, second = at(lines, family.nested, 2), at(lines, family.nested, 3)
    first["document"]["originator_version"], second["document"]["originator_version"] = 3, 2
    _reorder(family, lines)


def _orphan(family: Family, lines: list[Line]) -> None:
    for line in [x for x in lines if x["document"]["originator_id"] == str(family.root)]:
        lines.remove(line)


TAMPERING: list[tuple[Callable[[Family, list[Line]], None], str, int, str]] = [
    (_edit, "branch", 2, "hash does not match the payload"),
    (_delete, "root", 3, "position 2 expected here (event missing or out of order)"),
    (_reorder, "nested", 3, "position 2 expected here (event missing or out of order)"),
    (_forge, "root", 3, "prev_hash does not match the previous event's hash"),
    (_graft, "branch", 1, "prev_hash does not match the previous event's hash"),
    (_renumber, "nested", 2, "hash does not match the payload"),
    (_orphan, "branch", 1, "the parent's event at the fork is not in the bundle"),
]


@pytest.mark.parametrize(
    ("tamper", "conversation", "position", "problem"),
    TAMPERING,
    ids=[t[0].__name__.strip("_") for t in TAMPERING],
)
def test_tampering_is_found_and_located(
    family: Family,
    tmp_path: Path,
    tamper: Callable[[Family, list[Line]], None],
    conversation: str,
    position: int,
    problem: str,
) -> None:
    lines = family.bundle(family.nested)
    tamper(family, lines)
    result = verify(tmp_path, lines)
    assert result.returncode == 1, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.startswith("BROKEN ")]
    cid = getattr(family, conversation)
    assert len(broken) == 1, broken
    assert broken[0].startswith(f"BROKEN conversation {cid} position {position} (line ")
    assert broken[0].endswith(f"): {problem}")
    assert "OK " not in result.stdout


def test_lines_that_are_not_events_are_reported(family: Family, tmp_path: Path) -> None:
    good = "".join(json.dumps(x) + "\n" for x in family.bundle(family.root))
    result = verify(tmp_path, good + '{"hash": "abc"}\nnot json at all\n')
    assert result.returncode == 1
    assert "BROKEN line 7: not a bundle event (KeyError: 'document')" in result.stdout
    assert "BROKEN line 8: not a bundle event (JSONDecodeError" in result.stdout


def test_an_empty_or_unreadable_bundle_is_not_intact(tmp_path: Path) -> None:
    empty = verify(tmp_path, "")
    assert empty.returncode == 1
    assert "BROKEN the bundle holds no events" in empty.stdout
    missing = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "nowhere.jsonl")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr


def test_a_bundle_exported_from_a_real_store_verifies(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ws", checkpoint_config=None)
    try:
        cid = ledger.start_conversation(title="Lisbon", system_prompt="Be brief.")
        ledger.append_message(cid, "user", "Plan a weekend in Lisbon, «por favor» 😀")
        ledger.append_message(cid, "assistant", "Day 1: Alfama.", metadata={"score": 0.5})
        checkpoint = ledger.create_checkpoint(cid, name="before day trips")
        ledger.append_message(cid, "user", "Add Sintra.")
        branch = ledger.branch(checkpoint, title="Porto instead")
        ledger.append_message(branch, "user", "Porto instead.")
        count = write_bundle(ledger.store.recorder, branch, tmp_path / "branch.jsonl")
        report = ledger.verify(branch)
    finally:
        ledger.close()
    assert report.ok
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "branch.jsonl")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout
    (head,) = [h for h in report.heads if h.conversation_id == branch]
    assert f"OK {branch} head {head.position} {head.hash}" in result.stdout
    assert f"Intact: {count} events in 2 conversation(s)." in result.stdout
