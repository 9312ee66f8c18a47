"""The offline model: a deterministic local responder so chatledger runs with no key and
no network (demos, tests). Same input, same answer, on every machine."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

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

    async def get_response(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int | None = None,
        stream: bool | None = None,
        stream_callback: Any = None,
    ) -> str:
        text = self.answer(messages)
        if stream and stream_callback is not None:
            async for chunk in self.stream(text):
                result = stream_callback(chunk)
                if hasattr(result, "__await__"):
                    await result
        return text

    @staticmethod
    async def stream(text: str) -> AsyncIterator[str]:
        words = text.split(" ")
        for index, word in enumerate(words):
            yield word if index == len(words) - 1 else word + " "


def _plain_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)
