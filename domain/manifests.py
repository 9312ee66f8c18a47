"""The ordered message ids a model call sent, recorded as a change to the previous call of
the same session (see events.ModelCalled). Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ManifestRecord:
    """How one call's ids are written: in full, or against a base call."""

    message_ids: tuple[str, ...]
    base_call_id: str | None
    added_ids: tuple[str, ...]
    removed_ids: tuple[str, ...]


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
    message_ids: Sequence[str],
    base_call_id: str | None,
    added_ids: Sequence[str],
    removed_ids: Sequence[str],
    known: dict[str, tuple[str, ...]],
) -> tuple[str, ...]:
    """The full ordered ids of a call, given the full ids of calls recorded before it."""
    if base_call_id is None:
        return tuple(message_ids)
    gone = set(removed_ids)
    return (*(i for i in known[base_call_id] if i not in gone), *added_ids)
