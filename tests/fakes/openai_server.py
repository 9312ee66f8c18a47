"""A real HTTP server on 127.0.0.1 that speaks the OpenAI Chat Completions wire format, so
the official SDK can be tested end to end without a network or a key.

`POST /v1/chat/completions` answers with a `chat.completion` JSON object, or with
server-sent events when the request says `"stream": true`: one `chat.completion.chunk` per
`data:` line (the first delta names the role, text and tool-call fragments follow, then a
chunk with the finish_reason), a usage chunk with empty `choices` when the request asked for
`stream_options.include_usage`, and `data: [DONE]`.

Every request is recorded (`server.requests`) so tests can assert what the SDK sent. What the
next request gets is scripted with `reply`, `fail`, `cut_stream`, `malformed_stream`,
`error_event` or `stall`; with nothing scripted it answers `DEFAULT_TEXT`. Use it as a
context manager (it starts a daemon thread and stops it on exit), typically from a pytest
fixture."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_TEXT = "Hello from the fake server."


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Script:
    """One scripted answer."""

    text: str = ""
    chunks: list[str] | None = None  # how the text is split when streamed
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 11
    completion_tokens: int = 7
    status: int = 200
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Streaming faults: "cut" drops the connection after the chunks (no terminating chunk
    # of the chunked body); "cut_close" ends a connection-delimited body early (a clean EOF
    # without finish_reason or [DONE]); "malformed" sends a line that is not JSON;
    # "error_event" sends an `{"error": ...}` event and drops the connection.
    fault: str | None = None
    delay: float = 0.0

    def stream_chunks(self) -> list[str]:
        if self.chunks is not None:
            return self.chunks
        if not self.text:
            return []
        words = self.text.split(" ")
        return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


class FakeOpenAIServer:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._scripts: deque[Script] = deque()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- scripting -----------------------------------------------------------------------------

    def reply(
        self,
        text: str = DEFAULT_TEXT,
        *,
        chunks: list[str] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        finish_reason: str | None = None,
        prompt_tokens: int = 11,
        completion_tokens: int = 7,
    ) -> None:
        """Answer the next request with `text` (streamed as `chunks` when given) and tool
        calls, each `{"id", "name", "arguments"}` (arguments streamed as `argument_chunks`
        when given)."""
        calls = tool_calls or []
        self._push(
            Script(
                text=text,
                chunks=chunks,
                tool_calls=calls,
                finish_reason=finish_reason or ("tool_calls" if calls else "stop"),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
        )

    def fail(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next request with an OpenAI-style error body."""
        error = {"message": message, "type": type, "param": param, "code": code}
        self._push(Script(status=status, error=error, headers=headers or {}))

    def cut_stream(self, chunks: list[str], *, close_delimited: bool = False) -> None:
        """Stream `chunks`, then drop the connection before the stream is complete."""
        self._push(Script(chunks=chunks, fault="cut_close" if close_delimited else "cut"))

    def malformed_stream(self, chunks: list[str]) -> None:
        """Stream `chunks`, then a `data:` line that is not JSON, then finish normally."""
        self._push(Script(chunks=chunks, fault="malformed", finish_reason="stop"))

    def error_event(self, chunks: list[str], message: str) -> None:
        """Stream `chunks`, then an OpenAI-style `{"error": ...}` event in place of the rest."""
        error = {"message": message, "type": "server_error", "param": None, "code": None}
        self._push(Script(chunks=chunks, fault="error_event", error=error))

    def stall(self, seconds: float, text: str = DEFAULT_TEXT) -> None:
        """Wait `seconds` before answering (to provoke client timeouts)."""
        self._push(Script(text=text, finish_reason="stop", delay=seconds))

    def _push(self, script: Script) -> None:
        with self._lock:
            self._scripts.append(script)

    def _next(self) -> Script:
        with self._lock:
            if self._scripts:
                return self._scripts.popleft()
        return Script(text=DEFAULT_TEXT, finish_reason="stop")

    def _record(self, request: Recorded) -> None:
        with self._lock:
            self.requests.append(request)

    @property
    def last_body(self) -> Any:
        return self.requests[-1].body


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeOpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (a timed-out test, a dropped stream) is expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies, as OpenAI's servers do
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
        pass

    def do_POST(self) -> None:
        fake: FakeOpenAIServer = self.server.fake
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        fake._record(
            Recorded("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        if self.path.rstrip("/") != "/v1/chat/completions":
            error = {"message": f"Unknown path {self.path}", "type": "invalid_request_error"}
            self._json(404, {"error": error})
            return
        script = fake._next()
        if script.delay:
            time.sleep(script.delay)
        if script.status != 200:
            self._json(script.status, {"error": script.error}, script.headers)
            return
        model = body.get("model", "") if isinstance(body, dict) else ""
        if isinstance(body, dict) and body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(script, model, include_usage)
        else:
            self._json(200, _completion(script, model))

    # -- plain JSON ----------------------------------------------------------------------------

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-request-id", "req_fake")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    # -- server-sent events --------------------------------------------------------------------

    def _stream(self, script: Script, model: str, include_usage: bool) -> None:
        close_delimited = script.fault == "cut_close"
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        if close_delimited:
            # No length, not chunked: the body ends when the connection closes.
            self.send_header("connection", "close")
            self.close_connection = True
        else:
            self.send_header("transfer-encoding", "chunked")
        self.end_headers()

        def send(text: str) -> None:
            data = text.encode()
            if close_delimited:
                self.wfile.write(data)
            else:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        for event in _events(script, model, include_usage):
            if event is None:  # the fault point
                if script.fault == "malformed":
                    send("data: {this is not json\n\n")
                    continue
                if script.fault == "error_event":
                    send(f"data: {json.dumps({'error': script.error})}\n\n")
                self._drop()
                return
            send(f"data: {json.dumps(event)}\n\n")
        send("data: [DONE]\n\n")
        if not close_delimited:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    def _drop(self) -> None:
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):  # already gone
            self.connection.shutdown(socket.SHUT_RDWR)


def _completion(script: Script, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": script.text or None,
        "refusal": None,
    }
    if script.tool_calls:
        message["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
            for call in script.tool_calls
        ]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": script.finish_reason,
            }
        ],
        "usage": _usage(script),
        "system_fingerprint": "fp_fake",
    }


def _usage(script: Script) -> dict[str, int]:
    return {
        "prompt_tokens": script.prompt_tokens,
        "completion_tokens": script.completion_tokens,
        "total_tokens": script.prompt_tokens + script.completion_tokens,
    }


def _events(script: Script, model: str, include_usage: bool) -> Iterator[dict[str, Any] | None]:
    """The stream's chunks in order; None marks where a scripted fault happens."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        event: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            event["usage"] = None  # every chunk but the last carries a null usage
        return event

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for piece in script.stream_chunks():
        yield chunk({"content": piece})
    if script.fault:
        yield None
        if script.fault != "malformed":
            return
    for index, call in enumerate(script.tool_calls):
        yield chunk(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": ""},
                    }
                ]
            }
        )
        for piece in call.get("argument_chunks") or [call["arguments"]]:
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, script.finish_reason)
    if include_usage:
        yield {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [],
            "usage": _usage(script),
        }
