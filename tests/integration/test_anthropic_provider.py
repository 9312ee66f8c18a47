"""AnthropicProvider against a real HTTP server speaking the Messages API wire format.

The official SDK runs unmodified; the fake server (tests/fakes/anthropic_server.py) records
what the SDK really sent and answers with scripted JSON, SSE streams and errors."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anthropic import AsyncAnthropic

from chatledger import FileInputError
from chatledger.providers import ProviderError, ToolCall
from infrastructure.providers.anthropic_provider import (
    LEADING_USER_TURN,
    AnthropicProvider,
    to_anthropic_messages,
)
from tests.fakes.anthropic_server import Failure, FakeAnthropicServer, Reply, ToolUse

MODEL = "claude-test-1"


@pytest.fixture
def server() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer() as fake:
        yield fake


@pytest.fixture
def provider(server: FakeAnthropicServer) -> AnthropicProvider:
    return AnthropicProvider(MODEL, base_url=server.base_url, api_key="sk-test-key", timeout=5)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# -- plain answers -----------------------------------------------------------------------------


async def test_text_answer_with_usage_and_what_the_sdk_sent(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.script(Reply(text="Paris is the capital.", input_tokens=21, output_tokens=6))

    reply = await provider.complete([user("Capital of France?")], max_tokens=77)

    assert reply.text == "Paris is the capital."
    assert reply.tool_calls == ()
    assert reply.stop_reason == "end_turn"
    assert (reply.prompt_tokens, reply.completion_tokens) == (21, 6)
    sent = server.last
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    # SDK 2.x sends the key as a bearer token (API version 2026-10-21), not x-api-key.
    assert sent.headers["authorization"] == "Bearer sk-test-key"
    assert sent.headers["anthropic-version"]
    assert sent.headers["content-type"] == "application/json"
    assert sent.body["model"] == MODEL
    assert sent.body["max_tokens"] == 77
    assert "stream" not in sent.body or sent.body["stream"] is False
    assert sent.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]}
    ]
    assert "system" not in sent.body


async def test_prompt_tokens_include_cached_input(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.script(Reply(input_tokens=5, cache_read_input_tokens=1000, output_tokens=3))
    reply = await provider.complete([user("hi")])
    assert (reply.prompt_tokens, reply.completion_tokens) == (1005, 3)
    server.script(Reply(input_tokens=5, cache_read_input_tokens=1000, output_tokens=3))
    streamed = await provider.complete([user("hi")], on_chunk=lambda _: None)
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (1005, 3)


async def test_default_max_tokens_and_temperature_not_sent(server: FakeAnthropicServer) -> None:
    provider = AnthropicProvider(
        MODEL, base_url=server.base_url, api_key="k", default_max_tokens=333
    )
    await provider.complete([user("hi")], temperature=0.2)
    assert server.last.body["max_tokens"] == 333
    # API version 2026-10-21 answers 400 to any sampling parameter.
    assert "temperature" not in server.last.body


async def test_placeholder_key_with_base_url_and_env_key(
    server: FakeAnthropicServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    await AnthropicProvider(MODEL, base_url=server.base_url).complete([user("hi")])
    assert server.last.headers["authorization"].startswith("Bearer ")

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-from-env")
    await AnthropicProvider(MODEL, base_url=server.base_url).complete([user("hi")])
    assert server.last.headers["authorization"] == "Bearer sk-from-env"

    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(ProviderError, match="ANTHROPIC_API_KEY") as caught:
        AnthropicProvider(MODEL)
    assert caught.value.retryable is False


async def test_a_given_client_is_used_with_sdk_retries_off(server: FakeAnthropicServer) -> None:
    client = AsyncAnthropic(api_key="sk-own", base_url=server.base_url, max_retries=5)
    provider = AnthropicProvider(MODEL, client=client)
    assert provider.client.max_retries == 0
    server.script(Failure(529, "overloaded_error", "Overloaded"))
    with pytest.raises(ProviderError):
        await provider.complete([user("hi")])
    assert len(server.requests) == 1  # no SDK retry
    assert server.last.headers["authorization"] == "Bearer sk-own"


# -- streaming -----------------------------------------------------------------------------------


async def test_stream_with_plain_callback(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.script(Reply(text="One two three.", chunks=("One", " two", " three."), output_tokens=5))
    chunks: list[str] = []

    reply = await provider.complete([user("count")], on_chunk=chunks.append)

    assert chunks == ["One", " two", " three."]
    assert "".join(chunks) == reply.text == "One two three."
    assert reply.stop_reason == "end_turn"
    assert (reply.prompt_tokens, reply.completion_tokens) == (11, 5)
    assert server.last.body["stream"] is True
    assert server.last.headers["accept"] == "application/json"  # SDK default; body is SSE


async def test_stream_with_async_callback_awaits_each_chunk(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.script(Reply(text="a b c d e", input_tokens=40, output_tokens=9))
    seen: list[str] = []

    async def on_chunk(chunk: str) -> None:
        seen.append(chunk)

    reply = await provider.complete([user("letters")], on_chunk=on_chunk)

    assert seen == ["a ", "b ", "c ", "d ", "e"]
    assert "".join(seen) == reply.text
    assert (reply.prompt_tokens, reply.completion_tokens) == (40, 9)


async def test_an_empty_stream_is_not_an_error(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.script(Reply(text=""))
    chunks: list[str] = []
    reply = await provider.complete([user("say nothing")], on_chunk=chunks.append)
    assert (reply.text, chunks, reply.stop_reason) == ("", [], "end_turn")


# -- tool use ------------------------------------------------------------------------------------

WEATHER = ToolUse("toolu_01A", "get_weather", {"city": "Zürich", "units": ["c", "f"]})


async def test_tool_use_non_streaming(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.script(Reply(text="Let me check.", tool_uses=(WEATHER,)))

    reply = await provider.complete([user("Weather in Zürich?")])

    assert reply.text == "Let me check."
    assert reply.stop_reason == "tool_use"
    assert reply.tool_calls == (
        ToolCall("toolu_01A", "get_weather", json.dumps(WEATHER.input, ensure_ascii=False)),
    )
    assert json.loads(reply.tool_calls[0].arguments) == WEATHER.input


async def test_tool_use_streamed_as_input_json_deltas(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    second = ToolUse("toolu_02B", "get_time", {"tz": "Europe/Zurich"})
    server.script(Reply(text="Checking.", tool_uses=(WEATHER, second)))
    chunks: list[str] = []

    streamed = await provider.complete([user("Weather and time?")], on_chunk=chunks.append)
    server.script(Reply(text="Checking.", tool_uses=(WEATHER, second)))
    plain = await provider.complete([user("Weather and time?")])

    assert "".join(chunks) == streamed.text == "Checking."
    assert streamed.stop_reason == "tool_use"
    assert [c.call_id for c in streamed.tool_calls] == ["toolu_01A", "toolu_02B"]
    assert [json.loads(c.arguments) for c in streamed.tool_calls] == [
        WEATHER.input,
        second.input,
    ]
    # Streamed and non-streamed answers record the same arguments string.
    assert streamed.tool_calls == plain.tool_calls


# -- request conversion --------------------------------------------------------------------------


async def test_system_messages_go_to_the_system_field_in_order(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    await provider.complete(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "system", "content": [{"type": "text", "text": "[Context from a.md]"}]},
            user("Hi"),
            {"role": "system", "content": "Late note."},
        ]
    )
    body = server.last.body
    assert body["system"] == [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "[Context from a.md]"},
        {"type": "text", "text": "Late note."},
    ]
    assert all(turn["role"] in ("user", "assistant") for turn in body["messages"])
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


async def test_an_image_arrives_as_a_base64_block_of_the_file(
    server: FakeAnthropicServer, provider: AnthropicProvider, tmp_path: Path
) -> None:
    image = tmp_path / "dot.png"
    data = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
    image.write_bytes(data)
    part = {
        "type": "image",
        "sha256": hashlib.sha256(data).hexdigest(),
        "path": str(image),
        "media_type": "image/png",
    }

    await provider.complete(
        [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]
    )

    blocks = server.last.body["messages"][0]["content"]
    assert blocks[0] == {"type": "text", "text": "What is this?"}
    assert blocks[1]["type"] == "image"
    assert blocks[1]["source"]["type"] == "base64"
    assert blocks[1]["source"]["media_type"] == "image/png"
    assert base64.b64decode(blocks[1]["source"]["data"]) == data


async def test_a_changed_or_missing_image_is_refused_before_sending(
    server: FakeAnthropicServer, provider: AnthropicProvider, tmp_path: Path
) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"new bytes")
    part = {"type": "image", "sha256": "0" * 64, "path": str(image), "media_type": "image/png"}
    with pytest.raises(FileInputError, match="changed"):
        await provider.complete([{"role": "user", "content": [part]}])
    missing = {**part, "path": str(tmp_path / "gone.png")}
    with pytest.raises(FileInputError, match=r"gone\.png"):
        await provider.complete([{"role": "user", "content": [missing]}])
    assert server.requests == []


async def test_same_role_messages_are_merged_and_tool_output_is_user_text(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    await provider.complete(
        [
            {"role": "system", "content": "sys"},
            user("first"),
            user("second"),
            {"role": "assistant", "content": "[tool call ls({})]"},
            {"role": "tool", "content": "a.txt b.txt"},
            user("and now?"),
            {"role": "assistant", "content": "one"},
            {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
            user("last"),
        ]
    )
    turns = server.last.body["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant", "user"]
    assert turns[0]["content"] == [
        {"type": "text", "text": "first"},
        {"type": "text", "text": "second"},
    ]
    assert turns[2]["content"] == [
        {"type": "text", "text": "[tool output] a.txt b.txt"},
        {"type": "text", "text": "and now?"},
    ]
    assert turns[3]["content"] == [
        {"type": "text", "text": "one"},
        {"type": "text", "text": "two"},
    ]


def test_turns_start_with_the_user_and_alternate() -> None:
    system, turns = to_anthropic_messages(
        [
            {"role": "system", "content": "sys"},
            {"role": "assistant", "content": "an answer whose question was trimmed"},
            {"role": "tool", "content": "out"},
            user("q"),
            user(""),  # empty text is dropped, not sent as an empty block
        ]
    )
    assert system == [{"type": "text", "text": "sys"}]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[0]["content"] == [{"type": "text", "text": LEADING_USER_TURN}]
    assert turns[2]["content"] == [
        {"type": "text", "text": "[tool output] out"},
        {"type": "text", "text": "q"},
    ]
    with pytest.raises(ProviderError, match="Nothing to send"):
        to_anthropic_messages([{"role": "system", "content": "only a system prompt"}])
    with pytest.raises(ProviderError, match="developer"):
        to_anthropic_messages([{"role": "developer", "content": "x"}])


# -- errors --------------------------------------------------------------------------------------


async def test_rate_limit_is_retryable_with_retry_after(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.script(
        Failure(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
            {"retry-after": "7"},
        )
    )
    with pytest.raises(ProviderError) as caught:
        await provider.complete([user("hi")])
    error = caught.value
    assert (error.kind, error.retryable, error.retry_after, error.status) == (
        "rate_limit",
        True,
        7.0,
        429,
    )
    assert "429" in str(error) and "per-minute rate limit" in str(error)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("status", "error_type", "kind", "retryable"),
    [
        (529, "overloaded_error", "overloaded", True),
        (500, "api_error", "server", True),
        (400, "invalid_request_error", "invalid_request", False),
        (401, "authentication_error", "authentication", False),
        (403, "permission_error", "permission", False),
        (404, "not_found_error", "not_found", False),
    ],
)
async def test_http_errors_map_to_kinds(
    server: FakeAnthropicServer,
    provider: AnthropicProvider,
    status: int,
    error_type: str,
    kind: str,
    retryable: bool,
) -> None:
    server.script(Failure(status, error_type, f"the server says {error_type}"))
    with pytest.raises(ProviderError) as caught:
        await provider.complete([user("hi")])
    error = caught.value
    assert (error.kind, error.retryable, error.status) == (kind, retryable, status)
    assert str(status) in str(error) and f"the server says {error_type}" in str(error)
    assert error.retry_after is None


async def test_the_servers_x_should_retry_header_wins(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.script(Failure(500, "api_error", "do not bother", {"x-should-retry": "false"}))
    with pytest.raises(ProviderError) as caught:
        await provider.complete([user("hi")])
    assert (caught.value.kind, caught.value.retryable) == ("server", False)


async def test_errors_before_a_stream_starts_are_http_errors(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.script(Failure(529, "overloaded_error", "Overloaded", {"retry-after": "2"}))
    chunks: list[str] = []
    with pytest.raises(ProviderError) as caught:
        await provider.complete([user("hi")], on_chunk=chunks.append)
    assert (caught.value.kind, caught.value.retryable, caught.value.retry_after) == (
        "overloaded",
        True,
        2.0,
    )
    assert chunks == []


async def test_timeout_is_retryable(server: FakeAnthropicServer) -> None:
    provider = AnthropicProvider(MODEL, base_url=server.base_url, api_key="k", timeout=0.2)
    server.script(Reply(delay=1.0))
    with pytest.raises(ProviderError) as caught:
        await provider.complete([user("hi")])
    assert (caught.value.kind, caught.value.retryable) == ("timeout", True)
    assert "timed out" in str(caught.value)


async def test_connection_refused_is_retryable() -> None:
    with FakeAnthropicServer() as stopped_soon:
        base_url = stopped_soon.base_url
    provider = AnthropicProvider(MODEL, base_url=base_url, api_key="k", timeout=2)
    with pytest.raises(ProviderError) as caught:
        await provider.complete([user("hi")])
    assert (caught.value.kind, caught.value.retryable) == ("connection", True)
    assert base_url in str(caught.value)


async def test_a_cut_stream_keeps_the_partial_text(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.script(Reply(text="This answer never ends", cut_after=2))
    chunks: list[str] = []
    with pytest.raises(ProviderError) as caught:
        await provider.complete([user("go")], on_chunk=chunks.append)
    error = caught.value
    assert (error.kind, error.retryable) == ("stream_interrupted", True)
    assert error.partial_text == "This answer " == "".join(chunks)
    assert "interrupted" in str(error)


async def test_a_stream_cut_after_the_text_but_before_message_stop(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.script(Reply(text="All of it", cut_after=3))  # every chunk, then the cut
    with pytest.raises(ProviderError) as caught:
        await provider.complete([user("go")], on_chunk=lambda _: None)
    assert caught.value.kind == "stream_interrupted"
    assert caught.value.partial_text == "All of it"


async def test_an_error_event_in_the_stream(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.script(Reply(text="Partial answer then trouble", error_after=2))
    chunks: list[str] = []
    with pytest.raises(ProviderError) as caught:
        await provider.complete([user("go")], on_chunk=chunks.append)
    error = caught.value
    assert (error.kind, error.retryable) == ("stream_interrupted", True)
    assert error.partial_text == "Partial answer " == "".join(chunks)
    assert "overloaded_error" in str(error) and "Overloaded" in str(error)


async def test_a_failing_callback_is_not_disguised_as_a_provider_error(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    def on_chunk(chunk: str) -> None:
        raise KeyError("callback bug")

    with pytest.raises(KeyError, match="callback bug"):
        await provider.complete([user("go")], on_chunk=on_chunk)
