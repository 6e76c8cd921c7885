"""The engine loop when its database fails: an unreachable database stops writes at once
until a probe gets an answer; a refused statement does not."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hewer.domain import TaskDef
from hewer.engine.core.clock import ManualClock
from hewer.engine.core.service import EngineCore, TriggerSpec
from hewer.errors import StoreError
from hewer.store import SqliteStore


class FlakyStore(SqliteStore):
    """A SQLite store whose writes fail with ``fail`` while it is set, and whose ping
    fails while ``down``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fail: StoreError | None = None
        self.down = False
        self.writes = 0
        self.pings = 0

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Any]:
        self.writes += 1
        if self.fail is not None:
            raise self.fail
        async with super().write() as tx:
            yield tx

    async def ping(self) -> None:
        self.pings += 1
        if self.down:
            raise StoreError("connection refused")
        await super().ping()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[EngineCore, FlakyStore, str]]:
    store = FlakyStore(tmp_path / "flaky.db")
    await store.open()
    clock = ManualClock()
    core = EngineCore(store, clock, inactive_after=30.0)
    tenant = (await store.tenant_ensure("t", clock.now())).id
    await core.start()
    await core.put_workflow(tenant, "job", [TaskDef("job", "job:job")], None)
    yield core, store, tenant
    await core.stop()
    await store.close()


async def _until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_an_unreachable_database_refuses_writes_at_once_until_it_answers(
    rig: tuple[EngineCore, FlakyStore, str],
) -> None:
    core, store, tenant = rig
    spec = [TriggerSpec("job", "{}")]
    store.fail = StoreError("connection reset")  # unavailable, as drivers' errors are
    store.down = True
    with pytest.raises(StoreError):
        await core.trigger(tenant, spec)
    writes = store.writes
    # Refused without another write (no waiting on a database that does not answer).
    for _ in range(5):
        with pytest.raises(StoreError, match="unavailable"):
            await core.trigger(tenant, spec)
    assert store.writes == writes
    await _until(lambda: store.pings >= 2)  # probing meanwhile
    store.fail = None
    store.down = False
    await _until(lambda: core.loop.unavailable is None)
    (run_id,) = await core.trigger(tenant, spec)
    assert await store.run_get(tenant, run_id) is not None


async def test_a_refused_statement_does_not_stop_writes(
    rig: tuple[EngineCore, FlakyStore, str],
) -> None:
    core, store, tenant = rig
    store.fail = StoreError("deadlock detected", unavailable=False)
    with pytest.raises(StoreError, match="deadlock"):
        await core.trigger(tenant, [TriggerSpec("job", "{}")])
    assert core.loop.unavailable is None
    assert store.pings == 0
    store.fail = None
    core.clock.advance(1.0)  # past the short pause before writing again (the engine's clock)
    core.loop.wake()
    (run_id,) = await core.trigger(tenant, [TriggerSpec("job", "{}")])
    assert await store.run_get(tenant, run_id) is not None
