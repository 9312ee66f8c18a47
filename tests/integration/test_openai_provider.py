"""OpenAIProvider end to end: the official SDK against a real HTTP server on 127.0.0.1 that
speaks the Chat Completions wire format (tests/fakes/openai_server.py). Nothing is mocked."""

from __future__ import annotations

import base64
import hashlib
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

from chatledger import FileInputError
from chatledger.providers import ModelReply, ProviderError, ToolCall
from infrastructure.providers.openai_provider import OpenAIProvider
from tests.fakes.openai_server import DEFAULT_TEXT, FakeOpenAIServer

MODEL = "gpt-test"


@pytest.fixture(autouse=True)
def _no_ambient_openai_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_CUSTOM_HEADERS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake


@pytest.fixture
async def provider(server: FakeOpenAIServer) -> AsyncIterator[OpenAIProvider]:
    p = OpenAIProvider(MODEL, base_url=server.base_url, api_key="sk-test", timeout=5)
    yield p
    await p.aclose()


def user(text: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": text}]


# -- plain answers -----------------------------------------------------------------------------


async def test_non_streaming_text_and_usage(server: FakeOpenAIServer, provider: OpenAIProvider):
    server.reply("The answer is 42.", prompt_tokens=21, completion_tokens=6)

    reply = await provider.complete(user("What is the answer?"))

    assert reply == ModelReply(
        text="The answer is 42.", stop_reason="stop", prompt_tokens=21, completion_tokens=6
    )
    assert provider.name == "openai"
    assert provider.model == MODEL


async def test_base_url_is_honoured_and_request_body_is_as_documented(
    server: FakeOpenAIServer, provider: OpenAIProvider
):
    await provider.complete(user("hi"), max_tokens=50, temperature=0.25)

    [request] = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    body = request.body
    assert body["model"] == MODEL
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    # Any non-OpenAI host gets the field every compatible server knows.
    assert body["max_tokens"] == 50
    assert "max_completion_tokens" not in body
    assert body["temperature"] == 0.25
    assert "stream" not in body


async def test_unset_parameters_are_not_sent(server: FakeOpenAIServer, provider: OpenAIProvider):
    await provider.complete(user("hi"))

    body = server.last_body
    assert set(body) == {"model", "messages"}


async def test_max_completion_tokens_for_openai_hosts_or_when_chosen(server: FakeOpenAIServer):
    assert OpenAIProvider(MODEL, api_key="k").max_tokens_field == "max_completion_tokens"
    provider = OpenAIProvider(
        MODEL,
        base_url=server.base_url,
        api_key="k",
        max_tokens_field="max_completion_tokens",
    )
    await provider.complete(user("hi"), max_tokens=9)
    await provider.aclose()

    assert server.last_body["max_completion_tokens"] == 9
    assert "max_tokens" not in server.last_body


async def test_local_server_needs_no_key(server: FakeOpenAIServer):
    provider = OpenAIProvider(MODEL, base_url=server.base_url)
    reply = await provider.complete(user("hi"))
    await provider.aclose()

    assert reply.text == DEFAULT_TEXT
    assert server.requests[0].headers["authorization"] == "Bearer not-needed"


async def test_a_given_client_is_used_without_sdk_retries(server: FakeOpenAIServer):
    client = AsyncOpenAI(api_key="sk-client", base_url=server.base_url, max_retries=5)
    provider = OpenAIProvider(MODEL, client=client)
    server.fail(500, "boom", type="server_error")
    server.fail(500, "boom again", type="server_error")

    with pytest.raises(ProviderError) as caught:
        await provider.complete(user("hi"))
    await client.close()

    assert caught.value.kind == "server"
    assert len(server.requests) == 1  # chatledger retries, not the SDK
    assert server.requests[0].headers["authorization"] == "Bearer sk-client"


def test_client_and_base_url_together_are_refused(server: FakeOpenAIServer):
    client = AsyncOpenAI(api_key="k", base_url=server.base_url)
    with pytest.raises(ProviderError) as caught:
        OpenAIProvider(MODEL, client=client, base_url=server.base_url)
    assert caught.value.kind == "config"


def test_no_key_and_no_base_url_is_a_clear_error():
    with pytest.raises(ProviderError) as caught:
        OpenAIProvider(MODEL)

    assert caught.value.kind == "auth"
    assert not caught.value.retryable
    assert "OPENAI_API_KEY" in str(caught.value)


async def test_key_comes_from_the_environment(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    provider = OpenAIProvider(MODEL, base_url=server.base_url)
    await provider.complete(user("hi"))
    await provider.aclose()

    assert server.requests[0].headers["authorization"] == "Bearer sk-from-env"


# -- messages ----------------------------------------------------------------------------------


async def test_system_prompt_goes_first_and_roles_map(
    server: FakeOpenAIServer, provider: OpenAIProvider
):
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "system", "content": "[Context from notes.md]\nfact"},
        {"role": "user", "content": "run it"},
        {"role": "assistant", "content": [{"type": "text", "text": "[tool call ls({})]"}]},
        {"role": "tool", "content": "a.txt b.txt"},
        {"role": "user", "content": "thanks"},
    ]

    await provider.complete(messages)

    assert server.last_body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "system", "content": "[Context from notes.md]\nfact"},
        {"role": "user", "content": "run it"},
        {"role": "assistant", "content": "[tool call ls({})]"},
        # No tool_call_id: role "tool" would be rejected, so it goes as marked user text.
        {"role": "user", "content": "[tool output]\na.txt b.txt"},
        {"role": "user", "content": "thanks"},
    ]


async def test_tool_message_with_a_call_id_keeps_role_tool(
    server: FakeOpenAIServer, provider: OpenAIProvider
):
    await provider.complete(
        [
            {"role": "user", "content": "go"},
            {"role": "tool", "tool_call_id": "call_1", "content": "done"},
        ]
    )

    assert server.last_body["messages"][1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "done",
    }


async def test_image_part_arrives_as_a_data_url(
    server: FakeOpenAIServer, provider: OpenAIProvider, tmp_path: Path
):
    image = tmp_path / "pixel.png"
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    image.write_bytes(data)
    content = [
        {"type": "text", "text": "What is this?"},
        {
            "type": "image",
            "sha256": hashlib.sha256(data).hexdigest(),
            "path": str(image),
            "media_type": "image/png",
        },
    ]

    await provider.complete([{"role": "user", "content": content}])

    [message] = server.last_body["messages"]
    assert message == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()},
            },
        ],
    }


async def test_a_changed_or_missing_image_is_refused_before_sending(
    server: FakeOpenAIServer, provider: OpenAIProvider, tmp_path: Path
):
    image = tmp_path / "x.png"
    image.write_bytes(b"new bytes")
    part = {"type": "image", "sha256": "0" * 64, "path": str(image), "media_type": "image/png"}
    with pytest.raises(FileInputError, match="changed"):
        await provider.complete([{"role": "user", "content": [part]}])
    missing = {**part, "path": str(tmp_path / "gone.png")}
    with pytest.raises(FileInputError, match=r"gone\.png"):
        await provider.complete([{"role": "user", "content": [missing]}])
    assert server.requests == []


# -- streaming ---------------------------------------------------------------------------------


async def test_streaming_with_a_plain_callback(server: FakeOpenAIServer, provider: OpenAIProvider):
    server.reply(chunks=["Hel", "lo, ", "wor", "ld!"], prompt_tokens=5, completion_tokens=4)
    received: list[str] = []

    reply = await provider.complete(user("hi"), on_chunk=received.append)

    assert received == ["Hel", "lo, ", "wor", "ld!"]
    assert "".join(received) == reply.text == "Hello, world!"
    assert (reply.prompt_tokens, reply.completion_tokens) == (5, 4)  # from the last chunk
    assert reply.stop_reason == "stop"
    body = server.last_body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_streaming_with_an_async_callback(server: FakeOpenAIServer, provider: OpenAIProvider):
    server.reply("one two three four")
    received: list[str] = []

    async def on_chunk(text: str) -> None:
        received.append(text)

    reply = await provider.complete(user("count"), on_chunk=on_chunk)

    assert received == ["one ", "two ", "three ", "four"]
    assert reply.text == "one two three four"
    assert (reply.prompt_tokens, reply.completion_tokens) == (11, 7)


async def test_callback_errors_propagate_unchanged(
    server: FakeOpenAIServer, provider: OpenAIProvider
):
    server.reply("a b c")

    def on_chunk(text: str) -> None:
        raise KeyError("the caller's own bug")

    with pytest.raises(KeyError):
        await provider.complete(user("hi"), on_chunk=on_chunk)


# -- tool calls --------------------------------------------------------------------------------

CALLS = [
    {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
    {"id": "call_b", "name": "get_time", "arguments": '{"tz": "UTC"}'},
]


async def test_tool_calls_non_streaming(server: FakeOpenAIServer, provider: OpenAIProvider):
    server.reply("", tool_calls=CALLS)

    reply = await provider.complete(user("weather and time?"))

    assert reply.text == ""
    assert reply.stop_reason == "tool_calls"
    assert reply.tool_calls == (
        ToolCall("call_a", "get_weather", '{"city": "Oslo"}'),
        ToolCall("call_b", "get_time", '{"tz": "UTC"}'),
    )


async def test_tool_calls_streamed_as_deltas(server: FakeOpenAIServer, provider: OpenAIProvider):
    calls = [
        {**CALLS[0], "argument_chunks": ['{"ci', 'ty": ', '"Oslo"}']},
        {**CALLS[1], "argument_chunks": ['{"tz"', ': "UTC"}']},
    ]
    server.reply("Checking.", tool_calls=calls)
    received: list[str] = []

    reply = await provider.complete(user("weather and time?"), on_chunk=received.append)

    assert "".join(received) == reply.text == "Checking."
    assert reply.stop_reason == "tool_calls"
    assert reply.tool_calls == (
        ToolCall("call_a", "get_weather", '{"city": "Oslo"}'),
        ToolCall("call_b", "get_time", '{"tz": "UTC"}'),
    )


# -- errors ------------------------------------------------------------------------------------


async def test_rate_limit_is_retryable_with_retry_after(
    server: FakeOpenAIServer, provider: OpenAIProvider
):
    server.fail(
        429,
        "Rate limit reached for requests",
        type="requests",
        code="rate_limit_exceeded",
        headers={"retry-after": "2"},
    )

    with pytest.raises(ProviderError) as caught:
        await provider.complete(user("hi"))

    error = caught.value
    assert (error.kind, error.retryable, error.retry_after, error.status) == (
        "rate_limit",
        True,
        2.0,
        429,
    )
    assert "Rate limit reached for requests" in str(error)
    assert len(server.requests) == 1  # the SDK did not retry on its own


async def test_rate_limit_while_streaming(server: FakeOpenAIServer, provider: OpenAIProvider):
    server.fail(429, "slow down", headers={"retry-after": "2"})

    with pytest.raises(ProviderError) as caught:
        await provider.complete(user("hi"), on_chunk=lambda text: None)

    assert (caught.value.kind, caught.value.retry_after) == ("rate_limit", 2.0)


async def test_out_of_quota_429_is_not_retryable(
    server: FakeOpenAIServer, provider: OpenAIProvider
):
    server.fail(429, "You exceeded your current quota", code="insufficient_quota")

    with pytest.raises(ProviderError) as caught:
        await provider.complete(user("hi"))

    assert (caught.value.kind, caught.value.retryable) == ("quota", False)


async def test_server_error_is_retryable(server: FakeOpenAIServer, provider: OpenAIProvider):
    server.fail(500, "The server had an error while processing your request.", type="server_error")

    with pytest.raises(ProviderError) as caught:
        await provider.complete(user("hi"))

    error = caught.value
    assert (error.kind, error.retryable, error.status) == ("server", True, 500)
    assert "HTTP 500" in str(error)
    assert "The server had an error while processing your request." in str(error)
    assert len(server.requests) == 1


async def test_bad_request_is_not_retryable_and_says_why(
    server: FakeOpenAIServer, provider: OpenAIProvider
):
    server.fail(
        400,
        "Invalid value for 'temperature': must be between 0 and 2.",
        param="temperature",
        code="invalid_value",
    )

    with pytest.raises(ProviderError) as caught:
        await provider.complete(user("hi"), temperature=7)

    error = caught.value
    assert (error.kind, error.retryable, error.status) == ("bad_request", False, 400)
    message = str(error)
    assert "HTTP 400" in message
    assert "Invalid value for 'temperature': must be between 0 and 2." in message
    assert MODEL in message


@pytest.mark.parametrize(("status", "kind"), [(401, "auth"), (403, "auth"), (404, "bad_request")])
async def test_other_client_errors_are_not_retryable(
    server: FakeOpenAIServer, provider: OpenAIProvider, status: int, kind: str
):
    server.fail(status, f"nope {status}")

    with pytest.raises(ProviderError) as caught:
        await provider.complete(user("hi"))

    assert (caught.value.kind, caught.value.retryable) == (kind, False)
    assert f"nope {status}" in str(caught.value)


async def test_timeout_is_retryable(server: FakeOpenAIServer):
    server.stall(2.0)
    provider = OpenAIProvider(MODEL, base_url=server.base_url, api_key="k", timeout=0.3)

    with pytest.raises(ProviderError) as caught:
        await provider.complete(user("hi"))
    await provider.aclose()

    assert (caught.value.kind, caught.value.retryable) == ("timeout", True)
    assert "timed out (timeout: 0.3 s)" in str(caught.value)


async def test_connection_refused_is_retryable():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = OpenAIProvider(MODEL, base_url=f"http://127.0.0.1:{port}/v1", api_key="k")

    with pytest.raises(ProviderError) as caught:
        await provider.complete(user("hi"))
    await provider.aclose()

    assert (caught.value.kind, caught.value.retryable) == ("connection", True)
    assert f"127.0.0.1:{port}" in str(caught.value)


# -- broken streams ----------------------------------------------------------------------------


async def test_stream_cut_mid_way(server: FakeOpenAIServer, provider: OpenAIProvider):
    server.cut_stream(["The ", "first ", "part"])
    received: list[str] = []

    with pytest.raises(ProviderError) as caught:
        await provider.complete(user("hi"), on_chunk=received.append)

    error = caught.value
    assert error.kind == "stream_interrupted"
    assert error.retryable is False
    assert error.partial_text == "".join(received) == "The first part"
    assert "3 text chunk(s)" in str(error)


async def test_stream_ending_early_without_an_error_is_still_interrupted(
    server: FakeOpenAIServer, provider: OpenAIProvider
):
    # A connection-delimited body that just stops: no transport error, but no
    # finish_reason and no [DONE] either.
    server.cut_stream(["half ", "an answer"], close_delimited=True)

    with pytest.raises(ProviderError) as caught:
        await provider.complete(user("hi"), on_chunk=lambda text: None)

    assert caught.value.kind == "stream_interrupted"
    assert caught.value.partial_text == "half an answer"
    assert "finish_reason" in str(caught.value)


async def test_malformed_stream_data(server: FakeOpenAIServer, provider: OpenAIProvider):
    server.malformed_stream(["good ", "so far"])

    with pytest.raises(ProviderError) as caught:
        await provider.complete(user("hi"), on_chunk=lambda text: None)

    assert (caught.value.kind, caught.value.retryable) == ("stream_interrupted", False)
    assert caught.value.partial_text == "good so far"


async def test_error_event_mid_stream(server: FakeOpenAIServer, provider: OpenAIProvider):
    server.error_event(["so ", "far"], "The model is overloaded.")

    with pytest.raises(ProviderError) as caught:
        await provider.complete(user("hi"), on_chunk=lambda text: None)

    assert (caught.value.kind, caught.value.retryable) == ("stream_interrupted", False)
    assert caught.value.partial_text == "so far"
    assert "The model is overloaded." in str(caught.value)


async def test_stream_cut_before_any_text_may_be_retried(
    server: FakeOpenAIServer, provider: OpenAIProvider
):
    server.cut_stream([])

    with pytest.raises(ProviderError) as caught:
        await provider.complete(user("hi"), on_chunk=lambda text: None)

    assert (caught.value.kind, caught.value.retryable) == ("stream_interrupted", True)
    assert caught.value.partial_text == ""


async def test_provider_still_works_after_a_broken_stream(
    server: FakeOpenAIServer, provider: OpenAIProvider
):
    server.cut_stream(["x"])
    with pytest.raises(ProviderError):
        await provider.complete(user("hi"), on_chunk=lambda text: None)

    server.reply("fine again")
    assert (await provider.complete(user("hi"), on_chunk=lambda text: None)).text == "fine again"
