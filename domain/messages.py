"""Messages and their content parts: immutable value objects."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class Immutable(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class Category(StrEnum):
    """What a message is for; the context window budgets and trims by category."""

    SYSTEM = "SYSTEM"
    CONTEXT = "CONTEXT"
    DIALOG = "DIALOG"
    SYSTEM_OUTPUT = "SYSTEM_OUTPUT"
    ERROR = "ERROR"


DEFAULT_CATEGORY: dict[Role, Category] = {
    Role.SYSTEM: Category.SYSTEM,
    Role.USER: Category.DIALOG,
    Role.ASSISTANT: Category.DIALOG,
    Role.TOOL: Category.SYSTEM_OUTPUT,
}

#: Roles whose messages count towards automatic checkpoints.
ELIGIBLE_ROLES = frozenset({Role.USER, Role.ASSISTANT, Role.TOOL})


class TextPart(Immutable):
    type: Literal["text"] = "text"
    text: str


class ImagePart(Immutable):
    type: Literal["image"] = "image"
    path: str
    media_type: str
    sha256: str
    size: int
    width: int = 0
    height: int = 0
    #: What the image costs in the model's context, by the provider's formula.
    tokens: int = 0


class ToolCallPart(Immutable):
    type: Literal["tool_call"] = "tool_call"
    call_id: str
    name: str
    arguments: str


class ToolResultPart(Immutable):
    type: Literal["tool_result"] = "tool_result"
    call_id: str
    content: str


ContentPart = Annotated[
    TextPart | ImagePart | ToolCallPart | ToolResultPart, Field(discriminator="type")
]


def text_of(parts: tuple[ContentPart, ...]) -> str:
    """The plain text a person reads in these parts (used for titles and search)."""
    texts: list[str] = []
    for part in parts:
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, ToolResultPart):
            texts.append(part.content)
    return "\n".join(texts)
