"""Penguin-shaped API clients (`async get_response(messages, max_tokens, stream,
stream_callback) -> str`) used as chatledger providers."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from chatledger.model_context import inline_images
from chatledger.providers import ChunkCallback, ModelReply


class PenguinClientProvider:
    def __init__(self, client: Any, model: str = "unknown") -> None:
        self.client = client
        self.name = getattr(client, "name", type(client).__name__)
        self.model = str(getattr(client, "model", None) or model)

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelReply:
        request = inline_images(messages)
        if on_chunk is None:
            return ModelReply(await self.client.get_response(request, max_tokens=max_tokens) or "")
        pending: list[asyncio.Future[Any]] = []

        def relay(chunk: str) -> None:
            # Penguin clients call the callback without awaiting it; coroutine callbacks are
            # scheduled in order and awaited before the answer is returned.
            result = on_chunk(chunk)
            if inspect.isawaitable(result):
                pending.append(asyncio.ensure_future(result))

        try:
            text = await self.client.get_response(
                request, max_tokens=max_tokens, stream=True, stream_callback=relay
            )
        except TypeError:
            # A client that cannot stream: one plain call, delivered as one chunk.
            text = await self.client.get_response(request, max_tokens=max_tokens)
            relay(text or "")
        for task in pending:
            await task
        return ModelReply(text or "")
