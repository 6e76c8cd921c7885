"""Task and workflow definitions, and the handles users trigger runs with.

A ``Workflow`` is a DAG of ``Task``s registered under one name. ``@hw.task`` makes a
``StandaloneTask``: a workflow of the same name holding just that task, whose run methods
return the task's own output instead of the ``{task: output}`` map.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, Protocol, TypeAlias, TypeVar, Unpack, overload

from pydantic import BaseModel

from hewer.errors import ConfigurationError
from hewer.sdk import _serde, _trigger, _triggers, _wire
from hewer.sdk._conditions import ParentCondition
from hewer.sdk._context import Context, current_context
from hewer.sdk._core import ClientCore
from hewer.sdk._durable import DurableContext, Spawned, current_durable
from hewer.sdk._options import (
    DURABLE_SLOT_TYPE,
    DurableTaskKwargs,
    TaskKwargs,
    TaskOptions,
    TriggerKwargs,
    WorkflowKwargs,
    WorkflowOptions,
)
from hewer.sdk._runs import run_outputs

InT = TypeVar("InT")
OutT = TypeVar("OutT")
ResultT = TypeVar("ResultT")
FnInT = TypeVar("FnInT")
FnOutT = TypeVar("FnOutT")

TaskInput: TypeAlias = InT | Mapping[str, Any] | None


class Task(Generic[InT, OutT]):
    """One function of a workflow, with its options; also what ``parents=`` and
    ``ctx.task_output()`` refer to."""

    name: str
    workflow: Workflow[Any]

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str,
        workflow: Workflow[Any],
        options: TaskOptions,
        parents: Sequence[Task[Any, Any]] = (),
    ) -> None:
        _serde.check_task_signature(fn)
        for parent in parents:
            if parent.workflow is not workflow:
                raise ConfigurationError(
                    f"task {name!r}: parent {parent.name!r} belongs to another workflow"
                )
        for _, _, condition in options.conditions():
            if isinstance(condition, ParentCondition) and condition.parent not in parents:
                raise ConfigurationError(
                    f"task {name!r}: a ParentCondition names {condition.parent.name!r}, "
                    "which is not one of its parents"
                )
        self.fn = fn
        self.name = name
        self.workflow = workflow
        self.options = options
        self.parents: tuple[Task[Any, Any], ...] = tuple(parents)
        self.is_async = inspect.iscoroutinefunction(fn)
        if options.durable and not self.is_async:
            raise ConfigurationError(
                f"durable task {name!r} must be an async function: its waits are awaited "
                "on the worker's loop"
            )
        self.input_model: type[BaseModel] | None = (
            _serde.input_model_of(fn) or workflow.input_validator
        )
        self.output_model: type[BaseModel] | None = _serde.output_model_of(fn)

    @property
    def action_id(self) -> str:
        """``<namespaced workflow name>:<task name>``, lowercased: what workers register."""
        return f"{self.workflow.namespaced_name.lower()}:{self.name.lower()}"

    def spec(self) -> _wire.TaskSpec:
        """How this task is registered with the engine."""
        return _wire.TaskSpec(
            readable_id=self.name,
            action=self.action_id,
            parents=tuple(p.name for p in self.parents),
            options=self.options,
            namespace=self.workflow._client.namespaced,
        )

    def validate_input(self, raw: Any) -> Any:
        """Input as the function takes it (a model instance when the function names one)."""
        return _serde.validate_input(raw, self.input_model)

    def parse_output(self, raw: Any) -> OutT:
        """This task's output (from the engine's JSON) as callers see it."""
        result: OutT = _serde.parse_output(raw, self.output_model)
        return result

    def __repr__(self) -> str:
        return f"<Task {self.workflow.name}:{self.name}>"


class RunRef(Generic[ResultT]):
    """A triggered run: its id, and a way to wait for its result."""

    def __init__(
        self, run_id: str, client: ClientCore, convert: Callable[[_wire.RunEvent], ResultT]
    ) -> None:
        self.run_id = run_id
        self._client = client
        self._convert = convert

    def result(self) -> ResultT:
        """Block until the run finishes; raises TaskRunError if it failed."""
        return self._convert(self._client._runs.wait(self.run_id))

    async def aio_result(self) -> ResultT:
        """Wait until the run finishes; raises TaskRunError if it failed."""
        return self._convert(await self._client._runs.aio_wait(self.run_id))

    def __repr__(self) -> str:
        return f"<RunRef {self.run_id}>"


class _Runnable(Generic[InT, ResultT]):
    """Run methods shared by workflows and standalone tasks."""

    _client: ClientCore

    @property
    def _workflow(self) -> Workflow[Any]:
        raise NotImplementedError

    @property
    def _input_model(self) -> type[BaseModel] | None:
        raise NotImplementedError

    def _convert_outputs(self, outputs: dict[str, Any]) -> ResultT:
        raise NotImplementedError

    def _convert(self, event: _wire.RunEvent) -> ResultT:
        return self._convert_outputs(run_outputs(event))

    async def _durable_result(self, ctx: DurableContext, child: Spawned) -> ResultT:
        return self._convert_outputs(await ctx.child_outputs(child, self._workflow.name))

    def _request(self, input: TaskInput[InT], options: TriggerKwargs) -> Any:
        return _trigger.trigger_request(
            self._workflow.namespaced_name, _serde.input_json(input, self._input_model), options
        )

    def _ref(self, run_id: str) -> RunRef[ResultT]:
        return RunRef(run_id, self._client, self._convert)

    def run_no_wait(
        self, input: TaskInput[InT] = None, **options: Unpack[TriggerKwargs]
    ) -> RunRef[ResultT]:
        """Trigger a run and return at once.

        Options: ``additional_metadata``, ``priority``, ``desired_worker_labels``, and
        ``sticky`` (from inside a task only).
        """
        request = self._request(input, options)
        return self._ref(self._client._runs.trigger(request))

    async def aio_run_no_wait(
        self, input: TaskInput[InT] = None, **options: Unpack[TriggerKwargs]
    ) -> RunRef[ResultT]:
        """Trigger a run and return at once (options as ``run_no_wait``)."""
        request = self._request(input, options)
        durable = current_durable(current_context())
        if durable is not None:
            # Through the task's log: a later invocation gets this run, not a second one.
            (child,) = await durable.spawn([request])
            return self._ref(child.run_id)
        return self._ref(await self._client._runs.aio_trigger(request))

    def run(self, input: TaskInput[InT] = None, **options: Unpack[TriggerKwargs]) -> ResultT:
        """Trigger a run and block until its result; raises TaskRunError if it failed
        (options as ``run_no_wait``)."""
        return self.run_no_wait(input, **options).result()

    async def aio_run(
        self, input: TaskInput[InT] = None, **options: Unpack[TriggerKwargs]
    ) -> ResultT:
        """Trigger a run and wait for its result; raises TaskRunError if it failed
        (options as ``run_no_wait``)."""
        durable = current_durable(current_context())
        if durable is not None:
            (child,) = await durable.spawn([self._request(input, options)])
            return await self._durable_result(durable, child)
        ref = await self.aio_run_no_wait(input, **options)
        return await ref.aio_result()

    def run_many_no_wait(
        self, inputs: Sequence[TaskInput[InT]], **options: Unpack[TriggerKwargs]
    ) -> list[RunRef[ResultT]]:
        """Trigger one run per input in bulk, each with ``options``; returns their refs in
        order."""
        requests = [self._request(i, options) for i in inputs]
        return [self._ref(run_id) for run_id in self._client._runs.bulk_trigger(requests)]

    async def aio_run_many_no_wait(
        self, inputs: Sequence[TaskInput[InT]], **options: Unpack[TriggerKwargs]
    ) -> list[RunRef[ResultT]]:
        """Trigger one run per input in bulk, each with ``options``; returns their refs in
        order."""
        requests = [self._request(i, options) for i in inputs]
        durable = current_durable(current_context())
        if durable is not None:
            return [self._ref(child.run_id) for child in await durable.spawn(requests)]
        run_ids = await self._client._runs.aio_bulk_trigger(requests)
        return [self._ref(run_id) for run_id in run_ids]

    def run_many(
        self, inputs: Sequence[TaskInput[InT]], **options: Unpack[TriggerKwargs]
    ) -> list[ResultT]:
        """Trigger one run per input and block until all finish; results in input order."""
        refs = self.run_many_no_wait(inputs, **options)
        events = self._client._runs.wait_many([ref.run_id for ref in refs])
        return [self._convert(event) for event in events]

    async def aio_run_many(
        self, inputs: Sequence[TaskInput[InT]], **options: Unpack[TriggerKwargs]
    ) -> list[ResultT]:
        """Trigger one run per input and wait until all finish; results in input order."""
        durable = current_durable(current_context())
        if durable is not None:
            children = await durable.spawn([self._request(i, options) for i in inputs])
            waits = [asyncio.ensure_future(self._durable_result(durable, c)) for c in children]
            try:
                return list(await asyncio.gather(*waits))
            except BaseException:
                for wait in waits:  # the first failure ends the call: the others stop too
                    wait.cancel()
                raise
        refs = await self.aio_run_many_no_wait(inputs, **options)
        return list(await asyncio.gather(*(ref.aio_result() for ref in refs)))

    def _schedule_request(
        self,
        run_at: datetime | Sequence[datetime],
        input: TaskInput[InT],
        additional_metadata: Mapping[str, Any] | None,
        priority: int | None,
    ) -> Any:
        times = [run_at] if isinstance(run_at, datetime) else list(run_at)
        wf = self._workflow
        return _triggers.schedule_request(
            wf.namespaced_name,
            times,
            _serde.input_json(input, self._input_model),
            additional_metadata,
            priority,
        )

    def schedule(
        self,
        run_at: datetime | Sequence[datetime],
        input: TaskInput[InT] = None,
        *,
        additional_metadata: Mapping[str, Any] | None = None,
        priority: int | None = None,
    ) -> list[_triggers.ScheduledRun]:
        """Start a run at ``run_at`` (an aware datetime, or several: one run each); it
        survives engine restarts and can be deleted with ``hw.scheduled.delete`` until it
        fires."""
        request = self._schedule_request(run_at, input, additional_metadata, priority)
        return _triggers.schedule(self._client, request)

    async def aio_schedule(
        self,
        run_at: datetime | Sequence[datetime],
        input: TaskInput[InT] = None,
        *,
        additional_metadata: Mapping[str, Any] | None = None,
        priority: int | None = None,
    ) -> list[_triggers.ScheduledRun]:
        """Start a run at ``run_at`` (as ``schedule``)."""
        request = self._schedule_request(run_at, input, additional_metadata, priority)
        return await _triggers.aio_schedule(self._client, request)


def durable_options(options: DurableTaskKwargs) -> TaskOptions:
    """``TaskOptions`` of a durable task: on the durable slot pool unless told otherwise."""
    kwargs: dict[str, Any] = dict(options)
    kwargs.setdefault("slot_requests", {DURABLE_SLOT_TYPE: 1})
    return TaskOptions(durable=True, **kwargs)


class DurableTaskDecorator(Protocol):
    """What ``workflow.durable_task(...)`` returns: turns an async function into a ``Task``."""

    def __call__(
        self, fn: Callable[[FnInT, DurableContext], Coroutine[Any, Any, FnOutT]], /
    ) -> Task[FnInT, FnOutT]: ...


class TaskDecorator(Protocol):
    """What ``workflow.task(...)`` returns: turns a function into a ``Task``."""

    @overload
    def __call__(
        self, fn: Callable[[FnInT, Context], Coroutine[Any, Any, FnOutT]], /
    ) -> Task[FnInT, FnOutT]: ...

    @overload
    def __call__(self, fn: Callable[[FnInT, Context], FnOutT], /) -> Task[FnInT, FnOutT]: ...


class Workflow(_Runnable[InT, dict[str, Any]]):
    """A named DAG of tasks; its runs return ``{task name: output}`` for every task."""

    def __init__(
        self,
        client: ClientCore,
        name: str,
        *,
        input_validator: type[BaseModel] | None = None,
        **options: Unpack[WorkflowKwargs],
    ) -> None:
        if not name:
            raise ConfigurationError("a workflow needs a name")
        self._client = client
        self.name = name
        self.input_validator = input_validator
        self.options = WorkflowOptions(**options)
        self.tasks: list[Task[Any, Any]] = []
        self.on_failure: Task[Any, Any] | None = None

    @property
    def default_priority(self) -> int | None:
        """Priority of runs triggered without one."""
        return self.options.default_priority

    @property
    def namespaced_name(self) -> str:
        """The name the engine knows this workflow by."""
        return self._client.namespaced(self.name)

    @property
    def _workflow(self) -> Workflow[Any]:
        return self

    @property
    def _input_model(self) -> type[BaseModel] | None:
        if self.input_validator is not None:
            return self.input_validator
        roots = [t.input_model for t in self.tasks if not t.parents and t.input_model]
        return roots[0] if roots else None

    def _convert_outputs(self, outputs: dict[str, Any]) -> dict[str, Any]:
        return outputs

    def add_task(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        options: TaskOptions | None = None,
        parents: Sequence[Task[Any, Any]] = (),
    ) -> Task[Any, Any]:
        """Add ``fn`` as a task (the non-decorator form of ``task``)."""
        task_name = name or getattr(fn, "__name__", "")
        if not task_name:
            raise ConfigurationError(f"cannot name a task after {fn!r}; pass name=")
        if any(t.name.lower() == task_name.lower() for t in self.tasks):
            raise ConfigurationError(f"workflow {self.name!r} already has a task {task_name!r}")
        task: Task[Any, Any] = Task(
            fn, name=task_name, workflow=self, options=options or TaskOptions(), parents=parents
        )
        self.tasks.append(task)
        return task

    def task(
        self,
        *,
        name: str | None = None,
        parents: Sequence[Task[Any, Any]] = (),
        **options: Unpack[TaskKwargs],
    ) -> TaskDecorator:
        """Decorator adding a function as a task of this workflow.

        Options are those of ``TaskOptions``: retries and timeouts, and where and how
        often it runs (``desired_worker_labels``, ``slot_requests``, ``concurrency``,
        ``rate_limits``); ``parents`` are tasks of this workflow that must complete first.
        """
        opts = TaskOptions(**options)

        def decorate(fn: Callable[..., Any]) -> Task[Any, Any]:
            return self.add_task(fn, name=name, options=opts, parents=parents)

        return decorate

    def durable_task(
        self,
        *,
        name: str | None = None,
        parents: Sequence[Task[Any, Any]] = (),
        **options: Unpack[DurableTaskKwargs],
    ) -> DurableTaskDecorator:
        """Decorator adding an async function as a durable task of this workflow: its
        ``DurableContext`` waits on sleeps and events, memoises values and spawns children
        through a log that survives the worker (options as ``task``, plus
        ``eviction_policy``). It takes a "durable" slot unless ``slot_requests`` says
        otherwise."""
        opts = durable_options(options)

        def decorate(fn: Callable[..., Any]) -> Task[Any, Any]:
            return self.add_task(fn, name=name, options=opts, parents=parents)

        return decorate

    def on_failure_task(
        self, *, name: str | None = None, **options: Unpack[TaskKwargs]
    ) -> TaskDecorator:
        """Decorator adding the task that runs once after any task of a run failed (the run
        stays FAILED). It sees the errors with ``ctx.task_run_errors``; it is named
        ``<name or function name>-on-failure``."""
        opts = TaskOptions(**options)

        def decorate(fn: Callable[..., Any]) -> Task[Any, Any]:
            if self.on_failure is not None:
                raise ConfigurationError(f"workflow {self.name!r} has an on-failure task")
            base = name or getattr(fn, "__name__", "")
            if not base:
                raise ConfigurationError(f"cannot name a task after {fn!r}; pass name=")
            task_name = f"{base.lower()}-on-failure"
            if any(t.name.lower() == task_name for t in self.tasks):
                raise ConfigurationError(f"workflow {self.name!r} already has {task_name!r}")
            self.on_failure = Task(fn, name=task_name, workflow=self, options=opts)
            return self.on_failure

        return decorate

    @property
    def all_tasks(self) -> list[Task[Any, Any]]:
        """Its tasks and its on-failure task: every action a worker serving it runs."""
        return [*self.tasks, *([self.on_failure] if self.on_failure else [])]

    def specs(self) -> list[_wire.TaskSpec]:
        """Registration specs of all tasks."""
        return [t.spec() for t in self.tasks]

    def put_request(self) -> Any:
        """The PutWorkflow request registering this workflow."""
        if not self.tasks:
            raise ConfigurationError(f"workflow {self.name!r} has no tasks")
        return _wire.put_workflow_request(
            self.namespaced_name,
            self.specs(),
            self.options,
            on_failure=self.on_failure.spec() if self.on_failure else None,
            event_keys=[self._client.namespaced(k) for k in self.options.on_events],
        )

    def __repr__(self) -> str:
        return f"<Workflow {self.name} tasks={[t.name for t in self.tasks]}>"


class StandaloneTask(_Runnable[InT, OutT]):
    """A single-task workflow; its runs return the task's output."""

    def __init__(self, workflow: Workflow[InT], task: Task[InT, OutT]) -> None:
        self._client = workflow._client
        self.workflow = workflow
        self.task = task

    @property
    def name(self) -> str:
        """Task (and workflow) name."""
        return self.task.name

    @property
    def fn(self) -> Callable[..., Any]:
        """The decorated function."""
        return self.task.fn

    @property
    def _workflow(self) -> Workflow[Any]:
        return self.workflow

    @property
    def _input_model(self) -> type[BaseModel] | None:
        return self.task.input_model

    def _convert_outputs(self, outputs: dict[str, Any]) -> OutT:
        return self.task.parse_output(outputs.get(self.task.name))

    def __repr__(self) -> str:
        return f"<StandaloneTask {self.name}>"


class StandaloneDecorator(Protocol):
    """What ``hw.task(...)`` returns: turns a function into a ``StandaloneTask``."""

    @overload
    def __call__(
        self, fn: Callable[[FnInT, Context], Coroutine[Any, Any, FnOutT]], /
    ) -> StandaloneTask[FnInT, FnOutT]: ...

    @overload
    def __call__(
        self, fn: Callable[[FnInT, Context], FnOutT], /
    ) -> StandaloneTask[FnInT, FnOutT]: ...


class DurableStandaloneDecorator(Protocol):
    """What ``hw.durable_task(...)`` returns: turns an async function into a
    ``StandaloneTask``."""

    def __call__(
        self, fn: Callable[[FnInT, DurableContext], Coroutine[Any, Any, FnOutT]], /
    ) -> StandaloneTask[FnInT, FnOutT]: ...
