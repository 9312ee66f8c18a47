"""A database URL's password never shows: not in the error of a URL that cannot be used,
whether it came through the Ledger, the ConversationManager or CHATLEDGER_DATABASE_URL, not
in a log record, not in what the command line prints.

And the other spellings of a PostgreSQL URL people copy from elsewhere (postgres://, and
SQLAlchemy's postgresql+psycopg://) open a working store."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from chatledger import ChatledgerError, ConversationManager, StoreError
from chatledger.ledger import Ledger
from infrastructure.stores import DATABASE_URL_VARIABLE
from tests.e2e.harness import chatledger, invoke
from tests.postgres import DSN, fresh_schema, requires_postgres

#: A password as typed, and one with characters a URL must percent-encode.
SECRET = "s3cretPa55"
TRICKY = "p@ss:w/rd?#x"
ENCODED = quote(TRICKY, safe="")
#: Nothing listens on port 1 of this host: no URL here reaches a server.
BAD_URLS = [
    pytest.param(f"mysql://app:{SECRET}@db.example/app", id="mysql"),
    pytest.param(f"  mysql://app:{SECRET}@db.example/app  ", id="mysql-padded"),
    pytest.param(f"mysql://app:{ENCODED}@db.example/app", id="mysql-encoded"),
    pytest.param(f"host=127.0.0.1 port=1 user=app password={SECRET}", id="key-value-dsn"),
    pytest.param(f"host=127.0.0.1 password='{TRICKY}' user=app", id="key-value-dsn-quoted"),
    pytest.param(f"sqlite:///chatledger.db?password={SECRET}", id="sqlite-url-password"),
    pytest.param(f"postgresql+psycopg2://app:{SECRET}@127.0.0.1:1/db", id="other-driver"),
    pytest.param(f"postgresql://app:{SECRET}@127.0.0.1:1/db", id="unreachable"),
    pytest.param(f"postgres://app:{SECRET}@127.0.0.1:1/db", id="unreachable-postgres"),
    pytest.param(f"postgresql+psycopg://app:{SECRET}@127.0.0.1:1/db", id="unreachable-psycopg"),
    pytest.param(f"postgresql://app:{ENCODED}@127.0.0.1:1/db", id="unreachable-encoded"),
    pytest.param(f"postgresql://127.0.0.1:1/db?user=app&password={SECRET}", id="in-the-query"),
    pytest.param(f"postgresql://app:{SECRET}@127.0.0.1:port/db", id="port-not-a-number"),
    pytest.param(f"postgresql://app:{SECRET}%zz@127.0.0.1:1/db", id="bad-percent-escape"),
    pytest.param(f"postgresql://app:{SECRET}@[bad/db", id="unclosed-bracket"),
    pytest.param(f"postgresql://app:{SECRET}@127.0.0.1:1/db?schema=Bad", id="bad-schema"),
    pytest.param(f"postgresql://app:{SECRET}@127.0.0.1:1/db?nonsense=1", id="unknown-option"),
    pytest.param(f"postgresql://app:{SECRET}@127.0.0.1:1/db?password={SECRET}", id="twice"),
]


def assert_no_secret(text: str) -> None:
    for secret in (SECRET, TRICKY, ENCODED):
        assert secret not in text, text


def messages(error: BaseException | None) -> Iterator[str]:
    """The error's message and those of the errors a traceback shows chained to it."""
    while error is not None:
        yield str(error)
        yield repr(error)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)


@pytest.mark.parametrize("opener", ["ledger", "manager", "environment"])
@pytest.mark.parametrize("url", BAD_URLS)
def test_no_error_or_log_of_a_bad_url_shows_its_password(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    url: str,
    opener: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    workspace = tmp_path / "ws"
    with pytest.raises(ChatledgerError) as refused:
        if opener == "ledger":
            Ledger(workspace, database_url=url)
        elif opener == "manager":
            ConversationManager(workspace_path=workspace, database_url=url)
        else:
            monkeypatch.setenv(DATABASE_URL_VARIABLE, url)
            Ledger(workspace)
    assert isinstance(refused.value, StoreError)
    for message in messages(refused.value):
        assert_no_secret(message)
    assert_no_secret(caplog.text)
    assert not workspace.exists()


@pytest.mark.parametrize("url", BAD_URLS)
def test_the_command_line_never_prints_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv(DATABASE_URL_VARIABLE, url)
    for command in (["ls"], ["demo"]):
        result = invoke(*command, "--workspace", tmp_path / "ws")
        assert result.code == 2, result.text
        assert result.text.startswith("error: "), result.text
        assert_no_secret(result.out + result.err)


def test_a_real_process_never_prints_the_password(tmp_path: Path) -> None:
    url = f"mysql://app:{SECRET}@db.example/app"
    result = chatledger("verify", "-w", tmp_path, env={DATABASE_URL_VARIABLE: url})
    assert result.code == 2, result.text
    assert "mysql://app:***@db.example/app" in result.text
    assert_no_secret(result.out + result.err)


@requires_postgres
@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgres", "postgresql+psycopg"])
def test_other_spellings_of_a_postgresql_url_open_a_working_store(
    tmp_path: Path, scheme: str
) -> None:
    assert DSN is not None
    with fresh_schema() as url:
        spelled = scheme + url[url.index("://") :]
        ledger = Ledger(tmp_path, database_url=spelled)
        try:
            conversation = ledger.start_conversation(title=f"through {scheme}://")
            ledger.append_message(conversation, "user", "hello")
        finally:
            ledger.close()
        # The same store as through the postgresql:// spelling.
        ledger = Ledger(tmp_path, database_url=url)
        try:
            assert [c["title"] for c in ledger.list_conversations()] == [f"through {scheme}://"]
            assert [m["content"] for m in ledger.history(conversation)] == ["hello"]
        finally:
            ledger.close()
