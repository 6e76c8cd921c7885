"""Our SDK on hewer.v1 (the batched Listen, Report and Wait) against a real engine, and on
the Hatchet calls against an engine without hewer.v1.

The engine's gRPC server gets an interceptor that counts the calls it is asked for; for
"an engine without hewer.v1" it also answers every hewer.v1 method as an unregistered one
(UNIMPLEMENTED), which is what an engine that never heard of hewer.v1 does.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import types
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from pydantic import BaseModel

from hewer import Context, Hewer, NonRetryableError, TaskRunError, Worker
from hewer.engine.grpc import server as server_module
from hewer.testing import EngineThread
from tests.conftest import HEARTBEAT, INACTIVE_AFTER
from tests.helpers import wait_for

LISTEN_V2 = "/Dispatcher/ListenV2"
SEND_EVENT = "/Dispatcher/SendStepActionEvent"
SUBSCRIBE = "/Dispatcher/SubscribeToWorkflowRuns"
HELLO = "/hewer.v1.Worker/Hello"
LISTEN = "/hewer.v1.Worker/Listen"
REPORT = "/hewer.v1.Worker/Report"
WAIT = "/hewer.v1.Runs/Wait"


class Calls(aio.ServerInterceptor):  # type: ignore[misc]
    """Counts the calls the engine is asked for, by method; ``hide_v1`` makes the engine
    one without hewer.v1."""

    def __init__(self, hide_v1: bool = False) -> None:
        self.hide_v1 = hide_v1
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __getitem__(self, method: str) -> int:
        with self._lock:
            return self.counts[method]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        with self._lock:
            self.counts[details.method] += 1
        if self.hide_v1 and details.method.startswith("/hewer.v1."):
            return None  # no handler: UNIMPLEMENTED, as for a service never registered
        return await continuation(details)


@pytest.fixture
def calls(request: pytest.FixtureRequest) -> Calls:
    return Calls(hide_v1=getattr(request, "param", False))


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch, calls: Calls) -> Calls:
    """Every engine started from here on has ``calls`` as an interceptor."""

    def server(*args: Any, **kwargs: Any) -> aio.Server:
        kwargs["interceptors"] = [*kwargs.get("interceptors", ()), calls]
        return aio.server(*args, **kwargs)

    monkeypatch.setattr(server_module, "aio", types.SimpleNamespace(server=server))
    return calls


@pytest.fixture
def engine(tmp_path: Path, counted: Calls, database_url: str) -> Iterator[EngineThread]:
    with EngineThread(
        tmp_path,
        database_url=database_url,
        heartbeat_interval=HEARTBEAT,
        inactive_after=INACTIVE_AFTER,
    ) as running:
        yield running


class Item(BaseModel):
    n: int


def run_workload(hw: Hewer, start_worker: Callable[..., Worker]) -> tuple[int, Worker]:
    """Async and sync tasks, a failing one, waited for every way the SDK offers; returns
    how many tasks ran, and the worker."""

    @hw.task(name="b-async")
    async def aecho(input: Item, ctx: Context) -> dict[str, int]:
        return {"n": input.n}

    @hw.task(name="b-sync")
    def secho(input: Item, ctx: Context) -> dict[str, int]:
        return {"n": input.n}

    @hw.task(name="b-fail")
    def fails(input: Item, ctx: Context) -> None:
        raise NonRetryableError("no")

    worker = start_worker(hw, [aecho, secho, fails], slots=4)
    assert aecho.run(Item(n=1)) == {"n": 1}
    assert secho.run_many([Item(n=i) for i in range(30)]) == [{"n": i} for i in range(30)]
    with pytest.raises(TaskRunError):
        fails.run(Item(n=0))
    refs = [secho.run_no_wait(Item(n=i)) for i in range(3)]
    assert hw._runs.wait_many([r.run_id for r in refs])[2].run_id == refs[2].run_id

    async def waits() -> None:
        assert await aecho.aio_run(Item(n=2)) == {"n": 2}
        outputs = await aecho.aio_run_many([Item(n=i) for i in range(20)])
        assert outputs == [{"n": i} for i in range(20)]
        ref = await secho.aio_run_no_wait(Item(n=7))
        assert await ref.aio_result() == {"n": 7}
        await hw.aclose()

    asyncio.run(waits())
    return 1 + 30 + 1 + 3 + 1 + 20 + 1, worker


def test_our_sdk_uses_hewer_v1(client: Hewer, in_process_worker: Any, counted: Calls) -> None:
    tasks, worker = run_workload(client, in_process_worker)
    assert worker.engine_limits is not None
    assert counted[HELLO] >= 1
    assert counted[LISTEN] >= 1
    assert counted[WAIT] >= 1
    # Reports went batched: fewer calls than tasks (the Hatchet way takes two per task).
    assert 0 < counted[REPORT] < tasks
    assert (counted[LISTEN_V2], counted[SEND_EVENT], counted[SUBSCRIBE]) == (0, 0, 0)


@pytest.mark.parametrize("calls", [True], indirect=True)
def test_without_hewer_v1_our_sdk_uses_the_hatchet_calls(
    client: Hewer, in_process_worker: Any, counted: Calls
) -> None:
    tasks, worker = run_workload(client, in_process_worker)
    assert worker.engine_limits is None
    assert counted[HELLO] >= 1  # asked once per registration, answered UNIMPLEMENTED
    assert (counted[LISTEN], counted[REPORT]) == (0, 0)
    # The first Wait said UNIMPLEMENTED: that client never asks again.
    assert counted[WAIT] == 1
    assert counted[LISTEN_V2] >= 1
    assert counted[SUBSCRIBE] >= 1
    assert counted[SEND_EVENT] >= 2 * tasks  # STARTED and the outcome, one call each


def test_waiters_on_wait_get_their_results_across_an_engine_restart(
    tmp_path: Path, counted: Calls, database_url: str
) -> None:
    first = EngineThread(
        tmp_path, database_url=database_url, inactive_after=INACTIVE_AFTER
    ).start()
    port = first.engine.port
    hw = Hewer(settings=first.client_settings(heartbeat_interval=0.1, grace_period=5))
    gate = threading.Event()

    @hw.task(name="b-gated")
    def gated(input: Item, ctx: Context) -> dict[str, int]:
        gate.wait(30)
        return {"n": input.n}

    worker = hw.worker("survivor", slots=2, workflows=[gated])
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    second: EngineThread | None = None
    results: dict[str, Any] = {}
    waiters: list[threading.Thread] = []
    try:
        assert worker.ready.wait(20)
        sync_ref = gated.run_no_wait(Item(n=1))
        aio_ref = gated.run_no_wait(Item(n=2))

        def wait_sync() -> None:
            results["sync"] = sync_ref.result()

        def wait_aio() -> None:
            results["aio"] = asyncio.run(aio_ref.aio_result())

        waiters = [threading.Thread(target=f, daemon=True) for f in (wait_sync, wait_aio)]
        for waiter in waiters:
            waiter.start()
        wait_for(lambda: counted[WAIT] >= 2, what="both waiters on a Wait stream")
        wait_for(
            lambda: len(first.call(first.engine.store.tasks_running())) == 2,
            what="both tasks assigned",
        )
        first.stop()
        second = EngineThread(
            tmp_path, database_url=database_url, port=port, inactive_after=INACTIVE_AFTER
        ).start()
        gate.set()  # the tasks finish while everyone reconnects; the results must land
        for waiter in waiters:
            waiter.join(30)
        assert results == {"sync": {"n": 1}, "aio": {"n": 2}}
        assert counted[SUBSCRIBE] == 0
    finally:
        gate.set()
        worker.stop()
        thread.join(20)
        hw.close()
        if second is not None:
            second.stop()
        first.stop()
