"""The view value object: what a conversation shows, its sessions and its trims."""

from __future__ import annotations

from uuid import UUID

from domain.messages import Category
from domain.view import Segment, ViewState

CID = UUID("5b1e8f0a-2c3d-4e5f-8a9b-0c1d2e3f4a5b")
S, C, D, E = Category.SYSTEM, Category.CONTEXT, Category.DIALOG, Category.ERROR


def three_sessions() -> ViewState:
    view = ViewState().with_new_session("s1").with_message("a", D, 4, eligible=True, pinned=False)
    view = view.with_new_session("s2").with_message("b", D, 6, eligible=True, pinned=False)
    return view.with_new_session("s3")


def test_a_message_in_the_only_session_updates_that_session() -> None:
    view = ViewState().with_new_session("s1").with_message("m", D, 7, eligible=True, pinned=False)
    assert [(s.session_id, s.message_count, s.tokens) for s in view.sessions] == [("s1", 1, 7)]
    assert (view.message_count, view.token_count) == (1, 7)
    assert view.tokens_by_category == {"DIALOG": 7}
    assert view.eligible_since_auto_checkpoint == 1


def test_a_message_goes_to_the_newest_session_only() -> None:
    view = three_sessions().with_message("c", E, 3, eligible=False, pinned=False)
    assert [(s.session_id, s.number, s.message_count, s.tokens) for s in view.sessions] == [
        ("s1", 1, 1, 4),
        ("s2", 2, 1, 6),
        ("s3", 3, 1, 3),
    ]
    assert view.tokens_by_category == {"DIALOG": 10, "ERROR": 3}
    assert (view.message_count, view.token_count, view.eligible_since_auto_checkpoint) == (3, 13, 2)


def test_a_new_session_carries_the_pinned_messages_tokens() -> None:
    view = (
        ViewState()
        .with_new_session("s1")
        .with_message("sys", S, 5, eligible=False, pinned=True)
        .with_message("ctx1", C, 7, eligible=False, pinned=True)
        .with_message("ctx2", C, 2, eligible=False, pinned=True)
        .with_message("u", D, 9, eligible=True, pinned=False)
        .with_new_session("s2")
    )
    fresh = view.session
    assert (fresh.session_id, fresh.number, fresh.message_count) == ("s2", 2, 0)
    assert fresh.tokens_by_category == {"SYSTEM": 5, "CONTEXT": 9}
    assert [p.message_id for p in view.pinned] == ["sys", "ctx1", "ctx2"]
    assert ViewState().with_new_session("first").session.number == 1


def test_a_trim_leaves_the_newest_sessions_window_and_is_counted() -> None:
    view = three_sessions().with_message("c", D, 8, eligible=True, pinned=False)
    view = view.with_message("e", E, 3, eligible=False, pinned=False)
    trimmed = view.with_trim(D, 1, 8)
    assert trimmed.session.tokens_by_category == {"DIALOG": 0, "ERROR": 3}
    assert [s.tokens for s in trimmed.sessions] == [4, 6, 3]
    assert trimmed.truncations.model_dump() == {
        "total_truncations": 1,
        "messages_removed": 1,
        "tokens_freed": 8,
        "by_category": {"DIALOG": 1},
    }
    again = trimmed.with_trim(E, 2, 3).with_trim(D, 3, 0)
    assert again.truncations.model_dump() == {
        "total_truncations": 3,
        "messages_removed": 6,
        "tokens_freed": 11,
        "by_category": {"DIALOG": 4, "ERROR": 2},
    }
    # The transcript keeps what was trimmed.
    assert (again.message_count, again.token_count) == (view.message_count, view.token_count)
    assert again.tokens_by_category == view.tokens_by_category


def test_a_trim_in_the_only_session() -> None:
    view = ViewState().with_new_session("s1").with_message("m", D, 7, eligible=True, pinned=False)
    trimmed = view.with_trim(D, 1, 7)
    assert [(s.session_id, s.tokens) for s in trimmed.sessions] == [("s1", 0)]


def test_segments_include_the_open_stream_from_its_first_position() -> None:
    view = ViewState(closed=(Segment(conversation_id=UUID(int=1), first=2, last=5),), open_from=3)
    own = Segment(conversation_id=CID, first=3, last=3)
    assert view.segments(CID, 2) == view.closed
    assert view.segments(CID, 3) == (*view.closed, own)
    assert view.segments(CID, 9) == (*view.closed, own.model_copy(update={"last": 9}))


def test_cutting_freezes_the_view_at_a_position() -> None:
    view = ViewState(open_from=2).with_new_session("s1")
    cut = view.cut(CID, 6, 9)
    assert cut.closed == (Segment(conversation_id=CID, first=2, last=6),)
    assert cut.open_from == 9
    assert cut.sessions == view.sessions


def test_an_auto_checkpoint_restarts_the_eligible_count() -> None:
    view = ViewState().with_new_session("s1").with_message("m", D, 1, eligible=True, pinned=False)
    assert view.after_auto_checkpoint().eligible_since_auto_checkpoint == 0
    assert view.after_auto_checkpoint().message_count == 1
