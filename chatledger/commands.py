"""The command service: each command checks its input, then in one unit of work gets the
aggregate, lets it decide, and saves (get -> decide -> save, as in the eventsourcing
examples' applications). The aggregate decides session rollovers and auto checkpoints itself;
what is left here is what needs I/O: reading files, pricing images, the retention index."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from chatledger import inputs
from chatledger.inputs import Settings, parse_conversation_id
from chatledger.queries import ConversationQueries
from chatledger.retention import Retention
from chatledger.unit_of_work import Batch, UnitOfWork
from domain.checkpoints import CheckpointType
from domain.conversation import Conversation, MessageRules
from domain.errors import InvalidInput
from domain.events import ForkPoint
from domain.hashing import GENESIS_HASH
from domain.messages import Category, ContentPart, Role, TextPart
from domain.view import ViewState
from infrastructure.files import ContextFile, read_context_file, read_image
from infrastructure.token_counting import ModelTokenizer
from projections.queries import message_row


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid4().hex}"


class Minter:
    """The application's side of the aggregate's Mint: fresh ids, and token counts by the
    ledger's tokenizer."""

    def __init__(self, tokens: ModelTokenizer) -> None:
        self.tokens = tokens

    @property
    def encoding(self) -> str:
        return self.tokens.encoding_name

    def new_id(self, prefix: str) -> str:
        return new_id(prefix)

    def system_tokens(self, text: str) -> int:
        return self.tokens.count_message(Role.SYSTEM, self.tokens.count_text(text))


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


class ConversationCommands:
    def __init__(
        self,
        unit_of_work: UnitOfWork,
        queries: ConversationQueries,
        settings: Settings,
        *,
        tokens: ModelTokenizer,
        clock: Callable[[], datetime],
    ) -> None:
        self.unit_of_work, self.queries, self.settings = unit_of_work, queries, settings
        self.tokens, self.clock = tokens, clock
        self.rules = MessageRules(settings.max_messages_per_session, settings.checkpoints)
        self.mint = Minter(tokens)
        self.retention = Retention(queries.read, settings.checkpoints)

    # -- commands ----------------------------------------------------------------------
    def start_conversation(
        self,
        *,
        title: str | None = None,
        system_prompt: str = "",
        reset_from: UUID | None = None,
        lazily: bool = False,
    ) -> UUID:
        """A new conversation's id. `lazily`, it is started by the first command that gets it,
        in that command's transaction (Ledger.ensure_started starts it for a read)."""
        title = inputs.label(title, "A title")
        if not isinstance(system_prompt, str):
            raise InvalidInput("A system prompt must be a string.")
        prompt = inputs.content_parts(system_prompt) if system_prompt else None
        if reset_from is not None:
            reset_from = parse_conversation_id(reset_from)
        conversation_id = uuid4()
        view = ViewState().with_new_session(new_id("sess"))

        def start(batch: Batch) -> Conversation:
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
            if prompt is not None:
                self.add(conversation, Role.SYSTEM, prompt, None, {})
            return conversation

        if lazily:
            self.unit_of_work.start_later(conversation_id, start)
            return conversation_id
        return self.unit_of_work.run(lambda batch: start(batch).id)

    def ensure_started(self, conversation_id: UUID) -> UUID:
        """Starts a conversation started `lazily` that no command has started yet."""
        if not self.unit_of_work.started(conversation_id):
            self.unit_of_work.run(lambda batch: batch.get(conversation_id))
        return conversation_id

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
        the_role = inputs.role(role)
        the_category = inputs.category(category)
        parts = self.parts(content, image_paths)
        meta = inputs.metadata(metadata)
        return self.unit_of_work.run(
            lambda batch: self.add(batch.get(cid), the_role, parts, the_category, meta)
        )

    def create_checkpoint(
        self,
        conversation_id: str | UUID,
        checkpoint_type: CheckpointType = CheckpointType.MANUAL,
        name: str | None = None,
        description: str | None = None,
    ) -> str:
        cid = parse_conversation_id(conversation_id)
        kind = inputs.checkpoint_type(checkpoint_type)
        name = inputs.label(name, "A checkpoint name")
        description = inputs.description(description, "A description")

        def decide(batch: Batch) -> str:
            conversation = batch.get(cid)
            conversation.check_something_to_checkpoint()
            return self.checkpoint(conversation, kind, name, description, self.clock())

        return self.unit_of_work.run(decide)

    def rollback(self, checkpoint_id: str) -> UUID:
        """Returns the checkpoint's conversation to the checkpoint's state; returns its id."""
        target = self.queries.checkpoint(checkpoint_id)

        def decide(batch: Batch) -> UUID:
            conversation = batch.get(target.conversation_id)
            conversation.roll_back(
                checkpoint_id=target.checkpoint_id,
                target_position=target.position,
                view_at_target=self.queries.view_at(target.conversation_id, target.position),
                undo_checkpoint_id=new_id("cp"),
                timestamp=self.clock(),
            )
            return conversation.id

        return self.unit_of_work.run(decide)

    def branch(
        self, source_id: str, title: str | None = None, description: str | None = None
    ) -> UUID:
        """A new conversation whose view starts as the state at a checkpoint or snapshot."""
        title = inputs.label(title, "A branch title")
        description = inputs.description(description, "A branch description")
        parent_id, position = self.queries.fork_point(source_id)
        branch_id = uuid4()

        def decide(batch: Batch) -> UUID:
            now = self.clock()
            parent = batch.get(parent_id)
            parent.fork(branch_id=branch_id, position=position, source_id=source_id, timestamp=now)
            branch = batch.add(
                Conversation.start(
                    conversation_id=branch_id,
                    view=self.queries.view_at(parent_id, position).cut(parent_id, position, 2),
                    prev_hash=self.queries.event_hash(parent_id, position),
                    timestamp=now,
                    title=title,
                    parent=ForkPoint(
                        conversation_id=parent_id, position=position, source_id=source_id
                    ),
                )
            )
            note = description or f"Branched from {source_id}"
            self.checkpoint(branch, CheckpointType.BRANCH, title, note, now)
            return branch_id

        return self.unit_of_work.run(decide)

    def take_snapshot(self, conversation_id: str | UUID, meta: dict[str, Any] | None = None) -> str:
        cid = parse_conversation_id(conversation_id)
        snapshot_meta = inputs.metadata(meta)
        snapshot_id = new_id("snap")
        self.unit_of_work.run(
            lambda batch: batch.get(cid).take_snapshot(
                snapshot_id=snapshot_id, meta=snapshot_meta, timestamp=self.clock()
            )
        )
        return snapshot_id

    def restore_snapshot(self, snapshot_id: str) -> UUID:
        snapshot = self.queries.snapshot(snapshot_id)

        def decide(batch: Batch) -> UUID:
            conversation = batch.get(snapshot.conversation_id)
            conversation.restore_snapshot(
                snapshot_id=snapshot.snapshot_id,
                target_position=snapshot.position,
                view_at_target=self.queries.view_at(snapshot.conversation_id, snapshot.position),
                timestamp=self.clock(),
            )
            return conversation.id

        return self.unit_of_work.run(decide)

    def load_context_file(self, conversation_id: str | UUID, path: str | Path) -> ContextFile:
        cid = parse_conversation_id(conversation_id)
        file = self.read_context(path)
        self.unit_of_work.run(lambda batch: self.add_context_file(batch.get(cid), file))
        return file

    def retitle(self, conversation_id: str | UUID, title: str) -> None:
        cid = parse_conversation_id(conversation_id)
        if inputs.label(title, "A title") is None:
            raise InvalidInput("A title must be a string.")
        self.unit_of_work.run(lambda batch: batch.get(cid).retitle(title, self.clock()))

    # -- building blocks, shared with the turn service -----------------------------------
    def parts(self, content: Any, image_paths: Sequence[str | Path]) -> tuple[ContentPart, ...]:
        """A message's parts, checked (text within the size limit) and images priced."""
        parts = inputs.content_parts(content)
        inputs.message_size(parts, self.settings.max_message_bytes)
        return parts + tuple(
            self.tokens.price_image(read_image(path, self.settings.max_image_bytes))
            for path in inputs.file_paths(image_paths, "image_paths")
        )

    def read_context(self, path: str | PathLike[str]) -> ContextFile:
        """Reads a context file the way load_context_file will use it, or raises."""
        settings = self.settings
        file = read_context_file(settings.workspace, path, settings.max_context_file_bytes)
        if not file.text.strip():
            raise InvalidInput(f"Context file {file.path} is empty.")
        inputs.check_text(file.text, f"Context file {file.path}")
        return file

    def add(
        self,
        conversation: Conversation,
        role: Role,
        parts: tuple[ContentPart, ...],
        category: Category | None,
        metadata: dict[str, Any],
    ) -> AppendedMessage:
        """Adds a message to a conversation the command has loaded; the aggregate decides
        whether it opens a new session and whether an auto checkpoint follows it."""
        now = self.clock()
        added = conversation.add_message(
            role=role,
            category=category,
            parts=parts,
            tokens=self.tokens.count_parts(role, parts),
            metadata=metadata,
            timestamp=now,
            rules=self.rules,
            mint=self.mint,
        )
        if added.auto_checkpoint_id is not None:
            self.retention.after_auto_checkpoint(conversation, added.auto_checkpoint_id, now)
        event = added.event
        return AppendedMessage(conversation.id, event.message_id, event.originator_version, event)

    def add_context_file(self, conversation: Conversation, file: ContextFile) -> None:
        appended = self.add(
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

    def checkpoint(
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
            self.retention.after_auto_checkpoint(conversation, checkpoint_id, now)
        return checkpoint_id
