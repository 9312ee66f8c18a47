"""Retention decides which auto checkpoints leave the index, and never touches the others."""

from datetime import UTC, datetime, timedelta

from domain.checkpoints import CheckpointConfig, CheckpointType
from domain.retention import CheckpointRecord, checkpoints_to_prune

NOW = datetime(2026, 1, 31, 12, tzinfo=UTC)


def record(
    ordinal: int, age: timedelta, kind: CheckpointType = CheckpointType.AUTO
) -> CheckpointRecord:
    return CheckpointRecord(f"cp{ordinal}", kind, NOW - age, ordinal)


def test_recent_auto_checkpoints_all_stay() -> None:
    records = [record(i, timedelta(hours=1)) for i in range(1, 30)]
    assert checkpoints_to_prune(records, NOW, CheckpointConfig()) == ()


def test_between_keep_all_and_max_age_every_nth_stays() -> None:
    records = [record(i, timedelta(days=2)) for i in range(1, 31)]
    pruned = set(checkpoints_to_prune(records, NOW, CheckpointConfig()))
    assert pruned == {f"cp{i}" for i in range(1, 31) if i % 10}


def test_older_than_max_age_go_even_when_nth() -> None:
    records = [record(10, timedelta(days=31)), record(11, timedelta(days=1, hours=1))]
    assert checkpoints_to_prune(records, NOW, CheckpointConfig()) == ("cp10", "cp11")


def test_manual_branch_rollback_emergency_are_never_pruned() -> None:
    kinds = [k for k in CheckpointType if k is not CheckpointType.AUTO]
    records = [record(i, timedelta(days=400), kind) for i, kind in enumerate(kinds, 1)]
    config = CheckpointConfig(max_auto_checkpoints=0)
    assert checkpoints_to_prune(records, NOW, config) == ()


def test_cap_prunes_the_oldest_first() -> None:
    records = [record(i, timedelta(minutes=100 - i)) for i in range(1, 8)]
    config = CheckpointConfig(max_auto_checkpoints=5)
    assert checkpoints_to_prune(records, NOW, config) == ("cp1", "cp2")


def test_every_nth_is_stable_as_time_passes() -> None:
    """Ordinals, not positions in the current list, pick the survivors: a second run later
    prunes nothing more than the first did."""
    records = [record(i, timedelta(days=2)) for i in range(1, 31)]
    first = set(checkpoints_to_prune(records, NOW, CheckpointConfig()))
    survivors = [r for r in records if r.checkpoint_id not in first]
    later = NOW + timedelta(days=1)
    assert checkpoints_to_prune(survivors, later, CheckpointConfig()) == ()
