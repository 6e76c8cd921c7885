"""Persistence: the store Protocol and its backends."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from hewer.errors import StoreError
from hewer.store._protocol import Store
from hewer.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from hewer.store.postgres import PostgresStore

__all__ = ["PostgresStore", "SqliteStore", "Store", "StoreError", "open_store"]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite:///"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_postgres(database: str) -> bool:
    """Whether a database setting names a PostgreSQL server (else a SQLite file)."""
    return database.lower().startswith(_POSTGRES_SCHEMES)


def open_store(database: str, *, pool_size: int | None = None) -> Store:
    """The store for a database setting, not opened yet: a ``postgresql://`` (or
    ``postgres://``) URL, or a SQLite file as a plain path or a ``sqlite:///`` URL (as in
    SQLAlchemy: ``sqlite:///rel/x.db`` is relative, ``sqlite:////abs/x.db`` absolute).
    ``pool_size``: connections a PostgreSQL store keeps (SQLite has its own two)."""
    if is_postgres(database):
        # Imported here: SQLite users need not have the PostgreSQL driver installed.
        from hewer.store.postgres import PostgresStore

        if pool_size is None:
            return PostgresStore(database)
        return PostgresStore(database, pool_size=pool_size)
    if database.lower().startswith(_SQLITE_SCHEME):
        database = database[len(_SQLITE_SCHEME) :]
    elif _SCHEME.match(database):
        scheme = database.split("://", 1)[0]
        raise StoreError(
            f"unknown database URL scheme {scheme!r}: use postgresql://user@host:5432/db, "
            "sqlite:///path/to/file.db or a plain file path"
        )
    return SqliteStore(database)


def __getattr__(name: str) -> Any:
    # ``hewer.store.PostgresStore`` without importing the driver until it is asked for.
    if name == "PostgresStore":
        from hewer.store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
