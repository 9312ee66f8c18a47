"""Checkpoint kinds and configuration (Penguin-compatible)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class CheckpointType(StrEnum):
    AUTO = "auto"
    MANUAL = "manual"
    BRANCH = "branch"
    ROLLBACK = "rollback"
    EMERGENCY = "emergency"


def _default_planes() -> dict[str, bool]:
    return {"conversation": True, "tasks": False, "code": False}


def _default_retention() -> dict[str, int]:
    return {"keep_all_hours": 24, "keep_every_nth": 10, "max_age_days": 30}


@dataclass
class CheckpointConfig:
    enabled: bool = True
    frequency: int = 1
    planes: dict[str, bool] = field(default_factory=_default_planes)
    retention: dict[str, int] = field(default_factory=_default_retention)
    max_auto_checkpoints: int = 1000


def auto_checkpoint_due(config: CheckpointConfig, eligible_since_last: int) -> bool:
    """An auto checkpoint is taken after every `frequency` eligible messages, while the
    conversation plane is on (as in Penguin, a plane the dict leaves out is on)."""
    return (
        config.enabled
        and config.planes.get("conversation", True)
        and config.frequency > 0
        and eligible_since_last >= config.frequency
    )
