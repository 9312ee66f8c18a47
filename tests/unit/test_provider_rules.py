"""The rules both SDK providers share (infrastructure.providers.common): the server's
Retry-After hint, and the API key sent when none is configured."""

from __future__ import annotations

import math

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatledger.providers import ProviderError
from infrastructure.providers.common import (
    MAX_RETRY_AFTER,
    PLACEHOLDER_API_KEY,
    parse_retry_after,
    resolve_api_key,
)

#: Wed, 21 Oct 2015 07:28:00 GMT
NOW = 1445412480.0

# -- Retry-After -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (" 3 ", 3.0),
        ("007", 7.0),
    ],
)
def test_seconds(value: str, expected: float) -> None:
    assert parse_retry_after({"retry-after": value}, now=NOW) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),  # IMF-fixdate, 30 s ahead
        ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),  # obsolete RFC 850 form
        ("Wed Oct 21 07:28:10 2015", 10.0),  # obsolete asctime form
        ("Wed, 21 Oct 2015 07:28:05 -0000", 5.0),  # no zone given: GMT, not local time
        ("Wed, 21 Oct 2015 09:28:05 +0200", 5.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # now
        ("Tue, 20 Oct 2015 07:28:00 GMT", 0.0),  # already past: retry at once
    ],
)
def test_http_date(value: str, expected: float) -> None:
    assert parse_retry_after({"retry-after": value}, now=NOW) == pytest.approx(expected)


def test_http_date_is_measured_from_the_clock_by_default() -> None:
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    far = parse_retry_after({"retry-after": "Fri, 01 Jan 2100 00:00:00 GMT"})
    assert far is not None and 2_000_000_000 < far < 3_000_000_000


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the finer hint wins
        ({"retry-after-ms": "1500.5"}, 1.5005),
        ({"retry-after-ms": "0"}, 0.0),
        # An unreadable millisecond hint is passed over for the standard header.
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after-ms": "-250", "retry-after": "9"}, 9.0),
        ({"retry-after-ms": "", "retry-after": "9"}, 9.0),
        ({"retry-after-ms": "-250"}, None),
    ],
)
def test_retry_after_ms(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "soon",
        "5s",
        "5 seconds",
        "1e3",
        "0x10",
        "1_000",
        "inf",
        "nan",
        "Infinity",
        ".5",
        "5.",
        "2, 3",  # two headers joined
        "Wed, 32 Oct 2015 07:28:00 GMT",  # no such day
        "Wed, 21 Oct 2015 25:28:00 GMT",  # no such hour
        "Wed, 21 Oct 99999 07:28:00 GMT",  # past datetime's range
        "Wed, 21 Oct 9999999999999999999999 07:28:00 GMT",  # past a C long
        "\x00",
        "٣",  # a digit, but not an ASCII one
    ],
)
def test_garbage_is_no_hint(value: str) -> None:
    assert parse_retry_after({"retry-after": value}, now=NOW) is None


@pytest.mark.parametrize("value", ["-1", "-0.5", "-0", "+5", "- 5"])
def test_negative_or_signed_is_no_hint(value: str) -> None:
    assert parse_retry_after({"retry-after": value}, now=NOW) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "86400000"}, 86400000.0),  # taken as said; the caller caps its wait
        ({"retry-after": str(2**31)}, MAX_RETRY_AFTER),
        ({"retry-after": str(2**31 + 1)}, MAX_RETRY_AFTER),
        ({"retry-after": "9" * 400}, MAX_RETRY_AFTER),  # a float overflow
        ({"retry-after-ms": "9" * 400}, MAX_RETRY_AFTER),
        ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, MAX_RETRY_AFTER),
    ],
)
def test_huge_values_are_capped_finite(headers: dict[str, str], expected: float) -> None:
    result = parse_retry_after(headers, now=NOW)
    assert result == expected
    assert math.isfinite(result)


def test_absent() -> None:
    assert parse_retry_after({}) is None
    assert parse_retry_after(None) is None
    assert parse_retry_after({"x-ratelimit-reset-requests": "1s"}) is None


def test_header_names_are_case_insensitive() -> None:
    assert parse_retry_after({"Retry-After": "4"}) == 4.0
    assert parse_retry_after({"RETRY-AFTER-MS": "4000"}) == 4.0
    # The SDKs hand over their HTTP client's Headers (httpx2, which both SDKs depend on).
    assert parse_retry_after(httpx2.Headers({"Retry-After-Ms": "20", "Retry-After": "1"})) == 0.02


@given(
    st.dictionaries(st.sampled_from(["retry-after", "retry-after-ms", "Retry-After"]), st.text())
)
def test_any_header_text_gives_no_hint_or_a_finite_wait(headers: dict[str, str]) -> None:
    result = parse_retry_after(headers, now=NOW)
    assert result is None or 0.0 <= result <= MAX_RETRY_AFTER


# -- API key -----------------------------------------------------------------------------------

VENDORS = [("OpenAI", "OPENAI", "auth"), ("Anthropic", "ANTHROPIC", "authentication")]


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for prefix in ("OPENAI", "ANTHROPIC"):
        monkeypatch.delenv(f"{prefix}_API_KEY", raising=False)
        monkeypatch.delenv(f"{prefix}_BASE_URL", raising=False)


@pytest.mark.parametrize(("vendor", "prefix", "auth_kind"), VENDORS)
def test_a_given_key_wins(
    monkeypatch: pytest.MonkeyPatch, vendor: str, prefix: str, auth_kind: str
) -> None:
    monkeypatch.setenv(f"{prefix}_API_KEY", "sk-env")
    assert resolve_api_key(vendor, "sk-given", None, auth_kind=auth_kind) == "sk-given"


@pytest.mark.parametrize(("vendor", "prefix", "auth_kind"), VENDORS)
@pytest.mark.parametrize("given_key", [None, ""])
def test_else_the_environment(
    monkeypatch: pytest.MonkeyPatch, vendor: str, prefix: str, auth_kind: str, given_key: str
) -> None:
    monkeypatch.setenv(f"{prefix}_API_KEY", "sk-env")
    assert resolve_api_key(vendor, given_key, "http://127.0.0.1:1", auth_kind=auth_kind) == "sk-env"


@pytest.mark.parametrize(("vendor", "prefix", "auth_kind"), VENDORS)
def test_a_named_server_without_a_key_gets_the_placeholder(
    monkeypatch: pytest.MonkeyPatch, vendor: str, prefix: str, auth_kind: str
) -> None:
    local = "http://127.0.0.1:8000/v1"
    assert resolve_api_key(vendor, None, local, auth_kind=auth_kind) == PLACEHOLDER_API_KEY
    # The SDKs read <VENDOR>_BASE_URL themselves when no base_url is given.
    monkeypatch.setenv(f"{prefix}_BASE_URL", local)
    assert resolve_api_key(vendor, None, None, auth_kind=auth_kind) == PLACEHOLDER_API_KEY


@pytest.mark.parametrize(("vendor", "prefix", "auth_kind"), VENDORS)
def test_no_key_and_no_server_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, vendor: str, prefix: str, auth_kind: str
) -> None:
    monkeypatch.setenv(f"{prefix}_API_KEY", "")
    with pytest.raises(ProviderError) as caught:
        resolve_api_key(vendor, None, "", auth_kind=auth_kind)
    error = caught.value
    assert (error.kind, error.retryable) == (auth_kind, False)
    assert f"{prefix}_API_KEY" in str(error) and "base_url" in str(error)
