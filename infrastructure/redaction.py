"""Keeping passwords out of messages and logs.

A database URL or connection string may carry a password (postgresql://user:password@host,
?password=, libpq's key=value form), and the drivers' own errors sometimes quote the text
they could not parse. So every message that shows such text or such an error is passed
through `redact` first: whatever the input holds as a password, raw or percent-decoded, is
shown as ***."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus

MASK = "***"

# scheme://user:password@host..., the userinfo ending at the authority's last "@".
_URL_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)")
# password=... in a URL's query or a key=value connection string, quoted or not.
_PASSWORD_SETTING = re.compile(
    r"(?:^|[?&;\s])password\s*=\s*('(?:[^'\\]|\\.)*'?|[^&;#\s]*)", re.IGNORECASE
)


def passwords_in(text: str) -> set[str]:
    """The passwords `text` (a URL or a connection string) holds, as written and as decoded."""
    found: set[str] = set()
    authority = _URL_AUTHORITY.search(text)
    if authority is not None and "@" in authority[1]:
        userinfo = authority[1].rpartition("@")[0]
        if ":" in userinfo:
            password = userinfo.partition(":")[2]
            found.update((password, unquote(password)))
    for match in _PASSWORD_SETTING.finditer(text):
        value = match[1]
        if value.startswith("'"):
            found.add(value)
            value = re.sub(r"\\(.)", r"\1", value.strip("'"))
        found.update((value, unquote(value), unquote_plus(value)))
    return {password for password in found if password}


def mask(text: str, secrets: Iterable[str]) -> str:
    """`text` with every one of `secrets` in it shown as ***."""
    # Longest first: a password's decoded form may be part of its encoded one.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def redact(text: str, source: str | None = None) -> str:
    """`text` with the passwords of `source` (a URL or connection string; by default `text`
    itself) masked."""
    return mask(text, passwords_in(text if source is None else source))
