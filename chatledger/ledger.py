"""The application service: every command reads get -> decide -> save, then the projections
catch up before the call returns (read-your-writes).

ConversationManager (Penguin's API) is a thin layer over this; the CLI and tests use it too."""

from __future__ import annotations

import json
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID, uuid4

import orjson
from eventsourcing.persistence import PersistenceError, RecordConflictError
from pydantic import TypeAdapter, ValidationError

from chatledger.model_context import ModelRequest, SessionContext, build_request
from chatledger.providers import ModelReply
from domain.checkpoints import CheckpointConfig, CheckpointType, auto_checkpoint_due
from domain.context_window import Trim, WindowConfig
from domain.conversation import Conversation
from domain.errors import (
    CheckpointNotFound,
    ConcurrencyConflict,
    ConversationNotFound,
    InvalidInput,
    NotFound,
    SnapshotNotFound,
    StoreError,
)
from domain.events import ContextTrimmed, ForkPoint, ModelCalled
from domain.hashing import GENESIS_HASH
from domain.manifests import encode as encode_manifest
from domain.messages import (
    DEFAULT_CATEGORY,
    Category,
    ContentPart,
    Role,
    TextPart,
    ToolCallPart,
)
from domain.retention import CheckpointRecord, checkpoints_to_prune
from domain.view import ViewState
from infrastructure.database import Database
from infrastructure.files import ContextFile, read_context_file, read_image
from infrastructure.stores import open_store
from infrastructure.token_counting import DEFAULT_CONTEXT_WINDOW, ModelTokenizer, tokenizer_for
from infrastructure.verification import VerificationReport, verify
from projections.queries import CheckpointRow, ReadModel, message_row
from projections.runner import ProjectionRunner

T = TypeVar("T")
MAX_ATTEMPTS = 30
#: First pause (seconds) before deciding again after a conflict; doubles, capped at 50 ms.
CONFLICT_BACKOFF = 0.001
#: Largest message accepted, in bytes of its stored JSON parts (images are files, not counted).
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
#: Seconds between two runs of the age-based retention rules for one conversation.
RETENTION_INTERVAL = 60.0
_PARTS = TypeAdapter(tuple[ContentPart, ...])


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid4().hex}"


def parse_conversation_id(value: str | UUID) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise ConversationNotFound(f"{value!r} is not a conversation id.") from None


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInput(
            f"{what} contains a lone surrogate at index {error.start}; send valid Unicode."
        ) from None


def _check_json(value: Any, what: str) -> None:
    """What orjson can store: string keys, 64-bit integers, valid Unicode."""
    try:
        orjson.dumps(value)
    except TypeError as error:
        if "surrogates" in str(error):
            raise InvalidInput(f"{what} contains a lone surrogate; send valid Unicode.") from None
        raise InvalidInput(
            f"{what} must be JSON-serialisable (string keys, integers within 64 bits): {error}."
        ) from None


def _label(value: Any, what: str) -> str | None:
    """An optional short text: a title, a checkpoint name or description."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, not {type(value).__name__}.")
    _check_text(value, what)
    return value


def _checkpoint_type(value: Any) -> CheckpointType:
    try:
        return CheckpointType(value)
    except ValueError:
        raise InvalidInput(
            f"Unknown checkpoint type {value!r}; use one of {[t.value for t in CheckpointType]}."
        ) from None


def content_parts(content: Any) -> tuple[ContentPart, ...]:
    """A message's content as parts: a non-empty string, or a list of part dicts."""
    if isinstance(content, str):
        if not content.strip():
            raise InvalidInput("A message cannot be empty.")
        _check_text(content, "The message")
        return (TextPart(text=content),)
    if isinstance(content, list | tuple) and content:
        try:
            parts = _PARTS.validate_python(tuple(content))
        except ValidationError as error:
            raise InvalidInput(
                f"Message parts are not valid: {error.errors()[0]['msg']}."
            ) from None
        _check_json([part.model_dump() for part in parts], "The message parts")
        return parts
    raise InvalidInput(
        f"A message must be a non-empty string or list of parts, not {type(content).__name__}."
    )


def _metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidInput(f"metadata must be a dict, not {type(metadata).__name__}.")
    _check_json(metadata, "metadata")
    try:
        # orjson would store NaN and infinities as null: refuse them instead.
        json.dumps(metadata, allow_nan=False)
    except ValueError:
        raise InvalidInput("metadata cannot hold NaN or infinite numbers.") from None
    return metadata


@dataclass
class _Batch:
    """The aggregates one command touched: saved together in one transaction, or forgotten
    together if the command fails."""

    store: Any
    database: Database
    #: Whether cached aggregates must first catch up with other writers' events.
    fresh: bool = True
    aggregates: dict[UUID, Conversation] = field(default_factory=dict)

    def get(self, conversation_id: UUID) -> Conversation:
        if conversation_id not in self.aggregates:
            self.database.lock_conversation(conversation_id)
            self.aggregates[conversation_id] = self.store.conversation(
                conversation_id, fresh=self.fresh
            )
        return self.aggregates[conversation_id]

    def add(self, conversation: Conversation) -> Conversation:
        self.aggregates[conversation.id] = conversation
        return conversation


class _Follower:
    """Keeps a working session context in step with the events a command triggers."""

    def __init__(self, conversation: Conversation, context: SessionContext) -> None:
        self.conversation, self.context = conversation, context
        self.seen = len(conversation.pending_events)

    def __call__(self) -> None:
        for event in self.conversation.pending_events[self.seen :]:
            self.context.apply(event)
        self.seen = len(self.conversation.pending_events)


def _by_category(trims: Sequence[Trim]) -> dict[Category, list[Trim]]:
    grouped: dict[Category, list[Trim]] = {}
    for trim in trims:
        grouped.setdefault(trim.category, []).append(trim)
    return grouped


@dataclass(frozen=True)
class PreparedTurn:
    """A turn ready for its model call, or, when its idempotency key was already answered,
    the recorded answer (then nothing was written and no call is to be made)."""

    conversation_id: UUID
    message_id: str | None
    call_id: str
    request: ModelRequest | None
    recorded_answer: dict[str, Any] | None = None


@dataclass(frozen=True)
class AppendedMessage:
    conversation_id: UUID
    message_id: str
    position: int
    event: Any

    @property
    def row(self) -> dict[str, Any]:
        """The message as a transcript row (what history() will show for it), built only
        when asked: most appends never need it."""
        return message_row(
            self.event.TOPIC, self.position, str(self.conversation_id), self.event.document()
        )


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
    ) -> None:
        """Opens the store: the workspace's SQLite file, or the PostgreSQL database named by
        `database_url` (default: the CHATLEDGER_DATABASE_URL variable). The workspace also
        holds context files named by relative paths."""
        if max_messages_per_session < 1:
            raise InvalidInput("max_messages_per_session must be at least 1.")
        if max_message_bytes < 1:
            raise InvalidInput("max_message_bytes must be at least 1.")
        self.max_message_bytes = max_message_bytes
        self.workspace = Path(workspace).expanduser()
        self.config = checkpoint_config or CheckpointConfig()
        self.max_messages_per_session = max_messages_per_session
        self.clock = clock
        self._retention_runs: dict[UUID, datetime] = {}
        self.window = window or WindowConfig(context_window=DEFAULT_CONTEXT_WINDOW)
        #: Session contexts of recently used conversations, least recently used first.
        self._contexts: OrderedDict[UUID, SessionContext] = OrderedDict()
        self._context_cache_size = max(1, cache_size)
        self.tokens = tokenizer or tokenizer_for(None)
        self.db, self.store = open_store(self.workspace, database_url, cache_size)
        try:
            self.read = ReadModel(self.db)
            self.projections = ProjectionRunner(self.db, self.store.recorder, self.store.mapper)
            self.projections.catch_up_or_rebuild()
        except BaseException:
            self.close()
            raise
        self.store.projector = self.projections.project_in_transaction

    def close(self) -> None:
        self.store.close()
        self.db.close()

    # -- the command loop ----------------------------------------------------------------
    def _run(self, decide: Callable[[_Batch], T]) -> T:
        for attempt in range(MAX_ATTEMPTS):
            batch = _Batch(self.store, self.db)
            try:
                # Decide and save under the database's writer lock (see its writer_lock);
                # where there is none, optimistic concurrency on positions decides.
                with self.db.writer_lock():
                    # Cached aggregates catch up first unless nobody else can have committed
                    # since this Ledger's last save.
                    batch.fresh = self.db.changed_by_others()
                    result = decide(batch)
                    recordings = self.store.save_conversations(*batch.aggregates.values())
                    self.db.note_own_commit()
            except RecordConflictError:
                # Another writer got there first: decide again on fresh state, after a short
                # random pause so that writers racing for one conversation spread out.
                self._forget(batch)
                time.sleep(min(CONFLICT_BACKOFF * 2**attempt, 0.05) * random.random())
                continue
            except PersistenceError as error:
                # The library gave up on the database (it retries dropped connections).
                self._forget(batch)
                raise StoreError(f"The store could not complete the command: {error}") from error
            except BaseException:
                self._forget(batch)
                raise
            for recording in recordings:
                context = self._contexts.get(recording.domain_event.originator_id)
                if context is not None:
                    context.apply(recording.domain_event)
            return result
        raise ConcurrencyConflict(
            f"Gave up after {MAX_ATTEMPTS} attempts: other writers kept appending to the same "
            "conversation. Retry the call."
        )

    def _forget(self, batch: _Batch) -> None:
        self.db.forget_commits()
        for conversation_id in batch.aggregates:
            self.store.forget(conversation_id)
            self._contexts.pop(conversation_id, None)

    def _existing(self, conversation_id: str | UUID) -> UUID:
        cid = parse_conversation_id(conversation_id)
        if not self.read.conversation_exists(cid):
            raise ConversationNotFound(f"No conversation with id {cid}.")
        return cid

    # -- commands ------------------------------------------------------------------------
    def start_conversation(
        self,
        *,
        title: str | None = None,
        system_prompt: str = "",
        reset_from: UUID | None = None,
    ) -> UUID:
        title = _label(title, "A title")
        if not isinstance(system_prompt, str):
            raise InvalidInput("A system prompt must be a string.")
        conversation_id = uuid4()
        view = ViewState().with_new_session(new_id("sess"))

        def decide(batch: _Batch) -> UUID:
            conversation = batch.add(
                Conversation.start(
                    conversation_id=conversation_id,
                    view=view,
                    prev_hash=GENESIS_HASH,
                    timestamp=self.clock(),
                    title=title,
                    reset_from=reset_from,
                )
            )
            if system_prompt:
                self._append(conversation, Role.SYSTEM, content_parts(system_prompt), None, {})
            return conversation_id

        return self._run(decide)

    def append_message(
        self,
        conversation_id: str | UUID,
        role: str,
        content: Any,
        *,
        category: str | Category | None = None,
        metadata: dict[str, Any] | None = None,
        image_paths: Sequence[str | Path] = (),
    ) -> AppendedMessage:
        cid = parse_conversation_id(conversation_id)
        try:
            the_role = Role(role)
        except ValueError:
            raise InvalidInput(
                f"Unknown role {role!r}; use one of {[r.value for r in Role]}."
            ) from None
        the_category = self._category(category)
        parts = self._parts(content, image_paths)
        meta = _metadata(metadata)
        return self._run(
            lambda batch: self._append(batch.get(cid), the_role, parts, the_category, meta)
        )

    def _parts(self, content: Any, image_paths: Sequence[str | Path]) -> tuple[ContentPart, ...]:
        """A message's parts, checked (text within the size limit) and images priced."""
        parts = content_parts(content)
        size = sum(len(orjson.dumps(part.model_dump())) for part in parts)
        if size > self.max_message_bytes:
            raise InvalidInput(
                f"The message is {size} bytes; the limit is {self.max_message_bytes} "
                "(max_message_bytes). Split it, or attach it as a context file."
            )
        return parts + tuple(self.tokens.price_image(read_image(path)) for path in image_paths)

    @staticmethod
    def _category(category: str | Category | None) -> Category | None:
        if category is None or isinstance(category, Category):
            return category
        try:
            return Category(str(category).upper())
        except ValueError:
            raise InvalidInput(
                f"Unknown category {category!r}; use one of {[c.value for c in Category]}."
            ) from None

    def _append(
        self,
        conversation: Conversation,
        role: Role,
        parts: tuple[ContentPart, ...],
        category: Category | None,
        metadata: dict[str, Any],
    ) -> AppendedMessage:
        now = self.clock()
        if conversation.session_is_full(self.max_messages_per_session):
            self._start_session(conversation, "max_messages_per_session reached", now)
        message_id = new_id("msg")
        conversation.append_message(
            message_id=message_id,
            role=role,
            category=category or DEFAULT_CATEGORY[role],
            parts=parts,
            tokens=self.tokens.count_parts(role, parts),
            encoding=self.tokens.encoding_name,
            timestamp=now,
            metadata=metadata,
        )
        appended = AppendedMessage(
            conversation.id, message_id, conversation.version, conversation.pending_events[-1]
        )
        if auto_checkpoint_due(self.config, conversation.view.eligible_since_auto_checkpoint):
            self._checkpoint(conversation, CheckpointType.AUTO, None, None, now)
        return appended

    def _start_session(self, conversation: Conversation, reason: str, now: datetime) -> None:
        previous = conversation.view.session
        marker = (
            # No ids in the text: a replay elsewhere must send the very same request.
            f"[Session {previous.number + 1} continues this conversation after session "
            f"{previous.number} ({previous.message_count} messages).]"
        )
        conversation.start_session(
            session_id=new_id("sess"),
            reason=reason,
            marker_message_id=new_id("msg"),
            marker_text=marker,
            marker_tokens=self.tokens.count_message(Role.SYSTEM, self.tokens.count_text(marker)),
            encoding=self.tokens.encoding_name,
            timestamp=now,
        )

    def _checkpoint(
        self,
        conversation: Conversation,
        checkpoint_type: CheckpointType,
        name: str | None,
        description: str | None,
        now: datetime,
    ) -> str:
        checkpoint_id = new_id("cp")
        conversation.create_checkpoint(
            checkpoint_id=checkpoint_id,
            checkpoint_type=checkpoint_type,
            name=name,
            description=description,
            timestamp=now,
        )
        if checkpoint_type is CheckpointType.AUTO:
            self._apply_retention(conversation, checkpoint_id, now)
        return checkpoint_id

    def _apply_retention(self, conversation: Conversation, newest: str, now: datetime) -> None:
        """Keeps at most max_auto_checkpoints at once (pruning the oldest by an index range
        read), and applies the age rules, which change only as time passes, at most once per
        RETENTION_INTERVAL per conversation so a busy conversation does not re-read its whole
        index on every message."""
        overflow = conversation.live_auto_checkpoints - self.config.max_auto_checkpoints
        last_run = self._retention_runs.get(conversation.id)
        if last_run is None or (now - last_run).total_seconds() >= RETENTION_INTERVAL:
            self._retention_runs[conversation.id] = now
            records = [
                self._record(row)
                for row in self.read.checkpoints(conversation.id, "auto", limit=None)
            ]
            records.append(
                CheckpointRecord(
                    newest, CheckpointType.AUTO, now, conversation.auto_checkpoints_taken
                )
            )
            pruned = checkpoints_to_prune(records, now, self.config)
        elif overflow > 0:
            # Prune a tenth of the cap at once, so a conversation at its cap records one
            # pruning event per cap/10 messages instead of one per message.
            batch = max(overflow, self.config.max_auto_checkpoints // 10)
            oldest = self.read.checkpoints(conversation.id, "auto", batch, oldest_first=True)
            pruned = tuple(row.checkpoint_id for row in oldest)
        else:
            return
        conversation.prune_checkpoints(pruned, "retention", now)

    @staticmethod
    def _record(row: CheckpointRow) -> CheckpointRecord:
        return CheckpointRecord(
            row.checkpoint_id,
            CheckpointType(row.type),
            datetime.fromisoformat(row.created_at),
            row.auto_ordinal or 0,
        )

    def create_checkpoint(
        self,
        conversation_id: str | UUID,
        checkpoint_type: CheckpointType = CheckpointType.MANUAL,
        name: str | None = None,
        description: str | None = None,
    ) -> str:
        cid = parse_conversation_id(conversation_id)
        kind = _checkpoint_type(checkpoint_type)
        name, description = _label(name, "A checkpoint name"), _label(description, "A description")
        return self._run(
            lambda batch: self._checkpoint(batch.get(cid), kind, name, description, self.clock())
        )

    def checkpoint(self, checkpoint_id: str) -> CheckpointRow:
        row = self.read.checkpoint(str(checkpoint_id))
        if row is None:
            raise CheckpointNotFound(
                f"No checkpoint {checkpoint_id!r} (unknown, or pruned by retention)."
            )
        return row

    def rollback(self, checkpoint_id: str) -> UUID:
        """Returns the checkpoint's conversation to the checkpoint's state; returns its id."""
        target = self.checkpoint(checkpoint_id)

        def decide(batch: _Batch) -> UUID:
            conversation = batch.get(target.conversation_id)
            conversation.roll_back(
                checkpoint_id=target.checkpoint_id,
                target_position=target.position,
                view_at_target=self.view_at(target.conversation_id, target.position),
                undo_checkpoint_id=new_id("cp"),
                timestamp=self.clock(),
            )
            return conversation.id

        return self._run(decide)

    def view_at(self, conversation_id: UUID, position: int) -> ViewState:
        return self.store.conversation(conversation_id, version=position).view

    def branch(
        self, source_id: str, title: str | None = None, description: str | None = None
    ) -> UUID:
        """A new conversation whose view starts as the state at a checkpoint or snapshot."""
        title = _label(title, "A branch title")
        description = _label(description, "A branch description")
        checkpoint = self.read.checkpoint(str(source_id))
        snapshot = None if checkpoint else self.read.snapshot(str(source_id))
        if checkpoint is None and snapshot is None:
            raise CheckpointNotFound(f"No checkpoint or snapshot {source_id!r} to branch from.")
        parent_id, position = (
            (checkpoint.conversation_id, checkpoint.position)
            if checkpoint
            else (snapshot.conversation_id, snapshot.position)  # type: ignore[union-attr]
        )
        branch_id = uuid4()

        def decide(batch: _Batch) -> UUID:
            now = self.clock()
            parent = batch.get(parent_id)
            parent.fork(branch_id=branch_id, position=position, source_id=source_id, timestamp=now)
            fork_event = self.store.stored_event(parent_id, position)
            branch = batch.add(
                Conversation.start(
                    conversation_id=branch_id,
                    view=self.view_at(parent_id, position).cut(parent_id, position, 2),
                    prev_hash=orjson.loads(fork_event.state)["hash"],
                    timestamp=now,
                    title=title,
                    parent=ForkPoint(
                        conversation_id=parent_id, position=position, source_id=source_id
                    ),
                )
            )
            self._checkpoint(
                branch,
                CheckpointType.BRANCH,
                title,
                description or f"Branched from {source_id}",
                now,
            )
            return branch_id

        return self._run(decide)

    def take_snapshot(self, conversation_id: str | UUID, meta: dict[str, Any] | None = None) -> str:
        cid = parse_conversation_id(conversation_id)
        snapshot_meta = _metadata(meta)
        snapshot_id = new_id("snap")
        self._run(
            lambda batch: batch.get(cid).take_snapshot(
                snapshot_id=snapshot_id, meta=snapshot_meta, timestamp=self.clock()
            )
        )
        return snapshot_id

    def restore_snapshot(self, snapshot_id: str) -> UUID:
        snapshot = self.read.snapshot(str(snapshot_id))
        if snapshot is None:
            raise SnapshotNotFound(f"No snapshot {snapshot_id!r}.")

        def decide(batch: _Batch) -> UUID:
            conversation = batch.get(snapshot.conversation_id)
            conversation.restore_snapshot(
                snapshot_id=snapshot.snapshot_id,
                target_position=snapshot.position,
                view_at_target=self.view_at(snapshot.conversation_id, snapshot.position),
                timestamp=self.clock(),
            )
            return conversation.id

        return self._run(decide)

    def read_context(self, path: str | Path) -> ContextFile:
        """Reads a context file the way load_context_file will use it, or raises."""
        file = read_context_file(self.workspace, path)
        if not file.text.strip():
            raise InvalidInput(f"Context file {file.path} is empty.")
        _check_text(file.text, f"Context file {file.path}")
        return file

    def _append_context(self, conversation: Conversation, file: ContextFile) -> None:
        appended = self._append(
            conversation,
            Role.SYSTEM,
            (TextPart(text=file.text),),
            Category.CONTEXT,
            {"source": file.path, "context_file": True},
        )
        conversation.record_context_file(
            path=file.path,
            name=file.name,
            location=file.location,
            size=file.size,
            modified=file.modified,
            message_id=appended.message_id,
            timestamp=self.clock(),
        )

    def load_context_file(self, conversation_id: str | UUID, path: str | Path) -> ContextFile:
        cid = parse_conversation_id(conversation_id)
        file = self.read_context(path)
        self._run(lambda batch: self._append_context(batch.get(cid), file))
        return file

    def prepare_turn(
        self,
        conversation_id: str | UUID,
        content: Any,
        *,
        image_paths: Sequence[str | Path] = (),
        context_files: Sequence[str | Path] = (),
        provider: str = "offline",
        model: str = "offline",
        parameters: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> PreparedTurn:
        """The user's side of a turn, decided and written in one transaction (all or
        nothing): context files, the user message (in a new session when the current one is
        full), the trims that make the context fit, and the record of the model call about to
        be made (what is sent, and the request's hash)."""
        cid = parse_conversation_id(conversation_id)
        if idempotency_key is not None:
            answered = self.read.answered_call(cid, _label(idempotency_key, "A key") or "")
            if answered is not None:
                return PreparedTurn(cid, None, answered[0], None, self._row(cid, answered[1]))
        parts = self._parts(content, image_paths)
        files = [self.read_context(path) for path in context_files]
        user_tokens = self.tokens.count_parts(Role.USER, parts)

        def decide(batch: _Batch) -> PreparedTurn:
            conversation = batch.get(cid)
            context = self._session_context(conversation).copy()
            follow = _Follower(conversation, context)
            now = self.clock()
            for file in files:
                self._append_context(conversation, file)
            follow()
            appended = self._append(conversation, Role.USER, parts, None, {})
            follow()
            plan = context.plan(self.window)
            if not plan.fits:
                # What trimming cannot remove (SYSTEM messages, the newest user message, their
                # tool partners) a new session carries too, so a new session would not fit it
                # either. Raising here saves nothing: the turn is refused whole.
                raise InvalidInput(
                    f"This turn cannot fit the model's usable window of {self.window.usable} "
                    f"tokens even after trimming: the message needs {user_tokens}, and what "
                    f"cannot be trimmed {plan.total_tokens} in all. Shorten it, or use a model "
                    "with a larger window."
                )
            for category, trims in _by_category(plan.trimmed).items():
                conversation.trim_context(
                    message_ids=tuple(t.message_id for t in trims),
                    category=category,
                    tokens_freed=sum(t.tokens for t in trims),
                    budget=plan.budget.get(category, 0),
                    reason=trims[0].reason,
                    timestamp=now,
                )
            follow()
            request = build_request(context, plan)
            call_id = new_id("call")
            manifest = encode_manifest(request.message_ids, context.last_call)
            conversation.record_model_call(
                call_id=call_id,
                provider=provider,
                model=model,
                parameters={**self._window_parameters(), **(parameters or {})},
                manifest=manifest,
                message_count=len(request.message_ids),
                images_replaced=request.images_replaced,
                request_hash=request.hash,
                prompt_tokens=request.tokens,
                timestamp=now,
                idempotency_key=idempotency_key,
            )
            return PreparedTurn(cid, appended.message_id, call_id, request)

        return self._run(decide)

    def _window_parameters(self) -> dict[str, Any]:
        """What shaped the context, recorded with each call so a replay can shape it alike."""
        return {
            "context_window": self.window.context_window,
            "max_images": self.window.max_images,
            "max_messages_per_session": self.max_messages_per_session,
            "tokenizer": self.tokens.describe(),
        }

    def _session_context(self, conversation: Conversation) -> SessionContext:
        cached = self._contexts.get(conversation.id)
        if cached is not None and not cached.stale and cached.version == conversation.version:
            self._contexts.move_to_end(conversation.id)
            return cached
        context = self._context_from_log(conversation.id, conversation.version, conversation.view)
        self._contexts[conversation.id] = context
        while len(self._contexts) > self._context_cache_size:
            self._contexts.popitem(last=False)
        return context

    def _context_from_log(self, cid: UUID, position: int, view: ViewState) -> SessionContext:
        segments = view.segments(cid, position)
        records = self.read.documents(segments, (ContextTrimmed.TOPIC, ModelCalled.TOPIC))
        return SessionContext.from_log(
            cid,
            position,
            view.session.session_id,
            {pin.message_id for pin in view.pinned},
            self.read.transcript(segments),
            [doc for _, topic, _, doc in records if topic == ContextTrimmed.TOPIC],
            [doc for _, topic, _, doc in records if topic == ModelCalled.TOPIC],
        )

    def context_at(
        self, conversation_id: str | UUID, position: int | None = None
    ) -> dict[str, Any]:
        """What the model was (or would be) sent right after event `position` (default: now):
        the messages in the order sent, the session's messages left out and why, and the
        request's hash. Replaying a recorded turn's position gives its recorded manifest."""
        cid = self._existing(conversation_id)
        head = self.store.conversation(cid, fresh=True)
        at = head.version if position is None else position
        if not isinstance(at, int) or not 1 <= at <= head.version:
            raise InvalidInput(f"Position must be between 1 and {head.version} for {cid}.")
        view = head.view if at == head.version else self.view_at(cid, at)
        context = self._context_from_log(cid, at, view)
        plan = context.plan(self.window)
        request = build_request(context, plan)
        replaced = set(plan.images_replaced)
        would_trim = {t.message_id: f"would be trimmed: {t.reason}" for t in plan.trimmed}
        segments = view.segments(cid, at)
        left_out = [
            {**row, "reason": context.trimmed.get(row["id"]) or would_trim[row["id"]]}
            for row in self.read.transcript(segments)
            if row["id"] in context.trimmed or row["id"] in would_trim
        ]
        return {
            "conversation_id": str(cid),
            "position": at,
            "session_id": context.session_id,
            "sent": [{**context.rows[mid], "image_replaced": mid in replaced} for mid in plan.kept],
            "left_out": left_out,
            "request": request.messages,
            "request_hash": request.hash,
            "tokens": plan.total_tokens,
            "usable_window": self.window.usable,
        }

    def retitle(self, conversation_id: str | UUID, title: str) -> None:
        cid = parse_conversation_id(conversation_id)
        if _label(title, "A title") is None:
            raise InvalidInput("A title must be a string.")
        self._run(lambda batch: batch.get(cid).retitle(title, self.clock()))

    def record_reply(
        self,
        conversation_id: UUID,
        call_id: str,
        reply: ModelReply,
        *,
        latency_ms: float,
        attempts: int = 1,
    ) -> AppendedMessage | None:
        """The answer to a recorded call: the assistant message (its text and tool calls,
        once, whole) and the response's record, in one transaction."""
        parts: tuple[ContentPart, ...] = tuple(
            ToolCallPart(call_id=c.call_id, name=c.name, arguments=c.arguments)
            for c in reply.tool_calls
        )
        if reply.text.strip():
            parts = (TextPart(text=reply.text), *parts)
        if parts:
            _check_json([part.model_dump() for part in parts], "The model's answer")

        def decide(batch: _Batch) -> AppendedMessage | None:
            conversation = batch.get(conversation_id)
            appended = (
                self._append(conversation, Role.ASSISTANT, parts, None, {"call_id": call_id})
                if parts
                else None
            )
            conversation.record_model_response(
                call_id=call_id,
                message_id=appended.message_id if appended else None,
                stop_reason=reply.stop_reason,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                latency_ms=latency_ms,
                attempts=attempts,
                timestamp=self.clock(),
            )
            return appended

        return self._run(decide)

    def record_model_failure(
        self,
        conversation_id: UUID,
        error: BaseException,
        partial_text: str = "",
        *,
        call_id: str | None = None,
        kind: str = "error",
        attempts: int = 1,
    ) -> str:
        """Records the failure and takes an emergency checkpoint (if checkpoints are on)."""

        def decide(batch: _Batch) -> str:
            now = self.clock()
            conversation = batch.get(conversation_id)
            conversation.record_model_failure(
                error_type=type(error).__name__,
                message=str(error),
                partial_text=partial_text,
                call_id=call_id,
                kind=kind,
                attempts=attempts,
                timestamp=now,
            )
            if not self.config.enabled:
                return ""
            return self._checkpoint(
                conversation, CheckpointType.EMERGENCY, "Model call failed", str(error)[:200], now
            )

        return self._run(decide)

    def _row(self, conversation_id: UUID, message_id: str) -> dict[str, Any]:
        for row in reversed(self.history(conversation_id)):
            if row["id"] == message_id:
                return row
        raise NotFound(f"Message {message_id} is not in conversation {conversation_id}.")

    # -- reads ---------------------------------------------------------------------------
    def conversation(self, conversation_id: str | UUID) -> Conversation:
        """The write model caught up with every writer, for reads."""
        return self.store.conversation(self._existing(conversation_id), fresh=True)

    def history(self, conversation_id: str | UUID) -> list[dict[str, Any]]:
        conversation = self.conversation(conversation_id)
        return self.read.transcript(
            conversation.view.segments(conversation.id, conversation.version)
        )

    def as_of(self, conversation_id: str | UUID, position: int) -> list[dict[str, Any]]:
        """The active transcript exactly as it was right after event `position`."""
        cid = self._existing(conversation_id)
        head = self.store.conversation(cid, fresh=True).version
        if not isinstance(position, int) or not 1 <= position <= head:
            raise InvalidInput(f"Position must be between 1 and {head} for conversation {cid}.")
        segments = self.read.segments_at(cid, position)
        if segments is None:  # pragma: no cover - every conversation starts with a view row
            raise ConversationNotFound(f"Conversation {cid} has no view at {position}.")
        return self.read.transcript(segments)

    def checkpoints(
        self,
        conversation_id: str | UUID | None = None,
        checkpoint_type: str | None = None,
        limit: int | None = 50,
        session_id: str | None = None,
    ) -> list[CheckpointRow]:
        cid = self._existing(conversation_id) if conversation_id is not None else None
        if checkpoint_type is not None:
            checkpoint_type = _checkpoint_type(checkpoint_type).value
        return self.read.checkpoints(cid, checkpoint_type, limit, session_id)

    def list_conversations(
        self, limit: int = 100, offset: int = 0, search_term: str | None = None
    ) -> list[dict[str, Any]]:
        if not isinstance(limit, int) or not isinstance(offset, int) or limit < 0 or offset < 0:
            raise InvalidInput("limit and offset must be non-negative integers.")
        return self.read.list_conversations(limit, offset, search_term)

    def verify(
        self,
        conversation_id: str | UUID | None = None,
        anchor: Path | str | dict[str, Any] | None = None,
    ) -> VerificationReport:
        """Walks the hash chains of every conversation (or one and its ancestors). With an
        anchor (an anchor file's path, or its document as from `report.anchor()`), anchored
        heads must still be stored unchanged too, so tail truncation and a forged newest event
        are found. Raises FileInputError/InvalidInput for a missing or corrupt anchor.
        `report.anchor()` of an intact report is the anchor to export."""
        only = self._existing(conversation_id) if conversation_id is not None else None
        return verify(self.store.recorder, only, anchor)

    def rebuild_projections(self) -> int:
        return self.projections.rebuild()

    def branch_tree(self) -> list[dict[str, Any]]:
        return self.read.branches()
