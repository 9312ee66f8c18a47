"""A fresh ConversationManager starts its conversation with its first call: a first call that
is refused for bad input writes nothing, not even the conversation it would have started;
the next valid call starts it as usual."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from chatledger import ChatledgerError, ConversationManager
from tests.stores import Store

Call = Callable[[ConversationManager], Any]


async def _turn(manager: ConversationManager, message: str, **kwargs: Any) -> Any:
    return await manager.process_message(message, **kwargs)


#: A refused first call, and what it returns instead of raising (None: it raises).
REFUSED: dict[str, tuple[Call, object]] = {
    "unknown role": (lambda m: m.add_message("wizard", "x"), None),
    "empty message": (lambda m: m.add_message("user", ""), None),
    "empty context": (lambda m: m.add_context(""), None),
    "bad snapshot meta": (lambda m: m.create_snapshot(meta="x"), None),  # type: ignore[arg-type]
    "empty turn": (lambda m: _turn(m, ""), None),
    "missing image": (lambda m: _turn(m, "hi", image_path="/nonexistent.png"), None),
    "missing context file": (lambda m: m.load_context_file("missing.md"), False),
}


@pytest.mark.parametrize("call", REFUSED.values(), ids=REFUSED.keys())
async def test_a_refused_first_call_writes_nothing(store: Store, call: tuple[Call, object]) -> None:
    refused, returned = call
    manager = store.manager(system_prompt="Be brief.")
    if returned is None:
        with pytest.raises(ChatledgerError):
            result = refused(manager)
            if isinstance(result, Awaitable):
                await result
    else:
        assert refused(manager) is returned
    assert store.log_rows() == []

    manager.add_message("user", "hello")
    assert [m["content"] for m in manager.get_history()] == ["Be brief.", "hello"]
    topics = [row[3] for row in store.log_rows()]
    assert len(topics) >= 3 and "ConversationStarted" in topics[0]


async def test_a_first_turn_refused_by_the_window_writes_nothing(store: Store) -> None:
    # Refused inside the turn's transaction, after its input checks passed.
    manager = store.manager(system_prompt="Be brief.", model_config={"context_window": 2000})
    with pytest.raises(ChatledgerError):
        await manager.process_message("word " * 5000)
    assert store.log_rows() == []


async def test_a_first_turn_starts_the_conversation_and_sends_its_prompt(store: Store) -> None:
    manager = store.manager(system_prompt="Be brief.")
    answer = await manager.process_message("hi")
    assert isinstance(answer, str) and not answer.startswith("Error")
    (called,) = [
        e
        for e in manager.ledger.store.events.get(manager.active_id)
        if type(e).__name__ == "ModelCalled"
    ]
    assert called.message_count == 2
    assert [m["content"] for m in manager.get_history()][:2] == ["Be brief.", "hi"]
