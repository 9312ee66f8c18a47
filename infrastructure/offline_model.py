"""The offline model: a deterministic local responder so chatledger runs with no key and
no network (demos, tests). Same input, same answer, on every machine."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from infrastructure.providers.port import ChunkCallback, ModelReply, deliver

_OPENERS = (
    "Noted.",
    "Understood.",
    "Here is what I have.",
    "Let me think about that.",
    "Good question.",
)


class OfflineModel:
    name = "offline"

    def answer(self, messages: Sequence[dict[str, Any]]) -> str:
        last_user = next(
            (m for m in reversed(messages) if m.get("role") == "user"), {"content": ""}
        )
        text = _plain_text(last_user.get("content", ""))
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        opener = _OPENERS[digest[0] % len(_OPENERS)]
        words = text.split()
        echo = " ".join(words[:12]) + (" ..." if len(words) > 12 else "")
        return (
            f'{opener} You said: "{echo}" '
            f"({len(words)} words; turn {sum(m.get('role') == 'user' for m in messages)})."
        )

    model = "offline"

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelReply:
        text = self.answer(messages)
        if on_chunk is not None:
            words = text.split(" ")
            for index, word in enumerate(words):
                await deliver(on_chunk, word if index == len(words) - 1 else word + " ")
        return ModelReply(text, stop_reason="stop")


def _plain_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)
