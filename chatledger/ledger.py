"""The application service, as one object: a Ledger opens the store and composes the parts
that serve it, each in a module of its own:

- `commands` (ConversationCommands): every command reads get -> decide -> save;
- `turns` (TurnService): a model turn, from the user's message to a typed outcome, and
  `turn_records` (TurnRecords): the turn's writes before and after its model call;
- `queries` (ConversationQueries): transcripts, as-of, what the model was sent, listings;
- `unit_of_work` (UnitOfWork): one transaction per command, retried on conflicts;
- `contexts` (SessionContexts): the session contexts turns build their requests from.

Its methods forward to those parts, so `ledger.history(...)` is `ledger.queries.history(...)`.
Projections catch up inside each command's transaction, so what a call wrote is visible when
it returns (read-your-writes). ConversationManager (Penguin's API) is a thin layer over this;
the CLI and tests use it too. docs/architecture.md maps the whole house."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Concatenate, ParamSpec, TypeVar
from uuid import UUID

from chatledger.commands import AppendedMessage, ConversationCommands, new_id, utc_now
from chatledger.inputs import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_COUNT,
    MAX_DESCRIPTION_CHARS,
    MAX_KEY_CHARS,
    MAX_METADATA_BYTES,
    MAX_NAME_CHARS,
    MAX_SEARCH_CHARS,
    Settings,
    content_parts,
    parse_conversation_id,
)
from chatledger.queries import ConversationQueries
from chatledger.session_contexts import SessionContexts
from chatledger.turn_records import PreparedTurn, TurnRecords
from chatledger.turns import TurnService
from chatledger.unit_of_work import MAX_ATTEMPTS, UnitOfWork
from domain.checkpoints import CheckpointConfig
from domain.context_window import WindowConfig
from infrastructure.bundle import dump_bundle
from infrastructure.bundle_import import BundleImport, import_bundle, read_bundle
from infrastructure.files import DEFAULT_MAX_IMAGE_BYTES
from infrastructure.stores import open_store
from infrastructure.token_counting import DEFAULT_CONTEXT_WINDOW, ModelTokenizer, tokenizer_for
from projections.queries import ReadModel
from projections.runner import ProjectionRunner

# What callers imported from here before the parts had modules of their own.
__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_ATTEMPTS",
    "MAX_COUNT",
    "MAX_DESCRIPTION_CHARS",
    "MAX_KEY_CHARS",
    "MAX_METADATA_BYTES",
    "MAX_NAME_CHARS",
    "MAX_SEARCH_CHARS",
    "AppendedMessage",
    "Ledger",
    "PreparedTurn",
    "content_parts",
    "new_id",
    "parse_conversation_id",
    "utc_now",
]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")


def _forward(part: str, method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[Any, P], R]:
    """A Ledger method that calls the same method of one of its parts (typed as that one)."""

    @functools.wraps(method)
    def forward(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return getattr(getattr(self, part), method.__name__)(*args, **kwargs)

    return forward


class Ledger:
    def __init__(
        self,
        workspace: Path,
        *,
        checkpoint_config: CheckpointConfig | None = None,
        max_messages_per_session: int = 5000,
        cache_size: int = 20,
        clock: Callable[[], datetime] = utc_now,
        window: WindowConfig | None = None,
        tokenizer: ModelTokenizer | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        database_url: str | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_context_file_bytes: int | None = None,
        read_only: bool = False,
        must_exist: bool = False,
    ) -> None:
        """Opens the store: the workspace's SQLite file, or the PostgreSQL database named by
        `database_url` (default: the CHATLEDGER_DATABASE_URL variable). The workspace also
        holds context files named by relative paths.

        `read_only` (as the reading commands open it) writes nothing, reads a store it may
        not write, and refuses every command; it and `must_exist` refuse a store that is not
        there yet instead of creating one.

        A context file becomes one stored message, so it is held to `max_message_bytes`
        unless `max_context_file_bytes` says otherwise; an image file to `max_image_bytes`."""
        self.settings = settings = Settings.checked(
            workspace,
            checkpoint_config,
            max_messages_per_session=max_messages_per_session,
            max_message_bytes=max_message_bytes,
            max_image_bytes=max_image_bytes,
            max_context_file_bytes=max_context_file_bytes,
            cache_size=cache_size,
        )
        # The settings, where callers have always found them.
        self.workspace, self.config = settings.workspace, settings.checkpoints
        self.max_messages_per_session = settings.max_messages_per_session
        self.max_message_bytes = settings.max_message_bytes
        self.max_image_bytes = settings.max_image_bytes
        self.max_context_file_bytes = settings.max_context_file_bytes
        self.clock = clock
        self.window = window or WindowConfig(context_window=DEFAULT_CONTEXT_WINDOW)
        self.tokens = tokenizer or tokenizer_for(None)
        self.db, self.store = open_store(
            settings.workspace, database_url, cache_size, read_only=read_only, must_exist=must_exist
        )
        try:
            self.read = ReadModel(self.db)
            self.projections = ProjectionRunner(self.db, self.store.recorder, self.store.mapper)
            if read_only:
                self.projections.require_current()
            else:
                self.projections.catch_up_or_rebuild()
        except BaseException:
            self.close()
            raise
        self.store.projector = self.projections.project_in_transaction
        self.contexts = SessionContexts(self.read, cache_size)
        self.unit_of_work = UnitOfWork(self.store, self.db, self.contexts)
        self.queries = ConversationQueries(
            self.store, self.db, self.read, self.contexts, self.window
        )
        self.commands = ConversationCommands(
            self.unit_of_work, self.queries, settings, tokens=self.tokens, clock=clock
        )
        self.turn_records = TurnRecords(
            self.unit_of_work,
            self.commands,
            self.queries,
            self.contexts,
            window=self.window,
            tokens=self.tokens,
            clock=clock,
            checkpoints=settings.checkpoints,
            max_messages_per_session=max_messages_per_session,
        )
        self.turns = TurnService(self.turn_records)

    def close(self) -> None:
        self.store.close()
        self.db.close()

    def rebuild_projections(self) -> int:
        return self.projections.rebuild()

    # -- bundles (docs/hash-chain.md §5) -------------------------------------------------
    def export_bundle(self, conversation_id: str | UUID, file: BinaryIO) -> int:
        """Writes the bundle of a conversation (its ancestors' events up to their forks, then
        its own) to an open binary file; returns the number of events written."""
        cid = self.queries.existing(conversation_id)
        with self.db.failures():
            return dump_bundle(self.store.recorder, cid, file)

    def import_bundle(self, path: str | Path) -> BundleImport:
        """Checks a bundle file whole (its hashes, its chains, its lineage, and that what this
        store already holds of it is the same), then writes the events the store lacks, as
        they were stored, projected in the same transaction. Writes nothing when refused
        (FileInputError, BundleConflict) or when the store holds all of it already."""
        self.db.refuse_if_read_only()
        report = import_bundle(self.store, self.db, read_bundle(Path(path)))
        for conversation_id in report.conversations:
            self.contexts.forget(conversation_id)
        return report

    # -- commands ----------------------------------------------------------------------
    start_conversation = _forward("commands", ConversationCommands.start_conversation)
    ensure_started = _forward("commands", ConversationCommands.ensure_started)
    append_message = _forward("commands", ConversationCommands.append_message)
    create_checkpoint = _forward("commands", ConversationCommands.create_checkpoint)
    rollback = _forward("commands", ConversationCommands.rollback)
    branch = _forward("commands", ConversationCommands.branch)
    take_snapshot = _forward("commands", ConversationCommands.take_snapshot)
    restore_snapshot = _forward("commands", ConversationCommands.restore_snapshot)
    load_context_file = _forward("commands", ConversationCommands.load_context_file)
    read_context = _forward("commands", ConversationCommands.read_context)
    retitle = _forward("commands", ConversationCommands.retitle)

    # -- a turn, and its steps ---------------------------------------------------------
    take_turn = _forward("turns", TurnService.take_turn)
    stream_turn = _forward("turns", TurnService.stream_turn)
    prepare_turn = _forward("turn_records", TurnRecords.prepare)
    record_reply = _forward("turn_records", TurnRecords.record_reply)
    record_model_failure = _forward("turn_records", TurnRecords.record_failure)

    # -- reads -------------------------------------------------------------------------
    conversation = _forward("queries", ConversationQueries.conversation)
    history = _forward("queries", ConversationQueries.history)
    as_of = _forward("queries", ConversationQueries.as_of)
    context_at = _forward("queries", ConversationQueries.context_at)
    view_at = _forward("queries", ConversationQueries.view_at)
    checkpoint = _forward("queries", ConversationQueries.checkpoint)
    checkpoints = _forward("queries", ConversationQueries.checkpoints)
    list_conversations = _forward("queries", ConversationQueries.list_conversations)
    branch_tree = _forward("queries", ConversationQueries.branch_tree)
    verify = _forward("queries", ConversationQueries.verify)
