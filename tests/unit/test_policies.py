"""Checkpoint frequency and conversation titles."""

import pytest

from domain.checkpoints import CheckpointConfig, auto_checkpoint_due
from domain.titles import conversation_title


@pytest.mark.parametrize(
    ("frequency", "eligible", "due"),
    [(1, 0, False), (1, 1, True), (3, 2, False), (3, 3, True), (0, 5, False)],
)
def test_auto_checkpoint_every_frequency_eligible_messages(
    frequency: int, eligible: int, due: bool
) -> None:
    assert auto_checkpoint_due(CheckpointConfig(frequency=frequency), eligible) is due


def test_disabled_config_never_checkpoints() -> None:
    assert not auto_checkpoint_due(CheckpointConfig(enabled=False), 10)


def test_the_conversation_plane_switched_off_stops_auto_checkpoints() -> None:
    planes = {"conversation": False, "tasks": False, "code": False}
    assert not auto_checkpoint_due(CheckpointConfig(planes=planes), 10)
    # Penguin reads a plane left out of the dict as on.
    assert auto_checkpoint_due(CheckpointConfig(planes={"tasks": True}), 1)


def test_given_title_wins() -> None:
    assert conversation_title("Trip plans", "hello", "abcd-1234") == "Trip plans"


def test_first_line_of_first_user_message() -> None:
    assert conversation_title(None, "  Plan a trip\nto Lisbon", "x") == "Plan a trip"


def test_long_first_line_is_shortened_to_40() -> None:
    title = conversation_title(None, "x" * 41, "id")
    assert title == "x" * 37 + "..." and len(title) == 40
    assert conversation_title(None, "y" * 40, "id") == "y" * 40


def test_untitled_falls_back_to_id_suffix() -> None:
    assert conversation_title(None, None, "0123456789abcdef") == "Session 89abcdef"
    assert conversation_title("  ", "   ", "0123456789abcdef") == "Session 89abcdef"
