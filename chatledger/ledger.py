"""The application service: every command reads get -> decide -> save, then the projections
catch up before the call returns (read-your-writes).

ConversationManager (Penguin's API) is a thin layer over this; the CLI and tests use it too."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from os import PathLike, fsdecode, fsencode
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
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    NothingToCheckpoint,
    SnapshotNotFound,
    WorkspaceError,
)
from domain.events import ContextTrimmed, ForkPoint, ModelCalled
from domain.hashing import GENESIS_HASH, canonical_bytes
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
from infrastructure.files import (
    DEFAULT_MAX_IMAGE_BYTES,
    ContextFile,
    read_context_file,
    read_image,
)
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
# Bounds on what people type, so that a runaway value is refused with a message naming its
# limit instead of bloating every event, projection row and listing that carries it.
#: Longest title, checkpoint name or branch name, in characters.
MAX_NAME_CHARS = 200
#: Longest checkpoint or branch description, in characters.
MAX_DESCRIPTION_CHARS = 2000
#: Longest idempotency key, in characters.
MAX_KEY_CHARS = 200
#: Largest message metadata or snapshot meta, in bytes of its JSON.
MAX_METADATA_BYTES = 64 * 1024
#: Longest search term, in characters (SQLite refuses LIKE patterns past 50,000 bytes).
MAX_SEARCH_CHARS = 1000
#: Largest limit or offset: what both databases' 64-bit integers hold.
MAX_COUNT = 2**63 - 1
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


def _check_json(value: Any, what: str) -> bytes:
    """What orjson can store (string keys, 64-bit integers, valid Unicode), as it stores it."""
    try:
        return orjson.dumps(value)
    except TypeError as error:
        if "surrogates" in str(error):
            raise InvalidInput(f"{what} contains a lone surrogate; send valid Unicode.") from None
        raise InvalidInput(
            f"{what} must be JSON-serialisable (string keys, integers within 64 bits): {error}."
        ) from None


def _within(size: int, limit: int, unit: str, what: str, constant: str) -> None:
    if size > limit:
        raise InvalidInput(f"{what} is {size} {unit}; the limit is {limit} {unit} ({constant}).")


def _label(
    value: Any, what: str, limit: int = MAX_NAME_CHARS, constant: str = "MAX_NAME_CHARS"
) -> str | None:
    """An optional short text: a title, a name, a description, a key, a search term."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, not {type(value).__name__}.")
    _within(len(value), limit, "characters", what, constant)
    _check_text(value, what)
    return value


def _count(value: Any, what: str) -> int:
    """A limit or an offset, as both databases can take it."""
    if not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise InvalidInput(f"{what} must be a non-negative integer of at most {MAX_COUNT}.")
    return value


def _checkpoint_type(value: Any) -> CheckpointType:
    try:
        return CheckpointType(value)
    except ValueError:
        raise InvalidInput(
            f"Unknown checkpoint type {value!r}; use one of {[t.value for t in CheckpointType]}."
        ) from None


def _stored_id(value: Any) -> str | None:
    """A checkpoint or snapshot id as the store may hold it; None when it cannot name anything
    stored (text with a lone surrogate cannot even be sent to the database)."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


#: Largest retention setting (hours or days) that dates can still be computed with.
MAX_RETENTION = 100_000


def _checkpoint_config(value: Any) -> CheckpointConfig:
    """The checkpoint settings, checked field by field (the dataclass checks nothing)."""
    if value is None:
        return CheckpointConfig()
    if not isinstance(value, CheckpointConfig):
        kind = type(value).__name__
        raise InvalidInput(f"checkpoint_config must be a CheckpointConfig, not {kind}.")

    def number(x: Any, low: float, high: float) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool) and low <= x <= high

    problems = []
    if not isinstance(value.enabled, bool):
        problems.append("enabled must be True or False")
    for name in ("frequency", "max_auto_checkpoints"):
        if not isinstance(getattr(value, name), int) or not number(
            getattr(value, name), -MAX_COUNT, MAX_COUNT
        ):
            problems.append(f"{name} must be an integer")
    if not isinstance(value.planes, dict) or not all(
        isinstance(on, bool) for on in value.planes.values()
    ):
        problems.append("planes must map plane names to True or False")
    if not isinstance(value.retention, dict) or not all(
        number(setting, 0, MAX_RETENTION) for setting in value.retention.values()
    ):
        problems.append(f"retention values must be numbers from 0 to {MAX_RETENTION}")
    if problems:
        raise InvalidInput(f"checkpoint_config: {'; '.join(problems)}.")
    return value


def _workspace(value: Any) -> Path:
    """The workspace folder's path; WorkspaceError for a name no folder can have."""
    if not isinstance(value, str | PathLike):
        raise InvalidInput(f"The workspace must be a folder path, not {type(value).__name__}.")
    name = fsdecode(value)
    problem = "it holds a NUL character" if "\x00" in name else None
    try:
        fsencode(name)
        path = Path(name).expanduser()
    except (UnicodeEncodeError, RuntimeError) as error:  # a lone surrogate, "~nosuchuser"
        problem = str(error)
    if problem is not None:
        raise WorkspaceError(f"Workspace {name!r} is not a usable folder name: {problem}.")
    return path


def _paths(value: Any, what: str) -> tuple[str | PathLike[str], ...]:
    """File paths (images, context files), checked as such before any file is read."""
    if not isinstance(value, list | tuple):
        raise InvalidInput(f"{what} must be a list of file paths, not {type(value).__name__}.")
    for path in value:
        if not isinstance(path, str | PathLike):
            raise InvalidInput(f"{what} must hold file paths, not {type(path).__name__}.")
    return tuple(value)


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


def _input_hash(parts: Sequence[ContentPart], files: Sequence[ContextFile]) -> str:
    """What a turn asks: its parts (images by their content, not where they lie or what
    they cost) and the context files loaded with it."""
    document = {
        "parts": [part.model_dump(mode="json", exclude={"path", "tokens"}) for part in parts],
        "context_files": [{"path": file.path, "text": file.text} for file in files],
    }
    return hashlib.sha256(canonical_bytes(document)).hexdigest()


def _metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidInput(f"metadata must be a dict, not {type(metadata).__name__}.")
    size = len(_check_json(metadata, "metadata"))
    _within(size, MAX_METADATA_BYTES, "bytes of JSON", "metadata", "MAX_METADATA_BYTES")
    try:
        # orjson would store NaN and infinities as null: refuse them instead.
        json.dumps(metadata, allow_nan=False)
    except ValueError:
        raise InvalidInput("metadata cannot hold NaN or infinite numbers.") from None
    except TypeError as error:  # what orjson turns into text but JSON has no type for
        raise InvalidInput(
            f"metadata must be plain JSON (dates, UUIDs...: as text): {error}."
        ) from None
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
        if max_context_file_bytes is None:
            max_context_file_bytes = max_message_bytes
        for setting, value in (
            ("max_messages_per_session", max_messages_per_session),
            ("max_message_bytes", max_message_bytes),
            ("max_image_bytes", max_image_bytes),
            ("max_context_file_bytes", max_context_file_bytes),
            ("cache_size", cache_size),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value > MAX_COUNT:
                raise InvalidInput(f"{setting} must be an integer of at most {MAX_COUNT}.")
            if value < 1 and setting != "cache_size":
                raise InvalidInput(f"{setting} must be at least 1.")
        self.max_message_bytes = max_message_bytes
        self.max_image_bytes = max_image_bytes
        self.max_context_file_bytes = max_context_file_bytes
        self.workspace = _workspace(workspace)
        self.config = _checkpoint_config(checkpoint_config)
        self.max_messages_per_session = max_messages_per_session
        self.clock = clock
        self._retention_runs: dict[UUID, datetime] = {}
        self.window = window or WindowConfig(context_window=DEFAULT_CONTEXT_WINDOW)
        #: Session contexts of recently used conversations, least recently used first.
        self._contexts: OrderedDict[UUID, SessionContext] = OrderedDict()
        self._context_cache_size = max(1, cache_size)
        self.tokens = tokenizer or tokenizer_for(None)
        self.db, self.store = open_store(
            self.workspace, database_url, cache_size, read_only=read_only, must_exist=must_exist
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
                raise self.db.failed(error) from error
            except BaseException:
                self._forget(batch)
                raise
            for recording in recordings:
                event = recording.domain_event
                context = self._contexts.get(event.originator_id)
                if context is None:
                    continue
                # A command that did not read the context (a reply, a checkpoint) saves after
                # other writers' events it never saw: a context that skipped them is dropped,
                # to be rebuilt from the log, or it would build and record the next turn on a
                # transcript and a previous call that are not the log's.
                if context.version == event.originator_version - 1:
                    context.apply(event)
                else:
                    del self._contexts[event.originator_id]
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
        if reset_from is not None:
            reset_from = parse_conversation_id(reset_from)
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
                "(max_message_bytes). Split it, or raise max_message_bytes."
            )
        return parts + tuple(
            self.tokens.price_image(read_image(path, self.max_image_bytes))
            for path in _paths(image_paths, "image_paths")
        )

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
        name = _label(name, "A checkpoint name")
        description = _label(
            description, "A description", MAX_DESCRIPTION_CHARS, "MAX_DESCRIPTION_CHARS"
        )

        def decide(batch: _Batch) -> str:
            conversation = batch.get(cid)
            if conversation.view.only_system_messages:
                raise NothingToCheckpoint(
                    f"Conversation {cid} has nothing to checkpoint yet: it holds no messages "
                    "besides its system prompt. Add a message or context first."
                )
            return self._checkpoint(conversation, kind, name, description, self.clock())

        return self._run(decide)

    def checkpoint(self, checkpoint_id: str) -> CheckpointRow:
        key = _stored_id(checkpoint_id)
        row = None if key is None else self.read.checkpoint(key)
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
        description = _label(
            description, "A branch description", MAX_DESCRIPTION_CHARS, "MAX_DESCRIPTION_CHARS"
        )
        key = _stored_id(source_id)
        checkpoint = None if key is None else self.read.checkpoint(key)
        snapshot = None if checkpoint or key is None else self.read.snapshot(key)
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
        key = _stored_id(snapshot_id)
        snapshot = None if key is None else self.read.snapshot(key)
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

    def read_context(self, path: str | PathLike[str]) -> ContextFile:
        """Reads a context file the way load_context_file will use it, or raises."""
        file = read_context_file(self.workspace, path, self.max_context_file_bytes)
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
        key = _label(idempotency_key, "An idempotency key", MAX_KEY_CHARS, "MAX_KEY_CHARS")
        provider = _label(provider, "A provider name") or ""
        model = _label(model, "A model name") or ""
        parameters = _metadata(parameters)
        parts = self._parts(content, image_paths)
        files = [self.read_context(path) for path in _paths(context_files, "context_files")]
        asked = None
        if key is not None:
            asked = _input_hash(parts, files)
            answered = self.read.answered_call(cid, key)
            if answered is not None:
                call_id, reply_id, recorded = answered
                # A call recorded before input hashes were kept cannot be compared.
                if recorded not in (None, asked):
                    raise IdempotencyConflict(
                        f"The idempotency key {key!r} already names an answered turn of "
                        f"conversation {cid} that made a different request (its message, "
                        "images or context files differ). Use a new key for a new request, "
                        "or resend the same request to get its recorded answer."
                    )
                return PreparedTurn(cid, None, call_id, None, self._row(cid, reply_id))
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
                idempotency_key=key,
                input_hash=asked,
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
        if limit is not None:
            _count(limit, "limit")
        session_id = _label(session_id, "A session id")
        return self.read.checkpoints(cid, checkpoint_type, limit, session_id)

    def list_conversations(
        self, limit: int = 100, offset: int = 0, search_term: str | None = None
    ) -> list[dict[str, Any]]:
        search_term = _label(search_term, "A search term", MAX_SEARCH_CHARS, "MAX_SEARCH_CHARS")
        return self.read.list_conversations(
            _count(limit, "limit"), _count(offset, "offset"), search_term
        )

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
        with self.db.failures():
            return verify(self.store.recorder, only, anchor)

    def rebuild_projections(self) -> int:
        return self.projections.rebuild()

    def branch_tree(self) -> list[dict[str, Any]]:
        return self.read.branches()
