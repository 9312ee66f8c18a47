"""Files a user points at are read within limits: only regular files (a device may never
end, a FIFO may never open), at most a configured number of bytes, and images only when
Pillow can decode them without a decompression bomb going off. Whatever is refused is refused
with a FileInputError naming the file and the limit, before anything is written.

An image is read again each time it is sent, by every provider through one reader: the bytes
must still hash to what was recorded, so a model never sees other bytes than the log names.

Two guards keep a regression from hurting the machine the suite runs on: the process gets a
bounded address space for each test (reading /dev/zero whole ends in a quick MemoryError
instead of tens of gigabytes), and a FIFO under test gets a passing writer every few seconds
(a blocking open fails the test instead of hanging the suite)."""

from __future__ import annotations

import base64
import contextlib
import inspect
import os
import resource
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from PIL import Image

from chatledger import ConversationManager, FileInputError, InvalidInput
from chatledger.model_context import request_hash
from domain import events
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.store_contract import PenguinClient
from tests.stores import Store

#: The per-file cap the refusal tests configure, for images and context files alike.
CAP = 4096

MakeFifo = Callable[[Path], Path]


@pytest.fixture(autouse=True)
def bounded_address_space() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    in_use = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (in_use + (1 << 30), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture
def make_fifo() -> Iterator[MakeFifo]:
    made: list[Path] = []
    stop = threading.Event()

    def pass_by() -> None:
        while not stop.wait(2):
            for path in list(made):
                # Succeeds only while a reader waits in open(); it then reads end-of-file.
                with contextlib.suppress(OSError):
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    writer = threading.Thread(target=pass_by, daemon=True)
    writer.start()

    def make(path: Path) -> Path:
        os.mkfifo(path)
        made.append(path)
        return path

    yield make
    stop.set()
    writer.join()


# -- images to refuse, made small ------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(path: Path, width: int, height: int, pixels: bytes | None = None) -> Path:
    """A PNG whose header says width x height, whatever its (tiny) data holds. Every chunk's
    checksum is right, so only decoding tells the data apart from a picture."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" * 64) if pixels is None else pixels
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )
    return path


def noisy_picture(path: Path, format: str) -> bytes:
    """A picture that does not compress to nothing, so cutting its file cuts into its data."""
    pixels = bytes((i * 7919) % 251 for i in range(48 * 48 * 3))
    Image.frombytes("RGB", (48, 48), pixels).save(path, format)
    return path.read_bytes()


def truncated(path: Path, format: str) -> Path:
    data = noisy_picture(path, format)
    path.write_bytes(data[: len(data) // 2])
    return path


# -- what "nothing was written" means ----------------------------------------------------------
def written(manager: ConversationManager) -> tuple[int, list[dict[str, Any]]]:
    """The conversation's head position and its transcript."""
    ledger = manager.ledger
    return ledger.conversation(manager.active_id).version, ledger.history(manager.active_id)


# -- files that are not regular, or too big, by every way a file is named --------------------
ENTRY_POINTS = {
    "append_message(image_paths=)": lambda m, path: m.ledger.append_message(
        m.active_id, "user", "look", image_paths=[path]
    ),
    "process_message(image_path=)": lambda m, path: m.process_message("look", image_path=path),
    "load_context_file()": lambda m, path: m.ledger.load_context_file(m.active_id, path),
    "process_message(context_files=)": lambda m, path: m.process_message(
        "read", context_files=[path]
    ),
}


@pytest.fixture(params=["/dev/zero", "fifo", "directory", "socket", "one byte over the cap"])
def bad_file(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    make_fifo: MakeFifo,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Path, str]:
    """A path and what the refusal must say about it."""
    kind = request.param
    if kind == "/dev/zero":
        return Path("/dev/zero"), "it is a character device, not a regular file"
    if kind == "fifo":
        return make_fifo(tmp_path / "pipe.png"), "it is a FIFO (named pipe), not a regular file"
    if kind == "directory":
        (tmp_path / "folder.png").mkdir()
        return tmp_path / "folder.png", "it is a directory, not a regular file"
    if kind == "socket":
        # A Unix socket's address is short (108 bytes); bound relative to a short cwd.
        monkeypatch.chdir(tmp_path)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind("sock.png")
        request.addfinalizer(listener.close)
        return tmp_path / "sock.png", "it is a socket, not a regular file"
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"x" * (CAP - 3))
    return big, f"over the limit of {CAP:,} bytes"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
async def test_a_file_that_is_not_regular_or_too_big_is_refused_by_name(
    store: Store, bad_file: tuple[Path, str], entry: str
) -> None:
    path, why = bad_file
    manager = store.manager(max_image_bytes=CAP, max_context_file_bytes=CAP)
    await manager.process_message("hello")
    before = written(manager)

    with pytest.raises(FileInputError) as refused:
        result = ENTRY_POINTS[entry](manager, path)
        if inspect.isawaitable(result):
            await result

    message = str(refused.value)
    assert str(path) in message and why in message, message
    assert written(manager) == before


# -- the cap, exactly ------------------------------------------------------------------------
async def test_files_exactly_at_their_caps_are_read_and_one_byte_more_is_refused(
    store: Store, tmp_path: Path
) -> None:
    chart = tmp_path / "chart.png"
    Image.new("RGB", (16, 16), "orange").save(chart)
    notes = tmp_path / "notes.md"
    notes.write_text("n" * 100)
    image_cap = chart.stat().st_size
    manager = store.manager(max_image_bytes=image_cap, max_context_file_bytes=100)

    await manager.process_message("Here is the chart.", image_path=chart, context_files=[notes])
    *_, context, question, _answer = manager.get_history()
    assert context["content"].endswith("n" * 100)
    assert question["content"][1]["size"] == image_cap

    with chart.open("ab") as grown:
        grown.write(b"\0")
    with notes.open("a") as longer:
        longer.write("n")
    before = written(manager)
    with pytest.raises(FileInputError) as image_refused:
        await manager.process_message("Again.", image_path=chart)
    with pytest.raises(FileInputError) as notes_refused:
        await manager.process_message("Again.", context_files=[notes])

    assert f"{chart}: it is over the limit of {image_cap:,} bytes" in str(image_refused.value)
    assert "max_image_bytes" in str(image_refused.value)
    assert f"{notes}: it is over the limit of 100 bytes" in str(notes_refused.value)
    assert "max_context_file_bytes" in str(notes_refused.value)
    assert written(manager) == before


async def test_the_context_file_cap_follows_the_message_cap_unless_set(store: Store) -> None:
    workspace = store.workspace
    (workspace / "context").mkdir(parents=True)
    (workspace / "context" / "fits.md").write_text("f" * 1000)
    (workspace / "context" / "long.md").write_text("l" * 1001)
    manager = store.manager(max_message_bytes=1000)
    assert manager.ledger.max_image_bytes == 20 * 1024 * 1024
    assert manager.ledger.max_context_file_bytes == 1000

    assert manager.load_context_file("fits.md") is True
    before = written(manager)
    assert manager.load_context_file("long.md") is False
    with pytest.raises(FileInputError, match="over the limit of 1,000 bytes"):
        manager.ledger.load_context_file(manager.active_id, "long.md")
    assert written(manager) == before


@pytest.mark.parametrize("setting", ["max_image_bytes", "max_context_file_bytes"])
def test_a_cap_below_one_byte_is_refused(store: Store, setting: str) -> None:
    with pytest.raises(InvalidInput, match=f"{setting} must be at least 1"):
        store.ledger(**{setting: 0})


# -- images Pillow must not decode, or cannot ------------------------------------------------
IMAGES = {
    "claims 20000x20000 pixels": (
        lambda path: png_claiming(path, 20000, 20000),
        "(400000000 pixels) exceeds limit",
    ),
    "claims 9000x9000 pixels": (
        lambda path: png_claiming(path, 9000, 9000),
        "9000x9000 is 81,000,000 pixels, more than the 64,000,000",
    ),
    "holds garbage for pixel data": (
        lambda path: png_claiming(path, 4, 4, pixels=b"not zlib data at all"),
        "is not an image chatledger can read: broken data stream",
    ),
    "is a truncated PNG": (
        lambda path: truncated(path, "PNG"),
        "is not an image chatledger can read",
    ),
    "is a truncated JPEG": (
        lambda path: truncated(path, "JPEG"),
        "is not an image chatledger can read: image file is truncated",
    ),
}


@pytest.mark.parametrize("image", IMAGES)
async def test_an_image_that_would_not_decode_safely_is_refused(
    store: Store, tmp_path: Path, image: str
) -> None:
    make, why = IMAGES[image]
    path = make(tmp_path / "picture.img")
    manager = store.manager()
    await manager.process_message("hello")
    before = written(manager)

    with pytest.raises(FileInputError) as refused:
        await manager.process_message("look", image_path=path)

    assert str(path) in str(refused.value) and why in str(refused.value), str(refused.value)
    assert written(manager) == before


# -- an image changed after it was recorded ----------------------------------------------------
@dataclass
class Model:
    """A model the manager talks to, and the requests it received (each a message list)."""

    options: dict[str, Any]
    received: Callable[[], list[list[dict[str, Any]]]]


@pytest.fixture(params=["openai", "anthropic", "penguin-client"])
def model(request: pytest.FixtureRequest) -> Iterator[Model]:
    if request.param == "penguin-client":
        client = PenguinClient()
        yield Model({"api_client": client}, lambda: client.requests)
        return
    server_type = FakeOpenAIServer if request.param == "openai" else FakeAnthropicServer
    with server_type() as server:
        config = {
            "provider": request.param,
            "model": "gpt-4o" if request.param == "openai" else "claude-sonnet-4",
            "base_url": server.base_url,
            "api_key": "sk-test",
        }
        yield Model(
            {"model_config": config},
            lambda: [received.body["messages"] for received in server.requests],
        )


def images_sent(messages: list[dict[str, Any]]) -> list[bytes]:
    """The image bytes in one request, in the Chat Completions or the Messages API shape."""
    found = []
    for message in messages:
        for part in message["content"] if isinstance(message["content"], list) else ():
            if part["type"] == "image_url":
                found.append(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))
            elif part["type"] == "image":
                found.append(base64.b64decode(part["source"]["data"]))
    return found


def rewritten(path: Path, make_fifo: MakeFifo) -> str:
    Image.new("RGB", (8, 8), "blue").save(path)
    return "changed since it was added to the conversation"


def grown_to_3_gb(path: Path, make_fifo: MakeFifo) -> str:
    with path.open("r+b") as file:
        file.truncate(3 << 30)  # sparse: no disk is used, but reading it whole would be 3 GB
    return "changed since it was added to the conversation"


def replaced_by_dev_zero(path: Path, make_fifo: MakeFifo) -> str:
    path.unlink()
    path.symlink_to("/dev/zero")
    return "it is a character device, not a regular file"


def replaced_by_a_fifo(path: Path, make_fifo: MakeFifo) -> str:
    path.unlink()
    make_fifo(path)
    return "it is a FIFO (named pipe), not a regular file"


CHANGES: dict[str, Callable[[Path, MakeFifo], str]] = {
    "rewritten": rewritten,
    "grown to 3 GB": grown_to_3_gb,
    "replaced by /dev/zero": replaced_by_dev_zero,
    "replaced by a FIFO": replaced_by_a_fifo,
}


@pytest.mark.parametrize("change", CHANGES)
async def test_an_image_changed_after_it_was_recorded_is_never_sent(
    tmp_path: Path, model: Model, change: str, make_fifo: MakeFifo
) -> None:
    chart = tmp_path / "chart.png"
    Image.new("RGB", (8, 8), "red").save(chart)
    recorded = chart.read_bytes()
    manager = ConversationManager(workspace_path=tmp_path / "ws", **model.options)
    await manager.process_message("What is in this chart?", image_path=chart)
    assert images_sent(model.received()[-1]) == [recorded]

    why = CHANGES[change](chart, make_fifo)
    answer = await manager.process_message("And now?")

    assert isinstance(answer, str) and answer.startswith("Error processing message:")
    assert str(chart) in answer and why in answer, answer
    assert len(model.received()) == 1, "a request went out with the changed image"
    cid = UUID(manager.get_conversation_id())
    failures = [
        e for e in manager.ledger.store.events.get(cid) if isinstance(e, events.ModelCallFailed)
    ]
    assert [f.error_type for f in failures] == ["FileInputError"]
    manager.close()


def test_an_image_enters_the_request_hash_by_its_sha256_alone() -> None:
    # Request image parts carry their recorded size (the most `recorded_image` reads); calls
    # recorded before they did must still replay, so the size stays out of the hash.
    before = {"type": "image", "sha256": "ab" * 32, "path": "/a/x.png", "media_type": "image/png"}
    now = {**before, "path": "/elsewhere/x.png", "size": 1234}

    assert request_hash([{"role": "user", "content": [before]}]) == request_hash(
        [{"role": "user", "content": [now]}]
    )
