"""The ordered message ids a model call sent, recorded as a change to the previous call of
the same session (see events.ModelCalled). Pure functions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ManifestRecord:
    """How one call's ids are written: in full, or against a base call."""

    message_ids: tuple[str, ...]
    base_call_id: str | None
    added_ids: tuple[str, ...]
    removed_ids: tuple[str, ...]

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> ManifestRecord:
        """The record in a ModelCalled event's JSON document."""
        return cls(
            tuple(document.get("message_ids", ())),
            document.get("base_call_id"),
            tuple(document.get("added_ids", ())),
            tuple(document.get("removed_ids", ())),
        )


def encode(current: Sequence[str], previous: tuple[str, tuple[str, ...]] | None) -> ManifestRecord:
    """Against the previous call (its id and ids) when "previous without the removed, then
    the added" gives exactly `current`; in full otherwise."""
    current = tuple(current)
    if previous is not None:
        base_id, base = previous
        now = set(current)
        before = set(base)
        kept = [i for i in base if i in now]
        added = tuple(i for i in current if i not in before)
        if (*kept, *added) == current:
            removed = tuple(i for i in base if i not in now)
            return ManifestRecord((), base_id, added, removed)
    return ManifestRecord(current, None, (), ())


def sent_ids(
    record: ManifestRecord, known: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...] | None:
    """The full ordered ids of a call, given the full ids of calls recorded before it; None
    when its base is not among them."""
    if record.base_call_id is None:
        return record.message_ids
    base = known.get(record.base_call_id)
    if base is None:
        return None
    gone = set(record.removed_ids)
    return (*(i for i in base if i not in gone), *record.added_ids)


def resolve(calls: Sequence[tuple[str, ManifestRecord]]) -> Iterator[tuple[str, ...] | None]:
    """The full ordered ids of each (call id, record), in log order; None for a call whose
    base is not an earlier call (nor is any call built on it).

    A base is meant to be the previous call of the same session, but a process that missed
    another's turn (issue 9) recorded its call against its own older call, even one of an
    earlier session; any earlier call is accepted. Only calls a later call still names are
    kept, so an intact log is read holding one window of ids at a time, however many calls
    it has."""
    named = Counter(record.base_call_id for _, record in calls if record.base_call_id)
    known: dict[str, tuple[str, ...]] = {}
    for call_id, record in calls:
        ids = sent_ids(record, known)
        if record.base_call_id is not None:
            named[record.base_call_id] -= 1
            if named[record.base_call_id] <= 0:
                known.pop(record.base_call_id, None)
        if ids is not None and named[call_id] > 0:
            known[call_id] = ids
        yield ids
