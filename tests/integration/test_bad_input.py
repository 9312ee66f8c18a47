"""Bad input is refused with a typed, helpful error and leaves the store exactly as it was.

Table-driven: each row is one bad call through the Ledger or the ConversationManager, the
ChatledgerError subclass it must raise and a fragment of the message a person would need.
After every call the stored events (count and bytes) and the history are unchanged. Penguin's
wrappers (load, load_context_file, rollback_to_checkpoint, ...) return False/None instead,
while the Ledger method underneath raises the typed error.

Every case runs on both stores, the workspace's SQLite file and PostgreSQL. So do the stores
that cannot be opened, as far as they can go wrong on both (a newer schema version); the
rest are each store's own: SQLite files that are not chatledger's, and database URLs that
name no usable PostgreSQL store."""

from __future__ import annotations

import inspect
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from PIL import Image

from chatledger import (
    ChatledgerError,
    CheckpointNotFound,
    CheckpointType,
    ConversationManager,
    ConversationNotFound,
    FileInputError,
    InvalidInput,
    SnapshotNotFound,
    StoreError,
    WorkspaceError,
)
from chatledger.ledger import Ledger
from infrastructure.stores import DATABASE_URL_VARIABLE
from tests.stores import Store

DB = "chatledger.db"
#: The workspace's SQLite file, even where CHATLEDGER_DATABASE_URL is set.
SQLITE = ""
UNKNOWN_UUID = "0123456789abcdef0123456789abcdef"
UNKNOWN_CHECKPOINT = "cp_" + "ab" * 16
UNKNOWN_SNAPSHOT = "snap_" + "cd" * 16


# -- fixtures -----------------------------------------------------------------------------
@dataclass
class Ctx:
    store: Store
    workspace: Path
    files: Path
    conversation: UUID
    checkpoint: str
    snapshot: str
    ledger: Ledger | None = None
    manager: ConversationManager | None = None

    @property
    def lg(self) -> Ledger:
        if self.ledger is not None:
            return self.ledger
        assert self.manager is not None
        return self.manager.ledger

    @property
    def m(self) -> ConversationManager:
        assert self.manager is not None
        return self.manager


def _sample_files(root: Path, workspace: Path) -> Path:
    files = root / "files"
    files.mkdir()
    Image.new("RGB", (8, 8), "red").save(files / "real.png")
    (files / "notes.txt").write_text("plain text, not an image\n")
    (files / "fake.png").write_text("this is not a PNG")
    (files / "latin1.txt").write_bytes(b"caf\xe9 \xff\xfe")
    (files / "empty.txt").write_text("")
    context = workspace / "context"
    context.mkdir(parents=True, exist_ok=True)
    (context / "good.txt").write_text("Useful background.")
    (context / "empty.txt").write_text("   \n")
    return files


@pytest.fixture
def ledger_ctx(tmp_path: Path, store: Store) -> Ctx:
    workspace = store.workspace
    ledger = store.ledger()
    conversation = ledger.start_conversation(title="bad input", system_prompt="Be brief.")
    ledger.append_message(conversation, "user", "hello")
    ledger.append_message(conversation, "assistant", "hi there")
    checkpoint = ledger.create_checkpoint(conversation, CheckpointType.MANUAL, "cp")
    snapshot = ledger.take_snapshot(conversation, {"name": "snap"})
    files = _sample_files(tmp_path, workspace)
    return Ctx(store, workspace, files, conversation, checkpoint, snapshot, ledger=ledger)


@pytest.fixture
async def manager_ctx(tmp_path: Path, store: Store) -> Ctx:
    workspace = store.workspace
    manager = store.manager(system_prompt="Be brief.")
    await manager.process_message("hello")
    checkpoint = await manager.create_manual_checkpoint("cp")
    snapshot = manager.create_snapshot(meta={"name": "snap"})
    assert checkpoint is not None and snapshot is not None
    files = _sample_files(tmp_path, workspace)
    conversation = UUID(manager.get_conversation_id())
    return Ctx(store, workspace, files, conversation, checkpoint, snapshot, manager=manager)


# -- what "nothing changed" means ------------------------------------------------------------
# Read on a connection of the test's own, in the store's own terms (its log table, and the
# column that numbers the log), so the same check holds on SQLite and PostgreSQL.
def stored_rows(ctx: Ctx) -> list[tuple[Any, ...]]:
    return ctx.store.log_rows()


def projection_rows(ctx: Ctx) -> dict[str, list[tuple[Any, ...]]]:
    tables = ("conversations", "checkpoints", "snapshots", "projection_tracking")
    return ctx.store.tables(*tables)


@dataclass
class Before:
    rows: list[tuple[Any, ...]]
    projections: dict[str, list[tuple[Any, ...]]]
    history: list[dict[str, Any]]
    active: str | None


def before(ctx: Ctx) -> Before:
    return Before(
        stored_rows(ctx),
        projection_rows(ctx),
        ctx.lg.history(ctx.conversation),
        ctx.manager.get_conversation_id() if ctx.manager else None,
    )


def assert_unchanged(ctx: Ctx, was: Before) -> None:
    rows = stored_rows(ctx)
    assert len(rows) == len(was.rows), "events were appended or removed"
    assert rows == was.rows, "stored events changed"
    assert projection_rows(ctx) == was.projections
    assert ctx.lg.history(ctx.conversation) == was.history
    if ctx.manager is not None:
        assert ctx.manager.get_conversation_id() == was.active, "the active conversation moved"
    # The write model is not left holding an unsaved change either: a good append still
    # lands at the next position.
    appended = ctx.lg.append_message(ctx.conversation, "user", "still works")
    ours = [r[2] for r in rows if ctx.store.dialect.stream_id(r[1]) == ctx.conversation]
    assert appended.position == max(ours) + 1
    assert ctx.lg.verify().ok


def assert_helpful(error: BaseException, fragment: str) -> None:
    message = str(error)
    assert fragment.lower() in message.lower(), message
    assert "Traceback" not in message
    assert len(message) < 500, message


async def call(fn: Callable[[Ctx], Any], ctx: Ctx) -> Any:
    result = fn(ctx)
    if inspect.isawaitable(result):
        result = await result
    return result


def xfail(reason: str, raises: type[BaseException] | tuple[type[BaseException], ...]) -> Any:
    return pytest.mark.xfail(strict=True, raises=raises, reason=reason)


# -- the Ledger --------------------------------------------------------------------------
def _append(content: Any = "fine", role: Any = "user", **kwargs: Any) -> Callable[[Ctx], Any]:
    return lambda c: c.lg.append_message(c.conversation, role, content, **kwargs)


LEDGER_CASES = [
    # unknown ids, malformed and well-formed
    pytest.param(
        lambda c: c.lg.append_message("not-a-uuid", "user", "hi"),
        ConversationNotFound,
        "'not-a-uuid' is not a conversation id",
        id="append-malformed-conversation",
    ),
    pytest.param(
        lambda c: c.lg.append_message(UNKNOWN_UUID, "user", "hi"),
        ConversationNotFound,
        "no conversation with id 01234567-89ab",
        id="append-unknown-conversation",
    ),
    pytest.param(
        lambda c: c.lg.append_message(None, "user", "hi"),
        ConversationNotFound,
        "None is not a conversation id",
        id="append-conversation-none",
    ),
    pytest.param(
        lambda c: c.lg.history("zzz"),
        ConversationNotFound,
        "not a conversation id",
        id="history-malformed",
    ),
    pytest.param(
        lambda c: c.lg.history(uuid4()),
        ConversationNotFound,
        "no conversation",
        id="history-unknown",
    ),
    pytest.param(
        lambda c: c.lg.as_of(UNKNOWN_UUID, 1),
        ConversationNotFound,
        "no conversation",
        id="as-of-unknown",
    ),
    pytest.param(
        lambda c: c.lg.create_checkpoint(uuid4(), CheckpointType.MANUAL, "x"),
        ConversationNotFound,
        "no conversation",
        id="checkpoint-unknown-conversation",
    ),
    pytest.param(
        lambda c: c.lg.take_snapshot("nope", {}),
        ConversationNotFound,
        "not a conversation id",
        id="snapshot-malformed-conversation",
    ),
    pytest.param(
        lambda c: c.lg.take_snapshot(uuid4(), {}),
        ConversationNotFound,
        "no conversation",
        id="snapshot-unknown-conversation",
    ),
    pytest.param(
        lambda c: c.lg.verify(UNKNOWN_UUID),
        ConversationNotFound,
        "no conversation",
        id="verify-unknown",
    ),
    pytest.param(
        lambda c: c.lg.checkpoints(uuid4()),
        ConversationNotFound,
        "no conversation",
        id="checkpoints-unknown",
    ),
    pytest.param(
        lambda c: c.lg.rollback(UNKNOWN_CHECKPOINT),
        CheckpointNotFound,
        f"no checkpoint '{UNKNOWN_CHECKPOINT}'",
        id="rollback-unknown-checkpoint",
    ),
    pytest.param(
        lambda c: c.lg.rollback("?? not an id ??"),
        CheckpointNotFound,
        "no checkpoint",
        id="rollback-malformed-checkpoint",
    ),
    pytest.param(
        lambda c: c.lg.rollback(None), CheckpointNotFound, "no checkpoint", id="rollback-none"
    ),
    pytest.param(
        lambda c: c.lg.rollback(c.snapshot),
        CheckpointNotFound,
        "no checkpoint",
        id="rollback-to-a-snapshot-id",
    ),
    pytest.param(
        lambda c: c.lg.branch(UNKNOWN_CHECKPOINT, "b"),
        CheckpointNotFound,
        "no checkpoint or snapshot",
        id="branch-unknown",
    ),
    pytest.param(
        lambda c: c.lg.branch(str(c.conversation), "b"),
        CheckpointNotFound,
        "no checkpoint or snapshot",
        id="branch-from-a-conversation-id",
    ),
    pytest.param(
        lambda c: c.lg.restore_snapshot(UNKNOWN_SNAPSHOT),
        SnapshotNotFound,
        f"no snapshot '{UNKNOWN_SNAPSHOT}'",
        id="restore-unknown-snapshot",
    ),
    pytest.param(
        lambda c: c.lg.restore_snapshot(""), SnapshotNotFound, "no snapshot", id="restore-empty-id"
    ),
    pytest.param(
        lambda c: c.lg.restore_snapshot(c.checkpoint),
        SnapshotNotFound,
        "no snapshot",
        id="restore-a-checkpoint-id",
    ),
    # message content
    pytest.param(_append(""), InvalidInput, "cannot be empty", id="content-empty"),
    pytest.param(_append("  \n\t "), InvalidInput, "cannot be empty", id="content-whitespace"),
    pytest.param(_append(None), InvalidInput, "not NoneType", id="content-none"),
    pytest.param(_append(42), InvalidInput, "not int", id="content-int"),
    pytest.param(_append(b"bytes"), InvalidInput, "not bytes", id="content-bytes"),
    pytest.param(_append({}), InvalidInput, "not dict", id="content-dict"),
    pytest.param(_append([]), InvalidInput, "non-empty string or list", id="content-empty-list"),
    pytest.param(
        _append("\ud800"), InvalidInput, "lone surrogate at index 0", id="content-surrogate"
    ),
    pytest.param(
        _append("fine until \udfff"),
        InvalidInput,
        "lone surrogate at index 11",
        id="content-surrogate-tail",
    ),
    pytest.param(
        _append([{"type": "text", "text": "\ud800"}]),
        InvalidInput,
        "lone surrogate",
        id="content-part-surrogate",
    ),
    pytest.param(
        _append([{"type": "video", "url": "x"}]),
        InvalidInput,
        "parts are not valid",
        id="content-bad-part",
    ),
    # role and category
    pytest.param(_append(role="wizard"), InvalidInput, "unknown role 'wizard'", id="role-unknown"),
    pytest.param(_append(role=None), InvalidInput, "unknown role none", id="role-none"),
    pytest.param(_append(role="USER "), InvalidInput, "unknown role", id="role-padded"),
    pytest.param(
        _append(category="bogus"), InvalidInput, "unknown category 'bogus'", id="category-unknown"
    ),
    pytest.param(_append(category=42), InvalidInput, "unknown category 42", id="category-int"),
    # metadata
    pytest.param(
        _append(metadata={"when": object()}),
        InvalidInput,
        "JSON-serialisable",
        id="metadata-object",
    ),
    pytest.param(
        _append(metadata={"tags": {1, 2}}), InvalidInput, "JSON-serialisable", id="metadata-set"
    ),
    pytest.param(
        _append(metadata="k=v"), InvalidInput, "must be a dict, not str", id="metadata-str"
    ),
    pytest.param(
        _append(metadata=[("k", "v")]), InvalidInput, "must be a dict", id="metadata-list"
    ),
    pytest.param(
        _append(metadata={1: "int key"}),
        InvalidInput,
        "metadata",
        id="metadata-int-key",
    ),
    pytest.param(
        _append(metadata={"big": 2**70}),
        InvalidInput,
        "metadata",
        id="metadata-int-over-64-bit",
    ),
    pytest.param(
        _append(metadata={"note": "\ud800"}),
        InvalidInput,
        "surrogate",
        id="metadata-surrogate",
    ),
    pytest.param(
        _append(metadata={"score": float("nan")}),
        InvalidInput,
        "NaN or infinite",
        id="metadata-nan",
    ),
    pytest.param(
        lambda c: c.lg.take_snapshot(c.conversation, "meta"),
        InvalidInput,
        "must be a dict",
        id="snapshot-meta-str",
    ),
    # files
    pytest.param(
        lambda c: c.lg.append_message(
            c.conversation, "user", "look", image_paths=[c.files / "missing.png"]
        ),
        FileInputError,
        "Cannot read image",
        id="image-missing",
    ),
    pytest.param(
        lambda c: c.lg.append_message(
            c.conversation, "user", "look", image_paths=[c.files / "notes.txt"]
        ),
        FileInputError,
        "is not an image",
        id="image-is-text",
    ),
    pytest.param(
        lambda c: c.lg.append_message(
            c.conversation, "user", "look", image_paths=[c.files / "real.png", c.files / "fake.png"]
        ),
        FileInputError,
        "fake.png is not an image",
        id="image-second-of-two-fake",
    ),
    pytest.param(
        lambda c: c.lg.append_message(c.conversation, "user", "look", image_paths=[c.files]),
        FileInputError,
        "Cannot read image",
        id="image-is-a-directory",
    ),
    pytest.param(
        lambda c: c.lg.load_context_file(c.conversation, "missing.txt"),
        FileInputError,
        "'missing.txt' not found",
        id="context-missing",
    ),
    pytest.param(
        lambda c: c.lg.load_context_file(c.conversation, c.files / "latin1.txt"),
        FileInputError,
        "not UTF-8",
        id="context-not-utf8",
    ),
    pytest.param(
        lambda c: c.lg.load_context_file(c.conversation, "empty.txt"),
        InvalidInput,
        "is empty",
        id="context-empty",
    ),
    pytest.param(
        lambda c: c.lg.load_context_file(uuid4(), "good.txt"),
        ConversationNotFound,
        "no conversation",
        id="context-unknown-conversation",
    ),
    # other arguments
    pytest.param(
        lambda c: c.lg.as_of(c.conversation, 0), InvalidInput, "between 1 and", id="as-of-zero"
    ),
    pytest.param(
        lambda c: c.lg.as_of(c.conversation, 10**6),
        InvalidInput,
        "between 1 and",
        id="as-of-past-head",
    ),
    pytest.param(
        lambda c: c.lg.as_of(c.conversation, "2"), InvalidInput, "between 1 and", id="as-of-str"
    ),
    pytest.param(
        lambda c: c.lg.checkpoints(c.conversation, "bogus"),
        InvalidInput,
        "unknown checkpoint type 'bogus'",
        id="checkpoints-bad-type",
    ),
    pytest.param(
        lambda c: c.lg.list_conversations(-1),
        InvalidInput,
        "non-negative",
        id="list-negative-limit",
    ),
    pytest.param(
        lambda c: c.lg.retitle(c.conversation, 42), InvalidInput, "string", id="retitle-int"
    ),
    pytest.param(
        lambda c: c.lg.retitle(c.conversation, "  "), InvalidInput, "empty", id="retitle-blank"
    ),
    pytest.param(
        lambda c: c.lg.start_conversation(title=42),
        InvalidInput,
        "title",
        id="start-title-int",
    ),
    pytest.param(
        lambda c: c.lg.start_conversation(title="\ud800"),
        InvalidInput,
        "surrogate",
        id="start-title-surrogate",
    ),
    pytest.param(
        lambda c: c.lg.start_conversation(system_prompt="\ud800"),
        InvalidInput,
        "lone surrogate",
        id="start-system-prompt-surrogate",
    ),
    pytest.param(
        lambda c: c.lg.create_checkpoint(c.conversation, "bogus", "x"),
        InvalidInput,
        "checkpoint type",
        id="checkpoint-bad-type",
    ),
    # limits and search terms: refused before any database sees them
    pytest.param(
        lambda c: c.lg.list_conversations(2**64),
        InvalidInput,
        "limit must be a non-negative integer of at most 9223372036854775807",
        id="list-limit-past-64-bits",
    ),
    pytest.param(
        lambda c: c.lg.list_conversations(10, 2**63),
        InvalidInput,
        "offset must be a non-negative integer",
        id="list-offset-past-64-bits",
    ),
    pytest.param(
        lambda c: c.lg.list_conversations(10, 0, "lisbon " * 20_000),
        InvalidInput,
        "the limit is 1000 characters",
        id="list-search-huge",
    ),
    pytest.param(
        lambda c: c.lg.list_conversations(10, 0, 42),
        InvalidInput,
        "search term must be a string",
        id="list-search-int",
    ),
    pytest.param(
        lambda c: c.lg.checkpoints(c.conversation, limit=-5),
        InvalidInput,
        "limit must be a non-negative integer",
        id="checkpoints-negative-limit",
    ),
    pytest.param(
        lambda c: c.lg.checkpoints(limit=2**64),
        InvalidInput,
        "limit must be a non-negative integer",
        id="checkpoints-limit-past-64-bits",
    ),
]


@pytest.mark.parametrize(("bad_call", "error", "fragment"), LEDGER_CASES)
async def test_ledger_refuses(
    ledger_ctx: Ctx, bad_call: Callable[[Ctx], Any], error: type[ChatledgerError], fragment: str
) -> None:
    was = before(ledger_ctx)
    with pytest.raises(error) as caught:
        await call(bad_call, ledger_ctx)
    assert isinstance(caught.value, ChatledgerError)
    assert_helpful(caught.value, fragment)
    assert_unchanged(ledger_ctx, was)


# -- the manager ---------------------------------------------------------------------------
def _process(message: Any = "fine", **kwargs: Any) -> Callable[[Ctx], Any]:
    return lambda c: c.m.process_message(message, **kwargs)


MANAGER_CASES = [
    pytest.param(_process(None), InvalidInput, "not NoneType", id="process-none"),
    pytest.param(_process(""), InvalidInput, "cannot be empty", id="process-empty"),
    pytest.param(_process(" \n "), InvalidInput, "cannot be empty", id="process-whitespace"),
    pytest.param(_process(42), InvalidInput, "not int", id="process-int"),
    pytest.param(_process(b"bytes"), InvalidInput, "not bytes", id="process-bytes"),
    pytest.param(_process({}), InvalidInput, "not dict", id="process-dict"),
    pytest.param(_process("\ud800"), InvalidInput, "lone surrogate", id="process-surrogate"),
    pytest.param(
        _process("", streaming=True), InvalidInput, "cannot be empty", id="process-empty-streaming"
    ),
    pytest.param(
        _process(conversation_id="not-a-uuid"),
        ConversationNotFound,
        "not a conversation id",
        id="process-malformed-conversation",
    ),
    pytest.param(
        _process(conversation_id=UNKNOWN_UUID),
        ConversationNotFound,
        "no conversation",
        id="process-unknown-conversation",
    ),
    pytest.param(
        lambda c: c.m.process_message("look", image_path=str(c.files / "missing.png")),
        FileInputError,
        "Cannot read image",
        id="process-image-missing",
    ),
    pytest.param(
        lambda c: c.m.process_message("look", image_path=c.files / "notes.txt"),
        FileInputError,
        "is not an image",
        id="process-image-not-an-image",
    ),
    pytest.param(
        lambda c: c.m.process_message(
            "look", image_path=[c.files / "real.png", c.files / "missing.png"]
        ),
        FileInputError,
        "Cannot read image",
        id="process-second-image-missing",
    ),
    pytest.param(
        lambda c: c.m.process_message("read", context_files=["missing.txt"]),
        FileInputError,
        "not found",
        id="process-context-missing",
    ),
    pytest.param(
        lambda c: c.m.process_message("read", context_files=["good.txt", "missing.txt"]),
        FileInputError,
        "'missing.txt' not found",
        id="process-second-context-missing",
    ),
    pytest.param(
        lambda c: c.m.process_message("read", context_files=["good.txt", c.files / "latin1.txt"]),
        FileInputError,
        "not UTF-8",
        id="process-second-context-not-utf8",
    ),
    pytest.param(
        lambda c: c.m.process_message("read", context_files=["good.txt", "empty.txt"]),
        InvalidInput,
        "is empty",
        id="process-second-context-empty",
    ),
    pytest.param(
        lambda c: c.m.add_message("wizard", "x"), InvalidInput, "unknown role", id="add-role"
    ),
    pytest.param(
        lambda c: c.m.add_message("user", "x", category="nope"),
        InvalidInput,
        "unknown category",
        id="add-category",
    ),
    pytest.param(
        lambda c: c.m.add_message("user", "x", metadata={"f": lambda: 1}),
        InvalidInput,
        "JSON-serialisable",
        id="add-metadata-function",
    ),
    pytest.param(
        lambda c: c.m.add_message("tool", None), InvalidInput, "not NoneType", id="add-none"
    ),
    pytest.param(
        lambda c: c.m.add_context("   "), InvalidInput, "cannot be empty", id="add-context-blank"
    ),
    pytest.param(
        lambda c: c.m.create_snapshot(meta=["x"]),
        InvalidInput,
        "must be a dict",
        id="snapshot-meta-list",
    ),
    pytest.param(
        lambda c: c.m.list_checkpoints(checkpoint_type="weekly"),
        InvalidInput,
        "unknown checkpoint type",
        id="list-checkpoints-type",
    ),
    pytest.param(
        lambda c: c.m.list_conversations(limit=-5),
        InvalidInput,
        "non-negative",
        id="list-conversations",
    ),
    pytest.param(
        lambda c: c.m.load_context_file("empty.txt"),
        InvalidInput,
        "is empty",
        id="load-context-empty-file",
    ),
]


@pytest.mark.parametrize(("bad_call", "error", "fragment"), MANAGER_CASES)
async def test_manager_refuses(
    manager_ctx: Ctx, bad_call: Callable[[Ctx], Any], error: type[ChatledgerError], fragment: str
) -> None:
    was = before(manager_ctx)
    with pytest.raises(error) as caught:
        await call(bad_call, manager_ctx)
    assert isinstance(caught.value, ChatledgerError)
    assert_helpful(caught.value, fragment)
    assert_unchanged(manager_ctx, was)


# Penguin's wrappers: the wrapper returns False/None, the Ledger method underneath raises.
WRAPPER_CASES = [
    pytest.param(
        lambda c: c.m.load("not-a-uuid"),
        False,
        lambda c: c.lg.conversation("not-a-uuid"),
        ConversationNotFound,
        id="load-malformed",
    ),
    pytest.param(
        lambda c: c.m.load(UNKNOWN_UUID),
        False,
        lambda c: c.lg.conversation(UNKNOWN_UUID),
        ConversationNotFound,
        id="load-unknown",
    ),
    pytest.param(
        lambda c: c.m.load(None),
        False,
        lambda c: c.lg.conversation(None),
        ConversationNotFound,
        id="load-none",
    ),
    pytest.param(
        lambda c: c.m.load_context_file("missing.txt"),
        False,
        lambda c: c.lg.load_context_file(c.conversation, "missing.txt"),
        FileInputError,
        id="load-context-missing",
    ),
    pytest.param(
        lambda c: c.m.load_context_file(c.files / "nope" / "deeper.md"),
        False,
        lambda c: c.lg.load_context_file(c.conversation, c.files / "nope" / "deeper.md"),
        FileInputError,
        id="load-context-missing-absolute",
    ),
    pytest.param(
        lambda c: c.m.load_context_file("../../../../etc/hostname-does-not-exist"),
        False,
        lambda c: c.lg.load_context_file(c.conversation, "../../../../etc/hostname-does-not-exist"),
        FileInputError,
        id="load-context-climbing-out",
    ),
    pytest.param(
        lambda c: c.m.rollback_to_checkpoint(UNKNOWN_CHECKPOINT),
        False,
        lambda c: c.lg.rollback(UNKNOWN_CHECKPOINT),
        CheckpointNotFound,
        id="rollback-unknown",
    ),
    pytest.param(
        lambda c: c.m.rollback_to_checkpoint("garbage"),
        False,
        lambda c: c.lg.rollback("garbage"),
        CheckpointNotFound,
        id="rollback-malformed",
    ),
    pytest.param(
        lambda c: c.m.branch_from_checkpoint(UNKNOWN_CHECKPOINT),
        None,
        lambda c: c.lg.branch(UNKNOWN_CHECKPOINT),
        CheckpointNotFound,
        id="branch-unknown",
    ),
    pytest.param(
        lambda c: c.m.branch_from_checkpoint(""),
        None,
        lambda c: c.lg.branch(""),
        CheckpointNotFound,
        id="branch-empty",
    ),
    pytest.param(
        lambda c: c.m.restore_snapshot(UNKNOWN_SNAPSHOT),
        False,
        lambda c: c.lg.restore_snapshot(UNKNOWN_SNAPSHOT),
        SnapshotNotFound,
        id="restore-unknown",
    ),
    pytest.param(
        lambda c: c.m.restore_snapshot(c.checkpoint),
        False,
        lambda c: c.lg.restore_snapshot(c.checkpoint),
        SnapshotNotFound,
        id="restore-checkpoint-id",
    ),
    pytest.param(
        lambda c: c.m.branch_from_snapshot(UNKNOWN_SNAPSHOT, meta={"name": "x"}),
        None,
        lambda c: c.lg.branch(UNKNOWN_SNAPSHOT, "x"),
        CheckpointNotFound,
        id="branch-from-snapshot-unknown",
    ),
    pytest.param(
        lambda c: c.m.branch_from_snapshot("snap_"),
        None,
        lambda c: c.lg.branch("snap_"),
        CheckpointNotFound,
        id="branch-from-snapshot-malformed",
    ),
]


@pytest.mark.parametrize(("wrapper", "expected", "underlying", "error"), WRAPPER_CASES)
async def test_penguin_wrappers_return_false_while_the_ledger_raises(
    manager_ctx: Ctx,
    wrapper: Callable[[Ctx], Any],
    expected: Any,
    underlying: Callable[[Ctx], Any],
    error: type[ChatledgerError],
) -> None:
    was = before(manager_ctx)
    assert await call(wrapper, manager_ctx) is expected
    assert_unchanged_no_append(manager_ctx, was)
    with pytest.raises(error) as caught:
        await call(underlying, manager_ctx)
    assert isinstance(caught.value, ChatledgerError)
    assert str(caught.value)
    assert_unchanged(manager_ctx, was)


def assert_unchanged_no_append(ctx: Ctx, was: Before) -> None:
    assert stored_rows(ctx) == was.rows
    assert ctx.lg.history(ctx.conversation) == was.history
    assert ctx.m.get_conversation_id() == was.active


async def test_wrappers_still_work_after_failures(manager_ctx: Ctx) -> None:
    """The False/None above is about the ids, not a broken manager: good ids still work."""
    m = manager_ctx.m
    assert await m.rollback_to_checkpoint(UNKNOWN_CHECKPOINT) is False
    assert await m.rollback_to_checkpoint(manager_ctx.checkpoint) is True
    assert m.restore_snapshot(manager_ctx.snapshot) is True
    branch = await m.branch_from_checkpoint(manager_ctx.checkpoint)
    assert branch is not None and branch != str(manager_ctx.conversation)
    assert m.load(str(manager_ctx.conversation)) is True
    assert m.load_context_file("good.txt") is True
    assert m.ledger.verify().ok


# -- workspaces and database files that cannot be opened ---------------------------------
# SQLite files only: PostgreSQL's own equivalents follow (a newer schema version, and URLs
# that cannot name a store).
def _workspace_is_a_file(root: Path) -> Path:
    path = root / "i-am-a-file"
    path.write_text("not a folder")
    return path


def _random_bytes(root: Path) -> Path:
    (root / DB).write_bytes(os.urandom(8192))
    return root


def _sqlite_header_then_garbage(root: Path) -> Path:
    (root / DB).write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    return root


def _foreign_database(root: Path) -> Path:
    db = sqlite3.connect(root / DB)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, customer TEXT, total REAL)")
    db.execute("INSERT INTO invoices VALUES (1, 'ACME', 12.5)")
    db.commit()
    db.close()
    return root


def _truncated_database(root: Path) -> Path:
    ledger = Ledger(root, database_url=SQLITE)
    conversation = ledger.start_conversation(title="cut short")
    for index in range(5):
        ledger.append_message(conversation, "user", f"message {index}")
    ledger.close()
    data = (root / DB).read_bytes()
    (root / DB).write_bytes(data[: len(data) // 3])
    return root


def _database_is_a_directory(root: Path) -> Path:
    (root / DB).mkdir()
    return root


OPEN_CASES = [
    pytest.param(_workspace_is_a_file, WorkspaceError, "is a file", id="workspace-is-a-file"),
    pytest.param(_random_bytes, StoreError, "not a SQLite database", id="random-bytes"),
    pytest.param(_sqlite_header_then_garbage, StoreError, "corrupt", id="sqlite-header-garbage"),
    pytest.param(_truncated_database, StoreError, "corrupt", id="truncated"),
    pytest.param(_foreign_database, StoreError, "another program", id="foreign-sqlite"),
    pytest.param(
        _database_is_a_directory,
        ChatledgerError,
        "chatledger.db",
        id="database-path-is-a-directory",
    ),
]


def _snapshot_files(path: Path) -> dict[str, bytes | None]:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {
        p.name: (p.read_bytes() if p.is_file() else None)
        for p in sorted(path.iterdir())
        if not p.name.endswith(("-wal", "-shm"))
    }


def open_and_close(opener: str, workspace: Path, url: str) -> None:
    if opener == "ledger":
        Ledger(workspace, database_url=url).close()
    else:
        ConversationManager(workspace_path=workspace, database_url=url).close()


@pytest.mark.parametrize("opener", ["ledger", "manager"])
@pytest.mark.parametrize(("make", "error", "fragment"), OPEN_CASES)
def test_unusable_sqlite_file_is_refused_untouched(
    tmp_path: Path,
    make: Callable[[Path], Path],
    error: type[ChatledgerError],
    fragment: str,
    opener: str,
) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    workspace = make(root)
    files_before = _snapshot_files(workspace)
    with pytest.raises(error) as caught:
        open_and_close(opener, workspace, SQLITE)
    assert isinstance(caught.value, ChatledgerError)
    assert_helpful(caught.value, fragment)
    if workspace.is_dir() and (workspace / DB).is_file():
        assert str(workspace / DB) in str(caught.value), "the message names the file"
    assert _snapshot_files(workspace) == files_before, "the refused file was written to"


# -- a store written by a newer chatledger, on either store ---------------------------------
def _store_from_the_future(store: Store, version: str) -> None:
    ledger = Ledger(store.workspace, database_url=store.url)
    ledger.start_conversation(title="from the future")
    ledger.close()
    store.execute("UPDATE chatledger_meta SET value=? WHERE key='schema_version'", version)


def _store_contents(store: Store) -> Any:
    # The SQLite file byte for byte; on PostgreSQL every table of the store's schema.
    if store.name == "sqlite":
        return _snapshot_files(store.workspace)
    return store.tables()


def _where(store: Store) -> str:
    """How a message names the store: its file, or its schema."""
    return str(store.workspace / DB) if store.name == "sqlite" else f"({store.schema})"


@pytest.mark.parametrize("opener", ["ledger", "manager"])
@pytest.mark.parametrize(
    ("version", "fragment"),
    [
        pytest.param("999", "written by a newer chatledger (schema 999", id="schema-999"),
        pytest.param("one", "unreadable schema version 'one'", id="schema-not-a-number"),
    ],
)
def test_a_store_of_an_unknown_schema_version_is_refused_untouched(
    store: Store, version: str, fragment: str, opener: str
) -> None:
    _store_from_the_future(store, version)
    contents = _store_contents(store)
    assert contents, "nothing to compare: the store is empty"
    with pytest.raises(StoreError) as caught:
        open_and_close(opener, store.workspace, store.url)
    assert_helpful(caught.value, fragment)
    assert _where(store) in str(caught.value), "the message names the store"
    assert _store_contents(store) == contents, "the refused store was written to"


def test_a_store_of_a_newer_chatledger_keeps_its_data(store: Store) -> None:
    """Refusing a newer store must not destroy it: set the version back and it opens."""
    _store_from_the_future(store, "999")
    with pytest.raises(StoreError):
        Ledger(store.workspace, database_url=store.url)
    store.execute("UPDATE chatledger_meta SET value='1' WHERE key='schema_version'")
    ledger = store.ledger()
    assert [c["title"] for c in ledger.list_conversations()] == ["from the future"]
    assert ledger.verify().ok


# -- database URLs that cannot name a store ----------------------------------------------------
# Every PostgreSQL URL here points at port 1 of this host, where nothing listens: should a
# refusal ever stop happening before connecting, the test fails on the message instead of
# reaching a real server. None of them needs one.
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/test"
BAD_URLS = [
    pytest.param(
        UNREACHABLE,
        f"Cannot connect to PostgreSQL at {UNREACHABLE} (public)",
        id="unreachable-server",
    ),
    pytest.param(
        "postgresql:///test?host=127.0.0.1&port=1&user=postgres",
        f"Cannot connect to PostgreSQL at {UNREACHABLE}",
        id="unreachable-host-in-the-query",
    ),
    pytest.param("mysql://x", "Unsupported database URL 'mysql://x'", id="mysql"),
    pytest.param("sqlite:///chatledger.db", "give a postgresql://", id="sqlite-url"),
    pytest.param("postgresql://[bad", "database URL is not valid", id="unclosed-bracket"),
    pytest.param(
        "postgres://%zz@127.0.0.1:1/test", "database URL is not valid", id="bad-percent-escape"
    ),
    pytest.param(
        f"{UNREACHABLE}?no_such_option=1", "invalid URI query parameter", id="unknown-option"
    ),
    pytest.param(
        "postgresql://postgres@127.0.0.1:port/test",
        'invalid integer value "port"',
        id="port-not-a-number",
    ),
    pytest.param(
        f"{UNREACHABLE}?schema=a;drop",
        "Schema 'a;drop' in the database URL is not a plain PostgreSQL name",
        id="schema-with-semicolon",
    ),
    pytest.param(
        f"{UNREACHABLE}?schema=x%22%3B%20DROP%20SCHEMA%20public%20CASCADE%3B--",
        "is not a plain PostgreSQL name",
        id="schema-with-quote",
    ),
    pytest.param(
        f"{UNREACHABLE}?schema=chat%0A", "'chat\\n' in the database URL", id="schema-newline"
    ),
    pytest.param(f"{UNREACHABLE}?schema=", "Schema ''", id="schema-empty"),
    pytest.param(f"{UNREACHABLE}?schema=Chat", "lower-case letters", id="schema-upper-case"),
    pytest.param(f"{UNREACHABLE}?schema={'a' * 64}", "at most 63", id="schema-too-long"),
    pytest.param(
        f"{UNREACHABLE}?schema=information_schema",
        "belongs to PostgreSQL itself",
        id="schema-information-schema",
    ),
    pytest.param(f"{UNREACHABLE}?schema=pg_catalog", "PostgreSQL itself", id="schema-pg-catalog"),
]


@pytest.mark.parametrize("opener", ["ledger", "manager", "environment"])
@pytest.mark.parametrize(("url", "fragment"), BAD_URLS)
def test_a_database_url_that_names_no_usable_store_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, fragment: str, opener: str
) -> None:
    workspace = tmp_path / "ws"
    with pytest.raises(StoreError) as caught:
        if opener == "environment":
            monkeypatch.setenv(DATABASE_URL_VARIABLE, url)
            Ledger(workspace).close()
        else:
            open_and_close(opener, workspace, url)
    assert_helpful(caught.value, fragment)
    # Typed and told, not a psycopg or urllib error on its way up.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__
    # A URL that cannot be used is never quietly replaced by the workspace's SQLite file.
    assert not (workspace / DB).exists()


@pytest.mark.parametrize("opener", ["ledger", "manager"])
@pytest.mark.parametrize("url", [5, b"postgresql://x", ["postgresql://x"]], ids=repr)
def test_a_database_url_that_is_not_text_is_refused(tmp_path: Path, opener: str, url: Any) -> None:
    workspace = tmp_path / "ws"
    with pytest.raises(InvalidInput) as caught:
        open_and_close(opener, workspace, url)
    assert_helpful(caught.value, "database_url must be a string")
    assert not (workspace / DB).exists()
