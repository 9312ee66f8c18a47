"""The exceptions chatledger raises (all derive from ChatledgerError)."""

from domain.errors import (
    ChatledgerError,
    CheckpointNotFound,
    ConcurrencyConflict,
    ConversationNotFound,
    FileInputError,
    InvalidInput,
    NotFound,
    SnapshotNotFound,
    StoreError,
    WorkspaceError,
)

__all__ = [
    "ChatledgerError",
    "CheckpointNotFound",
    "ConcurrencyConflict",
    "ConversationNotFound",
    "FileInputError",
    "InvalidInput",
    "NotFound",
    "SnapshotNotFound",
    "StoreError",
    "WorkspaceError",
]
