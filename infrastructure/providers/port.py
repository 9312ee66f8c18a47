"""The model port: what chatledger needs from a chat model, whichever vendor serves it.

A provider takes the request chatledger built (role/content messages whose image parts name
a file by path, size, sha256 and media type), sends it in its own wire format, and answers
with a ModelReply. Failures are ProviderErrors that say whether retrying can help; an image
file that no longer holds the recorded bytes is a FileInputError (infrastructure.files reads
images for every provider).

It lives below the application layer so that the adapters (the SDK providers, the offline
model) implement it without importing chatledger; `chatledger.providers` re-exports it for
callers who write a provider of their own."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from domain.errors import ChatledgerError

__all__ = ["ChunkCallback", "ModelReply", "Provider", "ProviderError", "ToolCall", "deliver"]

#: Called with each chunk of streamed text as it arrives; may be a coroutine function.
ChunkCallback = Callable[[str], Awaitable[None] | None]


async def deliver(on_chunk: ChunkCallback, chunk: str) -> None:
    """Passes a chunk to a callback that may be a plain or a coroutine function."""
    result = on_chunk(chunk)
    if inspect.isawaitable(result):
        await result


@dataclass(frozen=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ModelReply:
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    stop_reason: str | None = None
    #: As reported by the provider; None when it reports nothing.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ProviderError(ChatledgerError):
    """A model call failed. `retryable` says whether the same call may succeed later
    (timeouts, 429, 5xx); `retry_after` is the server's hint in seconds; `partial_text` is
    what a stream delivered before it broke."""

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
        partial_text: str = "",
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status
        self.partial_text = partial_text


class Provider(Protocol):
    name: str
    model: str

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelReply:
        """One model call. With `on_chunk` the answer is streamed: each text chunk is passed
        to it as it arrives, and the whole answer is returned at the end."""
        ...
