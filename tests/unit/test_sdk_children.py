"""Runs triggered from inside a task: parent fields, child_index, sticky; and the per-run
options (desired labels, priority) every run method passes on."""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import pytest

from hewer import (
    ClientSettings,
    ConfigurationError,
    Context,
    DesiredWorkerLabel,
    Hewer,
    StandaloneTask,
    WorkerLabelComparator,
)
from hewer._proto.v1.shared import trigger_pb2
from hewer.sdk._context import TaskServices, current_context, enter_task
from hewer.sdk._runner import Runner
from hewer.sdk._services import WorkerServices
from hewer.sdk._worker import build_registry
from tests.unit.test_sdk_runner import COMPLETED, FakeServices, action, kinds, settle


class RecordingRuns:
    """Stands in for the client's RunClient: records trigger requests, answers run ids."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def _id(self, request: Any) -> str:
        self.requests.append(request)
        return f"child-{len(self.requests)}"

    def trigger(self, request: Any) -> str:
        return self._id(request)

    async def aio_trigger(self, request: Any) -> str:
        return self._id(request)

    def bulk_trigger(self, requests: Sequence[Any]) -> list[str]:
        return [self._id(r) for r in requests]

    async def aio_bulk_trigger(self, requests: Sequence[Any]) -> list[str]:
        return [self._id(r) for r in requests]


def client() -> tuple[Hewer, RecordingRuns]:
    hw = Hewer(settings=ClientSettings(token="t", host_port="localhost:1"))
    runs = RecordingRuns()
    hw._runs = runs  # type: ignore[assignment]
    return hw, runs


def child_task(hw: Hewer) -> StandaloneTask[dict[str, Any], None]:
    @hw.task(name="child")
    def child(input: dict[str, Any], ctx: Context) -> None:
        return None

    return child


def runner_for(*tasks: StandaloneTask[Any, Any]) -> Runner:
    return Runner(
        registry=build_registry([t.workflow for t in tasks]),
        services=cast(WorkerServices, FakeServices()),
        slots=4,
        max_message_bytes=4 * 1024 * 1024,
    )


def parent_fields(request: Any) -> tuple[str | None, str | None, int]:
    return (
        request.parent_id if request.HasField("parent_id") else None,
        request.parent_task_run_external_id
        if request.HasField("parent_task_run_external_id")
        else None,
        request.child_index,
    )


# --- outside a task ----------------------------------------------------------------------


def test_top_level_runs_have_no_parent() -> None:
    hw, runs = client()
    child = child_task(hw)
    child.run_no_wait({"n": 1})
    (request,) = runs.requests
    assert parent_fields(request) == (None, None, 0)
    assert request.HasField("child_index")  # always sent, 0 at the top level
    assert not request.HasField("desired_worker_id")
    assert current_context() is None


def test_sticky_outside_a_task_is_refused() -> None:
    hw, runs = client()
    child = child_task(hw)
    with pytest.raises(ConfigurationError, match="inside a running task"):
        child.run_no_wait({}, sticky=True)
    with pytest.raises(ConfigurationError, match="inside a running task"):
        child.run_many_no_wait([{}], sticky=True)
    with pytest.raises(ConfigurationError, match="inside a running task"):
        hw.runs.trigger("child", {}, sticky=True)
    assert runs.requests == []


async def test_sticky_outside_a_task_is_refused_async() -> None:
    hw, runs = client()
    child = child_task(hw)
    with pytest.raises(ConfigurationError, match="inside a running task"):
        await child.aio_run_no_wait({}, sticky=True)
    with pytest.raises(ConfigurationError, match="inside a running task"):
        await hw.runs.aio_trigger("child", {}, sticky=True)
    assert runs.requests == []


def test_unknown_run_options_are_refused() -> None:
    hw, runs = client()
    child = child_task(hw)
    with pytest.raises(TypeError, match="'priorty'"):
        child.run_no_wait({}, priorty=3)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="sticky"):
        child.run_no_wait({}, sticky="yes")  # type: ignore[arg-type]
    assert runs.requests == []


# --- per-run options ---------------------------------------------------------------------


def test_desired_worker_labels_and_priority_on_every_run_method() -> None:
    hw, runs = client()
    child = child_task(hw)
    labels = {
        "gpu": DesiredWorkerLabel("h100"),
        "memory": DesiredWorkerLabel(
            8, required=True, weight=5, comparator=WorkerLabelComparator.LESS_THAN
        ),
    }
    child.run_no_wait({}, desired_worker_labels=labels, priority=3)
    child.run_many_no_wait([{}, {}], desired_worker_labels=labels, priority=3)
    hw.runs.trigger("child", {}, desired_worker_labels=labels, priority=3)
    asyncio.run(child.aio_run_no_wait({}, desired_worker_labels=labels, priority=3))
    asyncio.run(child.aio_run_many_no_wait([{}], desired_worker_labels=labels, priority=3))
    asyncio.run(hw.runs.aio_trigger("child", {}, desired_worker_labels=labels, priority=3))

    assert len(runs.requests) == 7
    for request in runs.requests:
        assert request.name == "child"
        assert request.priority == 3
        gpu, memory = request.desired_worker_labels["gpu"], request.desired_worker_labels["memory"]
        assert gpu.str_value == "h100" and gpu.required is False
        assert gpu.HasField("comparator") and gpu.comparator == trigger_pb2.EQUAL
        assert not gpu.HasField("weight")
        assert memory.int_value == 8 and memory.required is True and memory.weight == 5
        assert memory.comparator == trigger_pb2.LESS_THAN


def test_bad_desired_labels_on_a_run() -> None:
    hw, runs = client()
    child = child_task(hw)
    with pytest.raises(ConfigurationError, match="DesiredWorkerLabel"):
        child.run_no_wait({}, desired_worker_labels={"gpu": "h100"})  # type: ignore[dict-item]
    assert runs.requests == []


# --- from inside a task ------------------------------------------------------------------


def spawning_parent(
    hw: Hewer, child: StandaloneTask[Any, Any], spawn: Callable[[Context], None]
) -> StandaloneTask[Any, Any]:
    @hw.task(name="parent")
    def parent(input: dict[str, Any], ctx: Context) -> None:
        spawn(ctx)

    return parent


def test_sync_task_children_name_their_parent_and_count_up() -> None:
    hw, runs = client()
    child = child_task(hw)

    def spawn(ctx: Context) -> None:
        child.run_no_wait({"n": 0})
        child.run_no_wait({"n": 1}, sticky=True)
        child.run_many_no_wait([{"n": 2}, {"n": 3}])
        hw.runs.trigger("child", {"n": 4}, sticky=True)

    parent = spawning_parent(hw, child, spawn)
    runner = runner_for(parent, child)

    async def go() -> None:
        runner.handle(action("parent:parent", run="task-run-9"))
        await settle(runner)

    asyncio.run(go())
    assert [json.loads(r.input)["n"] for r in runs.requests] == [0, 1, 2, 3, 4]
    for index, request in enumerate(runs.requests):
        # action() sends workflow run "wf-run" to worker "w-1".
        assert parent_fields(request) == ("wf-run", "task-run-9", index)
    sticky = [
        r.desired_worker_id if r.HasField("desired_worker_id") else None for r in runs.requests
    ]
    assert sticky == [None, "w-1", None, None, "w-1"]
    # The mark does not leak out of the task.
    assert current_context() is None


async def test_async_task_children_and_retries_start_over() -> None:
    hw, runs = client()
    child = child_task(hw)

    @hw.task(name="parent")
    async def parent(input: dict[str, Any], ctx: Context) -> None:
        await child.aio_run_no_wait({}, sticky=True)
        await child.aio_run_many_no_wait([{}, {}])
        await hw.runs.aio_trigger("child", {})

    runner = runner_for(parent, child)
    services = cast(FakeServices, runner._services)
    runner.handle(action("parent:parent", run="task-run-1"))
    await settle(runner)
    first_attempt = [parent_fields(r) for r in runs.requests]
    assert first_attempt == [("wf-run", "task-run-1", i) for i in range(4)]
    assert runs.requests[0].desired_worker_id == "w-1"
    assert not runs.requests[1].HasField("desired_worker_id")

    # A retry is a new attempt: its children are numbered from 0 again, so they line up
    # with the first attempt's ones.
    runs.requests.clear()
    runner.handle(replace(action("parent:parent", run="task-run-1"), retry_count=2))
    await settle(runner)
    assert [parent_fields(r)[2] for r in runs.requests] == [0, 1, 2, 3]
    assert kinds(services).count(COMPLETED) == 2
    assert current_context() is None


async def test_concurrent_tasks_keep_their_own_parent() -> None:
    hw, runs = client()
    child = child_task(hw)
    gate = asyncio.Event()

    @hw.task(name="parent")
    async def parent(input: dict[str, Any], ctx: Context) -> None:
        await gate.wait()
        for _ in range(3):
            await child.aio_run_no_wait({"from": ctx.task_run_external_id})
            await asyncio.sleep(0)

    runner = runner_for(parent, child)
    runner.handle(action("parent:parent", run="a"))
    runner.handle(action("parent:parent", run="b"))
    await asyncio.sleep(0.01)
    gate.set()
    await settle(runner)
    by_parent: dict[str, list[int]] = {}
    for request in runs.requests:
        assert json.loads(request.input)["from"] == request.parent_task_run_external_id
        by_parent.setdefault(request.parent_task_run_external_id, []).append(request.child_index)
    assert by_parent == {"a": [0, 1, 2], "b": [0, 1, 2]}


def test_threads_started_by_a_sync_task_are_not_inside_it() -> None:
    # Plain threads do not inherit context variables; a child triggered from one is a
    # top-level run (as with hatchet-sdk), and asking it to be sticky is refused.
    hw, runs = client()
    child = child_task(hw)
    errors: list[BaseException] = []

    def spawn(ctx: Context) -> None:
        def from_thread() -> None:
            try:
                child.run_no_wait({}, sticky=True)
            except ConfigurationError as exc:
                errors.append(exc)
            child.run_no_wait({})

        thread = threading.Thread(target=from_thread)
        thread.start()
        thread.join()
        contextvars.copy_context().run(child.run_no_wait, {})

    parent = spawning_parent(hw, child, spawn)
    runner = runner_for(parent, child)

    async def go() -> None:
        runner.handle(action("parent:parent", run="p"))
        await settle(runner)

    asyncio.run(go())
    assert len(errors) == 1
    top, inside = runs.requests
    assert parent_fields(top) == (None, None, 0)
    assert parent_fields(inside) == ("wf-run", "p", 0)


def test_enter_task_marks_only_the_current_context() -> None:
    ctx = Context(action("parent:parent"), services=cast(TaskServices, FakeServices()))
    marked = contextvars.copy_context()
    marked.run(enter_task, ctx)
    assert marked.run(current_context) is ctx
    assert current_context() is None
    assert [ctx._next_child_index() for _ in range(3)] == [0, 1, 2]
