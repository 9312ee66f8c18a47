"""Checkpoint retention as the commands run it: after each auto checkpoint, the cap on live
auto checkpoints (pruning the oldest by an index range read) and, at most once per
RETENTION_INTERVAL per conversation, the age rules (domain.retention), which change only as
time passes, so a busy conversation does not re-read its whole index on every message.

Retention prunes the checkpoint index, never the log, and each pruning is itself an event."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from domain.checkpoints import CheckpointConfig, CheckpointType
from domain.conversation import Conversation
from domain.retention import CheckpointRecord, checkpoints_to_prune
from projections.queries import CheckpointRow, ReadModel

#: Seconds between two runs of the age-based retention rules for one conversation.
RETENTION_INTERVAL = 60.0


def _record(row: CheckpointRow) -> CheckpointRecord:
    return CheckpointRecord(
        row.checkpoint_id,
        CheckpointType(row.type),
        datetime.fromisoformat(row.created_at),
        row.auto_ordinal or 0,
    )


class Retention:
    def __init__(self, read: ReadModel, config: CheckpointConfig) -> None:
        self.read, self.config = read, config
        #: When the age rules last ran, by conversation (this process's timer).
        self.last_runs: dict[UUID, datetime] = {}

    def after_auto_checkpoint(self, conversation: Conversation, newest: str, now: datetime) -> None:
        """Prunes what retention lets go now that `newest` was taken (not yet saved, so not
        yet in the index)."""
        overflow = conversation.live_auto_checkpoints - self.config.max_auto_checkpoints
        last_run = self.last_runs.get(conversation.id)
        if last_run is None or (now - last_run).total_seconds() >= RETENTION_INTERVAL:
            self.last_runs[conversation.id] = now
            records = [
                _record(row) for row in self.read.checkpoints(conversation.id, "auto", limit=None)
            ]
            records.append(
                CheckpointRecord(
                    newest, CheckpointType.AUTO, now, conversation.auto_checkpoints_taken
                )
            )
            pruned = checkpoints_to_prune(records, now, self.config)
        elif overflow > 0:
            # Prune a tenth of the cap at once, so a conversation at its cap records one
            # pruning event per cap/10 messages instead of one per message.
            batch = max(overflow, self.config.max_auto_checkpoints // 10)
            oldest = self.read.checkpoints(conversation.id, "auto", batch, oldest_first=True)
            pruned = tuple(row.checkpoint_id for row in oldest)
        else:
            return
        conversation.prune_checkpoints(pruned, "retention", now)
