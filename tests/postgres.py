"""PostgreSQL for the tests: the server named by CHATLEDGER_TEST_POSTGRES, one fresh schema
per test (so tests never see each other's rows), dropped afterwards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import uuid4

import psycopg
import pytest

VARIABLE = "CHATLEDGER_TEST_POSTGRES"
DSN = os.environ.get(VARIABLE, "").strip() or None

requires_postgres = pytest.mark.skipif(
    DSN is None,
    reason=f"{VARIABLE} is not set (e.g. postgresql://postgres@127.0.0.1:5432/test); "
    ".ci/run sets it",
)


def with_schema(dsn: str, schema: str) -> str:
    parts = urlsplit(dsn)
    query = [q for q in parse_qsl(parts.query) if q[0] != "schema"] + [("schema", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A database URL whose schema is new and empty; the schema is dropped on exit."""
    assert DSN is not None
    schema = f"test_{uuid4().hex[:12]}"
    try:
        yield with_schema(DSN, schema)
    finally:
        with psycopg.connect(DSN, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
