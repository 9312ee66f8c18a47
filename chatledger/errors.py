"""The exceptions chatledger raises (all derive from ChatledgerError)."""

from domain.errors import (
    ChatledgerError,
    CheckpointNotFound,
    ConcurrencyConflict,
    ConversationNotFound,
    FileInputError,
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    NothingToCheckpoint,
    SnapshotNotFound,
    StoreError,
    WorkspaceError,
)
from infrastructure.providers.port import ProviderError

__all__ = [
    "ChatledgerError",
    "CheckpointNotFound",
    "ConcurrencyConflict",
    "ConversationNotFound",
    "FileInputError",
    "IdempotencyConflict",
    "InvalidInput",
    "NotFound",
    "NothingToCheckpoint",
    "ProviderError",
    "SnapshotNotFound",
    "StoreError",
    "WorkspaceError",
]
