"""The message record the public API hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Message:
    id: str
    role: str
    content: Any
    category: str
    conversation_id: str
    position: int
    tokens: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    timestamp: str = ""

    @classmethod
    def from_transcript(cls, row: dict[str, Any]) -> Message:
        return cls(
            id=row["id"],
            role=row["role"],
            content=row["content"],
            category=row["category"],
            conversation_id=row["conversation_id"],
            position=row["position"],
            tokens=row["tokens"],
            metadata=row["metadata"],
            timestamp=row["timestamp"],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "content": self.content,
            "category": self.category,
            "metadata": self.metadata,
        }
