"""Turning a recorded conversation into a regression test.

    from chatledger.testing import assert_replays

    async def test_support_flow_still_replays():
        await assert_replays("tests/recordings/.chatledger", "5d0c...-conversation-id")

It re-runs the conversation offline against its recorded answers and fails with the first
turn and message whose request differs (a changed prompt, trimming policy, tokenizer...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chatledger.ledger import Ledger
from chatledger.replay import ReplayMismatch, ReplayReport, replay


async def assert_replays(
    workspace: str | Path, conversation_id: str, **overrides: Any
) -> ReplayReport:
    ledger = Ledger(Path(workspace))
    try:
        report = await replay(ledger, conversation_id, **overrides)
    except ReplayMismatch as mismatch:
        raise AssertionError(
            f"Conversation {conversation_id} no longer replays: {mismatch}"
        ) from None
    finally:
        ledger.close()
    differing = [t.turn for t in report.turns if not (t.request_matches and t.answer_matches)]
    if differing:
        raise AssertionError(f"Conversation {conversation_id} diverges at turns {differing}.")
    return report
