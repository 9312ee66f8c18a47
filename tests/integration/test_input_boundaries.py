"""Where input stops: context file names stay inside the workspace unless an absolute path is
given, and messages stay within the configured size limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatledger import ConversationManager, FileInputError
from tests.stores import Store, store_fixture  # noqa: F401


@pytest.fixture
def setup(store: Store, tmp_path: Path) -> tuple[ConversationManager, Path]:
    workspace = tmp_path / "ws"
    (workspace / "context").mkdir(parents=True)
    (workspace / "context" / "inside.md").write_text("inside context")
    (workspace / "notes.md").write_text("in the workspace")
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the workspace")
    (workspace / "context" / "link.md").symlink_to(outside)
    return store.manager(workspace), outside


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


def test_a_message_over_the_size_limit_is_refused_before_anything_is_written(
    store: Store, tmp_path: Path
) -> None:
    from chatledger import InvalidInput

    manager = store.manager(tmp_path, max_message_bytes=1000)
    manager.add_message("user", "x" * 900)
    before = manager.get_history()
    with pytest.raises(InvalidInput, match="the limit is 1000"):
        manager.add_message("user", "x" * 1000)
    assert manager.get_history() == before
