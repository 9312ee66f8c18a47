"""The turn as one application operation (chatledger.turns): `Ledger.take_turn` and
`Ledger.stream_turn` return or yield a typed outcome, TurnAnswer or TurnFailure, on both
stores; ConversationManager.process_message is Penguin's string view of the same."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

from chatledger import InvalidInput, Ledger
from chatledger.providers import ProviderError
from chatledger.turns import RetryPolicy, TurnAnswer, TurnFailure
from domain import events
from tests.integration.test_model_calls import ScriptedProvider
from tests.stores import Store

QUICK = RetryPolicy(max_attempts=3, backoff=0.001)


def recorded(ledger: Ledger, cid: UUID, kind: type) -> list[Any]:
    return [e for e in ledger.store.events.get(cid) if isinstance(e, kind)]


def busy() -> ProviderError:
    return ProviderError("503 busy", kind="server", retryable=True)


async def test_an_answer_is_typed_and_on_record(store: Store) -> None:
    ledger = store.ledger()
    cid = ledger.start_conversation(system_prompt="Be brief.")
    heard: list[str] = []
    provider = ScriptedProvider([busy(), busy()])
    outcome = await ledger.take_turn(
        cid, "Hi!", provider=provider, on_chunk=heard.append, retry=QUICK
    )
    assert isinstance(outcome, TurnAnswer) and not outcome.replayed
    assert (outcome.text, outcome.attempts, provider.calls) == ("the answer", 3, 3)
    assert "".join(heard) == "the answer "
    (called,) = recorded(ledger, cid, events.ModelCalled)
    (responded,) = recorded(ledger, cid, events.ModelResponded)
    assert (called.call_id, called.request_hash) == (outcome.call_id, outcome.request_hash)
    assert (responded.message_id, responded.attempts) == (outcome.message_id, 3)
    assert [m["content"] for m in ledger.history(cid)] == ["Be brief.", "Hi!", "the answer"]


async def test_a_failed_call_is_a_typed_failure_not_an_exception(store: Store) -> None:
    ledger = store.ledger()
    cid = ledger.start_conversation()
    error = ProviderError("400 invalid model", kind="bad_request", retryable=False)
    outcome = await ledger.take_turn(cid, "Hi!", provider=ScriptedProvider([error]), retry=QUICK)
    assert isinstance(outcome, TurnFailure)
    assert (outcome.error, outcome.kind, outcome.error_type, outcome.attempts) == (
        "400 invalid model",
        "bad_request",
        "ProviderError",
        1,
    )
    assert outcome.exception is error
    (emergency,) = ledger.checkpoints(cid, "emergency")
    assert emergency.checkpoint_id == outcome.checkpoint_id
    (failed,) = recorded(ledger, cid, events.ModelCallFailed)
    assert (failed.call_id, failed.kind) == (outcome.call_id, "bad_request")
    assert [m["content"] for m in ledger.history(cid)] == ["Hi!"]


async def test_a_stream_yields_chunks_then_the_outcome(store: Store) -> None:
    ledger = store.ledger()
    cid = ledger.start_conversation()
    items = [item async for item in ledger.stream_turn(cid, "Hi!", provider=ScriptedProvider())]
    *chunks, outcome = items
    assert chunks == ["the ", "answer "]
    assert isinstance(outcome, TurnAnswer) and outcome.text == "the answer"

    broken = ProviderError("stream cut", kind="network", retryable=False, partial_text="the ")
    items = [
        item
        async for item in ledger.stream_turn(cid, "Again?", provider=ScriptedProvider([broken]))
    ]
    (outcome,) = items
    assert isinstance(outcome, TurnFailure) and outcome.partial_text == "the "


async def test_bad_input_is_refused_before_the_stream_exists(store: Store) -> None:
    ledger = store.ledger()
    cid = ledger.start_conversation()
    before = ledger.conversation(cid).version
    with pytest.raises(InvalidInput):
        ledger.stream_turn(cid, "   ", provider=ScriptedProvider())
    assert ledger.conversation(cid).version == before


async def test_a_stream_closed_early_is_recorded_as_cancelled(store: Store) -> None:
    ledger = store.ledger()
    cid = ledger.start_conversation()
    stream = ledger.stream_turn(
        cid, "Tell me a story.", provider=ScriptedProvider(text="once upon a time")
    )
    assert await anext(stream) == "once "
    await stream.aclose()
    (failed,) = recorded(ledger, cid, events.ModelCallFailed)
    # The text streamed so far: what the model had sent, read or not.
    assert failed.kind == "cancelled" and failed.partial_text.startswith("once ")


async def test_a_repeated_idempotency_key_replays_the_recorded_answer(store: Store) -> None:
    ledger = store.ledger()
    cid = ledger.start_conversation()
    provider = ScriptedProvider()
    first = await ledger.take_turn(cid, "Hi!", provider=provider, idempotency_key="t-1")
    again = await ledger.take_turn(cid, "Hi!", provider=provider, idempotency_key="t-1")
    assert isinstance(first, TurnAnswer) and isinstance(again, TurnAnswer)
    assert again.replayed and (again.call_id, again.message_id) == (first.call_id, first.message_id)
    assert again.text == first.text and provider.calls == 1
    streamed = [
        item
        async for item in ledger.stream_turn(cid, "Hi!", provider=provider, idempotency_key="t-1")
    ]
    assert streamed == ["the answer", again]


async def test_the_manager_maps_a_failure_to_penguins_string(store: Store) -> None:
    error = ProviderError("429 slow down", kind="rate_limit", retryable=False)
    manager = store.manager(api_client=ScriptedProvider([error]))
    assert await manager.process_message("Hi!") == "Error processing message: 429 slow down"
    outcome = await manager.take_turn("Hi again!")
    assert isinstance(outcome, TurnAnswer) and outcome.text == "the answer"
