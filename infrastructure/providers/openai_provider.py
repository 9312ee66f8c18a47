"""OpenAIProvider: chatledger's Provider over the Chat Completions API, through the official
`openai` SDK (`AsyncOpenAI`). With `base_url` it talks to any OpenAI-compatible server
(vLLM, Ollama, llama.cpp, LM Studio).

The SDK's own retries are switched off (`max_retries=0`): chatledger retries model calls
itself, records every attempt and de-duplicates them, so a hidden second try inside the SDK
would be invisible to the log. Every failure comes out as a ProviderError that says whether
retrying can help.

Over 400 lines, kept whole: one adapter (request mapping, streaming with tool-call deltas,
error mapping) of one vendor's API."""

from __future__ import annotations

import contextlib
import http
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import openai
from openai import AsyncOpenAI

from infrastructure.files import image_data_url
from infrastructure.providers.common import parse_retry_after, resolve_api_key
from infrastructure.providers.port import (
    ChunkCallback,
    ModelReply,
    ProviderError,
    ToolCall,
    deliver,
)

MaxTokensField = Literal["max_completion_tokens", "max_tokens"]

#: Hosts that take `max_completion_tokens` (their reasoning models reject `max_tokens`).
_OPENAI_HOST_SUFFIXES = ("openai.com", "openai.azure.com")

#: Part types that carry text and nothing else.
_TEXT_KEYS = {"text": "text", "tool_result": "content"}


class OpenAIProvider:
    """A chat model behind the OpenAI Chat Completions API (or a server that speaks it).

    `max_tokens_field` picks the request field for the output limit. OpenAI deprecated
    `max_tokens` in favour of `max_completion_tokens` and rejects `max_tokens` for its
    reasoning models, while several compatible servers (Ollama, older llama.cpp and vLLM)
    only know `max_tokens` and silently ignore, or reject, the newer name. By default it is
    `max_completion_tokens` for OpenAI's own hosts and `max_tokens` for any other server."""

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60,
        client: AsyncOpenAI | None = None,
        max_tokens_field: MaxTokensField | None = None,
    ) -> None:
        if not model:
            raise ProviderError(
                "OpenAIProvider needs a model name.", kind="config", retryable=False
            )
        self.model = model
        if client is None:
            key = resolve_api_key("OpenAI", api_key, base_url, auth_kind="auth")
            self._client = AsyncOpenAI(
                api_key=key, base_url=base_url, timeout=timeout, max_retries=0
            )
            self._owns_client = True
        else:
            if base_url is not None or api_key is not None:
                raise ProviderError(
                    "OpenAIProvider takes either client=... or base_url/api_key, not both: "
                    "configure the endpoint and key on the client.",
                    kind="config",
                    retryable=False,
                )
            # A copy that shares the caller's connection pool and settings, minus retries.
            self._client = client.with_options(max_retries=0)
            self._owns_client = False
        self.base_url = str(self._client.base_url).rstrip("/")
        self.max_tokens_field: MaxTokensField = max_tokens_field or _default_max_tokens_field(
            self.base_url
        )

    async def aclose(self) -> None:
        """Close the HTTP connections of a client this provider created (not a given one)."""
        if self._owns_client:
            await self._client.close()

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelReply:
        params: dict[str, Any] = {"model": self.model, "messages": chat_messages(messages)}
        if max_tokens is not None:
            params[self.max_tokens_field] = max_tokens
        if temperature is not None:
            params["temperature"] = temperature
        if on_chunk is not None:
            return await self._stream(params, on_chunk)
        try:
            completion = await self._client.chat.completions.create(**params)
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc
        try:
            return _reply_from_completion(completion)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ProviderError(
                f"{self._where()} sent a chat completion chatledger cannot read: {exc}",
                kind="bad_response",
                retryable=False,
            ) from exc

    async def _stream(self, params: dict[str, Any], on_chunk: ChunkCallback) -> ModelReply:
        try:
            stream = await self._client.chat.completions.create(
                **params, stream=True, stream_options={"include_usage": True}
            )
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc
        state = _StreamState()
        try:
            while True:
                # Reading and decoding the stream may fail mid-way (connection dropped,
                # malformed data, an error event); the caller's callback failing is its own
                # business and propagates untouched.
                try:
                    chunk = await anext(stream)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    raise self._interrupted(state, exc) from exc
                try:
                    text = state.add(chunk)
                except (AttributeError, TypeError, ValueError) as exc:
                    raise self._interrupted(state, exc) from exc
                if text:
                    await deliver(on_chunk, text)
        finally:
            with contextlib.suppress(Exception):  # never hide why the stream ended
                await stream.close()
        if state.finish_reason is None:
            # Every complete Chat Completions stream ends its choice with a finish_reason.
            # A stream that simply stops without one (a proxy or server that closed a
            # connection-delimited body) was cut short, even though no error was raised.
            raise self._interrupted(state, None)
        return state.reply()

    # -- errors ------------------------------------------------------------------------------

    def _where(self) -> str:
        return f"OpenAI model {self.model!r} at {self.base_url}"

    def _error(self, exc: openai.OpenAIError) -> ProviderError:
        where = self._where()
        if isinstance(exc, openai.APITimeoutError):
            return ProviderError(
                f"{where}: the request timed out (timeout: {_seconds(self._client.timeout)}).",
                kind="timeout",
                retryable=True,
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            detail = f" ({cause})" if cause else ""
            return ProviderError(
                f"{where}: could not reach the server{detail}.", kind="connection", retryable=True
            )
        if isinstance(exc, openai.APIStatusError):
            return self._status_error(exc)
        if isinstance(exc, openai.APIResponseValidationError):
            return ProviderError(
                f"{where} sent a response chatledger cannot read: {exc.message}",
                kind="bad_response",
                retryable=False,
                status=exc.status_code,
            )
        return ProviderError(f"{where}: {exc}", kind="provider", retryable=False)

    def _status_error(self, exc: openai.APIStatusError) -> ProviderError:
        status = exc.status_code
        headers = exc.response.headers
        code = _error_field(exc.body, "code")
        if status in (401, 403):
            kind, retryable = "auth", False
        elif status == 408:
            kind, retryable = "timeout", True
        elif status == 409:
            kind, retryable = "conflict", True
        elif status == 429 and code == "insufficient_quota":
            # OpenAI answers 429 when the account is out of credit: waiting will not help.
            kind, retryable = "quota", False
        elif status == 429:
            kind, retryable = "rate_limit", True
        elif status >= 500:
            kind, retryable = "server", True
        else:
            kind, retryable = "bad_request", False
        # OpenAI's servers may say outright whether a retry can help; the SDK obeys it too.
        should_retry = headers.get("x-should-retry")
        if should_retry in ("true", "false"):
            retryable = should_retry == "true"
        retry_after = parse_retry_after(headers) if retryable else None
        message = (
            f"{self._where()} answered HTTP {status} {_reason(status)}: {_server_message(exc)}"
        )
        if code:
            message += f" [code: {code}]"
        if retry_after is not None:
            message += f" (retry after {retry_after:g} s)"
        return ProviderError(
            message, kind=kind, retryable=retryable, retry_after=retry_after, status=status
        )

    def _interrupted(self, state: _StreamState, cause: BaseException | None) -> ProviderError:
        partial = state.text
        if cause is None:
            reason = "the stream ended without a finish_reason"
            transient = True
        elif isinstance(cause, openai.APIConnectionError):
            inner = cause.__cause__ or cause.__context__
            reason = f"the connection broke ({inner or cause.message})"
            transient = True
        elif isinstance(cause, openai.APIError):
            reason = f"the server sent an error event: {cause.message}"
            transient = False
        else:
            reason = f"the server sent data that is not a valid chunk ({cause})"
            transient = False
        # Text already handed to on_chunk cannot be taken back: a retry would stream it
        # twice, so only a stream that delivered no text yet is worth retrying.
        retryable = transient and not state.parts
        return ProviderError(
            f"{self._where()}: {reason} after {len(state.parts)} text chunk(s) "
            f"({len(partial)} characters received).",
            kind="stream_interrupted",
            retryable=retryable,
            partial_text=partial,
        )


# -- request -----------------------------------------------------------------------------------


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """chatledger's request messages in the Chat Completions `messages` shape."""
    return [_chat_message(message) for message in messages]


def _chat_message(message: Mapping[str, Any]) -> dict[str, Any]:
    role = message.get("role")
    content = message.get("content", "")
    if role == "user":
        return {"role": "user", "content": _user_content(content)}
    if role in ("system", "assistant"):
        # These roles take text only; string content is what every compatible server reads.
        return {"role": role, "content": _text_content(content)}
    if role == "tool":
        call_id = message.get("tool_call_id")
        if call_id:
            return {"role": "tool", "tool_call_id": call_id, "content": _text_content(content)}
        # Chat Completions accepts role "tool" only as the answer to an earlier assistant
        # tool call named by `tool_call_id` (a 400 otherwise). chatledger records tool output
        # without one, so it goes as a user message marked "[tool output]": valid on OpenAI
        # and on every compatible server, and the model still sees what the tool said.
        body = _user_content(content)
        if isinstance(body, str):
            return {"role": "user", "content": f"[tool output]\n{body}"}
        return {"role": "user", "content": [{"type": "text", "text": "[tool output]"}, *body]}
    raise ProviderError(
        f"Cannot send a message with role {role!r} to an OpenAI model "
        "(expected system, user, assistant or tool).",
        kind="bad_request",
        retryable=False,
    )


def _user_content(content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type")
        if kind in _TEXT_KEYS:
            parts.append({"type": "text", "text": part[_TEXT_KEYS[kind]]})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": image_data_url(part)}})
        elif kind == "image_url":  # already inlined (ModelRequest.for_client)
            parts.append({"type": "image_url", "image_url": part["image_url"]})
        else:
            raise ProviderError(
                f"Cannot send a content part of type {kind!r} to an OpenAI model.",
                kind="bad_request",
                retryable=False,
            )
    return parts


def _text_content(content: Any) -> str:
    """System, assistant and tool messages take text only: an image in one is named by a
    placeholder instead of being dropped without a trace."""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for part in content:
        kind = part.get("type")
        if kind in _TEXT_KEYS:
            texts.append(part[_TEXT_KEYS[kind]])
        elif kind == "image":
            texts.append(f"[image: {Path(part['path']).name}]")
        elif kind == "image_url":
            texts.append("[image]")
    return "\n".join(texts)


def _default_max_tokens_field(base_url: str) -> MaxTokensField:
    host = (urlsplit(base_url).hostname or "").lower()
    if any(host == s or host.endswith("." + s) for s in _OPENAI_HOST_SUFFIXES):
        return "max_completion_tokens"
    return "max_tokens"


# -- response ----------------------------------------------------------------------------------


def _reply_from_completion(completion: Any) -> ModelReply:
    usage = getattr(completion, "usage", None)
    choices = getattr(completion, "choices", None) or []
    if not choices:
        return _reply("", (), None, usage)
    choice = choices[0]
    message = choice.message
    # A refusal is the model's answer in place of content; it is what the user sees.
    text = message.content or getattr(message, "refusal", None) or ""
    calls = tuple(_tool_call(call) for call in (message.tool_calls or ()))
    return _reply(text, calls, choice.finish_reason, usage)


def _tool_call(call: Any) -> ToolCall:
    custom = getattr(call, "custom", None)
    if custom is not None:  # a custom (free-form input) tool
        return ToolCall(call_id=call.id, name=custom.name, arguments=custom.input)
    return ToolCall(call_id=call.id, name=call.function.name, arguments=call.function.arguments)


def _reply(
    text: str, calls: tuple[ToolCall, ...], stop_reason: str | None, usage: Any
) -> ModelReply:
    return ModelReply(
        text=text,
        tool_calls=calls,
        stop_reason=stop_reason,
        prompt_tokens=getattr(usage, "prompt_tokens", None),
        completion_tokens=getattr(usage, "completion_tokens", None),
    )


@dataclass
class _PendingCall:
    call_id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class _StreamState:
    """What a stream has delivered so far: text, tool call fragments, finish and usage."""

    #: The text chunks, each handed to on_chunk as it arrived.
    parts: list[str] = field(default_factory=list)
    calls: dict[int, _PendingCall] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Any = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, chunk: Any) -> str:
        """Fold one chunk in; returns its new text (maybe empty)."""
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage  # the last chunk, with empty choices
        new = ""
        for choice in getattr(chunk, "choices", None) or ():
            if getattr(choice, "index", 0) != 0:
                continue
            delta = choice.delta
            new += (delta.content or "") + (getattr(delta, "refusal", None) or "")
            for position, fragment in enumerate(delta.tool_calls or ()):
                self._add_call(position, fragment)
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason
        if new:
            self.parts.append(new)
        return new

    def _add_call(self, position: int, fragment: Any) -> None:
        # Fragments of one call share an `index`; the first names the id and function, the
        # rest carry pieces of the arguments. Name and arguments are concatenated like the
        # SDK's own accumulator does; an id repeated on later fragments is not.
        index = getattr(fragment, "index", None)
        pending = self.calls.setdefault(position if index is None else index, _PendingCall())
        if fragment.id and not pending.call_id:
            pending.call_id = fragment.id
        function = fragment.function
        if function is not None:
            pending.name += function.name or ""
            pending.arguments += function.arguments or ""

    def reply(self) -> ModelReply:
        calls = tuple(
            ToolCall(call_id=call.call_id, name=call.name, arguments=call.arguments)
            for _, call in sorted(self.calls.items())
        )
        return _reply(self.text, calls, self.finish_reason, self.usage)


# -- error details -----------------------------------------------------------------------------


def _error_field(body: object, name: str) -> str | None:
    if isinstance(body, Mapping):
        value = body.get(name)
        return str(value) if value not in (None, "") else None
    return None


def _server_message(exc: openai.APIStatusError) -> str:
    """The server's own words: OpenAI's `error.message`, the `detail` or `error` string some
    compatible servers send instead, else the body itself (shortened)."""
    body = exc.body
    for name in ("message", "detail", "error"):
        message = _error_field(body, name)
        if message:
            return message
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    if body:
        return json.dumps(body, default=str)[:500]
    return "(no error message in the response body)"


def _seconds(timeout: object) -> str:
    return f"{timeout:g} s" if isinstance(timeout, int | float) else str(timeout)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""
