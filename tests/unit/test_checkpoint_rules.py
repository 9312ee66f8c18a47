"""Checkpoint retention at its boundaries, custom retention policies, the configuration's
defaults (docs/architecture.md §6), and conversation titles with real ids (domain/titles.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from domain.checkpoints import CheckpointConfig, CheckpointType
from domain.retention import CheckpointRecord, checkpoints_to_prune
from domain.titles import MAX_TITLE_LENGTH, conversation_title

NOW = datetime(2026, 5, 31, 18, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def auto(ordinal: int, age: timedelta) -> CheckpointRecord:
    return CheckpointRecord(f"cp{ordinal}", CheckpointType.AUTO, NOW - age, ordinal)


def pruned(records: list[CheckpointRecord], **config: object) -> set[str]:
    return set(checkpoints_to_prune(records, NOW, CheckpointConfig(**config)))  # type: ignore[arg-type]


# -- the defaults: keep all for 24 hours, every 10th up to 30 days, at most 1000 ---------------
def test_the_default_configuration_is_the_documented_one() -> None:
    config = CheckpointConfig()
    assert config.enabled is True
    assert config.frequency == 1
    assert config.planes == {"conversation": True, "tasks": False, "code": False}
    assert config.retention == {"keep_all_hours": 24, "keep_every_nth": 10, "max_age_days": 30}
    assert config.max_auto_checkpoints == 1000


def test_each_configuration_has_its_own_policy_dicts() -> None:
    first, second = CheckpointConfig(), CheckpointConfig()
    first.retention["max_age_days"] = 1
    first.planes["code"] = True
    assert second.retention["max_age_days"] == 30
    assert second.planes["code"] is False


def test_a_checkpoint_exactly_30_days_old_is_not_yet_too_old() -> None:
    # The 10th is kept "every 10th" until it is older than max_age_days, not once it is that old.
    assert pruned([auto(10, timedelta(days=30))]) == set()
    assert pruned([auto(10, timedelta(days=30) + SECOND)]) == {"cp10"}


def test_a_checkpoint_exactly_24_hours_old_is_still_recent() -> None:
    assert pruned([auto(7, timedelta(hours=24))]) == set()
    assert pruned([auto(7, timedelta(hours=24) + SECOND)]) == {"cp7"}


def test_the_cap_prunes_the_lowest_ordinals_whatever_order_they_come_in() -> None:
    records = [auto(i, timedelta(minutes=i)) for i in (4, 1, 5, 3, 2)]
    assert checkpoints_to_prune(records, NOW, CheckpointConfig(max_auto_checkpoints=3)) == (
        "cp1",
        "cp2",
    )


def test_a_cap_of_zero_or_less_prunes_every_auto_checkpoint() -> None:
    records = [auto(1, timedelta(minutes=1)), auto(2, timedelta(minutes=2))]
    assert pruned(records, max_auto_checkpoints=0) == {"cp1", "cp2"}
    assert pruned(records, max_auto_checkpoints=-5) == {"cp1", "cp2"}
    assert pruned(records, max_auto_checkpoints=2) == set()


def test_pruned_ids_come_aged_out_first_then_over_the_cap_oldest_first() -> None:
    records = [
        auto(1, timedelta(days=40)),  # too old
        auto(2, timedelta(days=2)),  # not an nth
        auto(3, timedelta(hours=1)),
        auto(4, timedelta(minutes=5)),
    ]
    config = CheckpointConfig(max_auto_checkpoints=1)
    assert checkpoints_to_prune(records, NOW, config) == ("cp1", "cp2", "cp3")


# -- a custom retention policy -----------------------------------------------------------------
def test_a_custom_retention_policy_is_followed() -> None:
    policy = {"keep_all_hours": 2, "keep_every_nth": 3, "max_age_days": 7}
    records = [
        auto(1, timedelta(hours=1)),  # recent
        auto(2, timedelta(hours=2)),  # exactly keep_all_hours: recent
        auto(4, timedelta(hours=3)),  # between, not a 3rd
        auto(6, timedelta(hours=3)),  # between, a 3rd
        auto(9, timedelta(days=7)),  # exactly max_age_days: a 3rd, kept
        auto(12, timedelta(days=7) + SECOND),  # too old
        auto(13, timedelta(days=1)),  # would be recent under the default 24 hours
    ]
    assert pruned(records, retention=policy) == {"cp4", "cp12", "cp13"}


def test_keys_a_policy_leaves_out_keep_their_default() -> None:
    just_nth = {"keep_every_nth": 2}
    records = [
        auto(1, timedelta(hours=24) - SECOND),  # within the default 24 hours
        auto(3, timedelta(hours=24, minutes=30)),  # past it, not a 2nd
        auto(4, timedelta(days=30)),  # a 2nd, at the default 30 days
        auto(6, timedelta(days=30, hours=12)),  # past the default 30 days
    ]
    assert pruned(records, retention=just_nth) == {"cp3", "cp6"}
    # ... and every 10th by default when the policy does not say.
    between = [auto(i, timedelta(days=2)) for i in (10, 11, 20, 22)]
    assert pruned(between, retention={"max_age_days": 60}) == {"cp11", "cp22"}
    assert pruned(between, retention={}) == {"cp11", "cp22"}


@pytest.mark.parametrize("nth", [1, 0, -3])
def test_keeping_every_first_or_less_keeps_them_all(nth: int) -> None:
    records = [auto(i, timedelta(days=3)) for i in range(1, 6)]
    assert pruned(records, retention={"keep_every_nth": nth}) == set()


# -- titles --------------------------------------------------------------------------------------
REAL_ID = str(UUID("7f3c2a10-94be-4d1e-8a55-0c2f6b9d81e4"))


def test_an_untitled_conversation_is_named_by_the_end_of_its_real_id() -> None:
    assert len(REAL_ID) == 36
    assert conversation_title(None, None, REAL_ID) == "Session 6b9d81e4"
    assert conversation_title("", "", REAL_ID) == "Session 6b9d81e4"
    assert conversation_title(" \t", " \n \n", REAL_ID) == "Session 6b9d81e4"


def test_the_first_line_of_the_first_user_message_is_trimmed_of_spaces() -> None:
    assert conversation_title(None, "\n  Plan a trip   \nto Lisbon", REAL_ID) == "Plan a trip"
    assert conversation_title("  ", "Plan a trip", REAL_ID) == "Plan a trip"


def test_a_title_is_at_most_40_characters() -> None:
    assert MAX_TITLE_LENGTH == 40
    line = "A weekend in Lisbon with a day trip to Sintra"
    assert conversation_title(None, line, REAL_ID) == "A weekend in Lisbon with a day trip t..."
    assert conversation_title(None, line[:40], REAL_ID) == line[:40]
    assert conversation_title(None, line[:38], REAL_ID) == line[:38]
