"""What callers hand the application, checked before anything is read or written: ids, texts,
names, limits, metadata, message content, file paths and settings. Every refusal is an
InvalidInput (or a NotFound for an id that cannot name anything) whose message names the
limit it hit."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike, fsdecode, fsencode
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
from pydantic import TypeAdapter, ValidationError

from domain.checkpoints import CheckpointConfig, CheckpointType
from domain.errors import ConversationNotFound, InvalidInput, WorkspaceError
from domain.messages import Category, ContentPart, Role, TextPart

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
#: Largest retention setting (hours or days) that dates can still be computed with.
MAX_RETENTION = 100_000
_PARTS = TypeAdapter(tuple[ContentPart, ...])


def parse_conversation_id(value: str | UUID) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise ConversationNotFound(f"{value!r} is not a conversation id.") from None


def check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInput(
            f"{what} contains a lone surrogate at index {error.start}; send valid Unicode."
        ) from None


def check_json(value: Any, what: str) -> bytes:
    """What orjson can store (string keys, 64-bit integers, valid Unicode, nesting within its
    depth limit), as it stores it: one level down, inside its event's document."""
    try:
        return orjson.dumps([value])[1:-1]
    except TypeError as error:
        if "surrogates" in str(error):
            raise InvalidInput(f"{what} contains a lone surrogate; send valid Unicode.") from None
        if "Recursion limit" in str(error):
            raise InvalidInput(
                f"{what} is nested too deeply to be stored (orjson's limit is 254 levels, "
                "the event's own included); flatten it."
            ) from None
        raise InvalidInput(
            f"{what} must be JSON-serialisable (string keys, integers within 64 bits): {error}."
        ) from None


def _within(size: int, limit: int, unit: str, what: str, constant: str) -> None:
    if size > limit:
        raise InvalidInput(f"{what} is {size} {unit}; the limit is {limit} {unit} ({constant}).")


def label(
    value: Any, what: str, limit: int = MAX_NAME_CHARS, constant: str = "MAX_NAME_CHARS"
) -> str | None:
    """An optional short text: a title, a name, a description, a key, a search term."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, not {type(value).__name__}.")
    _within(len(value), limit, "characters", what, constant)
    check_text(value, what)
    return value


def description(value: Any, what: str) -> str | None:
    return label(value, what, MAX_DESCRIPTION_CHARS, "MAX_DESCRIPTION_CHARS")


def count(value: Any, what: str) -> int:
    """A limit or an offset, as both databases can take it."""
    if not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise InvalidInput(f"{what} must be a non-negative integer of at most {MAX_COUNT}.")
    return value


def checkpoint_type(value: Any) -> CheckpointType:
    try:
        return CheckpointType(value)
    except ValueError:
        raise InvalidInput(
            f"Unknown checkpoint type {value!r}; use one of {[t.value for t in CheckpointType]}."
        ) from None


def role(value: Any) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise InvalidInput(
            f"Unknown role {value!r}; use one of {[r.value for r in Role]}."
        ) from None


def category(value: str | Category | None) -> Category | None:
    if value is None or isinstance(value, Category):
        return value
    try:
        return Category(str(value).upper())
    except ValueError:
        raise InvalidInput(
            f"Unknown category {value!r}; use one of {[c.value for c in Category]}."
        ) from None


def stored_id(value: Any) -> str | None:
    """A checkpoint or snapshot id as the store may hold it; None when it cannot name anything
    stored (text with a lone surrogate cannot even be sent to the database)."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def checkpoint_config(value: Any) -> CheckpointConfig:
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


def workspace_path(value: Any) -> Path:
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


def file_paths(value: Any, what: str) -> tuple[str | PathLike[str], ...]:
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
        check_text(content, "The message")
        return (TextPart(text=content),)
    if isinstance(content, list | tuple) and content:
        try:
            parts = _PARTS.validate_python(tuple(content))
        except ValidationError as error:
            raise InvalidInput(
                f"Message parts are not valid: {error.errors()[0]['msg']}."
            ) from None
        check_json([part.model_dump() for part in parts], "The message parts")
        return parts
    raise InvalidInput(
        f"A message must be a non-empty string or list of parts, not {type(content).__name__}."
    )


def metadata(value: Any, what: str = "metadata") -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a dict, not {type(value).__name__}.")
    size = len(check_json(value, what))
    _within(size, MAX_METADATA_BYTES, "bytes of JSON", what, "MAX_METADATA_BYTES")
    try:
        # orjson would store NaN and infinities as null: refuse them instead.
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise InvalidInput(f"{what} cannot hold NaN or infinite numbers.") from None
    except TypeError as error:  # what orjson turns into text but JSON has no type for
        raise InvalidInput(
            f"{what} must be plain JSON (dates, UUIDs...: as text): {error}."
        ) from None
    return value


@dataclass(frozen=True)
class Settings:
    """A Ledger's settings, checked once when it opens."""

    workspace: Path
    checkpoints: CheckpointConfig
    max_messages_per_session: int
    max_message_bytes: int
    max_image_bytes: int
    max_context_file_bytes: int
    cache_size: int

    @classmethod
    def checked(cls, workspace: Any, checkpoints: Any, **sizes: int | None) -> Settings:
        """`sizes` are the integer fields. A context file becomes one stored message, so it
        is held to max_message_bytes unless max_context_file_bytes (None) says otherwise."""
        if sizes.get("max_context_file_bytes") is None:
            sizes["max_context_file_bytes"] = sizes["max_message_bytes"]
        for setting in _SIZES:
            value = sizes[setting]
            if not isinstance(value, int) or isinstance(value, bool) or value > MAX_COUNT:
                raise InvalidInput(f"{setting} must be an integer of at most {MAX_COUNT}.")
            if value < 1 and setting != "cache_size":
                raise InvalidInput(f"{setting} must be at least 1.")
        return cls(workspace_path(workspace), checkpoint_config(checkpoints), **sizes)  # type: ignore[arg-type]


_SIZES = (
    "max_messages_per_session",
    "max_message_bytes",
    "max_image_bytes",
    "max_context_file_bytes",
    "cache_size",
)


def message_size(parts: Sequence[ContentPart], limit: int) -> None:
    """Refuses a message whose stored parts exceed `limit` bytes (max_message_bytes)."""
    size = sum(len(orjson.dumps(part.model_dump())) for part in parts)
    if size > limit:
        raise InvalidInput(
            f"The message is {size} bytes; the limit is {limit} "
            "(max_message_bytes). Split it, or raise max_message_bytes."
        )
