"""The canonical encoding that the hash chain is computed over.

Written with the standard library on purpose: the domain must not depend on orjson, and the
canonical form (sorted keys, no spaces, UTF-8) has to stay byte-stable across releases, so it
must not follow any serialiser's defaults."""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: prev_hash of the first event of a root conversation.
GENESIS_HASH = "0" * 64


def canonical_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def event_hash(document: dict[str, Any]) -> str:
    """sha256 over the canonical encoding of an event's JSON document (with its stream id,
    position and topic, without its own hash)."""
    return hashlib.sha256(canonical_bytes(document)).hexdigest()
