"""The store contract on the embedded default: a SQLite file in the workspace."""

from pathlib import Path
from typing import Any

from chatledger import ConversationManager
from tests.integration.store_contract import StoreContract


class TestSQLiteStore(StoreContract):
    def manager(self, workspace: Path, **kwargs: Any) -> ConversationManager:
        return ConversationManager(workspace_path=workspace, **kwargs)
