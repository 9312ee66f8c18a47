"""Short names the context window stories share: the five categories (`S, C, D, T, E`; T is
tool output, SYSTEM_OUTPUT), the role each is given by default, `item` to make a ContextItem
and `window` for a window whose usable part is exactly a number of tokens."""

from __future__ import annotations

from typing import Any

from domain.context_window import ContextItem, WindowConfig
from domain.messages import Category

S, C, D, T, E = (
    Category.SYSTEM,
    Category.CONTEXT,
    Category.DIALOG,
    Category.SYSTEM_OUTPUT,
    Category.ERROR,
)
ROLE = {S: "system", C: "system", D: "assistant", T: "tool", E: "assistant"}


def item(message_id: str, category: Category, tokens: int, position: int, **kw: Any) -> ContextItem:
    kw.setdefault("role", ROLE[category])
    return ContextItem(message_id, category, tokens, position, **kw)


def window(tokens: int, **kw: Any) -> WindowConfig:
    """A window whose usable part is exactly `tokens`."""
    return WindowConfig(context_window=tokens, usable_share=1.0, **kw)
