"""The CLI on a real provider: `chat` and `replay --model` through the official OpenAI SDK,
talking to a loopback server that speaks the Chat Completions wire format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chatledger import cli
from chatledger.ledger import Ledger
from tests.fakes.openai_server import FakeOpenAIServer


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with FakeOpenAIServer() as fake:
        yield fake


def run(*args: str, stdin: str = "") -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, list(args), input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, " ".join(result.output.split())


def test_chat_on_openai_then_replay_against_it(tmp_path: Path, server: FakeOpenAIServer) -> None:
    workspace = str(tmp_path / "ws")
    server.reply("Porto is north.", chunks=["Porto ", "is ", "north."])
    server.reply("Take the train.", chunks=["Take ", "the ", "train."])
    code, out = run(
        "chat",
        "-w",
        workspace,
        "--provider",
        "openai",
        "--model",
        "gpt-4o",
        "--base-url",
        server.base_url,
        stdin="Where is Porto?\nHow do I get there?\n/quit\n",
    )
    assert code == 0, out
    assert "Porto is north." in out and "Take the train." in out
    assert all(r.body["model"] == "gpt-4o" and r.body["stream"] for r in server.requests)

    ledger = Ledger(Path(workspace))
    try:
        (conversation,) = ledger.list_conversations()
    finally:
        ledger.close()
    # From the record: identical, no server involved.
    calls_before = len(server.requests)
    code, out = run("replay", conversation["id"], "-w", workspace)
    assert code == 0 and "2 turns replayed: identical." in out
    assert len(server.requests) == calls_before
    # Against the model again: the server now answers differently from the second turn.
    server.reply("Porto is north.")
    server.reply("Fly there.")
    code, out = run(
        "replay",
        conversation["id"],
        "-w",
        workspace,
        "--model",
        "openai:gpt-4o",
        "--base-url",
        server.base_url,
    )
    assert code == 0, out
    assert "2 turns replayed: diverged." in out and "Fly there." in out
