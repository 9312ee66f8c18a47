"""Tampering with the database behind chatledger's back is found and located by `verify`, on
every store chatledger can keep its log in (the SQLite file and PostgreSQL).

Every test builds one small store (a parent conversation with a branch) through the Ledger,
tampers with the rows of the log's table directly, as anyone with write access to the database
could, and then checks exactly which (conversation, position) `verify` names, through the
Ledger and through the CLI. The tests are written once; the store's `RawLog` (`store.log`,
tests/stores.py) is all that differs between the stores."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import pytest
from eventsourcing.persistence import StoredEvent
from rich.console import Console
from typer.testing import CliRunner

from chatledger import cli
from domain.checkpoints import CheckpointConfig, CheckpointType
from domain.errors import FileInputError, InvalidInput, StoreError
from domain.hashing import event_hash
from infrastructure.stores import DATABASE_URL_VARIABLE
from infrastructure.verification import anchor_of, hashed_document
from tests.stores import Store

HASH_MISMATCH = "hash does not match the payload"
PREV_MISMATCH = "prev_hash does not match the previous event's hash"

PARENT_TEXTS = ("msg 0", "msg 1", "msg 2", "msg 3")
BRANCH_TEXT = "branch msg"
AFTER_FORK_TEXT = "parent after fork"


# -- the store every test tampers with -------------------------------------------------------
@dataclass(frozen=True)
class Tree:
    """What `_build` wrote: a parent conversation and its branch."""

    parent: UUID
    branch: UUID
    fork_position: int
    parent_events: int
    branch_events: int


def _build(store: Store) -> Tree:
    """Parent: started, system prompt, four messages, a manual checkpoint (the fork point),
    the BranchForked record, one more message. Branch: started, its branch checkpoint, one
    message. Auto checkpoints are off so the layout is small and fixed."""
    config = CheckpointConfig(enabled=False)
    with closing(store.ledger(checkpoint_config=config)) as ledger:
        parent = ledger.start_conversation(title="parent", system_prompt="You are terse.")
        for index, text in enumerate(PARENT_TEXTS):
            ledger.append_message(parent, "user" if index % 2 == 0 else "assistant", text)
        checkpoint = ledger.create_checkpoint(parent, CheckpointType.MANUAL, "fork here")
        fork_position = ledger.checkpoint(checkpoint).position
        branch = ledger.branch(checkpoint, "branch")
        ledger.append_message(branch, "user", BRANCH_TEXT)
        ledger.append_message(parent, "user", AFTER_FORK_TEXT)
        assert ledger.verify().ok

    topics = {cid: [topic for _, topic in store.log.events(cid)] for cid in (parent, branch)}
    assert topics[parent] == [
        "chatledger:ConversationStarted",
        *["chatledger:MessageAppended"] * 5,
        "chatledger:CheckpointCreated",
        "chatledger:BranchForked",
        "chatledger:MessageAppended",
    ]
    assert topics[branch] == [
        "chatledger:ConversationStarted",
        "chatledger:CheckpointCreated",
        "chatledger:MessageAppended",
    ]
    assert fork_position == 7
    return Tree(parent, branch, fork_position, len(topics[parent]), 3)


@pytest.fixture
def tree(store: Store, monkeypatch: pytest.MonkeyPatch) -> Tree:
    """The tree, on a new store per test (a few dozen milliseconds on either). The CLI finds
    the store as a user would: by its workspace, and on PostgreSQL by CHATLEDGER_DATABASE_URL
    (empty for the SQLite file)."""
    monkeypatch.setenv(DATABASE_URL_VARIABLE, store.url)
    return _build(store)


# -- tampering with payloads -----------------------------------------------------------------
def _position_of_text(store: Store, conversation: UUID, text: str) -> int:
    for position, topic in store.log.events(conversation):
        if topic == "chatledger:MessageAppended":
            parts = orjson.loads(store.log.state(conversation, position))["parts"]
            if parts[0].get("text") == text:
                return position
    raise AssertionError(f"{text!r} not in {conversation}")


def _edit_text(store: Store, conversation: UUID, position: int, new_text: str) -> dict[str, Any]:
    """Changes the message text inside the JSON payload, leaving valid JSON and the stored
    hash as it was. Returns the edited document."""
    document = orjson.loads(store.log.state(conversation, position))
    assert document["parts"][0]["type"] == "text"
    document["parts"][0]["text"] = new_text
    store.log.write_state(conversation, position, orjson.dumps(document))
    return document


def _forge(store: Store, conversation: UUID, position: int, change: dict[str, Any]) -> None:
    """Edits the payload and recomputes the event's own hash the way chatledger does, so the
    event is self-consistent; only the chain to the next event can give it away."""
    document = orjson.loads(store.log.state(conversation, position))
    document.update(change)
    document["hash"] = event_hash(hashed_document(_stored(store, conversation, position, document)))
    store.log.write_state(conversation, position, orjson.dumps(document))
    # The forged event really is self-consistent: recomputing gives the stored hash.
    forged = _stored(
        store, conversation, position, orjson.loads(store.log.state(conversation, position))
    )
    assert document["hash"] == event_hash(hashed_document(forged))


def _stored(
    store: Store, conversation: UUID, position: int, document: dict[str, Any]
) -> StoredEvent:
    topic = store.log.topic(conversation, position)
    return StoredEvent(conversation, position, topic, orjson.dumps(document))


# -- what verify says -------------------------------------------------------------------------
def _breaks(
    store: Store,
    conversation: UUID | None = None,
    anchor: Path | str | dict[str, Any] | None = None,
) -> list[tuple[UUID, int, str]]:
    with closing(store.ledger()) as ledger:
        report = ledger.verify(conversation, anchor=anchor)
    return [(b.conversation_id, b.position, b.problem) for b in report.breaks]


def _anchor(store: Store) -> dict[str, Any]:
    """The anchor of the store as it is now (taken before a test tampers with it)."""
    with closing(store.ledger()) as ledger:
        report = ledger.verify()
    assert report.ok
    return report.anchor()


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("chatledger")
    assert executable, "the chatledger console script is not installed"
    return subprocess.run(
        [executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"},
        check=False,
    )


def _invoke_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    """The same CLI app in-process, printing to a wide console so no line is wrapped."""
    monkeypatch.setattr(cli, "console", Console(width=250, no_color=True))
    result = CliRunner().invoke(cli.app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, " ".join((result.stdout + result.stderr).split())


# -- the untouched store -----------------------------------------------------------------
def test_untouched_store_verifies_ok(store: Store, tree: Tree) -> None:
    with closing(store.ledger()) as ledger:
        report = ledger.verify()
        assert report.ok
        assert report.breaks == ()
        assert report.conversations == 2
        assert report.events == tree.parent_events + tree.branch_events
        assert ledger.verify(tree.parent).ok
        assert ledger.verify(tree.branch).ok


# -- (a) an edited payload -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("which", "text"),
    [
        pytest.param("parent", "msg 1", id="parent-before-fork"),
        pytest.param("parent", AFTER_FORK_TEXT, id="parent-after-fork"),
        pytest.param("branch", BRANCH_TEXT, id="branch-own-event"),
    ],
)
def test_edited_message_text_is_located(store: Store, tree: Tree, which: str, text: str) -> None:
    conversation = tree.parent if which == "parent" else tree.branch
    position = _position_of_text(store, conversation, text)
    _edit_text(store, conversation, position, text.upper() + " (edited)")

    assert _breaks(store) == [(conversation, position, HASH_MISMATCH)]
    assert _breaks(store, conversation) == [(conversation, position, HASH_MISMATCH)]


def test_edited_timestamp_only_is_located(store: Store, tree: Tree) -> None:
    """Not only the text: any field of the payload is covered by the hash."""
    document = orjson.loads(store.log.state(tree.parent, 4))
    document["timestamp"] = "2001-01-01T00:00:00Z"
    store.log.write_state(tree.parent, 4, orjson.dumps(document))
    assert _breaks(store) == [(tree.parent, 4, HASH_MISMATCH)]


def test_payload_that_is_not_json_is_located(store: Store, tree: Tree) -> None:
    store.log.write_state(tree.parent, 5, b"{not json")
    assert _breaks(store) == [(tree.parent, 5, "payload is not valid JSON")]


# -- (b) a deleted event -------------------------------------------------------------------
@pytest.mark.parametrize("position", [1, 4, 6])
def test_deleted_event_is_located(store: Store, tree: Tree, position: int) -> None:
    store.log.delete(tree.parent, position)
    assert _breaks(store) == [
        (tree.parent, position, f"event missing (next stored position is {position + 1})")
    ]


def test_deleted_last_event_is_detected(store: Store, tree: Tree) -> None:
    """Tail truncation leaves a shorter chain that is still consistent: only an anchor of the
    head, exported before the deletion, shows it."""
    anchor = _anchor(store)
    store.log.delete(tree.parent, tree.parent_events)
    assert _breaks(store) == []  # the chain alone cannot see its own end
    assert _breaks(store, anchor=anchor) == [
        (
            tree.parent,
            tree.parent_events,
            f"truncated: anchored head {tree.parent_events} missing",
        )
    ]
    assert _breaks(store, tree.parent, anchor=anchor) == [
        (
            tree.parent,
            tree.parent_events,
            f"truncated: anchored head {tree.parent_events} missing",
        )
    ]


def test_truncated_tail_of_several_events_is_detected(store: Store, tree: Tree) -> None:
    anchor = _anchor(store)
    for position in (tree.parent_events, tree.parent_events - 1):
        store.log.delete(tree.parent, position)
    assert _breaks(store, anchor=anchor) == [
        (
            tree.parent,
            tree.parent_events,
            f"truncated: anchored head {tree.parent_events} missing",
        )
    ]


def test_conversation_missing_entirely_is_reported(store: Store, tree: Tree) -> None:
    anchor = _anchor(store)
    for position in range(1, tree.branch_events + 1):
        store.log.delete(tree.branch, position)
    assert _breaks(store) == []  # its notifications went with it: nothing names it any more
    missing = (
        tree.branch,
        1,
        f"conversation missing: no events stored, the anchor has its head at {tree.branch_events}",
    )
    assert _breaks(store, anchor=anchor) == [missing]
    # Asked for by id (the read model still knows it), it is reported the same way.
    assert _breaks(store, tree.branch, anchor=anchor) == [missing]


# -- (c) two adjacent events reordered ---------------------------------------------------
@pytest.mark.parametrize(("conversation_name", "first"), [("parent", 3), ("branch", 2)])
def test_swapped_adjacent_events_are_located_at_the_first(
    store: Store, tree: Tree, conversation_name: str, first: int
) -> None:
    conversation = tree.parent if conversation_name == "parent" else tree.branch
    a, b = store.log.state(conversation, first), store.log.state(conversation, first + 1)
    store.log.write_state(conversation, first, b)
    store.log.write_state(conversation, first + 1, a)
    assert _breaks(store) == [(conversation, first, HASH_MISMATCH)]


def test_swapped_rows_with_their_positions_are_located(store: Store, tree: Tree) -> None:
    """Reordering by renumbering the rows (positions 3 and 4 trade places, payloads kept)."""
    store.log.swap_positions(tree.parent, 3, 4)
    assert _breaks(store) == [(tree.parent, 3, HASH_MISMATCH)]


# -- (d) a forged event (payload edited and its own hash recomputed) -----------------------
def test_forged_event_breaks_the_link_to_the_next_event(store: Store, tree: Tree) -> None:
    document = orjson.loads(store.log.state(tree.parent, 4))
    document["parts"][0]["text"] = "forged text"
    _forge(store, tree.parent, 4, {"parts": document["parts"]})
    assert _breaks(store) == [(tree.parent, 5, PREV_MISMATCH)]


def test_forged_last_event_is_detected(store: Store, tree: Tree) -> None:
    """A self-consistent forgery of a stream's NEWEST event: no successor contradicts it, but
    the anchor exported before it still holds the old hash."""
    anchor = _anchor(store)
    document = orjson.loads(store.log.state(tree.branch, 3))
    document["parts"][0]["text"] = "forged text"
    _forge(store, tree.branch, 3, {"parts": document["parts"]})
    assert _breaks(store) == []  # the chain alone cannot tell
    assert _breaks(store, anchor=anchor) == [
        (tree.branch, 3, "event at anchored head 3 differs from the anchor")
    ]


def test_reforged_tail_is_detected_at_the_anchored_head(store: Store, tree: Tree) -> None:
    """Rewriting the last two events and re-chaining them (every hash recomputed) passes the
    walk; the anchored head's hash gives it away."""
    anchor = _anchor(store)
    last = tree.parent_events
    _forge(store, tree.parent, last - 1, {"name": "forged name"})
    new_prev = orjson.loads(store.log.state(tree.parent, last - 1))["hash"]
    _forge(store, tree.parent, last, {"prev_hash": new_prev})
    assert _breaks(store) == []
    assert _breaks(store, anchor=anchor) == [
        (tree.parent, last, f"event at anchored head {last} differs from the anchor")
    ]


def test_anchor_keeps_the_earliest_break(store: Store, tree: Tree) -> None:
    """A break the walk finds before the anchored head is the one named."""
    anchor = _anchor(store)
    document = orjson.loads(store.log.state(tree.parent, 4))
    document["parts"][0]["text"] = "forged text"
    _forge(store, tree.parent, 4, {"parts": document["parts"]})
    assert _breaks(store, anchor=anchor) == [(tree.parent, 5, PREV_MISMATCH)]


# -- anchors ----------------------------------------------------------------------------------
def test_anchor_of_the_untouched_store(store: Store, tree: Tree, tmp_path: Path) -> None:
    anchor = _anchor(store)
    assert anchor["format"] == "chatledger-anchor"
    assert anchor["version"] == 1
    assert isinstance(anchor["taken_at"], str)
    heads = anchor["conversations"]
    assert set(heads) == {str(tree.parent), str(tree.branch)}
    for conversation, count in ((tree.parent, tree.parent_events), (tree.branch, 3)):
        assert heads[str(conversation)] == {
            "position": count,
            "hash": orjson.loads(store.log.state(conversation, count))["hash"],
        }
    # From a dict, from a file (Path or str): all verify ok.
    path = tmp_path / "anchor.json"
    path.write_bytes(orjson.dumps(anchor))
    assert _breaks(store, anchor=anchor) == []
    assert _breaks(store, anchor=path) == []
    assert _breaks(store, anchor=str(path)) == []


def test_anchor_of_older_history_allows_growth(store: Store, tree: Tree) -> None:
    """Anchors do not forbid growth: new events, new branches and new conversations after the
    anchor verify ok, and the grown store can be anchored again."""
    anchor = _anchor(store)
    with closing(store.ledger(checkpoint_config=CheckpointConfig(enabled=False))) as ledger:
        ledger.append_message(tree.parent, "assistant", "later answer")
        ledger.append_message(tree.branch, "assistant", "later branch answer")
        newcomer = ledger.start_conversation(title="after the anchor")
        ledger.append_message(newcomer, "user", "hello")
        checkpoint = ledger.create_checkpoint(tree.branch, CheckpointType.MANUAL, "again")
        ledger.branch(checkpoint, "grandchild")
        report = ledger.verify(anchor=anchor)
        assert report.ok, report.breaks
        assert report.conversations == 4
        assert ledger.verify(tree.branch, anchor=anchor).ok
        newer = report.anchor()
        assert len(newer["conversations"]) == 4
        assert newer["conversations"][str(tree.parent)]["position"] == tree.parent_events + 1
        assert ledger.verify(anchor=newer).ok


def test_anchor_checks_only_the_conversations_in_scope(store: Store, tree: Tree) -> None:
    """Verifying one conversation checks the anchored heads of its lineage only."""
    anchor = _anchor(store)
    store.log.delete(tree.branch, tree.branch_events)
    assert _breaks(store, tree.parent, anchor=anchor) == []
    assert [(cid, position) for cid, position, _ in _breaks(store, tree.branch, anchor=anchor)] == [
        (tree.branch, tree.branch_events)
    ]


def test_report_of_a_broken_store_cannot_be_anchored(store: Store, tree: Tree) -> None:
    _edit_text(store, tree.parent, _position_of_text(store, tree.parent, "msg 2"), "tampered")
    with closing(store.ledger()) as ledger:
        report = ledger.verify()
        with pytest.raises(StoreError, match="broken"):
            report.anchor()
        with pytest.raises(StoreError):
            anchor_of(ledger.store.recorder)


def test_unusable_anchor_is_a_typed_error(store: Store, tree: Tree, tmp_path: Path) -> None:
    with closing(store.ledger()) as ledger:
        with pytest.raises(FileInputError, match="Cannot read anchor file"):
            ledger.verify(anchor=tmp_path / "nowhere.json")
        corrupt = tmp_path / "corrupt.json"
        corrupt.write_text('{"format": "chatledger-anchor", "versi')
        with pytest.raises(FileInputError, match="not valid JSON"):
            ledger.verify(anchor=corrupt)
        with pytest.raises(InvalidInput, match="format"):
            ledger.verify(anchor={"conversations": {}})


# -- (e) the parent, the fork and the branch ---------------------------------------------
def test_parent_edit_before_fork_is_reported_on_the_parent_only(store: Store, tree: Tree) -> None:
    """The branch's own chain still links to the fork event's stored hash, so the whole-store
    verify names the parent at the edited position and nothing in the branch."""
    position = _position_of_text(store, tree.parent, "msg 1")
    assert position < tree.fork_position
    _edit_text(store, tree.parent, position, "EVIL")
    assert _breaks(store) == [(tree.parent, position, HASH_MISMATCH)]


def test_verifying_only_the_branch_covers_the_parent_prefix(store: Store, tree: Tree) -> None:
    position = _position_of_text(store, tree.parent, "msg 1")
    _edit_text(store, tree.parent, position, "EVIL")
    with closing(store.ledger()) as ledger:
        assert "EVIL" in [m["content"] for m in ledger.history(tree.branch)]
        report = ledger.verify(tree.branch)
    assert not report.ok


def test_forged_fork_event_breaks_parent_and_branch(store: Store, tree: Tree) -> None:
    """A self-consistent forgery of the fork event itself: the parent's next event and the
    branch's first event both chained to the old hash, so both are named."""
    _forge(store, tree.parent, tree.fork_position, {"name": "forged name"})
    assert _breaks(store) == [
        (tree.parent, tree.fork_position + 1, PREV_MISMATCH),
        (tree.branch, 1, PREV_MISMATCH),
    ]
    # Verifying the branch walks its ancestors too, so the parent's break is named as well.
    assert _breaks(store, tree.branch) == [
        (tree.branch, 1, PREV_MISMATCH),
        (tree.parent, tree.fork_position + 1, PREV_MISMATCH),
    ]


def test_deleted_fork_event_breaks_parent_and_branch(store: Store, tree: Tree) -> None:
    store.log.delete(tree.parent, tree.fork_position)
    assert _breaks(store) == [
        (
            tree.parent,
            tree.fork_position,
            f"event missing (next stored position is {tree.fork_position + 1})",
        ),
        (tree.branch, 1, PREV_MISMATCH),
    ]


def test_branch_first_event_repointed_to_another_parent_position(store: Store, tree: Tree) -> None:
    """Re-parenting the branch (its first event's fork position edited) is an edit too."""
    document = orjson.loads(store.log.state(tree.branch, 1))
    document["parent"]["position"] = tree.fork_position - 1
    store.log.write_state(tree.branch, 1, orjson.dumps(document))
    assert _breaks(store) == [(tree.branch, 1, HASH_MISMATCH)]


# -- what the hash does not cover ----------------------------------------------------------
def test_edited_topic_is_detected(store: Store, tree: Tree) -> None:
    position = _position_of_text(store, tree.parent, "msg 2")
    store.log.write_topic(tree.parent, position, "chatledger:SnapshotTaken")
    assert [(cid, p) for cid, p, _ in _breaks(store)] == [(tree.parent, position)]


# -- the CLI -------------------------------------------------------------------------------
def _normalised(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stdout + result.stderr).split())


def test_cli_verify_ok_then_broken(
    store: Store, tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output = _invoke_cli(monkeypatch, "verify", "--workspace", str(store.workspace))
    assert code == 0, output
    assert "BROKEN" not in output
    assert f"{tree.parent_events + tree.branch_events} events in 2 conversations" in output

    position = _position_of_text(store, tree.parent, "msg 2")
    _edit_text(store, tree.parent, position, "tampered")

    # The installed console script, in a real process: exit code 1 and the position named.
    broken = _run_cli("verify", "--workspace", str(store.workspace))
    output = _normalised(broken)
    assert broken.returncode == 1, output
    assert f"BROKEN conversation {tree.parent} position {position}: {HASH_MISMATCH}" in output
    assert str(tree.branch) not in output
    assert "Traceback" not in output

    # Only the branch: its own chain is intact, but its view includes the broken parent prefix.
    code, output = _invoke_cli(monkeypatch, "verify", "-w", str(store.workspace), str(tree.branch))
    assert code == 1, output
    assert f"BROKEN conversation {tree.parent} position {position}" in output
    # Only the parent: broken at the same position.
    code, output = _invoke_cli(monkeypatch, "verify", "-w", str(store.workspace), str(tree.parent))
    assert code == 1, output
    assert f"BROKEN conversation {tree.parent} position {position}:" in output
    assert "1 conversations checked" in output


def test_cli_verify_names_the_deleted_position(
    store: Store, tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.log.delete(tree.parent, 4)
    code, output = _invoke_cli(monkeypatch, "verify", "-w", str(store.workspace))
    assert code == 1, output
    assert f"BROKEN conversation {tree.parent} position 4: event missing" in output


def test_cli_anchor_round_trip(store: Store, tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    anchor = store.workspace.parent / "anchor.json"
    code, output = _invoke_cli(
        monkeypatch, "verify", "-w", str(store.workspace), "--export-anchor", str(anchor)
    )
    assert code == 0, output
    assert "Anchor of 2 heads written to" in output
    heads = orjson.loads(anchor.read_bytes())["conversations"]
    assert heads[str(tree.parent)]["position"] == tree.parent_events

    code, output = _invoke_cli(
        monkeypatch, "verify", "-w", str(store.workspace), "--anchor", str(anchor)
    )
    assert code == 0, output
    assert "BROKEN" not in output

    store.log.delete(tree.parent, tree.parent_events)
    # Without the anchor the truncation passes; with it, exit 1 naming the position.
    assert _invoke_cli(monkeypatch, "verify", "-w", str(store.workspace))[0] == 0
    broken = _run_cli("verify", "--workspace", str(store.workspace), "--anchor", str(anchor))
    output = _normalised(broken)
    assert broken.returncode == 1, output
    position = tree.parent_events
    assert (
        f"BROKEN conversation {tree.parent} position {position}: "
        f"truncated: anchored head {position} missing"
    ) in output
    assert str(tree.branch) not in output
    assert "Traceback" not in output

    # A broken store is never anchored: exit 1 and no file written.
    fresh = store.workspace.parent / "fresh.json"
    code, output = _invoke_cli(
        monkeypatch,
        "verify",
        "-w",
        str(store.workspace),
        "--anchor",
        str(anchor),
        "--export-anchor",
        str(fresh),
    )
    assert code == 1, output
    assert "anchor not exported" in output
    assert not fresh.exists()


def test_cli_forged_newest_event_against_anchor(
    store: Store, tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    anchor = store.workspace.parent / "anchor.json"
    assert (
        _run_cli("verify", "-w", str(store.workspace), "--export-anchor", str(anchor)).returncode
        == 0
    )
    _forge(store, tree.branch, tree.branch_events, {"metadata": {"forged": True}})
    code, output = _invoke_cli(
        monkeypatch, "verify", "-w", str(store.workspace), "--anchor", str(anchor)
    )
    assert code == 1, output
    assert (
        f"BROKEN conversation {tree.branch} position {tree.branch_events}: "
        f"event at anchored head {tree.branch_events} differs from the anchor"
    ) in output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "Cannot read anchor file", id="missing"),
        pytest.param(b"", "is not valid JSON", id="empty"),
        pytest.param(b'{"format": "chatledger-anchor", "ver', "is not valid JSON", id="cut"),
        pytest.param(b"[1, 2]", "must be a JSON object", id="not-an-object"),
        pytest.param(b'{"format": "something-else"}', "is not a chatledger anchor", id="foreign"),
        pytest.param(
            b'{"format": "chatledger-anchor", "version": 1, "taken_at": "2024-01-01T00:00:00Z",'
            b' "conversations": {"not-a-uuid": {"position": 1, "hash": "00"}}}',
            "is not a conversation id",
            id="bad-id",
        ),
    ],
)
def test_cli_unusable_anchor_exits_2(
    store: Store, tree: Tree, monkeypatch: pytest.MonkeyPatch, content: bytes | None, message: str
) -> None:
    anchor = store.workspace.parent / "anchor.json"
    if content is not None:
        anchor.write_bytes(content)
    code, output = _invoke_cli(
        monkeypatch, "verify", "-w", str(store.workspace), "--anchor", str(anchor)
    )
    assert code == 2, output
    assert "error:" in output and message in output, output
    assert "BROKEN" not in output
