"""Where input stops: context file names stay inside the workspace unless an absolute path is
given, messages stay within the configured size limit, and titles, names, descriptions,
idempotency keys and metadata within theirs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from chatledger import CheckpointType, ConversationManager, FileInputError, InvalidInput
from chatledger.ledger import (
    MAX_DESCRIPTION_CHARS,
    MAX_KEY_CHARS,
    MAX_METADATA_BYTES,
    MAX_NAME_CHARS,
    Ledger,
)
from tests.stores import Store


@pytest.fixture
def setup(store: Store, tmp_path: Path) -> tuple[ConversationManager, Path]:
    workspace = store.workspace
    (workspace / "context").mkdir(parents=True)
    (workspace / "context" / "inside.md").write_text("inside context")
    (workspace / "notes.md").write_text("in the workspace")
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the workspace")
    (workspace / "context" / "link.md").symlink_to(outside)
    return store.manager(), outside


@pytest.mark.parametrize("name", ["../../secret.txt", "../secret.txt", "link.md"])
def test_relative_names_cannot_leave_the_workspace(
    setup: tuple[ConversationManager, Path], name: str
) -> None:
    manager, _ = setup
    cid = manager.active_id
    before = manager.get_history()
    with pytest.raises(FileInputError, match="outside the workspace"):
        manager.ledger.load_context_file(cid, name)
    assert manager.load_context_file(name) is False
    assert manager.get_history() == before


def test_an_absolute_path_is_read_as_given(setup: tuple[ConversationManager, Path]) -> None:
    manager, outside = setup
    assert manager.load_context_file(str(outside)) is True
    assert manager.get_history()[-1]["content"] == "outside the workspace"


def test_context_folder_first_then_workspace(setup: tuple[ConversationManager, Path]) -> None:
    manager, _ = setup
    assert manager.load_context_file("inside.md") and manager.load_context_file("notes.md")
    loaded = [(m["content"], m["metadata"]["source"]) for m in manager.get_history()]
    assert loaded[0][0] == "inside context" and loaded[0][1].endswith("context/inside.md")
    assert loaded[1][0] == "in the workspace" and loaded[1][1].endswith("ws/notes.md")


def test_a_message_over_the_size_limit_is_refused_before_anything_is_written(store: Store) -> None:
    manager = store.manager(max_message_bytes=1000)
    manager.add_message("user", "x" * 900)
    before = manager.get_history()
    with pytest.raises(InvalidInput, match="the limit is 1000"):
        manager.add_message("user", "x" * 1000)
    assert manager.get_history() == before


def _meta_of(size: int) -> dict[str, str]:
    """Metadata whose JSON is exactly `size` bytes ({"k":""} is 8)."""
    return {"k": "x" * (size - 8)}


LIMITS = [
    pytest.param(
        lambda lg, cid, n: lg.start_conversation(title="t" * n), MAX_NAME_CHARS, id="title"
    ),
    pytest.param(lambda lg, cid, n: lg.retitle(cid, "t" * n), MAX_NAME_CHARS, id="retitle"),
    pytest.param(
        lambda lg, cid, n: lg.create_checkpoint(cid, CheckpointType.MANUAL, "n" * n),
        MAX_NAME_CHARS,
        id="checkpoint-name",
    ),
    pytest.param(
        lambda lg, cid, n: lg.create_checkpoint(cid, CheckpointType.MANUAL, "n", "d" * n),
        MAX_DESCRIPTION_CHARS,
        id="checkpoint-description",
    ),
    pytest.param(
        lambda lg, cid, n: lg.branch(lg.checkpoints(cid, limit=1)[0].checkpoint_id, "b" * n),
        MAX_NAME_CHARS,
        id="branch-title",
    ),
    pytest.param(
        lambda lg, cid, n: lg.branch(lg.checkpoints(cid, limit=1)[0].checkpoint_id, "b", "d" * n),
        MAX_DESCRIPTION_CHARS,
        id="branch-description",
    ),
    pytest.param(
        lambda lg, cid, n: lg.prepare_turn(cid, "hi", idempotency_key="k" * n),
        MAX_KEY_CHARS,
        id="idempotency-key",
    ),
    pytest.param(
        lambda lg, cid, n: lg.append_message(cid, "tool", "ok", metadata=_meta_of(n)),
        MAX_METADATA_BYTES,
        id="metadata",
    ),
    pytest.param(
        lambda lg, cid, n: lg.take_snapshot(cid, _meta_of(n)), MAX_METADATA_BYTES, id="snapshot"
    ),
]


@pytest.mark.parametrize(("write", "limit"), LIMITS)
def test_labels_keys_and_metadata_stop_at_their_limit(
    store: Store, write: Callable[[Ledger, UUID, int], Any], limit: int
) -> None:
    ledger = store.ledger()
    conversation = ledger.start_conversation(system_prompt="Be brief.")
    ledger.append_message(conversation, "user", "hello")
    write(ledger, conversation, limit)
    events = ledger.verify().events
    with pytest.raises(InvalidInput, match=rf"the limit is {limit} [\w ]+ \(MAX_\w+\)"):
        write(ledger, conversation, limit + 1)
    assert ledger.verify().events == events
