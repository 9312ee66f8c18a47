"""Turning the active session into the message list a chat model is sent.

Order (DESIGN §2): SYSTEM, then CONTEXT wrapped with its source, then dialog and tool output
in order; the current user message is last. Only the current session is sent: earlier
sessions are represented by their carried SYSTEM/CONTEXT messages and the transition marker."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from domain.messages import Category


def _model_content(content: Any) -> Any:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image":
            data = base64.b64encode(Path(part["path"]).read_bytes()).decode("ascii")
            url = f"data:{part['media_type']};base64,{data}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "tool_result":
            parts.append({"type": "text", "text": part["content"]})
        elif kind == "tool_call":
            parts.append(
                {"type": "text", "text": f"[tool call {part['name']}({part['arguments']})]"}
            )
    return parts


def model_messages(
    transcript: list[dict[str, Any]], session_id: str, pinned_ids: set[str]
) -> list[dict[str, Any]]:
    session = [m for m in transcript if m["session_id"] == session_id or m["id"] in pinned_ids]
    system = [m for m in session if m["category"] == Category.SYSTEM.value]
    context = [m for m in session if m["category"] == Category.CONTEXT.value]
    rest = [
        m for m in session if m["category"] not in (Category.SYSTEM.value, Category.CONTEXT.value)
    ]
    request = [{"role": "system", "content": _model_content(m["content"])} for m in system]
    for m in context:
        source = m["metadata"].get("source") or "context"
        body = m["content"] if isinstance(m["content"], str) else _model_content(m["content"])
        text = f"[Context from {source}]\n{body}" if isinstance(body, str) else body
        request.append({"role": "system", "content": text})
    for m in rest:
        role = m["role"] if m["role"] in ("user", "assistant", "tool") else "system"
        request.append({"role": role, "content": _model_content(m["content"])})
    return request
