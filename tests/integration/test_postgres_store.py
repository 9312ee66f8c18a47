"""The store contract on PostgreSQL: the same tests as on SQLite, through a database URL."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatledger import ConversationManager
from tests.integration.store_contract import StoreContract
from tests.postgres import fresh_schema, requires_postgres


@requires_postgres
@pytest.mark.postgres
class TestPostgresStore(StoreContract):
    @pytest.fixture(autouse=True)
    def database_url(self) -> Iterator[str]:
        self.opened: list[ConversationManager] = []
        with fresh_schema() as url:
            self.url = url
            yield url
            # Each manager holds connections (and a pool thread) until closed.
            for manager in self.opened:
                manager.close()

    def manager(self, workspace: Path, **kwargs: Any) -> ConversationManager:
        manager = ConversationManager(workspace_path=workspace, database_url=self.url, **kwargs)
        self.opened.append(manager)
        return manager
