"""What a model call sent, recorded as a change to an earlier call (domain/manifests.py)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.manifests import ManifestRecord, encode, resolve, sent_ids


def full(*ids: str) -> ManifestRecord:
    return ManifestRecord(ids, None, (), ())


def against(
    base: str, added: tuple[str, ...] = (), removed: tuple[str, ...] = ()
) -> ManifestRecord:
    return ManifestRecord((), base, added, removed)


# -- encode -----------------------------------------------------------------------------------
def test_a_sessions_first_call_is_recorded_in_full() -> None:
    assert encode(["sys", "u1"], None) == full("sys", "u1")


def test_a_call_that_adds_the_new_turn_names_only_what_it_added() -> None:
    assert encode(["sys", "u1", "a1", "u2"], ("c1", ("sys", "u1"))) == against("c1", ("a1", "u2"))


def test_a_call_after_a_trim_names_what_left_and_what_came() -> None:
    previous = ("c1", ("sys", "u1", "a1", "u2"))
    assert encode(("sys", "u2", "a2", "u3"), previous) == against(
        "c1", added=("a2", "u3"), removed=("u1", "a1")
    )


def test_the_same_window_again_is_an_empty_change() -> None:
    assert encode(("sys", "u1"), ("c1", ("sys", "u1"))) == against("c1")


def test_a_window_in_another_order_is_recorded_in_full() -> None:
    # Kept messages change order, or a new one comes before kept ones: "previous without the
    # removed, then the added" cannot say that.
    assert encode(("u1", "sys", "u2"), ("c1", ("sys", "u1"))) == full("u1", "sys", "u2")
    assert encode(("ctx", "sys", "u1"), ("c1", ("sys", "u1"))) == full("ctx", "sys", "u1")


def test_whatever_is_recorded_reads_back_as_the_ids_sent() -> None:
    previous = ("c1", ("sys", "u1", "a1"))
    for current in [("sys", "u1", "a1", "u2"), ("sys", "u2"), ("u2", "sys"), ()]:
        record = encode(current, previous)
        assert sent_ids(record, {"c1": previous[1]}) == current


@settings(max_examples=150, deadline=None)
@given(
    before=st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=8),
    now=st.lists(st.sampled_from("abcdefghij"), unique=True, max_size=10),
)
def test_encoding_against_any_previous_call_round_trips(before: list[str], now: list[str]) -> None:
    record = encode(now, ("base", tuple(before)))
    assert sent_ids(record, {"base": tuple(before)}) == tuple(now)
    if record.base_call_id is None:
        assert record == full(*now)
    else:
        assert set(record.added_ids).isdisjoint(before)
        assert set(record.removed_ids) == set(before) - set(now)


# -- reading records back -----------------------------------------------------------------------
def test_a_record_is_read_from_an_events_document() -> None:
    assert ManifestRecord.of({"message_ids": ["sys", "u1"], "base_call_id": None}) == full(
        "sys", "u1"
    )
    document = {"message_ids": [], "base_call_id": "c1", "added_ids": ["u2"], "removed_ids": ["u1"]}
    assert ManifestRecord.of(document) == against("c1", ("u2",), ("u1",))
    # Fields an older writer left out read as empty.
    assert ManifestRecord.of({"base_call_id": "c1"}) == against("c1")
    assert ManifestRecord.of({}) == full()


def test_sent_ids_needs_the_base_call() -> None:
    assert sent_ids(full("a", "b"), {}) == ("a", "b")
    record = against("c1", ("c",), ("a",))
    assert sent_ids(record, {"c1": ("a", "b")}) == ("b", "c")
    assert sent_ids(record, {"c0": ("a", "b")}) is None


def _held(calls: Iterator[Any]) -> dict[str, tuple[str, ...]]:
    """The ids `resolve` holds between two yields (its working set)."""
    generator: Any = calls
    while generator is not None:
        held = inspect.getgeneratorlocals(generator).get("known")
        if held is not None:
            return dict(held)
        generator = generator.gi_yieldfrom
    raise AssertionError("resolve holds no 'known' calls")


def test_a_log_of_calls_resolves_in_order() -> None:
    log = [
        ("c1", full("sys", "u1")),
        ("c2", against("c1", ("a1", "u2"))),
        ("c3", against("c2", ("a2", "u3"), ("u1", "a1"))),
    ]
    assert list(resolve(log)) == [
        ("sys", "u1"),
        ("sys", "u1", "a1", "u2"),
        ("sys", "u2", "a2", "u3"),
    ]


def test_a_base_named_by_two_later_calls_serves_both() -> None:
    """A process that missed another's turn recorded its call against its own older call."""
    log = [
        ("c1", full("sys", "u1")),
        ("c2", against("c1", ("u2",))),
        ("c3", against("c1", ("u3",))),
        ("c4", against("c3", ("u4",))),
    ]
    assert list(resolve(log)) == [
        ("sys", "u1"),
        ("sys", "u1", "u2"),
        ("sys", "u1", "u3"),
        ("sys", "u1", "u3", "u4"),
    ]


def test_a_call_without_its_base_and_the_calls_built_on_it_do_not_resolve() -> None:
    log = [
        ("c1", full("sys")),
        ("lost", against("ghost", ("u9",))),
        ("on-lost", against("lost", ("u10",))),
        ("c2", against("c1", ("u1",))),
    ]
    assert list(resolve(log)) == [("sys",), None, None, ("sys", "u1")]


def test_resolving_holds_only_the_calls_a_later_call_still_names() -> None:
    """So a long log is read holding about one window of ids, however many calls it has."""
    log = [
        ("c1", full("sys", "u1")),
        ("c2", against("c1", ("u2",))),
        ("other", full("sys", "x")),  # a session nobody builds on
        ("c3", against("c2", ("u3",))),  # c2 is then done with; nobody builds on c3
        ("c4", against("c1", ("u4",))),  # c1 is named twice
        ("c5", against("c4", ("u5",))),
    ]
    calls = resolve(log)
    held_after = []
    for _ in log:
        next(calls)
        held_after.append(sorted(_held(calls)))
    assert held_after == [["c1"], ["c1", "c2"], ["c1", "c2"], ["c1"], ["c4"], []]
