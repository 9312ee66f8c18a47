"""A session's model context rebuilt from the log (SessionContext.from_log): derived state,
so any log chatledger ever wrote must read back, including logs damaged by issue 9."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from uuid import uuid4

from chatledger.model_context import SessionContext
from domain.manifests import ManifestRecord, encode

SESSION, NEXT_SESSION = "sess_1", "sess_2"
SYSTEM, Q1, A1, Q2, A2, Q3, A3, Q4 = ["sys", "q1", "a1", "q2", "a2", "q3", "a3", "q4"]


def row(message_id: str, session: str = SESSION) -> dict[str, Any]:
    role = {"s": "system", "q": "user", "a": "assistant"}[message_id[0]]
    return {
        "id": message_id,
        "role": role,
        "content": f"text of {message_id}",
        "category": "SYSTEM" if role == "system" else "DIALOG",
        "metadata": {},
        "tokens": 10,
        "session_id": session,
    }


def call(call_id: str, record: ManifestRecord, session: str = SESSION) -> dict[str, Any]:
    """A ModelCalled event's document, as the log holds it."""
    return {"call_id": call_id, "session_id": session, **asdict(record)}


def read(calls: list[dict[str, Any]], session: str = SESSION) -> SessionContext:
    transcript = [row(m) for m in (SYSTEM, Q1, A1, Q2, A2, Q3, A3, Q4)]
    return SessionContext.from_log(uuid4(), 20, session, {SYSTEM}, transcript, [], calls)


def test_calls_recorded_against_an_earlier_call_than_the_last_are_read_whole() -> None:
    # Window A's call; window B's, while A's answer streamed; A's next call, recorded
    # against A's own first call instead of B's (what issue 9 wrote); then B's next call.
    b1 = (SYSTEM, Q1, Q2)
    a2 = (SYSTEM, Q1, A1, Q3)
    b2 = (SYSTEM, Q1, A1, Q2, A2, Q3, A3, Q4)
    calls = [
        call("call_a1", encode((SYSTEM, Q1), None)),
        call("call_b1", encode(b1, ("call_a1", (SYSTEM, Q1)))),
        call("call_a2", encode(a2, ("call_a1", (SYSTEM, Q1)))),
        call("call_b2", encode(b2, ("call_a2", a2))),
    ]
    assert calls[2]["base_call_id"] == "call_a1"  # not the previous call, call_b1

    context = read(calls)

    assert context.last_call == ("call_b2", b2)
    # The next turn is recorded against the last call, as usual.
    assert encode((*b2, "a4", "q5"), context.last_call).base_call_id == "call_b2"


def test_a_call_recorded_against_the_previous_session_is_read_whole() -> None:
    # The other window started session 2; this one had not seen it and recorded its call
    # against its own call of session 1.
    old = (SYSTEM, Q1)
    new = (SYSTEM, Q1, A1, Q2)
    calls = [
        call("call_old", encode(old, None)),
        call("call_new", encode(new, ("call_old", old)), NEXT_SESSION),
    ]

    assert read(calls, NEXT_SESSION).last_call == ("call_new", new)


def test_a_call_whose_base_is_nowhere_in_the_log_leaves_the_next_call_in_full() -> None:
    calls = [
        call("call_a1", encode((SYSTEM, Q1), None)),
        call("call_lost", ManifestRecord((), "call_unknown", (Q2,), ())),
    ]

    context = read(calls)

    # Its ids cannot be known, so it cannot be a base; the next call is recorded in full.
    assert context.last_call is None
    assert encode((SYSTEM, Q1, Q2, A2, Q3), context.last_call).message_ids == (
        SYSTEM,
        Q1,
        Q2,
        A2,
        Q3,
    )
