"""Every model call on record: retries, failures, partial streams, cancellation, idempotency.

The providers here are scripted stand-ins for the network (the real SDK providers are tested
against loopback servers in test_openai_provider.py and test_anthropic_provider.py)."""

from __future__ import annotations

import os
import threading
from contextlib import suppress
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from PIL import Image

from chatledger import ConversationManager, IdempotencyConflict
from chatledger.providers import ChunkCallback, ModelReply, ProviderError
from domain import events
from tests.stores import Store


class ScriptedProvider:
    """Fails as scripted, then answers, streaming word by word."""

    name = "scripted"
    model = "scripted-1"

    def __init__(
        self, failures: list[ProviderError] | None = None, text: str = "the answer"
    ) -> None:
        self.failures = list(failures or [])
        self.text = text
        self.calls = 0

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelReply:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        if on_chunk is not None:
            for word in self.text.split(" "):
                result = on_chunk(word + " ")
                if result is not None:
                    await result
        return ModelReply(self.text, stop_reason="stop", prompt_tokens=11, completion_tokens=3)


def events_of(manager: ConversationManager, kind: type) -> list[Any]:
    cid = UUID(manager.get_conversation_id())
    return [e for e in manager.ledger.store.events.get(cid) if isinstance(e, kind)]


def manager_with(store: Store, provider: Any) -> ConversationManager:
    return store.manager(api_client=provider, model_config={"retry_backoff": 0.001})


def rate_limited() -> ProviderError:
    return ProviderError("429 slow down", kind="rate_limit", retryable=True, retry_after=0.001)


async def test_retryable_errors_are_retried_and_recorded_once(store: Store) -> None:
    provider = ScriptedProvider([rate_limited(), rate_limited()])
    manager = manager_with(store, provider)
    assert await manager.process_message("hi") == "the answer"
    assert provider.calls == 3
    (called,) = events_of(manager, events.ModelCalled)
    (responded,) = events_of(manager, events.ModelResponded)
    assert responded.call_id == called.call_id and responded.attempts == 3
    assert (responded.prompt_tokens, responded.completion_tokens) == (11, 3)
    (row,) = manager.get_token_usage()["model_calls"]
    assert (row["status"], row["completion_tokens"], row["attempts"]) == ("responded", 3, 3)
    assert [m["content"] for m in manager.get_history()] == ["hi", "the answer"]


async def test_a_bad_request_is_not_retried_and_ends_in_an_emergency_checkpoint(
    store: Store,
) -> None:
    bad = ProviderError("400 invalid model", kind="bad_request", retryable=False, status=400)
    provider = ScriptedProvider([bad])
    manager = manager_with(store, provider)
    answer = await manager.process_message("hi")
    assert answer == "Error processing message: 400 invalid model"
    assert provider.calls == 1
    (failed,) = events_of(manager, events.ModelCallFailed)
    assert (failed.kind, failed.attempts, failed.error_type) == ("bad_request", 1, "ProviderError")
    assert manager.list_checkpoints(checkpoint_type="emergency")
    assert [m["content"] for m in manager.get_history()] == ["hi"]


async def test_retries_give_up_after_max_attempts(store: Store) -> None:
    provider = ScriptedProvider([rate_limited() for _ in range(5)])
    manager = manager_with(store, provider)
    assert (await manager.process_message("hi")).startswith("Error processing message: 429")
    assert provider.calls == 3
    (failed,) = events_of(manager, events.ModelCallFailed)
    assert failed.attempts == 3


async def test_a_stream_cut_half_way_records_the_partial_text(store: Store) -> None:
    class CutProvider(ScriptedProvider):
        async def complete(self, messages: Any, **kwargs: Any) -> ModelReply:
            on_chunk = kwargs["on_chunk"]
            await on_chunk("half ")
            raise ProviderError(
                "stream cut", kind="stream_interrupted", retryable=True, partial_text="half "
            )

    provider = CutProvider()
    manager = manager_with(store, provider)
    chunks: list[str] = []
    answer = await manager.process_message("go", streaming=True, stream_callback=chunks.append)
    assert chunks == ["half "] and answer.startswith("Error processing message")
    (failed,) = events_of(manager, events.ModelCallFailed)
    assert failed.partial_text == "half " and failed.kind == "stream_interrupted"
    # Chunks already reached the caller: a retry would repeat them, so there is none.
    assert not events_of(manager, events.ModelResponded)


async def test_a_consumer_that_stops_reading_is_recorded_as_cancelled(store: Store) -> None:
    manager = manager_with(store, ScriptedProvider(text="one two three four five"))
    stream = await manager.process_message("go", streaming=True)
    assert not isinstance(stream, str)
    first = await stream.__anext__()
    await stream.aclose()
    assert first == "one "
    (failed,) = events_of(manager, events.ModelCallFailed)
    assert failed.kind == "cancelled" and failed.partial_text.startswith("one ")
    assert [m["role"] for m in manager.get_history()] == ["user"]
    (row,) = manager.get_token_usage()["model_calls"]
    assert row["status"] == "cancelled"


async def test_a_turn_repeated_with_its_idempotency_key_is_not_called_twice(store: Store) -> None:
    provider = ScriptedProvider()
    manager = manager_with(store, provider)
    first = await manager.process_message("hi", idempotency_key="turn-1")
    again = await manager.process_message("hi", idempotency_key="turn-1")
    assert first == again == "the answer"
    assert provider.calls == 1
    assert len(events_of(manager, events.ModelCalled)) == 1
    assert [m["content"] for m in manager.get_history()] == ["hi", "the answer"]
    await manager.process_message("hi", idempotency_key="turn-2")
    assert provider.calls == 2


async def test_an_idempotency_key_reused_for_a_different_request_is_refused(
    store: Store, tmp_path: Path
) -> None:
    provider = ScriptedProvider()
    manager = manager_with(store, provider)
    store.workspace.mkdir(exist_ok=True)  # for the context files (PostgreSQL keeps none there)
    (store.workspace / "notes.md").write_text("The office is in Porto.")
    map_png, plan_png = tmp_path / "map.png", tmp_path / "plan.png"
    Image.new("RGB", (40, 30), "green").save(map_png)
    Image.new("RGB", (40, 30), "red").save(plan_png)
    first = {"image_path": str(map_png), "context_files": ["notes.md"]}
    await manager.process_message("Where is the office?", idempotency_key="turn-1", **first)
    history = manager.get_history()

    # A retry asks exactly what the first attempt asked: its answer, and no second call.
    assert (
        await manager.process_message("Where is the office?", idempotency_key="turn-1", **first)
        == "the answer"
    )
    # The same key with another question, image or context file is a different request.
    (store.workspace / "other.md").write_text("The office moved to Braga.")
    for changed in (
        {"message": "Where is the warehouse?"},
        {"image_path": str(plan_png)},
        {"image_path": None},
        {"context_files": ["other.md"]},
    ):
        request = {"message": "Where is the office?", **first, **changed}
        with pytest.raises(IdempotencyConflict, match=r"'turn-1' .* different request"):
            await manager.process_message(idempotency_key="turn-1", **request)
    assert provider.calls == 1
    assert manager.get_history() == history
    # Moving the image does not change what was asked: it is known by its content.
    moved = tmp_path / "moved.png"
    moved.write_bytes(map_png.read_bytes())
    again = {**first, "image_path": str(moved)}
    assert await manager.process_message("Where is the office?", idempotency_key="turn-1", **again)
    assert provider.calls == 1


def open_files() -> set[tuple[str, str]]:
    """This process's open descriptors and what they are (files, sockets)."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to list open files")
    files = set()
    for fd in os.listdir("/proc/self/fd"):
        with suppress(OSError):
            files.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
    return files


def test_an_api_client_of_the_wrong_shape_is_refused(store: Store) -> None:
    from chatledger import InvalidInput

    files, threads = open_files(), set(threading.enumerate())
    with pytest.raises(InvalidInput, match="get_response") as refused:
        store.manager(api_client=object())
    # The caller gets no manager to close, so the refused one lets go of the store itself:
    # waiting for the garbage collector is not enough while its error, which references it
    # through the traceback, is still held (here by `refused`).
    assert isinstance(refused.value, InvalidInput)
    assert open_files() - files == set(), "the store's files or connections stay open"
    assert set(threading.enumerate()) - threads == set(), "the connection pool still runs"


async def test_a_call_records_its_messages_as_a_change_to_the_previous_call(store: Store) -> None:
    manager = store.manager(system_prompt="S")
    for index in range(30):
        await manager.process_message(f"question {index}")
    calls = events_of(manager, events.ModelCalled)
    first, last = calls[0], calls[-1]
    assert first.message_ids and first.base_call_id is None
    # Later calls name the previous call and only what changed: the last answer and question.
    assert last.base_call_id == calls[-2].call_id and not last.message_ids
    assert len(last.added_ids) == 2 and last.removed_ids == ()
    assert last.message_count == 1 + 2 * 29 + 1
    from chatledger.replay import recorded_calls

    rebuilt = recorded_calls(manager.ledger, manager.get_conversation_id())[-1].message_ids
    assert rebuilt == tuple(m["id"] for m in manager.get_history()[:-1])
