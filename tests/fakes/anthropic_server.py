"""A fake Anthropic Messages API: a real HTTP server on 127.0.0.1 speaking the wire format.

It answers `POST /v1/messages` the way Anthropic's API reference describes it, so the official
SDK runs unmodified against it (no mocking of the SDK):

- a JSON `Message`: `id`, `type: "message"`, `role: "assistant"`, `model`, `content` (`text`
  and `tool_use` blocks), `stop_reason`, `stop_sequence`, `usage{input_tokens, output_tokens}`;
- with `"stream": true`, server-sent events `event: <name>\\ndata: <json>\\n\\n` in the
  documented order: `message_start`, then per block `content_block_start`,
  `content_block_delta` (`text_delta` / `input_json_delta`), `content_block_stop`, a `ping`,
  then `message_delta` (stop reason and cumulative usage) and `message_stop`. The body is
  sent with chunked transfer encoding, as a real HTTP/1.1 stream is;
- errors as `{"type": "error", "error": {"type": ..., "message": ...}}` with the status and
  headers (`retry-after`, `request-id`) a test scripts.

Every request is recorded (method, path, lower-cased headers, parsed JSON body) so a test can
assert what the SDK really sent. Replies are scripted per test with `server.script(...)`, one
reply per request in order; with nothing scripted the server answers `Reply()`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class ToolUse:
    id: str
    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """A successful answer. Streamed, `chunks` are the text deltas (default: the text split
    after each space). `cut_after` drops the connection after that many text deltas;
    `error_after` sends an `error` event (`stream_error` type and message) after that many."""

    text: str = "Hello from the fake."
    tool_uses: tuple[ToolUse, ...] = ()
    stop_reason: str | None = None
    input_tokens: int = 11
    output_tokens: int = 7
    cache_read_input_tokens: int | None = None
    chunks: tuple[str, ...] | None = None
    cut_after: int | None = None
    error_after: int | None = None
    stream_error: tuple[str, str] = ("overloaded_error", "Overloaded")
    #: Seconds to wait before answering (to provoke client timeouts).
    delay: float = 0.0

    def usage(self, output_tokens: int) -> dict[str, int]:
        usage = {"input_tokens": self.input_tokens, "output_tokens": output_tokens}
        if self.cache_read_input_tokens is not None:
            usage["cache_read_input_tokens"] = self.cache_read_input_tokens
        return usage

    def text_chunks(self) -> list[str]:
        if self.chunks is not None:
            return list(self.chunks)
        if not self.text:
            return []
        words = self.text.split(" ")
        return [w + " " for w in words[:-1]] + [words[-1]]

    def final_stop_reason(self) -> str:
        if self.stop_reason is not None:
            return self.stop_reason
        return "tool_use" if self.tool_uses else "end_turn"


@dataclass(frozen=True)
class Failure:
    """An HTTP error answer in Anthropic's error shape."""

    status: int
    error_type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeAnthropicServer:
    """Start with `start()` (or as a context manager); `base_url` is what the SDK takes."""

    def __init__(self, model_echo: str | None = None) -> None:
        self.requests: list[RecordedRequest] = []
        self._script: deque[Reply | Failure] = deque()
        self._lock = threading.Lock()
        self._model_echo = model_echo
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._message_ids = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeAnthropicServer:
        handler = _handler_for(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeAnthropicServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_port}"

    # -- scripting ---------------------------------------------------------------------------
    def script(self, *replies: Reply | Failure) -> None:
        with self._lock:
            self._script.extend(replies)

    def _next_reply(self) -> Reply | Failure:
        with self._lock:
            return self._script.popleft() if self._script else Reply()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _new_message_id(self) -> str:
        with self._lock:
            self._message_ids += 1
            return f"msg_fake{self._message_ids:04d}"

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    # -- wire format -------------------------------------------------------------------------
    def message_json(self, reply: Reply, model: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if reply.text:
            content.append({"type": "text", "text": reply.text})
        for tool in reply.tool_uses:
            content.append(
                {"type": "tool_use", "id": tool.id, "name": tool.name, "input": tool.input}
            )
        return {
            "id": self._new_message_id(),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": reply.final_stop_reason(),
            "stop_sequence": None,
            "usage": reply.usage(reply.output_tokens),
        }

    def stream_events(self, reply: Reply, model: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The SSE events of a streamed reply, in the documented order. A cut or an error
        event is signalled by yielding ("<cut>", {}) / a real `error` event."""
        yield (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": self._new_message_id(),
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": reply.usage(1),
                },
            },
        )
        index = 0
        sent = 0
        chunks = reply.text_chunks()
        if chunks:
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            yield "ping", {"type": "ping"}
            for chunk in chunks:
                if reply.cut_after is not None and sent == reply.cut_after:
                    yield "<cut>", {}
                    return
                if reply.error_after is not None and sent == reply.error_after:
                    error_type, message = reply.stream_error
                    yield (
                        "error",
                        {"type": "error", "error": {"type": error_type, "message": message}},
                    )
                    return
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": chunk},
                    },
                )
                sent += 1
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
            index += 1
        for tool in reply.tool_uses:
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {
                        "type": "tool_use",
                        "id": tool.id,
                        "name": tool.name,
                        "input": {},
                    },
                },
            )
            encoded = json.dumps(tool.input)
            third = max(1, len(encoded) // 3)
            pieces = [encoded[i : i + third] for i in range(0, len(encoded), third)]
            for piece in ["", *pieces]:  # the API may open with an empty partial_json
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
            index += 1
        if reply.cut_after is not None and reply.cut_after >= sent:
            yield "<cut>", {}
            return
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.final_stop_reason(), "stop_sequence": None},
                "usage": {"output_tokens": reply.output_tokens},
            },
        )
        yield "message_stop", {"type": "message_stop"}


def _handler_for(server: FakeAnthropicServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                body = {"_unparsed": raw.decode("utf-8", "replace")}
            server._record(
                RecordedRequest(
                    method="POST",
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
            )
            if self.path.split("?")[0] != "/v1/messages":
                self._send_json(
                    404,
                    {
                        "type": "error",
                        "error": {"type": "not_found_error", "message": f"No {self.path}"},
                    },
                )
                return
            reply = server._next_reply()
            if isinstance(reply, Failure):
                self._send_json(
                    reply.status,
                    {
                        "type": "error",
                        "error": {"type": reply.error_type, "message": reply.message},
                    },
                    reply.headers,
                )
                return
            if reply.delay:
                time.sleep(reply.delay)
            model = server._model_echo or str(body.get("model", "claude-fake"))
            if body.get("stream"):
                self._send_stream(reply, model)
            else:
                self._send_json(200, server.message_json(reply, model))

        def _send_json(
            self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", "req_fake0001")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (timeout tests)

        def _send_stream(self, reply: Reply, model: str) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
            self.send_header("request-id", "req_fake0002")
            self.end_headers()
            try:
                for name, data in server.stream_events(reply, model):
                    if name == "<cut>":
                        # Drop the connection mid-body: no terminating zero-length chunk.
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    event = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler
