"""Rules every SDK provider follows the same way: which API key to send, and how long the
server asked to be left alone before a retry."""

from __future__ import annotations

import email.utils
import os
import re
import time
from collections.abc import Mapping
from datetime import UTC

from infrastructure.providers.port import ProviderError

#: Sent as the API key when no key is configured but a server is named by a base URL (the
#: `base_url` argument or the SDK's `<VENDOR>_BASE_URL` variable): a local server (vLLM,
#: Ollama, llama.cpp, LM Studio, a gateway, a test fake) ignores it, and the SDKs refuse to
#: build a client without one.
PLACEHOLDER_API_KEY = "not-needed"

#: The longest wait a server's hint is taken at, in seconds: 2**31, the value HTTP caches
#: use for a delta-seconds too large to represent (RFC 9111, section 1.2.2). The caller
#: caps its own waits far below this; the point is that a hint is always a finite number.
MAX_RETRY_AFTER = float(2**31)

#: delta-seconds (RFC 9110: 1*DIGIT), with the decimal fraction some servers send.
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def resolve_api_key(vendor: str, given: str | None, base_url: str | None, *, auth_kind: str) -> str:
    """The key to build `vendor`'s SDK client with: `given`, else the `<VENDOR>_API_KEY`
    variable; without either, PLACEHOLDER_API_KEY when a server is named (`base_url` or the
    `<VENDOR>_BASE_URL` variable, which the SDKs read), else a ProviderError of kind
    `auth_kind` that says how to configure one."""
    prefix = vendor.upper()
    key = given or os.environ.get(f"{prefix}_API_KEY")
    if key:
        return key
    if base_url or os.environ.get(f"{prefix}_BASE_URL"):
        return PLACEHOLDER_API_KEY
    raise ProviderError(
        f"No {vendor} API key: pass api_key=... or set {prefix}_API_KEY. (A local "
        f"{vendor}-compatible server without auth needs only base_url=...)",
        kind=auth_kind,
        retryable=False,
    )


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """The server's wait hint in seconds, from a response's headers: `retry-after-ms`
    (OpenAI's and Anthropic's millisecond hint), else `retry-after` as delta-seconds or as
    an HTTP date (a date already past is 0). None when absent or unreadable: a negative or
    non-numeric value, or a date that is not one. At most MAX_RETRY_AFTER. `now` (epoch
    seconds, default the clock) is what an HTTP date is measured from."""
    if headers is None:
        return None
    millis = _seconds(_header(headers, "retry-after-ms"))
    if millis is not None:
        return min(millis / 1000, MAX_RETRY_AFTER)
    value = _header(headers, "retry-after")
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is None:
        seconds = _seconds_until(value, time.time() if now is None else now)
    return None if seconds is None else min(seconds, MAX_RETRY_AFTER)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, case-insensitively even in a plain dict (httpx's Headers already is)."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value if isinstance(value, str) else None


def _seconds(value: str | None) -> float | None:
    if value is None or not _DELTA_SECONDS.fullmatch(value.strip()):
        return None
    return float(value)  # inf for hundreds of digits, which the caller caps


def _seconds_until(value: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": HTTP dates are in GMT
        when = when.replace(tzinfo=UTC)
    try:
        return max(0.0, when.timestamp() - now)
    except (OverflowError, ValueError):
        return None
