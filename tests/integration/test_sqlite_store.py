"""The store contract on the embedded default: a SQLite file in the workspace."""

from tests.integration.store_contract import StoreContract


class TestSQLiteStore(StoreContract):
    backend = "sqlite"
