"""Anthropic's Messages API as a chatledger Provider, through the official `anthropic` SDK.

Over 400 lines, kept whole: one adapter, most of it the request mapping below and the
mapping of the SDK's errors and stream events, which only make sense side by side.

What the adapter does with chatledger's request (role/content messages, image parts by path):

- Every `system` message, in order, goes to the top-level `system` field as one text block
  each: the Messages API has no system turn in `messages` for a plain system prompt.
- `user` and `assistant` messages become turns of content blocks; an image part becomes an
  `image` block with a base64 source holding the file's bytes (checked against the recorded
  sha256, so what is sent is what the ledger recorded).
- A `tool` message becomes user text prefixed "[tool output]". The Messages API has no tool
  role: tool results are `tool_result` blocks in a user turn, and they are accepted only right
  after an assistant turn holding the `tool_use` block with the same id. chatledger's request
  carries tool calls as assistant text and results without a `tool_use` id, so a `tool_result`
  block would be refused; plain user text keeps the output in front of the model.
- Consecutive turns with the same role are merged into one (the Messages API works on
  alternating user/assistant turns), and a conversation whose first turn is the assistant's
  (its opening was trimmed away) gets a short user turn in front, since the turns start with
  the user.
- `max_tokens` is required by the API: the caller's, else `default_max_tokens`.
- `temperature` is accepted for the Provider protocol but not sent: API version 2026-10-21,
  which this SDK (2.x) speaks, removed `temperature`, `top_p` and `top_k`, and answers a
  request that carries any of them with 400 `invalid_request_error`, even at default values.

Answers: text blocks joined, `tool_use` blocks as ToolCalls (arguments = the input as JSON),
the stop reason, and usage (prompt tokens = input tokens, cache reads and writes included).
With `on_chunk` the answer is streamed over server-sent events and each text delta is passed
on as it arrives.

Failures are ProviderErrors. The SDK's own retries are off (`max_retries=0`): chatledger
decides about retrying, from `retryable` and `retry_after`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
from anthropic import AsyncAnthropic

from domain.errors import InvalidInput
from infrastructure.files import recorded_image
from infrastructure.providers.common import parse_retry_after, resolve_api_key
from infrastructure.providers.port import (
    ChunkCallback,
    ModelReply,
    ProviderError,
    ToolCall,
    deliver,
)

#: The user turn put in front when the first turn is the assistant's.
LEADING_USER_TURN = "(earlier conversation omitted)"

TOOL_OUTPUT_PREFIX = "[tool output]"

#: Error `type`s in Anthropic's error body whose retry cannot succeed unchanged.
_FINAL_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "billing_error",
    }
)

#: HTTP status -> (kind, retryable), for statuses whose meaning does not depend on the body.
_STATUS_KINDS: dict[int, tuple[str, bool]] = {
    400: ("invalid_request", False),
    401: ("authentication", False),
    402: ("billing", False),
    403: ("permission", False),
    404: ("not_found", False),
    408: ("timeout", True),
    409: ("conflict", True),
    413: ("request_too_large", False),
    422: ("invalid_request", False),
    429: ("rate_limit", True),
    529: ("overloaded", True),
}


class AnthropicProvider:
    """A chatledger Provider backed by Anthropic's Messages API (`AsyncAnthropic`)."""

    name = "anthropic"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60,
        default_max_tokens: int = 1024,
        client: AsyncAnthropic | None = None,
    ) -> None:
        if default_max_tokens < 1:
            raise InvalidInput(f"default_max_tokens must be at least 1, not {default_max_tokens}.")
        self.model = model
        self.default_max_tokens = default_max_tokens
        if client is None:
            key = resolve_api_key("Anthropic", api_key, base_url, auth_kind="authentication")
            # An explicit key keeps the SDK from reading credentials of its own (profiles,
            # federation) behind chatledger's back.
            client = AsyncAnthropic(api_key=key, base_url=base_url, timeout=timeout, max_retries=0)
        elif client.max_retries != 0:
            client = client.with_options(max_retries=0)
        self._client = client

    @property
    def client(self) -> AsyncAnthropic:
        return self._client

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,  # not sent: see the module docstring
        on_chunk: ChunkCallback | None = None,
    ) -> ModelReply:
        system, turns = to_anthropic_messages(messages)
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens if max_tokens is not None else self.default_max_tokens,
            "messages": turns,
        }
        if system:
            params["system"] = system
        try:
            if on_chunk is None:
                message = await self._client.messages.create(**params)
                return _reply_from_message(message)
            return await self._stream(params, on_chunk)
        except ProviderError:
            raise
        except anthropic.APIStatusError as error:
            raise _status_error(error) from error
        except anthropic.APITimeoutError as error:
            raise ProviderError(
                f"Anthropic API request timed out ({self._where()}).",
                kind="timeout",
                retryable=True,
            ) from error
        except anthropic.APIConnectionError as error:
            cause = error.__cause__ or error
            raise ProviderError(
                f"Could not reach the Anthropic API ({self._where()}): {cause}",
                kind="connection",
                retryable=True,
            ) from error

    def _where(self) -> str:
        return f"{self._client.base_url}, model {self.model}"

    async def _stream(self, params: dict[str, Any], on_chunk: ChunkCallback) -> ModelReply:
        stream = await self._client.messages.create(**params, stream=True)
        state = _StreamState()
        try:
            events = stream.__aiter__()
            while True:
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    break
                except anthropic.APIStatusError as error:
                    # An `error` event inside the stream (HTTP status was 200).
                    raise _stream_error_event(error, state) from error
                except Exception as error:
                    # Reading the body failed (connection dropped, read timeout, a truncated
                    # chunk, an undecodable event): whatever the transport's error type, the
                    # stream is broken and what arrived so far is all there is.
                    raise _interrupted(
                        f"the stream broke off ({type(error).__name__}: {error})", state
                    ) from error
                chunk = state.apply(event)
                if chunk:
                    await deliver(on_chunk, chunk)
        finally:
            await stream.close()
        if not state.stopped:
            raise _interrupted("the stream ended before message_stop", state)
        return state.reply()


# -- request ---------------------------------------------------------------------------------


def to_anthropic_messages(
    messages: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """chatledger's request messages -> (the `system` text blocks, the `messages` turns)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        role = message.get("role")
        content = message.get("content", "")
        if role == "system":
            text = "\n\n".join(_system_texts(content))
            if text:
                system.append({"type": "text", "text": text})
            continue
        if role == "user" or role == "assistant":
            blocks = _content_blocks(content)
        elif role == "tool":
            blocks = _tool_output_blocks(content)
            role = "user"
        else:
            raise ProviderError(
                f"Message {position} has role {role!r}; the Anthropic provider sends "
                "system, user, assistant and tool messages.",
                kind="invalid_request",
                retryable=False,
            )
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise ProviderError(
            "Nothing to send: the request has no user, assistant or tool message.",
            kind="invalid_request",
            retryable=False,
        )
    if turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [_text_block(LEADING_USER_TURN)]})
    return system, turns


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return content
    raise ProviderError(
        f"Message content must be a string or a list of parts, not {type(content).__name__}.",
        kind="invalid_request",
        retryable=False,
    )


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in _parts(content):
        kind = part.get("type")
        if kind == "text":
            # The API refuses empty text blocks; an empty part carries nothing anyway.
            if part.get("text"):
                blocks.append(_text_block(part["text"]))
        elif kind == "image":
            blocks.append(_image_block(part))
        else:
            raise ProviderError(
                f"Unknown content part type {kind!r}; expected 'text' or 'image'.",
                kind="invalid_request",
                retryable=False,
            )
    return blocks


def _system_texts(content: Any) -> list[str]:
    texts: list[str] = []
    for part in _parts(content):
        if part.get("type") == "text":
            if part.get("text"):
                texts.append(part["text"])
        elif part.get("type") == "image":
            # `system` takes text blocks only.
            name = Path(str(part.get("path", "image"))).name
            texts.append(f"[image {name} not sent: the system prompt takes text only]")
    return texts


def _tool_output_blocks(content: Any) -> list[dict[str, Any]]:
    blocks = _content_blocks(content)
    if blocks and blocks[0]["type"] == "text":
        blocks[0] = _text_block(f"{TOOL_OUTPUT_PREFIX} {blocks[0]['text']}")
    else:
        blocks.insert(0, _text_block(TOOL_OUTPUT_PREFIX))
    return blocks


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": part.get("media_type") or "application/octet-stream",
            "data": base64.b64encode(recorded_image(part)).decode("ascii"),
        },
    }


# -- answers ---------------------------------------------------------------------------------


def _arguments(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _prompt_tokens(usage: Any) -> int | None:
    """Input tokens as billed: uncached input plus cache writes and reads."""
    if usage is None or getattr(usage, "input_tokens", None) is None:
        return None
    total: int = usage.input_tokens
    for name in ("cache_creation_input_tokens", "cache_read_input_tokens"):
        total += getattr(usage, name, None) or 0
    return total


def _reply_from_message(message: Any) -> ModelReply:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in message.content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "tool_use":
            calls.append(
                ToolCall(call_id=block.id, name=block.name, arguments=_arguments(block.input))
            )
    usage = message.usage
    return ModelReply(
        text="".join(texts),
        tool_calls=tuple(calls),
        stop_reason=message.stop_reason,
        prompt_tokens=_prompt_tokens(usage),
        completion_tokens=getattr(usage, "output_tokens", None),
    )


@dataclass
class _ToolBlock:
    call_id: str
    name: str
    start_input: Any
    json_parts: list[str] = field(default_factory=list)

    def arguments(self) -> str:
        raw = "".join(self.json_parts)
        if not raw.strip():
            return _arguments(self.start_input or {})
        try:
            # Same encoding as a non-streamed answer, so both paths record the same string.
            return _arguments(json.loads(raw))
        except json.JSONDecodeError:
            return raw


@dataclass
class _StreamState:
    """What the events of one streamed answer have said so far."""

    texts: list[str] = field(default_factory=list)
    tools: dict[int, _ToolBlock] = field(default_factory=dict)
    stop_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    stopped: bool = False

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def apply(self, event: Any) -> str:
        """Takes one event in; returns the text it adds ("" if none)."""
        kind = event.type
        if kind == "message_start":
            usage = event.message.usage
            self.prompt_tokens = _prompt_tokens(usage)
            self.completion_tokens = getattr(usage, "output_tokens", None)
        elif kind == "content_block_start":
            block = event.content_block
            if block.type == "tool_use":
                self.tools[event.index] = _ToolBlock(block.id, block.name, block.input)
            elif block.type == "text" and block.text:
                self.texts.append(block.text)
                return str(block.text)
        elif kind == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta" and delta.text:
                self.texts.append(delta.text)
                return str(delta.text)
            if delta.type == "input_json_delta" and event.index in self.tools:
                self.tools[event.index].json_parts.append(delta.partial_json)
        elif kind == "message_delta":
            if event.delta.stop_reason is not None:
                self.stop_reason = event.delta.stop_reason
            usage = event.usage
            if usage is not None:
                # Cumulative counts; input tokens are repeated here only by some versions.
                if getattr(usage, "input_tokens", None) is not None:
                    self.prompt_tokens = _prompt_tokens(usage)
                if getattr(usage, "output_tokens", None) is not None:
                    self.completion_tokens = usage.output_tokens
        elif kind == "message_stop":
            self.stopped = True
        return ""

    def reply(self) -> ModelReply:
        calls = tuple(
            ToolCall(call_id=tool.call_id, name=tool.name, arguments=tool.arguments())
            for _, tool in sorted(self.tools.items())
        )
        return ModelReply(
            text=self.text,
            tool_calls=calls,
            stop_reason=self.stop_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )


# -- errors ----------------------------------------------------------------------------------


def _status_error(error: anthropic.APIStatusError) -> ProviderError:
    status = error.status_code
    error_type = error.type
    if error_type == "overloaded_error":
        kind, retryable = "overloaded", True
    elif status in _STATUS_KINDS:
        kind, retryable = _STATUS_KINDS[status]
    elif status >= 500:
        kind, retryable = "server", True
    else:
        kind, retryable = "client_error", False
    should_retry = error.response.headers.get("x-should-retry")
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    detail = error.api_message or _body_text(error.body) or "no message"
    request_id = f" (request-id {error.request_id})" if error.request_id else ""
    return ProviderError(
        f"Anthropic API error {status} {error_type or 'error'}: {detail}{request_id}",
        kind=kind,
        retryable=retryable,
        retry_after=parse_retry_after(error.response.headers) if retryable else None,
        status=status,
    )


def _body_text(body: object) -> str:
    if body is None:
        return ""
    return body if isinstance(body, str) else json.dumps(body)[:500]


def _interrupted(reason: str, state: _StreamState, *, retryable: bool = True) -> ProviderError:
    return ProviderError(
        f"Anthropic stream interrupted: {reason}; {len(state.text)} characters of text "
        "had arrived.",
        kind="stream_interrupted",
        retryable=retryable,
        partial_text=state.text,
    )


def _stream_error_event(error: anthropic.APIStatusError, state: _StreamState) -> ProviderError:
    error_type = error.type or "error"
    detail = error.api_message or _body_text(error.body) or "no message"
    return _interrupted(
        f"the server sent an error event ({error_type}: {detail})",
        state,
        retryable=error_type not in _FINAL_ERROR_TYPES,
    )
