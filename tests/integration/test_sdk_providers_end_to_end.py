"""The whole turn through the official SDKs, against loopback servers speaking each API:
selected by model_config, streamed and not, failures retried and recorded, usage on record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

from chatledger import ConversationManager
from domain import events
from tests.fakes.anthropic_server import Failure, FakeAnthropicServer, Reply
from tests.fakes.openai_server import FakeOpenAIServer


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def anthropic_server() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer() as server:
        yield server


def recorded(manager: ConversationManager, kind: type) -> list[events.ConversationEvent]:
    cid = UUID(manager.get_conversation_id())
    return [e for e in manager.ledger.store.events.get(cid) if isinstance(e, kind)]


async def test_openai_turns_streamed_and_not(
    tmp_path: Path, openai_server: FakeOpenAIServer
) -> None:
    manager = ConversationManager(
        workspace_path=tmp_path,
        system_prompt="Be brief.",
        model_config={
            "provider": "openai",
            "model": "gpt-4o",
            "base_url": openai_server.base_url,
            "api_key": "sk-test",
            "retry_backoff": 0.001,
        },
    )
    openai_server.reply("Lisbon is lovely.", prompt_tokens=21, completion_tokens=4)
    assert await manager.process_message("Where to go?") == "Lisbon is lovely."
    sent = openai_server.requests[-1].body
    assert sent["model"] == "gpt-4o"
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["messages"][-1]["content"] in (
        "Where to go?",
        [{"type": "text", "text": "Where to go?"}],
    )

    openai_server.fail(429, "Rate limit reached", headers={"retry-after": "0"})
    openai_server.reply("Porto too.", chunks=["Porto ", "too."])
    chunks: list[str] = []
    answer = await manager.process_message("More?", streaming=True, stream_callback=chunks.append)
    assert answer == "Porto too." and chunks == ["Porto ", "too."]

    called = recorded(manager, events.ModelCalled)
    responded = recorded(manager, events.ModelResponded)
    assert [c.provider for c in called] == ["openai", "openai"]
    assert (responded[0].prompt_tokens, responded[0].completion_tokens) == (21, 4)
    assert responded[1].attempts == 2
    assert [m["content"] for m in manager.get_history()][-2:] == ["More?", "Porto too."]


async def test_anthropic_turn_and_a_stream_cut_half_way(
    tmp_path: Path, anthropic_server: FakeAnthropicServer
) -> None:
    manager = ConversationManager(
        workspace_path=tmp_path,
        system_prompt="Be brief.",
        model_config={
            "provider": "anthropic",
            "model": "claude-sonnet-4",
            "base_url": anthropic_server.base_url,
            "api_key": "sk-test",
            "retry_backoff": 0.001,
        },
    )
    anthropic_server.script(Reply(text="Hello!", input_tokens=30, output_tokens=2))
    assert await manager.process_message("Hi") == "Hello!"
    request = anthropic_server.requests[-1].body
    assert (
        request["system"][0]["text"] == "Be brief."
        if isinstance(request["system"], list)
        else (request["system"] == "Be brief.")
    )

    anthropic_server.script(Reply(text="one two three four", cut_after=2))
    chunks: list[str] = []
    answer = await manager.process_message("Go on", streaming=True, stream_callback=chunks.append)
    assert answer.startswith("Error processing message:")
    (failed,) = recorded(manager, events.ModelCallFailed)
    assert failed.kind == "stream_interrupted" and failed.partial_text == "".join(chunks) != ""
    assert manager.list_checkpoints(checkpoint_type="emergency")

    anthropic_server.script(Failure(400, "invalid_request_error", "max_tokens too large"))
    answer = await manager.process_message("Again")
    assert "max_tokens too large" in answer
    assert len(recorded(manager, events.ModelCallFailed)) == 2
