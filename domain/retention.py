"""Checkpoint retention: which auto checkpoints leave the index. A pure policy.

Rules (docs/architecture.md §6): only auto checkpoints are ever pruned; those older than
`max_age_days` go; within `keep_all_hours` all stay; in between, every `keep_every_nth` stays;
and at most `max_auto_checkpoints` stay (the oldest go first)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from domain.checkpoints import CheckpointConfig, CheckpointType


@dataclass(frozen=True)
class CheckpointRecord:
    checkpoint_id: str
    checkpoint_type: CheckpointType
    created_at: datetime
    #: 1-based rank among the conversation's auto checkpoints ever taken. Stable as time
    #: passes, so "every nth" keeps the same checkpoints on every run.
    ordinal: int


def checkpoints_to_prune(
    checkpoints: Sequence[CheckpointRecord], now: datetime, config: CheckpointConfig
) -> tuple[str, ...]:
    keep_all = timedelta(hours=config.retention.get("keep_all_hours", 24))
    max_age = timedelta(days=config.retention.get("max_age_days", 30))
    every_nth = max(1, config.retention.get("keep_every_nth", 10))

    autos = sorted(
        (c for c in checkpoints if c.checkpoint_type is CheckpointType.AUTO),
        key=lambda c: c.ordinal,
    )
    pruned: list[str] = []
    kept: list[str] = []
    for record in autos:
        age = now - record.created_at
        if age > max_age:
            pruned.append(record.checkpoint_id)
        elif age <= keep_all or record.ordinal % every_nth == 0:
            kept.append(record.checkpoint_id)
        else:
            pruned.append(record.checkpoint_id)
    overflow = max(0, len(kept) - max(0, config.max_auto_checkpoints))
    return (*pruned, *kept[:overflow])
