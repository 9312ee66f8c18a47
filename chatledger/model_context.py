"""The model's context for one turn: which of the session's messages are in it, the exact
request built from them, and a hash of that request.

A SessionContext holds only the current session's in-context messages (trimmed ones leave
it), so a turn costs O(window), not O(history). It is rebuilt from the log when its
conversation changed under it (rollback, restore, another writer) and otherwise kept current
by applying the events each command saves."""

from __future__ import annotations

import hashlib
from collections import ChainMap
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson

from domain import events
from domain.context_window import ContextItem, ContextPlan, WindowConfig, select_context
from domain.manifests import ManifestRecord, resolve, sent_ids
from domain.messages import Category
from infrastructure.files import image_data_url
from projections.queries import message_row

IMAGE_PLACEHOLDER = "[image omitted to save context: {name}]"
#: Keys of a request's image part that stay out of its hash (see `request_hash`).
_UNHASHED = frozenset({"path", "size"})


def _parts(row: dict[str, Any]) -> list[dict[str, Any]]:
    content = row["content"]
    return content if isinstance(content, list) else []


def context_item(row: dict[str, Any], order: int) -> ContextItem:
    parts = _parts(row)
    images = [part for part in parts if part["type"] == "image"]
    return ContextItem(
        message_id=row["id"],
        category=Category(row["category"]),
        tokens=row["tokens"],
        position=order,
        role=row["role"],
        tool_call_ids=tuple(p["call_id"] for p in parts if p["type"] == "tool_call"),
        tool_result_for=next((p["call_id"] for p in parts if p["type"] == "tool_result"), None),
        image_count=len(images),
        image_tokens=sum(int(p.get("tokens", 0)) for p in images),
    )


@dataclass
class SessionContext:
    conversation_id: UUID
    version: int
    session_id: str
    #: In-context messages of the session, in transcript order, by id.
    rows: dict[str, dict[str, Any]]
    #: SYSTEM and CONTEXT messages a new session carries, by id (trimmed or not).
    pinned: dict[str, dict[str, Any]]
    #: Message id -> why it was left out, for this session.
    trimmed: MutableMapping[str, str] = field(default_factory=dict)
    stale: bool = False
    #: The policy's view of each row, made once when the row enters (rows never change).
    items_by_id: dict[str, ContextItem] = field(default_factory=dict)
    pinned_items: dict[str, ContextItem] = field(default_factory=dict)
    #: Order of arrival; a ContextItem's position (only the order matters to the policy).
    sequence: int = 0
    #: The session's latest model call: its id and the ids it sent.
    last_call: tuple[str, tuple[str, ...]] | None = None
    #: Request form and canonical bytes of messages already sent, by (id, image replaced).
    built: dict[tuple[str, bool], tuple[dict[str, Any], bytes]] = field(default_factory=dict)

    @classmethod
    def from_log(
        cls,
        conversation_id: UUID,
        version: int,
        session_id: str,
        pinned_ids: set[str],
        transcript: Iterable[dict[str, Any]],
        trims: Iterable[dict[str, Any]],
        calls: Iterable[dict[str, Any]] = (),
    ) -> SessionContext:
        trimmed = {
            message_id: trim["reason"]
            for trim in trims
            if trim["session_id"] == session_id
            for message_id in trim["message_ids"]
        }
        context = cls(conversation_id, version, session_id, {}, {}, trimmed)
        for row in transcript:
            pinned = row["id"] in pinned_ids
            in_session = row["session_id"] == session_id or pinned
            if pinned or in_session:
                context._enter(row, pinned, in_context=in_session and row["id"] not in trimmed)
        # Every call is read, not only the session's: a damaged log's base may be in another.
        calls = list(calls)
        records = [(call["call_id"], ManifestRecord.of(call)) for call in calls]
        for call, ids in zip(calls, resolve(records), strict=True):
            if call["session_id"] == session_id:
                context._called(call["call_id"], ids)
        return context

    def _called(self, call_id: str, ids: tuple[str, ...] | None) -> None:
        # A call whose ids cannot be known cannot be a base: the next one is recorded in full.
        self.last_call = None if ids is None else (call_id, ids)

    def _enter(self, row: dict[str, Any], pinned: bool, *, in_context: bool = True) -> None:
        self.sequence += 1
        item = context_item(row, self.sequence)
        if pinned:
            self.pinned[row["id"]] = row
            self.pinned_items[row["id"]] = item
        if in_context:
            self.rows[row["id"]] = row
            self.items_by_id[row["id"]] = item

    def copy(self) -> SessionContext:
        """A working copy for one command. The trimmed map, which grows with the session,
        is shared read-only under an overlay that takes the command's new trims."""
        return replace(
            self,
            rows=dict(self.rows),
            pinned=dict(self.pinned),
            trimmed=ChainMap({}, self.trimmed),
            items_by_id=dict(self.items_by_id),
            pinned_items=dict(self.pinned_items),
        )

    def apply(self, event: Any) -> None:
        """Follows one event of this conversation, just saved or about to be."""
        self.version = event.originator_version
        if isinstance(event, events.MessageAppended | events.SessionStarted):
            document = event.document()
            row = message_row(
                event.TOPIC, event.originator_version, str(event.originator_id), document
            )
            if isinstance(event, events.SessionStarted):
                self.session_id = event.session_id
                self.rows = dict(self.pinned)
                self.items_by_id = dict(self.pinned_items)
                self.trimmed = {}
                self.last_call = None
                self.built = {}
            self._enter(row, isinstance(event, events.MessageAppended) and event.pinned)
        elif isinstance(event, events.ContextTrimmed):
            for message_id in event.message_ids:
                self.rows.pop(message_id, None)
                self.items_by_id.pop(message_id, None)
                self.built.pop((message_id, False), None)
                self.built.pop((message_id, True), None)
                self.trimmed[message_id] = event.reason
        elif isinstance(event, events.ModelCalled):
            previous = dict([self.last_call]) if self.last_call else {}
            self._called(event.call_id, sent_ids(ManifestRecord.of(event.document()), previous))
        elif isinstance(event, events.ViewReplaced | events.ConversationStarted):
            self.stale = True

    def items(self) -> list[ContextItem]:
        return list(self.items_by_id.values())

    def plan(self, window: WindowConfig) -> ContextPlan:
        return select_context(self.items(), window)


def _model_content(row: dict[str, Any], replace_images: bool) -> Any:
    content = row["content"]
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part["type"]
        if kind == "text":
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image" and replace_images:
            name = Path(part["path"]).name
            parts.append({"type": "text", "text": IMAGE_PLACEHOLDER.format(name=name)})
        elif kind == "image":
            parts.append(
                {
                    "type": "image",
                    "sha256": part["sha256"],
                    "path": part["path"],
                    "size": part["size"],
                    "media_type": part["media_type"],
                }
            )
        elif kind == "tool_result":
            parts.append({"type": "text", "text": part["content"]})
        elif kind == "tool_call":
            parts.append(
                {"type": "text", "text": f"[tool call {part['name']}({part['arguments']})]"}
            )
    return parts


def _model_message(row: dict[str, Any], replace_images: bool) -> dict[str, Any]:
    if row["category"] == Category.CONTEXT.value:
        source = row["metadata"].get("source") or "context"
        body = _model_content(row, replace_images)
        text = f"[Context from {source}]\n{body}" if isinstance(body, str) else body
        return {"role": "system", "content": text}
    role = row["role"] if row["role"] in ("user", "assistant", "tool") else "system"
    return {"role": role, "content": _model_content(row, replace_images)}


@dataclass(frozen=True)
class ModelRequest:
    """What goes to the model. `messages` refer to images by path, size and sha256;
    `inline_images` inlines them as data URLs, the shape Penguin-style clients take."""

    message_ids: tuple[str, ...]
    images_replaced: tuple[str, ...]
    messages: list[dict[str, Any]]
    tokens: int
    #: Each message's canonical bytes, when the builder had them already.
    encoded: list[bytes] | None = None

    @cached_property
    def hash(self) -> str:
        """Computed once: a turn needs it for its record and for its outcome."""
        if self.encoded is None:
            return request_hash(self.messages)
        return _hash_of(self.encoded)


def _canonical(message: dict[str, Any]) -> bytes:
    return orjson.dumps(_as_hashed(message), option=orjson.OPT_SORT_KEYS)


def _hash_of(encoded: list[bytes]) -> str:
    # The bytes orjson gives for the whole list: "[" + ",".join(items) + "]".
    return hashlib.sha256(b"[" + b",".join(encoded) + b"]").hexdigest()


def request_hash(messages: list[dict[str, Any]]) -> str:
    """sha256 of a request. Images enter it by their sha256, not by their bytes or where they
    lie on disk, so the same conversation replayed elsewhere hashes the same."""
    return _hash_of([_canonical(message) for message in messages])


def inline_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request as Penguin-style clients take it: images inlined as data URLs."""
    return [_inline_images(message) for message in messages]


def _as_hashed(message: dict[str, Any]) -> dict[str, Any]:
    # An image's sha256 says all its size could, and its path is only where it lies here.
    content = message["content"]
    if isinstance(content, str):
        return message
    return {
        **message,
        "content": [{k: v for k, v in part.items() if k not in _UNHASHED} for part in content],
    }


def _inline_images(message: dict[str, Any]) -> dict[str, Any]:
    content = message["content"]
    if isinstance(content, str):
        return message
    parts = []
    for part in content:
        if part["type"] == "image":
            parts.append({"type": "image_url", "image_url": {"url": image_data_url(part)}})
        else:
            parts.append(part)
    return {**message, "content": parts}


def build_request(context: SessionContext, plan: ContextPlan) -> ModelRequest:
    replaced = set(plan.images_replaced)
    messages: list[dict[str, Any]] = []
    encoded: list[bytes] = []
    for message_id in plan.kept:
        # Rows never change, so a message's request form and bytes are made once per turn
        # it is new in (a turn re-sends hundreds of them).
        key = (message_id, message_id in replaced)
        if key not in context.built:
            message = _model_message(context.rows[message_id], key[1])
            context.built[key] = (message, _canonical(message))
        message, data = context.built[key]
        messages.append(message)
        encoded.append(data)
    return ModelRequest(plan.kept, plan.images_replaced, messages, plan.total_tokens, encoded)
