"""A turn stopped half way by its caller: Ctrl-C, a cancelled task, a stream reader that stops.

Whichever way it stops, the call is on record as a ModelCallFailed of kind "cancelled" with
the text streamed so far, no answer enters the transcript, and the stop still reaches the
caller (a KeyboardInterrupt or CancelledError is never swallowed)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

from chatledger import ConversationManager
from chatledger.providers import ChunkCallback, ModelReply, deliver
from domain import events
from tests.integration.test_model_calls import events_of
from tests.stores import Store

STORY = "once upon a time there was a ledger that never forgot"


class Storyteller:
    """Streams a story word by word, letting other tasks run between words, as a network
    stream does."""

    name, model = "storyteller", "storyteller-1"

    async def complete(
        self, messages: list[dict[str, Any]], *, on_chunk: ChunkCallback | None = None, **_: Any
    ) -> ModelReply:
        for word in STORY.split(" "):
            if on_chunk is not None:
                await deliver(on_chunk, word + " ")
            await asyncio.sleep(0)
        return ModelReply(STORY)


def assert_cancelled(manager: ConversationManager, partial: str, because: str) -> None:
    (called,) = events_of(manager, events.ModelCalled)
    (failed,) = events_of(manager, events.ModelCallFailed)
    assert (failed.call_id, failed.kind) == (called.call_id, "cancelled")
    assert failed.partial_text.startswith(partial), failed.partial_text
    assert because in failed.message
    assert [m["role"] for m in manager.get_history()] == ["user"]
    (row,) = manager.get_token_usage()["model_calls"]
    assert row["status"] == "cancelled"


def after_words(count: int, then: Callable[[], None]) -> Callable[[str], None]:
    heard: list[str] = []

    def listen(chunk: str) -> None:
        heard.append(chunk)
        if len(heard) == count:
            then()

    return listen


def press_ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("reader", ["callback", "generator"])
def test_ctrl_c_while_an_answer_streams_is_recorded_and_still_stops_the_program(
    store: Store, reader: str
) -> None:
    manager = store.manager(api_client=Storyteller())
    listen = after_words(2, press_ctrl_c)

    async def chat() -> None:
        if reader == "callback":
            await manager.process_message(
                "Tell me a story.", streaming=True, stream_callback=listen
            )
            return
        stream = await manager.process_message("Tell me a story.", streaming=True)
        assert not isinstance(stream, str)
        async for chunk in stream:
            listen(chunk)

    # asyncio.run turns Ctrl-C into a cancelled main task, and re-raises it once that ends.
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(chat())
    assert_cancelled(manager, "once upon ", "cancelled")


@pytest.mark.parametrize("coroutine", [False, True], ids=["plain", "coroutine"])
async def test_a_keyboard_interrupt_raised_by_the_stream_callback_is_recorded_and_raised(
    store: Store, coroutine: bool
) -> None:
    manager = store.manager(api_client=Storyteller())

    def interrupt() -> None:
        raise KeyboardInterrupt

    listen = after_words(3, interrupt)

    async def listen_async(chunk: str) -> None:
        listen(chunk)

    with pytest.raises(KeyboardInterrupt):
        await manager.process_message(
            "Tell me a story.",
            streaming=True,
            stream_callback=listen_async if coroutine else listen,
        )
    assert_cancelled(manager, "once upon a ", "KeyboardInterrupt")


async def test_a_cancelled_task_streaming_to_a_callback_is_recorded_and_stays_cancelled(
    store: Store,
) -> None:
    manager = store.manager(api_client=Storyteller())
    two_words = asyncio.Event()
    turn = asyncio.create_task(
        manager.process_message(
            "Tell me a story.", streaming=True, stream_callback=after_words(2, two_words.set)
        )
    )
    await two_words.wait()
    turn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await turn
    assert_cancelled(manager, "once upon ", "cancelled")


async def test_a_reader_that_closes_the_stream_is_recorded(store: Store) -> None:
    manager = store.manager(api_client=Storyteller())
    stream = await manager.process_message("Tell me a story.", streaming=True)
    assert not isinstance(stream, str)
    assert [await anext(stream), await anext(stream)] == ["once ", "upon "]
    await stream.aclose()
    assert_cancelled(manager, "once upon ", "stopped reading")


async def test_a_reader_whose_task_is_cancelled_is_recorded_and_stays_cancelled(
    store: Store,
) -> None:
    manager = store.manager(api_client=Storyteller())
    two_words = asyncio.Event()

    async def read() -> None:
        stream = await manager.process_message("Tell me a story.", streaming=True)
        assert not isinstance(stream, str)
        listen = after_words(2, two_words.set)
        async for chunk in stream:
            listen(chunk)

    reader = asyncio.create_task(read())
    await two_words.wait()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert_cancelled(manager, "once upon ", "cancelled")


async def test_a_reader_that_stops_iterating_is_recorded_when_the_stream_is_dropped(
    store: Store,
) -> None:
    manager = store.manager(api_client=Storyteller())

    async def first_two_words() -> list[str]:
        stream = await manager.process_message("Tell me a story.", streaming=True)
        assert not isinstance(stream, str)
        words: list[str] = []
        async for chunk in stream:
            words.append(chunk)
            if len(words) == 2:
                break
        return words

    assert await first_two_words() == ["once ", "upon "]
    # Nobody closed the stream: dropped, it is closed by the event loop, in a task of its own.
    await asyncio.sleep(0.05)
    assert_cancelled(manager, "once upon ", "stopped reading")
