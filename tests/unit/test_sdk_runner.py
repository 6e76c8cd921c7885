"""Running actions without an engine: events sent, payload formats, cancellation."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pydantic
import pytest
from pydantic import BaseModel

from hewer import ClientSettings, Context, Hewer, NonRetryableError, RetryAfter, TaskRunError
from hewer._proto import dispatcher_pb2
from hewer.sdk import _wire
from hewer.sdk._runner import Runner, failure_flags, failure_payload, parse_payload
from hewer.sdk._runs import run_outputs
from hewer.sdk._services import WorkerServices
from hewer.sdk._time import Backoff
from hewer.sdk._worker import build_registry


class In(BaseModel):
    x: int


class Out(BaseModel):
    y: int


class FixedClock:
    def now(self) -> datetime:
        return datetime(2025, 1, 1, tzinfo=UTC)

    def monotonic(self) -> float:
        return 0.0


class FakeDispatcher:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def SendStepActionEvent(self, event: Any, **kwargs: Any) -> Any:
        self.events.append(event)
        return dispatcher_pb2.ActionEventResponse()


class FakeServices:
    """The slice of WorkerServices the runner and Context use."""

    def __init__(self) -> None:
        self.aio_dispatcher = FakeDispatcher()
        self.metadata = (("authorization", "bearer t"),)
        self.clock = FixedClock()
        self.logs: list[tuple[str, str]] = []
        self.streams: list[tuple[bytes, int]] = []
        self.refreshes: list[str] = []

    def put_log(self, action: _wire.Action, message: str, level: str) -> None:
        self.logs.append((message, level))

    def put_stream(self, action: _wire.Action, data: bytes, index: int) -> None:
        self.streams.append((data, index))

    def refresh_timeout(self, action: _wire.Action, increment: str) -> None:
        self.refreshes.append(increment)


def action(action_id: str, kind: int = 0, payload: Any = None, run: str = "run-1") -> _wire.Action:
    return _wire.Action(
        worker_id="w-1",
        tenant_id="tenant",
        workflow_run_id="wf-run",
        job_id="job",
        job_name="job-name",
        job_run_id="job-run",
        task_id="task",
        task_run_external_id=run,
        action_id=action_id,
        kind=kind,
        payload=json.dumps(payload if payload is not None else {"input": {"x": 2}}),
        task_name=action_id.split(":")[1],
        retry_count=1,
        additional_metadata='{"k": "v"}',
        priority=1,
    )


def make_runner(*fns: Callable[..., Any]) -> tuple[Runner, FakeServices]:
    hw = Hewer(settings=ClientSettings(token="t", host_port="localhost:1"))
    workflows = [hw.task()(fn).workflow for fn in fns]
    services = FakeServices()
    runner = Runner(
        registry=build_registry(workflows),
        services=cast(WorkerServices, services),
        slots=2,
        max_message_bytes=4 * 1024 * 1024,
    )
    return runner, services


async def settle(runner: Runner) -> None:
    """Wait (with a deadline) until every started run and its reports are done."""
    async with asyncio.timeout(10):
        while runner.running:
            await asyncio.sleep(0.001)
    await runner.flush(5)


def kinds(services: FakeServices) -> list[int]:
    return [e.event_type for e in services.aio_dispatcher.events]


STARTED = dispatcher_pb2.STEP_EVENT_TYPE_STARTED
COMPLETED = dispatcher_pb2.STEP_EVENT_TYPE_COMPLETED
FAILED = dispatcher_pb2.STEP_EVENT_TYPE_FAILED
CANCELLED = dispatcher_pb2.STEP_EVENT_TYPE_CANCELLED


def double(input: In, ctx: Context) -> Out:
    return Out(y=input.x * 2)


async def adouble(input: In, ctx: Context) -> Out:
    return Out(y=input.x * 2)


@pytest.mark.parametrize("fn", [double, adouble])
async def test_success_sends_started_then_completed(fn: Callable[..., Any]) -> None:
    runner, services = make_runner(fn)
    runner.handle(action(f"{fn.__name__}:{fn.__name__}"))
    await settle(runner)
    assert kinds(services) == [STARTED, COMPLETED]
    done = services.aio_dispatcher.events[1]
    assert done.event_payload == '{"y":4}'
    # Every event echoes the assignment's ids.
    for event in services.aio_dispatcher.events:
        assert event.worker_id == "w-1"
        assert event.job_id == "job"
        assert event.job_run_id == "job-run"
        assert event.task_id == "task"
        assert event.task_run_external_id == "run-1"
        assert event.action_id == f"{fn.__name__}:{fn.__name__}"
        assert event.retry_count == 1
        assert event.event_timestamp.seconds == int(FixedClock().now().timestamp())


def boom(input: In, ctx: Context) -> Out:
    raise ValueError("bad things")


async def test_exception_sends_failed_with_type_message_and_traceback() -> None:
    runner, services = make_runner(boom)
    runner.handle(action("boom:boom"))
    await settle(runner)
    assert kinds(services) == [STARTED, FAILED]
    failed = services.aio_dispatcher.events[1]
    assert failed.event_payload.startswith("ValueError: bad things\nTraceback")
    assert 'raise ValueError("bad things")' in failed.event_payload
    assert failed.HasField("should_not_retry") and not failed.should_not_retry
    assert not failed.HasField("retry_after_ms")


def final(input: In, ctx: Context) -> None:
    raise NonRetryableError("give up")


async def later(input: In, ctx: Context) -> None:
    raise RetryAfter(timedelta(seconds=2.5))


async def test_non_retryable_and_retry_after_flags() -> None:
    runner, services = make_runner(final, later)
    runner.handle(action("final:final", run="r1"))
    runner.handle(action("later:later", run="r2"))
    await settle(runner)
    failed = {
        e.task_run_external_id: e for e in services.aio_dispatcher.events if e.event_type == FAILED
    }
    assert failed["r1"].should_not_retry
    assert failed["r1"].event_payload.startswith("NonRetryableError: give up")
    assert failed["r2"].retry_after_ms == 2500


async def test_invalid_input_fails_without_retry() -> None:
    runner, services = make_runner(double)
    runner.handle(action("double:double", payload={"input": {"x": "nope"}}))
    await settle(runner)
    failed = services.aio_dispatcher.events[-1]
    assert failed.event_type == FAILED
    assert failed.should_not_retry
    assert failed.event_payload.startswith("ValidationError:")


def returns_list(input: In, ctx: Context) -> list[int]:
    return [1]


async def test_non_object_output_fails_clearly() -> None:
    runner, services = make_runner(returns_list)
    runner.handle(action("returns_list:returns_list"))
    await settle(runner)
    failed = services.aio_dispatcher.events[-1]
    assert failed.event_type == FAILED
    assert "must return a dict, a pydantic model or None, got list" in failed.event_payload


async def test_unknown_action_is_reported_failed() -> None:
    runner, services = make_runner(double)
    runner.handle(action("nobody:here"))
    await settle(runner)
    assert kinds(services) == [STARTED, FAILED]
    assert "nobody:here" in services.aio_dispatcher.events[1].event_payload


def returns_none(input: In, ctx: Context) -> None:
    return None


async def test_none_output_completes_with_an_empty_object() -> None:
    runner, services = make_runner(returns_none)
    runner.handle(action("returns_none:returns_none"))
    await settle(runner)
    assert services.aio_dispatcher.events[-1].event_payload == "{}"


async def test_cancel_of_an_async_task_reports_only_that_it_ended() -> None:
    entered = asyncio.Event()

    async def waits(input: In, ctx: Context) -> Out:
        entered.set()
        await asyncio.Event().wait()
        return Out(y=0)

    runner, services = make_runner(waits)
    runner.handle(action("waits:waits"))
    await entered.wait()
    runner.handle(action("waits:waits", kind=1))
    await settle(runner)
    # No result, only CANCELLED: the body is over, so the engine may free its slot.
    assert kinds(services) == [STARTED, CANCELLED]


async def test_cancel_of_a_sync_task_sets_the_flag_and_drops_the_result() -> None:
    entered = threading.Event()
    seen: list[bool] = []

    def spins(input: In, ctx: Context) -> Out:
        entered.set()
        ctx.cancelled.wait(10)
        seen.append(ctx.is_cancelled)
        return Out(y=1)

    runner, services = make_runner(spins)
    runner.handle(action("spins:spins"))
    await asyncio.to_thread(entered.wait, 10)
    runner.handle(action("spins:spins", kind=1))
    await settle(runner)
    assert seen == [True]
    assert kinds(services) == [STARTED, CANCELLED]


async def test_duplicate_assignment_runs_once() -> None:
    calls: list[int] = []

    async def counted(input: In, ctx: Context) -> None:
        calls.append(1)
        await asyncio.sleep(0)

    runner, _ = make_runner(counted)
    runner.handle(action("counted:counted"))
    runner.handle(action("counted:counted"))
    await settle(runner)
    assert calls == [1]


async def test_drain_waits_for_running_tasks_and_reports_them() -> None:
    release = asyncio.Event()

    async def slow(input: In, ctx: Context) -> Out:
        await release.wait()
        return Out(y=9)

    runner, services = make_runner(slow)
    runner.handle(action("slow:slow"))
    await asyncio.sleep(0)
    drain = asyncio.create_task(runner.drain(30))
    await asyncio.sleep(0)
    assert not drain.done()
    release.set()
    await drain
    assert kinds(services) == [STARTED, COMPLETED]


def test_failure_payload_format() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        text = failure_payload(exc)
    first, rest = text.split("\n", 1)
    assert first == "KeyError: 'missing'"
    assert rest.startswith("Traceback (most recent call last):")
    assert rest.rstrip().endswith("KeyError: 'missing'")


def test_failure_flags() -> None:
    assert failure_flags(ValueError()) == (False, None)
    assert failure_flags(NonRetryableError()) == (True, None)
    assert failure_flags(RetryAfter(timedelta(milliseconds=1500))) == (False, 1500)
    try:
        In.model_validate({})
    except pydantic.ValidationError as exc:
        assert failure_flags(exc) == (True, None)


def test_parse_payload_tolerates_garbage() -> None:
    assert parse_payload("") == {}
    assert parse_payload("not json") == {}
    assert parse_payload("[1]") == {}
    assert parse_payload('{"input": {"x": 1}}') == {"input": {"x": 1}}


def test_run_outputs_success_and_failure() -> None:
    ok = _wire.RunEvent(
        "r", (_wire.TaskResult("a", '{"v":1}', None), _wire.TaskResult("b", None, None))
    )
    assert run_outputs(ok) == {"a": {"v": 1}, "b": None}

    failed = _wire.RunEvent(
        "r", (_wire.TaskResult("a", '{"v":1}', None), _wire.TaskResult("b", None, "boom"))
    )
    with pytest.raises(TaskRunError) as info:
        run_outputs(failed)
    assert (info.value.run_id, info.value.status, info.value.errors) == (
        "r",
        "FAILED",
        {"b": "boom"},
    )

    cancelled = _wire.RunEvent("r", (_wire.TaskResult("a", None, "task was cancelled"),))
    with pytest.raises(TaskRunError) as info:
        run_outputs(cancelled)
    assert info.value.status == "CANCELLED"


def test_run_event_from_proto() -> None:
    message = dispatcher_pb2.WorkflowRunEvent(
        workflow_run_id="r",
        results=[
            dispatcher_pb2.StepRunResult(task_name="a", output='{"x":1}'),
            dispatcher_pb2.StepRunResult(task_name="b", error="bad"),
        ],
    )
    event = _wire.RunEvent.from_proto(message)
    assert event == _wire.RunEvent(
        "r", (_wire.TaskResult("a", '{"x":1}', None), _wire.TaskResult("b", None, "bad"))
    )


def test_action_from_proto() -> None:
    message = dispatcher_pb2.AssignedAction(
        workflow_run_id="wr",
        task_run_external_id="tr",
        action_id="a:b",
        action_type=dispatcher_pb2.CANCEL_STEP_RUN,
        action_payload="{}",
        retry_count=2,
    )
    parsed = _wire.Action.from_proto(message, "w")
    assert parsed.kind == _wire.ActionKind.CANCEL
    assert (parsed.worker_id, parsed.retry_count, parsed.additional_metadata) == ("w", 2, None)


def test_backoff_doubles_and_caps() -> None:
    backoff = Backoff(initial=0.1, cap=5.0)
    no_jitter = [backoff.delay(n, rng=lambda: 0.0) for n in range(8)]
    assert no_jitter == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    assert backoff.delay(3, rng=lambda: 1.0) == pytest.approx(0.4)
    assert backoff.delay(10_000, rng=lambda: 0.0) == 5.0
