"""The provider protocol, for callers who write a provider of their own (an `api_client`
with `async complete(...)`): a re-export of the model port, which lives below the
application layer in infrastructure.providers.port so that the adapters implement it
without importing chatledger."""

from infrastructure.providers.port import (
    ChunkCallback,
    ModelReply,
    Provider,
    ProviderError,
    ToolCall,
    deliver,
)

__all__ = ["ChunkCallback", "ModelReply", "Provider", "ProviderError", "ToolCall", "deliver"]
