"""The scheduling lease on the real PostgreSQL: claims, renewals, takeover, fencing, and
schedulers forced to contend on the same tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from hewer.domain import (
    Changes,
    EventType,
    Keys,
    RateLimitRecord,
    TaskDef,
    TaskEvent,
    WorkerRecord,
    WorkerStatus,
    WorkingSet,
)
from hewer.engine.core.clock import SystemClock
from hewer.engine.core.lease import SCHEDULER_LEASE, LeaseKeeper
from hewer.engine.core.service import ActionKind, EngineCore, Session, TriggerSpec
from hewer.errors import LeaseLost, StoreError
from hewer.store import PostgresStore
from tests.pg import fresh_database

L = SCHEDULER_LEASE


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with fresh_database() as u:
        yield u


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url, pool_size=2)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def until(condition: object, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = condition() if callable(condition) else None
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _worker(tenant: str, name: str) -> WorkerRecord:
    return WorkerRecord(
        id=name,
        tenant_id=tenant,
        name=name,
        actions=(),
        slot_config={"default": 1},
        labels={},
        status=WorkerStatus.ACTIVE,
        status_reason="test",
        status_changed_at=0.0,
        last_heartbeat_at=None,
        created_at=0.0,
    )


async def _write_worker(store: PostgresStore, tenant: str, name: str) -> None:
    async with store.write() as tx:
        changes = Changes()
        changes.new_workers.append(_worker(tenant, name))
        tx.stage(changes)


async def test_lease_is_claimed_renewed_taken_over_and_fences_the_old_holder(url: str) -> None:
    async with opened(url) as a, opened(url) as b:
        tenant = (await a.tenant_ensure("t", 0.0)).id
        token_a = await a.lease_claim(L, "a", "a:1", "a:2", 0.3)
        assert token_a == 1
        assert await b.lease_claim(L, "b", "b:1", "b:2", 0.3) is None
        held = await b.lease_get(L)
        assert held is not None and held.holder == "a" and held.live
        assert await a.lease_renew(L, token_a, 0.3)
        a.fence(L, token_a)
        await _write_worker(a, tenant, "w-before")  # held: the write commits

        async def b_takes_it() -> bool:
            return await b.lease_claim(L, "b", "b:1", "b:2", 5.0) is not None

        await until(b_takes_it, "b taking the expired lease over")
        after = await b.lease_get(L)
        assert after is not None and after.holder == "b" and after.token == token_a + 1
        # The old holder wakes up: its renewal fails and its writes are refused.
        assert not await a.lease_renew(L, token_a, 0.3)
        with pytest.raises(LeaseLost):
            await _write_worker(a, tenant, "w-after")
        with pytest.raises(LeaseLost):  # its rare writes too (what the next holder loaded)
            await a.rate_limit_put(RateLimitRecord(tenant, "api", 5, 1.0), 0.0)
        assert await b.rate_limits_list() == []
        names = {w.name for w in await b.workers_list()}
        assert names == {"w-before"}, "a fenced write must not commit"


async def test_a_restarted_holder_takes_its_own_lease_back_at_once(url: str) -> None:
    async with opened(url) as a:
        first = await a.lease_claim(L, "a", "a:1", "a:2", 30.0)
        again = await a.lease_claim(L, "a", "a:1", "a:2", 30.0)
        assert first is not None and again == first + 1  # same name: no wait for the term


async def test_a_takeover_waits_for_a_write_in_flight_then_fences_it(url: str) -> None:
    """The fence's row lock orders a takeover after any write that began under the old
    token: that one commits, and nothing after it does."""
    async with opened(url) as a, opened(url) as b:
        tenant = (await a.tenant_ensure("t", 0.0)).id
        token = await a.lease_claim(L, "a", "a:1", "a:2", 0.2)
        assert token is not None
        a.fence(L, token)
        entered, release = asyncio.Event(), asyncio.Event()

        async def slow_write() -> None:
            async with a.write() as tx:
                await tx.load_more(WorkingSet(), Keys(), ())
                entered.set()
                await release.wait()
                changes = Changes()
                changes.new_workers.append(_worker(tenant, "w-in-flight"))
                tx.stage(changes)

        writer = asyncio.create_task(slow_write())
        await entered.wait()

        async def expired() -> bool:
            state = await b.lease_get(L)
            return state is not None and not state.live

        await until(expired, "the term running out while the write is open (lock held)")
        claim = asyncio.create_task(b.lease_claim(L, "b", "b:1", "b:2", 5.0))
        await asyncio.sleep(0.2)  # a window in which the claim must not get through
        assert not claim.done(), "the takeover must wait for the open write"
        release.set()
        await writer
        # Claims time out at the lock when it is held too long; try until it lands.
        try:
            taken = await claim
        except StoreError:
            taken = None
        while taken is None:
            taken = await b.lease_claim(L, "b", "b:1", "b:2", 5.0)
        with pytest.raises(LeaseLost):
            await _write_worker(a, tenant, "w-late")
        assert {w.name for w in await b.workers_list()} == {"w-in-flight"}


async def test_keepers_hand_over_on_stop_and_take_over_a_silent_holder(url: str) -> None:
    clock = SystemClock()
    async with opened(url) as a_store, opened(url) as b_store:

        def keeper(store: PostgresStore, name: str) -> LeaseKeeper:
            return LeaseKeeper(
                store,
                clock,
                replica_id=name,
                grpc_address=f"{name}:1",
                api_address=f"{name}:2",
                ttl=0.5,
            )

        a, b = keeper(a_store, "a"), keeper(b_store, "b")
        await a.start()
        await b.start()
        try:
            assert a.token is not None and b.token is None
            await until(lambda: b.holder is not None and b.holder.holder == "a", "b sees a")
            began = asyncio.get_running_loop().time()
            await a.stop()  # clean: hands over at once
            await until(lambda: b.token is not None, "b takes over after a's stop")
            assert asyncio.get_running_loop().time() - began < 0.5  # well inside the term
            # b goes silent (its renewals stop): a fresh keeper takes over after the term.
            assert b._task is not None
            b._task.cancel()
            c = keeper(a_store, "c")
            await c.start()
            try:
                await until(lambda: c.token is not None, "c takes over the silent holder")
                assert c.token is not None and b.token is not None and c.token > b.token
                assert not await b._renew(asyncio.get_running_loop().time()), (
                    "the silent holder learns at its next renewal"
                )
            finally:
                await c.stop()
        finally:
            await a.stop()
            await b.stop()


class Contender:
    """An engine core of its own, with one worker that completes what it is given."""

    def __init__(self, store: PostgresStore, name: str) -> None:
        self.store = store
        self.name = name
        self.core = EngineCore(store, SystemClock(), inactive_after=30.0)
        self.done: list[tuple[str, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self, tenant: str) -> None:
        await self.core.start()
        record = await self.core.register_worker(
            tenant, self.name, ["job:job"], {"default": 20}, {}, {}
        )
        session = await self.core.open_session(tenant, record.id)
        self._task = asyncio.create_task(self._work(tenant, record.id, session))

    async def _work(self, tenant: str, worker_id: str, session: Session) -> None:
        while (action := await session.next()) is not None:
            if action.kind is not ActionKind.START or action.info is None:
                continue
            info = action.info
            self.done.append((info.task_id, info.retry_count))
            for kind in (EventType.STARTED, EventType.COMPLETED):
                await self.core.task_event(
                    TaskEvent(tenant, info.task_id, info.retry_count, worker_id, kind, payload="{}")
                )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.core.stop(grace=0)


async def test_schedulers_forced_to_contend_never_start_a_task_twice(url: str) -> None:
    """Three cores, unfenced (each believes it schedules), see the same queued tasks and
    race to assign them: the row locks and the queued check let each task go out once."""
    tasks = 600
    stores = [PostgresStore(url, pool_size=2) for _ in range(3)]
    for s in stores:
        await s.open()
    tenant = (await stores[0].tenant_ensure("t", 0.0)).id
    contenders = [Contender(s, f"c{i}") for i, s in enumerate(stores)]
    try:
        job = TaskDef("job", "job:job", timeout_s=60.0, schedule_timeout_s=300.0)
        await contenders[0].core.put_workflow(tenant, "job", [job], None)
        for c in contenders:
            await c.start(tenant)
        # Queue the tasks while every scheduler holds them all in memory: rebuild each one
        # from the store after every batch so each sees every task as queued.
        for _ in range(tasks // 100):
            await contenders[0].core.trigger(tenant, [TriggerSpec("job", "{}")] * 100)
            for c in contenders:
                await c.core.rebuild()
                c.core.loop.wake()

        async def all_done() -> bool:
            runs = await stores[0].runs_list(tenant)
            return len(runs) == tasks and all(str(r.status) == "completed" for r in runs)

        await until(all_done, "every run completed", timeout=60)
        started = Counter(t for c in contenders for t, _ in c.done)
        assert len(started) == tasks
        assert max(started.values()) == 1, [t for t, n in started.items() if n > 1][:5]
        rows = await stores[0].tasks_list(tenant)
        assert {t.retry_count for t in rows} == {0}, "a task got a second attempt"
        assert len({c.name for c in contenders if c.done}) > 1, "nobody contended"
    finally:
        for c in contenders:
            await c.stop()
        for s in stores:
            await s.close()
