"""The version of chatledger's tables, recorded in the database so that an older chatledger
refuses a store a newer one wrote instead of misreading it."""

from __future__ import annotations

from typing import Any

from domain.errors import StoreError

SCHEMA_VERSION = 1

#: The first table chatledger creates in a store: where it is, the store is chatledger's.
MARKER_TABLE = "chatledger_meta"
META_TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS chatledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
)
RECORD_SCHEMA_VERSION = (
    "INSERT INTO chatledger_meta VALUES ('schema_version', ?) ON CONFLICT (key) DO NOTHING"
)
READ_SCHEMA_VERSION = "SELECT value FROM chatledger_meta WHERE key='schema_version'"


def check_schema_version(version: Any, where: str) -> None:
    """Refuses a store whose recorded schema version is unreadable or newer than ours."""
    if version is None:
        return
    if not str(version).isdigit():
        raise StoreError(f"{where} has an unreadable schema version {version!r}.")
    if int(version) > SCHEMA_VERSION:
        raise StoreError(
            f"{where} was written by a newer chatledger (schema {version}; this one reads up to "
            f"{SCHEMA_VERSION}). Upgrade chatledger to open it."
        )


def no_store_in(where: object) -> StoreError:
    return StoreError(f"There is no chatledger store in {where} (run a chat there first).")
