"""Record -> replay: a recorded conversation re-runs offline and reproduces every answer and
every request; a change (here, the system prompt) is caught at the first turn it affects."""

from __future__ import annotations

import asyncio
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from chatledger import ConversationManager, Ledger
from chatledger.providers import ChunkCallback, ModelReply, ProviderError, deliver
from chatledger.replay import ReplayMismatch, recorded_calls, replay
from infrastructure.stores import DATABASE_URL_VARIABLE
from tests.stores import Store


async def record(store: Store, tmp_path: Path) -> tuple[ConversationManager, str]:
    manager = store.manager(
        system_prompt="You are terse.",
        model_config={"context_window": 400},
        max_messages_per_session=12,
    )
    manager.add_context("The office is in Porto.", source="facts.md")
    image = tmp_path / "map.png"
    Image.new("RGB", (40, 30), "green").save(image)
    for index in range(6):
        await manager.process_message(f"turn {index}: " + "tell me more " * 12)
        if index == 2:
            checkpoint = await manager.create_manual_checkpoint("fork here")
    await manager.process_message("what is on this map?", image_path=str(image))
    manager.add_message("tool", "lookup: 3 results")
    branch = await manager.branch_from_checkpoint(checkpoint, name="alternative")
    assert branch is not None
    for index in range(4):
        await manager.process_message(f"branch turn {index}: " + "and then " * 15)
    return manager, branch


async def test_replay_reproduces_every_answer_and_request(store: Store, tmp_path: Path) -> None:
    manager, branch = await record(store, tmp_path)
    ledger = manager.ledger
    calls = recorded_calls(ledger, branch)
    # The branch's view holds the parent's first three turns and its own four.
    assert len(calls) == 7 and all(call.reply is not None for call in calls)
    # The recording trimmed context (a small window), so replay exercises trims too.
    assert manager.get_token_usage()["truncations"]["messages_removed"] > 0

    report = await replay(ledger, branch)
    assert len(report.turns) == 7 and report.identical
    for turn in report.turns:
        assert turn.answer == turn.recorded_answer

    parent = await replay(ledger, manager.list_conversations()[-1]["id"])
    assert len(parent.turns) == 7 and parent.identical


async def test_a_changed_system_prompt_is_caught_at_the_first_turn(
    store: Store, tmp_path: Path
) -> None:
    manager, branch = await record(store, tmp_path)
    expected = r"Turn 1: the request differs .* at message 1: recorded 'system: You are terse"
    with pytest.raises(ReplayMismatch, match=expected):
        await replay(manager.ledger, branch, system_prompt="You are verbose.")


async def test_replay_against_another_model_reports_divergence(
    store: Store, tmp_path: Path
) -> None:
    manager, branch = await record(store, tmp_path)

    class Echo:
        name, model = "echo", "echo-1"

        async def complete(self, messages: list[dict[str, object]], **_: object) -> object:
            from chatledger.providers import ModelReply

            return ModelReply("echo")

    report = await replay(manager.ledger, branch, provider=Echo())
    assert not report.identical
    assert report.turns[0].request_matches and not report.turns[0].answer_matches
    # Once answers differ, later requests (which contain them) differ too.
    assert not report.turns[1].request_matches


async def test_a_replay_only_reads_the_recorded_store(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Even where CHATLEDGER_DATABASE_URL names the recorded store, as for the CLI on PostgreSQL.
    monkeypatch.setenv(DATABASE_URL_VARIABLE, store.url)
    manager, branch = await record(store, tmp_path)
    conversations = manager.list_conversations()
    await replay(manager.ledger, branch)
    assert manager.list_conversations() == conversations


async def test_the_pytest_helper_turns_a_recording_into_a_regression_test(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatledger.testing import assert_replays

    # The helper finds the recording as a user's test would: by its workspace, and on
    # PostgreSQL by CHATLEDGER_DATABASE_URL (empty names the workspace's SQLite file).
    monkeypatch.setenv(DATABASE_URL_VARIABLE, store.url)
    manager, branch = await record(store, tmp_path)
    manager.close()
    report = await assert_replays(store.workspace, branch)
    assert len(report.turns) == 7
    with pytest.raises(AssertionError, match="no longer replays: Turn 1"):
        await assert_replays(store.workspace, branch, system_prompt="Something else.")


class FlakyModel:
    """Streams its answers word by word, fails the turns it is told to, and has nothing to
    say to "Anything else?"."""

    name, model = "flaky", "flaky-1"

    def __init__(self) -> None:
        self.failures: list[ProviderError] = []

    async def complete(
        self, messages: list[dict[str, Any]], *, on_chunk: ChunkCallback | None = None, **_: Any
    ) -> ModelReply:
        if self.failures:
            raise self.failures.pop(0)
        if messages[-1]["content"] == "Anything else?":
            return ModelReply("")
        text = f"noted: {messages[-1]['content']}"
        for word in text.split(" "):
            if on_chunk is not None:
                await deliver(on_chunk, word + " ")
            await asyncio.sleep(0)
        return ModelReply(text)


async def test_failed_and_interrupted_turns_replay_as_the_same_failures(
    store: Store, tmp_path: Path
) -> None:
    model = FlakyModel()
    manager = store.manager(system_prompt="You are terse.", api_client=model)
    await manager.process_message("Plan a weekend in Lisbon.")
    model.failures.append(ProviderError("400 invalid model", kind="bad_request", retryable=False))
    assert await manager.process_message("Add Sintra.") == (
        "Error processing message: 400 invalid model"
    )

    heard: list[str] = []

    def ctrl_c_after_two_words(chunk: str) -> None:
        heard.append(chunk)
        if len(heard) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await manager.process_message(
            "Add Sintra, please.", streaming=True, stream_callback=ctrl_c_after_two_words
        )
    stream = await manager.process_message("Then Porto.", streaming=True)
    assert not isinstance(stream, str)
    assert await anext(stream) == "noted: "
    await stream.aclose()
    await manager.process_message("Summarise.")
    conversation = manager.get_conversation_id()
    recorded = recorded_calls(manager.ledger, conversation)
    outcomes = [
        (c.failure.kind, c.failure.partial_text) if c.failure else c.reply for c in recorded
    ]
    assert outcomes == [
        ModelReply("noted: Plan a weekend in Lisbon."),
        ("bad_request", ""),
        ("cancelled", "noted: Add "),
        ("cancelled", "noted: "),
        ModelReply("noted: Summarise."),
    ]

    report = await replay(manager.ledger, conversation, workspace=tmp_path / "replay")
    assert len(report.turns) == 5 and report.identical
    failed = report.turns[1]
    assert failed.answer == failed.recorded_answer == "Error processing message: 400 invalid model"
    # The replay failed those turns the same way, and recorded them as such.
    with closing(Ledger(tmp_path / "replay", database_url="")) as scratch:
        (replayed,) = scratch.list_conversations()
        again = recorded_calls(scratch, replayed["id"])
    assert [c.failure for c in again] == [c.failure for c in recorded]


async def test_an_empty_answer_replays_as_an_empty_answer(store: Store) -> None:
    manager = store.manager(api_client=FlakyModel())
    await manager.process_message("Plan a weekend in Lisbon.")
    # An empty answer is no error, and leaves no assistant message.
    assert await manager.process_message("Anything else?") == ""
    await manager.process_message("Summarise.")
    report = await replay(manager.ledger, manager.get_conversation_id())
    assert [turn.answer for turn in report.turns] == [
        "noted: Plan a weekend in Lisbon.",
        "",
        "noted: Summarise.",
    ]
    assert report.identical
