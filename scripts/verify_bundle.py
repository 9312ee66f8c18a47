#!/usr/bin/env python3
"""Verify a chatledger bundle against docs/hash-chain.md, with nothing but the standard library.

    python verify_bundle.py BUNDLE.jsonl

A bundle holds one stored event per line: {"hash": ..., "document": {...}} (plus an
unhashed "class_version"). Every event's hash must be the SHA-256 of its document's canonical
encoding, positions must run 1, 2, 3... in file order within each conversation, and every
prev_hash must name the event before: genesis for a root's first event, the parent's event at
the fork for a branch's. Prints each break found, or each conversation's head (compare those
with an anchor: a chain cannot see events cut off its end). Exit 0: intact; 1: breaks; 2: the
bundle cannot be read."""

from __future__ import annotations

import hashlib
import json
import sys

GENESIS_HASH = "0" * 64


def canonical_bytes(document: dict) -> bytes:
    """Encoding v1: sorted keys (by code point), no whitespace, raw UTF-8, Python's numbers."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def read_bundle(lines: list[str]) -> tuple[dict[str, list[tuple[int, dict]]], list[str]]:
    """The events of each conversation in file order (with their line numbers), and the
    lines that are not events at all."""
    streams: dict[str, list[tuple[int, dict]]] = {}
    problems: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            document = event["document"]
            conversation = document["originator_id"]
            if not isinstance(conversation, str) or type(document["originator_version"]) is not int:
                raise TypeError("originator_id or originator_version has the wrong type")
        except (ValueError, TypeError, KeyError) as error:
            problems.append(f"line {number}: not a bundle event ({type(error).__name__}: {error})")
            continue
        streams.setdefault(conversation, []).append((number, event))
    return streams, problems


def fork_hash(streams: dict[str, list[tuple[int, dict]]], parent: object) -> str | None:
    """The hash of the parent's event at the fork, if the bundle holds it."""
    if not isinstance(parent, dict):
        return None
    for _, event in streams.get(str(parent.get("conversation_id")), []):
        if event["document"]["originator_version"] == parent.get("position"):
            return str(event.get("hash"))
    return None


def check_stream(streams: dict[str, list[tuple[int, dict]]], conversation: str) -> str | None:
    """The first break in one conversation's chain, or None."""
    previous = None
    for expected, (number, event) in enumerate(streams[conversation], 1):
        document = event["document"]
        position = document["originator_version"]
        where = f"conversation {conversation} position {position} (line {number})"
        if position != expected:
            return f"{where}: position {expected} expected here (event missing or out of order)"
        try:
            computed = hashlib.sha256(canonical_bytes(document)).hexdigest()
        except (TypeError, ValueError) as error:
            return f"{where}: document cannot be encoded ({error})"
        if event.get("hash") != computed:
            return f"{where}: hash does not match the payload"
        if position > 1:
            wanted = previous
        elif "parent" in document:
            wanted = fork_hash(streams, document["parent"])
            if wanted is None:
                return f"{where}: the parent's event at the fork is not in the bundle"
        else:
            wanted = GENESIS_HASH
        if document.get("prev_hash") != wanted:
            return f"{where}: prev_hash does not match the previous event's hash"
        previous = computed
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        with open(argv[1], encoding="utf-8") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        print(f"error: cannot read {argv[1]}: {error}", file=sys.stderr)
        return 2
    streams, problems = read_bundle(lines)
    problems += [p for c in streams if (p := check_stream(streams, c)) is not None]
    if not streams:
        problems.append("the bundle holds no events")
    for problem in problems:
        print(f"BROKEN {problem}")
    if problems:
        print(f"{len(problems)} problem(s) in {len(streams)} conversation(s).")
        return 1
    for conversation, events in streams.items():
        print(f"OK {conversation} head {len(events)} {events[-1][1]['hash']}")
    print(f"Intact: {sum(map(len, streams.values()))} events in {len(streams)} conversation(s).")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
