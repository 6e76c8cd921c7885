from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from hewer.testing import EngineThread
from tests.pg import fresh_database_sync

# Timing scaled down from 4 s / 30 s in the same ratio, so tests exercise the real logic fast.
HEARTBEAT = 0.2
INACTIVE_AFTER = 1.5

# Every test that runs an engine runs once per backend.
BACKENDS = ["sqlite", "postgres"]


@contextlib.contextmanager
def database_for(backend: str, directory: Path) -> Iterator[str]:
    """The database URL of a new, empty database of ``backend``: a SQLite file in
    ``directory``, or a fresh database on the test PostgreSQL server (dropped after)."""
    if backend == "sqlite":
        yield str(directory / "hewer.db")
        return
    with fresh_database_sync() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_for(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def engine(tmp_path: Path, database_url: str) -> Iterator[EngineThread]:
    with EngineThread(
        tmp_path,
        database_url=database_url,
        heartbeat_interval=HEARTBEAT,
        inactive_after=INACTIVE_AFTER,
    ) as running:
        yield running
