"""chatledger: an append-only, event-sourced conversation manager for LLM applications."""

from chatledger.errors import (
    ChatledgerError,
    CheckpointNotFound,
    ConcurrencyConflict,
    ConversationNotFound,
    FileInputError,
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    NothingToCheckpoint,
    ProviderError,
    SnapshotNotFound,
    StoreError,
    WorkspaceError,
)
from chatledger.ledger import Ledger
from chatledger.manager import ConversationManager
from chatledger.message import Message
from chatledger.turns import RetryPolicy, TurnAnswer, TurnFailure
from domain.checkpoints import CheckpointConfig, CheckpointType

__all__ = [
    "ChatledgerError",
    "CheckpointConfig",
    "CheckpointNotFound",
    "CheckpointType",
    "ConcurrencyConflict",
    "ConversationManager",
    "ConversationNotFound",
    "FileInputError",
    "IdempotencyConflict",
    "InvalidInput",
    "Ledger",
    "Message",
    "NotFound",
    "NothingToCheckpoint",
    "ProviderError",
    "RetryPolicy",
    "SnapshotNotFound",
    "StoreError",
    "TurnAnswer",
    "TurnFailure",
    "WorkspaceError",
]
