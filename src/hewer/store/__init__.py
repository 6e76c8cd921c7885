"""Persistence: the store Protocol and its backends."""

from __future__ import annotations

from hewer.errors import StoreError
from hewer.store._protocol import Store
from hewer.store.sqlite import SqliteStore

__all__ = ["SqliteStore", "Store", "StoreError", "open_store"]


def open_store(database: str) -> Store:
    """The store for a database setting: a SQLite file path (PostgreSQL comes later)."""
    return SqliteStore(database)
