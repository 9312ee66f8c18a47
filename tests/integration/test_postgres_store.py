"""The store contract on PostgreSQL: the same tests as on SQLite, through a database URL."""

from pathlib import Path
from uuid import UUID

import psycopg
import pytest

from chatledger import ConcurrencyConflict, ConversationManager
from infrastructure import postgres_store
from tests.integration.store_contract import StoreContract
from tests.postgres import fresh_schema, requires_postgres


@requires_postgres
@pytest.mark.postgres
class TestPostgresStore(StoreContract):
    backend = "postgres"


@requires_postgres
@pytest.mark.postgres
def test_a_server_side_disconnect_costs_no_command_and_no_event(tmp_path: Path) -> None:
    """A restart or failover closes every connection; the next command reconnects instead of
    failing, and nothing stored is lost or repeated."""
    with fresh_schema() as url:
        manager = ConversationManager(workspace_path=tmp_path, database_url=url)
        try:
            manager.add_message("user", "before the disconnect")
            ledger = manager.ledger
            with ledger.store.recorder.datastore.get_connection() as pooled:  # type: ignore[attr-defined]
                backends = [ledger.db.connection.info.backend_pid, pooled.info.backend_pid]
            with psycopg.connect(url.split("?")[0], autocommit=True) as admin:
                for pid in backends:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

            manager.add_message("user", "after the disconnect")

            assert [m["content"] for m in manager.get_history()] == [
                "before the disconnect",
                "after the disconnect",
            ]
            assert ledger.verify().ok
        finally:
            manager.close()


@requires_postgres
@pytest.mark.postgres
def test_a_conversation_held_too_long_by_another_writer_is_a_typed_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that stalls holding a conversation's lock (a hung host) must not hang every
    other writer of that conversation forever."""
    monkeypatch.setattr(postgres_store, "LOCK_TIMEOUT", 1)
    with fresh_schema() as url:
        manager = ConversationManager(workspace_path=tmp_path, database_url=url)
        try:
            manager.add_message("user", "first")
            conversation = UUID(manager.get_conversation_id())
            key = int.from_bytes(conversation.bytes[:8], "big", signed=True)
            with psycopg.connect(url.split("?")[0], autocommit=True) as stalled_writer:
                stalled_writer.execute("SELECT pg_advisory_lock(%s)", (key,))
                with pytest.raises(ConcurrencyConflict, match="stayed locked by another writer"):
                    manager.ledger.append_message(conversation, "user", "blocked")
            manager.add_message("user", "after the stalled writer let go")
            assert [m["content"] for m in manager.get_history()] == [
                "first",
                "after the stalled writer let go",
            ]
        finally:
            manager.close()
