"""The batching reporter (hewer.v1 Report) on its own and under the runner: batching while a
call is in flight, no linger, coalescing STARTED into its outcome, retries in order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import grpc
import pytest
from pydantic import BaseModel

from hewer import ClientSettings, Context, Hewer
from hewer._proto import dispatcher_pb2
from hewer._proto.hewer.v1 import worker_pb2
from hewer.sdk import _wire
from hewer.sdk._reporter import BatchReporter, EventReporter
from hewer.sdk._runner import Runner
from hewer.sdk._services import WorkerServices
from hewer.sdk._time import Backoff
from hewer.sdk._worker import build_registry

STARTED = dispatcher_pb2.STEP_EVENT_TYPE_STARTED
COMPLETED = dispatcher_pb2.STEP_EVENT_TYPE_COMPLETED
FAILED = dispatcher_pb2.STEP_EVENT_TYPE_FAILED
CANCELLED = dispatcher_pb2.STEP_EVENT_TYPE_CANCELLED
AT = datetime(2025, 1, 1, tzinfo=UTC)
FAST = Backoff(initial=0.001, cap=0.002)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> datetime:
        return AT

    def monotonic(self) -> float:
        return self.t


class Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._code.name


class FakeReport:
    """``send(request, deadline)`` for the reporter: records each call's events; a call
    returns when the test releases it (or at once with ``hold=False``); ``failures`` are
    raised by the next calls, one each."""

    def __init__(self, hold: bool = True) -> None:
        self.hold = hold
        self.calls: list[list[tuple[int, str]]] = []
        self.release: list[asyncio.Event] = []
        self.failures: list[grpc.StatusCode] = []

    async def __call__(self, request: Any, deadline: float) -> Any:
        self.calls.append([(e.event_type, e.task_run_external_id) for e in request.events])
        gate = asyncio.Event()
        self.release.append(gate)
        if self.hold:
            await gate.wait()
        if self.failures:
            raise Failure(self.failures.pop(0))
        return worker_pb2.ReportResults(
            results=[worker_pb2.ReportResult(applied=True) for _ in request.events]
        )


def action(run: str, retry_count: int = 0) -> _wire.Action:
    return _wire.Action(
        worker_id="w-1",
        tenant_id="t",
        workflow_run_id="wr",
        job_id="j",
        job_name="x",
        job_run_id=run,
        task_id="s",
        task_run_external_id=run,
        action_id="a:x",
        kind=0,
        payload="{}",
        task_name="x",
        retry_count=retry_count,
        additional_metadata=None,
        priority=1,
    )


def event(run: str, kind: _wire.EventKind, retry_count: int = 0, payload: str = "") -> Any:
    return _wire.step_event(action(run, retry_count), kind, AT, payload=payload)


def reporter(
    send: FakeReport,
    *,
    max_per_call: int = 100,
    max_bytes: int = 1 << 20,
    clock: Clock | None = None,
    fallback: EventReporter | None = None,
    give_up_after: float = 60.0,
) -> BatchReporter:
    return BatchReporter(
        send,
        max_per_call=max_per_call,
        max_bytes=max_bytes,
        clock=clock or Clock(),
        fallback=fallback,
        backoff=FAST,
        give_up_after=give_up_after,
    )


async def until(condition: Callable[[], object], what: str = "") -> None:
    """Poll (on the loop) until ``condition()`` holds, with a deadline."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.001)


async def test_a_lone_event_goes_out_at_once() -> None:
    send = FakeReport(hold=False)
    batch = reporter(send)
    done = batch.report(event("r1", _wire.EventKind.COMPLETED))
    # No timer: the call is made on the loop's next turn.
    for _ in range(3):
        await asyncio.sleep(0)
    assert send.calls == [[(COMPLETED, "r1")]]
    await until(done.done)


async def test_what_arrives_while_a_call_is_in_flight_goes_in_the_next_one() -> None:
    send = FakeReport()
    batch = reporter(send)
    first = batch.report(event("r1", _wire.EventKind.COMPLETED))
    await until(lambda: len(send.calls) == 1)
    later = [batch.report(event(f"r{i}", _wire.EventKind.COMPLETED)) for i in (2, 3, 4)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(send.calls) == 1  # one call in flight at a time
    assert not first.done()  # a waiter completes when its call returns
    send.release[0].set()
    await until(lambda: len(send.calls) == 2)
    assert first.done() and not any(w.done() for w in later)
    assert send.calls[1] == [(COMPLETED, "r2"), (COMPLETED, "r3"), (COMPLETED, "r4")]
    send.release[1].set()
    await until(lambda: all(w.done() for w in later))
    assert (batch.calls, batch.sent) == (2, 4)


async def test_a_queued_started_is_dropped_when_its_outcome_is_queued() -> None:
    send = FakeReport()
    batch = reporter(send)
    batch.report(event("busy", _wire.EventKind.COMPLETED))
    await until(lambda: len(send.calls) == 1)
    started = batch.report_start(action("r1"), AT)
    other = batch.report_start(action("r2"), AT)
    outcome = batch.report(event("r1", _wire.EventKind.COMPLETED))
    # A different attempt of the same task is not the same start.
    retried = batch.report_start(action("r3", retry_count=0), AT)
    failed_again = batch.report(event("r3", _wire.EventKind.FAILED, retry_count=1))
    assert batch.queued == 4
    send.release[0].set()
    await until(lambda: len(send.calls) == 2)
    assert send.calls[1] == [
        (STARTED, "r2"),
        (COMPLETED, "r1"),
        (STARTED, "r3"),
        (FAILED, "r3"),
    ]
    assert batch.coalesced == 1
    # The dropped STARTED's waiter completes with the call that carried its outcome.
    assert not started.done()
    send.release[1].set()
    await until(lambda: all(w.done() for w in (started, other, outcome, retried, failed_again)))


async def test_a_started_already_on_its_way_is_never_overtaken_by_its_outcome() -> None:
    send = FakeReport()
    batch = reporter(send)
    batch.report_start(action("r1"), AT)
    await until(lambda: len(send.calls) == 1)
    done = batch.report(event("r1", _wire.EventKind.CANCELLED))
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(send.calls) == 1
    send.release[0].set()
    await until(lambda: len(send.calls) == 2)
    assert send.calls == [[(STARTED, "r1")], [(CANCELLED, "r1")]]
    assert batch.coalesced == 0
    send.release[1].set()
    await until(done.done)


async def test_transient_failures_retry_the_batch_in_place_keeping_order() -> None:
    send = FakeReport(hold=False)
    send.failures = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED]
    batch = reporter(send)
    first = [batch.report_start(action("r1"), AT), batch.report_start(action("r2"), AT)]
    await until(lambda: len(send.calls) >= 1)
    # Queued while the first batch is being retried: goes after it, and the STARTED
    # already in that batch is not dropped.
    second = batch.report(event("r1", _wire.EventKind.COMPLETED))
    await until(second.done)
    assert send.calls == [
        [(STARTED, "r1"), (STARTED, "r2")],
        [(STARTED, "r1"), (STARTED, "r2")],
        [(STARTED, "r1"), (STARTED, "r2")],
        [(COMPLETED, "r1")],
    ]
    assert all(w.done() for w in first)
    assert batch.calls == 2  # retries are not new calls


async def test_a_batch_is_given_up_after_the_give_up_time_and_the_next_one_goes() -> None:
    clock = Clock()
    send = FakeReport(hold=False)
    batch = reporter(send, clock=clock, give_up_after=30.0)

    async def failing(request: Any, deadline: float) -> Any:
        clock.t += 20.0
        await send(request, deadline)
        raise Failure(grpc.StatusCode.UNAVAILABLE)

    batch._send = failing
    lost = batch.report(event("r1", _wire.EventKind.COMPLETED))
    await until(lost.done)
    assert len(send.calls) == 2  # tried at t=20 and t=40, then gave up
    batch._send = send
    after = batch.report(event("r2", _wire.EventKind.COMPLETED))
    await until(after.done)
    assert send.calls[-1] == [(COMPLETED, "r2")]


async def test_calls_stay_within_the_count_and_size_limits() -> None:
    send = FakeReport(hold=False)
    batch = reporter(send, max_per_call=3)
    waiters = [batch.report(event(f"r{i}", _wire.EventKind.COMPLETED)) for i in range(7)]
    await until(lambda: all(w.done() for w in waiters))
    assert [len(c) for c in send.calls] == [3, 3, 1]

    big = "x" * 1000
    size = event("r", _wire.EventKind.COMPLETED, payload=big).ByteSize()
    send2 = FakeReport(hold=False)
    by_size = reporter(send2, max_bytes=2 * size + 40)
    waiters = [
        by_size.report(event(f"r{i}", _wire.EventKind.COMPLETED, payload=big)) for i in range(5)
    ]
    await until(lambda: all(w.done() for w in waiters))
    assert [len(c) for c in send2.calls] == [2, 2, 1]
    # A report bigger than the budget still goes, alone.
    huge = by_size.report(event("h", _wire.EventKind.COMPLETED, payload="y" * 5000))
    await until(huge.done)
    assert send2.calls[-1] == [(COMPLETED, "h")]


class FakeDispatcher:
    def __init__(self) -> None:
        self.events: list[tuple[int, str]] = []

    async def SendStepActionEvent(self, event: Any, **kwargs: Any) -> Any:
        self.events.append((event.event_type, event.task_run_external_id))
        await asyncio.sleep(0)
        return dispatcher_pb2.ActionEventResponse()


async def test_unimplemented_falls_back_to_one_call_per_event_in_order() -> None:
    dispatcher = FakeDispatcher()
    fallback = EventReporter(lambda: dispatcher, lambda: (), Clock(), backoff=FAST)
    send = FakeReport(hold=False)
    send.failures = [grpc.StatusCode.UNIMPLEMENTED]
    batch = reporter(send, fallback=fallback)
    waiters = [
        batch.report_start(action("r1"), AT),
        batch.report(event("r2", _wire.EventKind.COMPLETED)),
    ]
    await until(lambda: all(w.done() for w in waiters))
    assert dispatcher.events == [(STARTED, "r1"), (COMPLETED, "r2")]
    assert batch.unimplemented
    later = batch.report(event("r3", _wire.EventKind.FAILED))
    await until(later.done)
    assert dispatcher.events[-1] == (FAILED, "r3")
    assert len(send.calls) == 1  # never asked again


async def test_a_refused_batch_is_sent_again_one_report_at_a_time() -> None:
    send = FakeReport(hold=False)
    send.failures = [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT]
    batch = reporter(send)
    waiters = [batch.report(event(f"r{i}", _wire.EventKind.COMPLETED)) for i in range(3)]
    await until(lambda: all(w.done() for w in waiters))
    # The batch, then each alone: the first alone is refused too, the others get through.
    assert send.calls == [
        [(COMPLETED, "r0"), (COMPLETED, "r1"), (COMPLETED, "r2")],
        [(COMPLETED, "r0")],
        [(COMPLETED, "r1")],
        [(COMPLETED, "r2")],
    ]


async def test_flush_waits_for_everything_queued() -> None:
    send = FakeReport()
    batch = reporter(send)
    batch.report(event("r1", _wire.EventKind.COMPLETED))
    await until(lambda: len(send.calls) == 1)
    batch.report(event("r2", _wire.EventKind.COMPLETED))
    flush = asyncio.create_task(batch.flush(5))
    send.release[0].set()
    await until(lambda: len(send.calls) == 2)
    assert not flush.done()
    send.release[1].set()
    await asyncio.wait_for(flush, 5)
    # Nothing in flight: returns at once.
    await asyncio.wait_for(batch.flush(5), 1)


# --- under the runner ------------------------------------------------------------------


class In(BaseModel):
    x: int


class BatchServices:
    """What the runner uses, with a hewer.v1 Report call and no SendStepActionEvent."""

    def __init__(self, send: FakeReport) -> None:
        self.report = send
        self.metadata = (("authorization", "bearer t"),)
        self.clock = Clock()
        self.on_slot_released: Any = None

    @property
    def aio_dispatcher(self) -> Any:
        raise AssertionError("the Hatchet call is not used with hewer.v1")


LIMITS = _wire.EngineLimits(
    "v", max_actions_per_batch=10, max_reports_per_call=100, max_runs_per_wait=10
)


def batched_runner(send: FakeReport, *fns: Callable[..., Any]) -> Runner:
    hw = Hewer(settings=ClientSettings(token="t", host_port="localhost:1"))
    return Runner(
        registry=build_registry([hw.task()(fn).workflow for fn in fns]),
        services=cast(WorkerServices, BatchServices(send)),
        slots=4,
        max_message_bytes=4 * 1024 * 1024,
        engine=lambda: LIMITS,
    )


def start(action_id: str, run: str, kind: int = 0) -> _wire.Action:
    return _wire.Action(
        worker_id="w-1",
        tenant_id="t",
        workflow_run_id="wr",
        job_id="j",
        job_name="x",
        job_run_id=run,
        task_id="s",
        task_run_external_id=run,
        action_id=action_id,
        kind=kind,
        payload=json.dumps({"input": {"x": 2}}),
        task_name=action_id.split(":")[1],
        retry_count=0,
        additional_metadata=None,
        priority=1,
    )


async def quick(input: In, ctx: Context) -> dict[str, int]:
    return {"y": input.x}


def squick(input: In, ctx: Context) -> dict[str, int]:
    return {"y": input.x}


async def settle(runner: Runner) -> None:
    await until(lambda: not runner.running)
    await runner.flush(5)


async def test_runner_batches_a_burst_and_coalesces_the_starts_of_quick_async_tasks() -> None:
    send = FakeReport(hold=False)
    runner = batched_runner(send, quick)
    for i in range(6):
        runner.handle(start("quick:quick", f"r{i}"))
    await settle(runner)
    # The six bodies finished before the sender got to their STARTED: one call, outcomes
    # only, in order.
    assert send.calls == [[(COMPLETED, f"r{i}") for i in range(6)]]


async def test_runner_sends_started_first_for_a_body_that_takes_time() -> None:
    send = FakeReport(hold=False)
    release = asyncio.Event()

    async def slow(input: In, ctx: Context) -> dict[str, int]:
        await release.wait()
        return {"y": 1}

    runner = batched_runner(send, slow)
    runner.handle(start("slow:slow", "r1"))
    await until(lambda: send.calls == [[(STARTED, "r1")]])
    release.set()
    await settle(runner)
    assert send.calls == [[(STARTED, "r1")], [(COMPLETED, "r1")]]


async def test_runner_sync_tasks_report_started_before_outcome() -> None:
    send = FakeReport(hold=False)
    runner = batched_runner(send, squick)
    for i in range(4):
        runner.handle(start("squick:squick", f"r{i}"))
    await settle(runner)
    events = [e for call in send.calls for e in call]
    for i in range(4):
        mine = [kind for kind, run in events if run == f"r{i}"]
        assert mine in ([COMPLETED], [STARTED, COMPLETED])


async def test_runner_cancel_in_batched_mode_reports_only_that_it_ended() -> None:
    send = FakeReport(hold=False)
    entered = asyncio.Event()

    async def waits(input: In, ctx: Context) -> None:
        entered.set()
        await asyncio.Event().wait()

    runner = batched_runner(send, waits)
    runner.handle(start("waits:waits", "r1"))
    await entered.wait()
    runner.handle(start("waits:waits", "r1", kind=1))
    await settle(runner)
    events = [e for call in send.calls for e in call]
    assert [kind for kind, _ in events] in ([STARTED, CANCELLED], [CANCELLED])
    # A cancel for an attempt not running here is answered CANCELLED, batched too.
    runner.handle(start("waits:waits", "nobody", kind=1))
    await until(lambda: [e for c in send.calls for e in c][-1] == (CANCELLED, "nobody"))


@pytest.mark.parametrize("fn", [quick, squick])
async def test_runner_queue_stays_bounded_by_what_runs(fn: Callable[..., Any]) -> None:
    send = FakeReport()
    runner = batched_runner(send, fn)
    runner.handle(start(f"{fn.__name__}:{fn.__name__}", "first"))
    await until(lambda: len(send.calls) == 1)
    for i in range(3):
        runner.handle(start(f"{fn.__name__}:{fn.__name__}", f"r{i}"))
    batch = runner._batch
    assert batch is not None
    await until(lambda: len(runner._runs) == 4 and all(r.returned for r in runner._runs.values()))
    # At most a STARTED and an outcome per running attempt while a call is in flight.
    assert 3 <= batch.queued <= 2 * runner.running
    send.hold = False
    for gate in send.release:
        gate.set()
    await settle(runner)
