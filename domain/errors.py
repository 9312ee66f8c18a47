"""Typed errors. Every error chatledger raises on purpose derives from ChatledgerError,
so callers can catch one base class and always get a message a person can act on."""


class ChatledgerError(Exception):
    """Base class of every error chatledger raises on purpose."""


class InvalidInput(ChatledgerError, ValueError):
    """An argument has the wrong type or value (empty message, bad role, ...)."""


class NothingToCheckpoint(InvalidInput):
    """A checkpoint was asked of a conversation that holds nothing but its system prompt."""


class IdempotencyConflict(InvalidInput):
    """An idempotency key already names an answered turn that asked something else."""


class NotFound(ChatledgerError, LookupError):
    """Base class for unknown ids."""


class ConversationNotFound(NotFound):
    """No conversation has the given id."""


class CheckpointNotFound(NotFound):
    """No live checkpoint has the given id (unknown, or pruned by retention)."""


class SnapshotNotFound(NotFound):
    """No snapshot has the given id."""


class FileInputError(ChatledgerError, OSError):
    """An image or context file is missing, unreadable or not what it claims to be."""


class WorkspaceError(ChatledgerError, OSError):
    """The workspace path cannot hold a chatledger store (it is a file, not writable...)."""


class StoreError(ChatledgerError):
    """The database file is corrupt, foreign, or cannot be opened."""


class ConcurrencyConflict(ChatledgerError):
    """Another writer appended to the same conversation and retrying did not resolve it."""


class BundleConflict(ChatledgerError):
    """A bundle holds conversations the store already has, with different events."""
