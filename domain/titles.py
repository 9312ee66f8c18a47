"""How a conversation is titled in listings. A pure policy."""

from __future__ import annotations

MAX_TITLE_LENGTH = 40


def conversation_title(given: str | None, first_user_text: str | None, conversation_id: str) -> str:
    """The given title; else the first line of the first user message (shortened to 37
    characters and "..." when longer than 40); else "Session <last 8 chars of id>"."""
    if given and given.strip():
        return given
    lines = (first_user_text or "").strip().splitlines()
    if lines:  # the text is stripped, so its first line is never blank
        line = lines[0].strip()
        return line if len(line) <= MAX_TITLE_LENGTH else line[: MAX_TITLE_LENGTH - 3] + "..."
    return f"Session {conversation_id[-8:]}"
