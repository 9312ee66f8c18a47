"""What the Conversation aggregate decides on its own, given plain settings: a new session when
one is full, the auto checkpoint that is due, the emergency checkpoint after a failed call, and
no checkpoint of nothing. Ids and the marker's token count come from a Mint, asked only for
what is decided."""

from __future__ import annotations

from typing import Any

import pytest

from domain import events
from domain.checkpoints import CheckpointConfig, CheckpointType
from domain.conversation import AddedMessage, Conversation, MessageRules
from domain.errors import NothingToCheckpoint
from domain.messages import Category, Role, TextPart
from tests.unit.test_conversation_commands import T0, started


class CountingMint:
    """Numbered ids; a marker costs one token per word. Remembers what it was asked."""

    encoding = "words"

    def __init__(self) -> None:
        self.issued: list[str] = []
        self.counted: list[str] = []

    def new_id(self, prefix: str) -> str:
        self.issued.append(f"{prefix}{len(self.issued) + 1}")
        return self.issued[-1]

    def system_tokens(self, text: str) -> int:
        self.counted.append(text)
        return len(text.split())


def rules(per_session: int = 100, **checkpoints: Any) -> MessageRules:
    return MessageRules(per_session, CheckpointConfig(**checkpoints))


def add(
    conversation: Conversation, mint: CountingMint, rules: MessageRules, role: Role
) -> AddedMessage:
    return conversation.add_message(
        role=role,
        category=None,
        parts=(TextPart(text="hello"),),
        tokens=3,
        metadata={},
        timestamp=T0,
        rules=rules,
        mint=mint,
    )


def kinds(conversation: Conversation) -> list[str]:
    return [type(event).__name__ for event in conversation.collect_events()]


def test_a_full_session_rolls_over_before_the_message_that_finds_it_full() -> None:
    conversation, mint = started(), CountingMint()
    two = rules(per_session=2, enabled=False)
    add(conversation, mint, two, Role.USER)
    add(conversation, mint, two, Role.ASSISTANT)
    assert kinds(conversation) == ["MessageAppended", "MessageAppended"]
    assert mint.counted == []  # no session started, no marker counted

    add(conversation, mint, two, Role.USER)
    started_session, message = conversation.collect_events()
    assert isinstance(started_session, events.SessionStarted)
    assert isinstance(message, events.MessageAppended)
    assert started_session.marker_text == (
        "[Session 2 continues this conversation after session 1 (2 messages).]"
    )
    assert started_session.marker_tokens == 10 and started_session.encoding == "words"
    assert started_session.reason == "max_messages_per_session reached"
    assert message.session_id == started_session.session_id == conversation.session_id


def test_an_auto_checkpoint_follows_every_frequency_eligible_messages() -> None:
    conversation, mint = started(), CountingMint()
    every_two = rules(frequency=2)
    assert add(conversation, mint, every_two, Role.SYSTEM).auto_checkpoint_id is None
    assert add(conversation, mint, every_two, Role.USER).auto_checkpoint_id is None
    added = add(conversation, mint, every_two, Role.ASSISTANT)
    *_, message, checkpoint = conversation.collect_events()
    assert isinstance(message, events.MessageAppended) and message.category is Category.DIALOG
    assert isinstance(checkpoint, events.CheckpointCreated)
    assert checkpoint.checkpoint_type is CheckpointType.AUTO
    assert added.auto_checkpoint_id == checkpoint.checkpoint_id
    assert added.event is message


@pytest.mark.parametrize(
    "settings", [{"enabled": False}, {"frequency": 0}, {"planes": {"conversation": False}}]
)
def test_no_auto_checkpoint_while_they_are_off(settings: dict[str, Any]) -> None:
    conversation, mint = started(), CountingMint()
    for _ in range(3):
        add(conversation, mint, rules(**settings), Role.USER)
    assert kinds(conversation) == ["MessageAppended"] * 3
    assert not any(issued.startswith("cp") for issued in mint.issued)


def test_an_emergency_checkpoint_obeys_enabled() -> None:
    conversation, mint = started(), CountingMint()
    off = conversation.take_emergency_checkpoint(
        description="boom", timestamp=T0, checkpoints=CheckpointConfig(enabled=False), mint=mint
    )
    assert off is None and kinds(conversation) == []
    taken = conversation.take_emergency_checkpoint(
        description="x" * 300, timestamp=T0, checkpoints=CheckpointConfig(), mint=mint
    )
    (checkpoint,) = conversation.collect_events()
    assert isinstance(checkpoint, events.CheckpointCreated)
    assert checkpoint.checkpoint_id == taken
    assert checkpoint.checkpoint_type is CheckpointType.EMERGENCY
    assert checkpoint.name == "Model call failed" and checkpoint.description == "x" * 200


def test_nothing_but_the_system_prompt_is_nothing_to_checkpoint() -> None:
    conversation, mint = started(), CountingMint()
    add(conversation, mint, rules(enabled=False), Role.SYSTEM)
    with pytest.raises(NothingToCheckpoint):
        conversation.check_something_to_checkpoint()
    add(conversation, mint, rules(enabled=False), Role.USER)
    conversation.check_something_to_checkpoint()
