"""PostgreSQL for tests: a fresh database per test on the machine's server.

The server is the one on 127.0.0.1:5432 (user ``postgres``, trust auth); set
``HEWER_TEST_POSTGRES`` to a maintenance URL to use another. A test that needs PostgreSQL
fails (never skips) when the server cannot be reached, so a missing server cannot pass for
a green run. Use it as::

    async with fresh_database() as url:      # async tests and fixtures
        store = PostgresStore(url)
    with fresh_database_sync() as url:       # sync tests (engine threads, subprocesses)
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import asyncpg
import pytest

T = TypeVar("T")

ADMIN_URL = os.environ.get("HEWER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
CONNECT_TIMEOUT = 5.0
START_HINT = (
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)


def database_url(name: str) -> str:
    """The URL of database ``name`` on the test server."""
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def _admin() -> asyncpg.Connection[asyncpg.Record]:
    try:
        return await asyncpg.connect(ADMIN_URL, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    # Outside the except block: the failure reads as one message, not a chained traceback.
    pytest.fail(
        f"PostgreSQL is not reachable at {ADMIN_URL} ({reason}); "
        f"the PostgreSQL tests need it: {START_HINT}",
        pytrace=False,
    )


async def create_database() -> str:
    """A new empty database; its URL."""
    name = f"hewer_test_{uuid.uuid4().hex[:16]}"
    conn = await _admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url(name)


async def drop_database(url: str) -> None:
    """Drop a database made by :func:`create_database`, closing what still uses it."""
    name = url.rsplit("/", 1)[1]
    conn = await _admin()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new database for the block, dropped after it."""
    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a loop of its own (callers may be inside a loop)."""
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=body, name="tests-pg")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


@contextlib.contextmanager
def fresh_database_sync() -> Iterator[str]:
    """:func:`fresh_database` for sync code."""
    url = _run(create_database())
    try:
        yield url
    finally:
        _run(drop_database(url))
