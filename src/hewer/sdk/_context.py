"""``Context``: what a running task knows about its run and can ask of the engine."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from hewer.domain import metadata_object
from hewer.durations import format_duration
from hewer.errors import NotFound
from hewer.sdk._wire import Action

logger = logging.getLogger(__name__)

OutT = TypeVar("OutT")
OutT_co = TypeVar("OutT_co", covariant=True)

# The engine stores log lines in bounded columns; longer lines are cut, not rejected.
MAX_LOG_CHARS = 10_000

# The task whose body is running, so runs triggered from it become its children (and may
# be sticky). The runner sets it inside the task's own asyncio task, and sync bodies run in
# a copy of that context, so it never leaks into other tasks.
_current: ContextVar[Context | None] = ContextVar("hewer_current_task", default=None)


def current_context() -> Context | None:
    """The ``Context`` of the task running in this thread or asyncio task, if any."""
    return _current.get()


def enter_task(ctx: Context) -> None:
    """Mark ``ctx`` as the running task for the rest of the current context."""
    _current.set(ctx)


class TaskOutput(Protocol[OutT_co]):
    """What ``Context.task_output`` needs of a parent task (a ``Task`` is one): its name, and
    how to parse its output."""

    @property
    def name(self) -> str: ...

    def parse_output(self, raw: Any) -> OutT_co: ...


class TaskServices(Protocol):
    """Engine calls a task can make; the worker provides them."""

    def put_log(self, action: Action, message: str, level: str) -> None:
        """Queue a log line for the engine; never blocks, never raises."""
        ...

    def put_stream(self, action: Action, data: bytes, index: int) -> None:
        """Send one stream chunk (blocking)."""
        ...

    async def aio_put_stream(self, action: Action, data: bytes, index: int) -> None:
        """Send one stream chunk."""
        ...

    def refresh_timeout(self, action: Action, increment: str) -> None:
        """Extend the running attempt's execution timeout (blocking)."""
        ...

    async def aio_refresh_timeout(self, action: Action, increment: str) -> None:
        """Extend the running attempt's execution timeout."""
        ...

    def release_slot(self, action: Action) -> None:
        """Give this task's slot back to the worker before the task ends (blocking)."""
        ...

    async def aio_release_slot(self, action: Action) -> None:
        """Give this task's slot back to the worker before the task ends."""
        ...

    def upsert_worker_labels(self, labels: Mapping[str, str | int]) -> None:
        """Add or change labels of the worker (blocking; raises HewerError on failure)."""
        ...

    def worker_labels(self) -> dict[str, str | int]:
        """The worker's labels as last set."""
        ...


class Context:
    """Passed to every task function as its second argument."""

    def __init__(
        self,
        action: Action,
        *,
        services: TaskServices,
        input: Mapping[str, Any] | None = None,
        parents: Mapping[str, Any] | None = None,
        errors: Mapping[str, str] | None = None,
        triggered_by: str | None = None,
        filter_payload: Mapping[str, Any] | None = None,
    ) -> None:
        self._action = action
        self._services = services
        self._input: dict[str, Any] = dict(input or {})
        self._parents: dict[str, Any] = dict(parents or {})
        self._errors: dict[str, str] = dict(errors or {})
        self._triggered_by = triggered_by or "manual"
        self._filter_payload: dict[str, Any] = dict(filter_payload or {})
        self._stream_index = 0
        self._stream_lock = threading.Lock()
        self._child_index = 0
        self._child_lock = threading.Lock()
        # Made on first use: most tasks never look at it (an Event costs a Condition).
        self._cancelled: threading.Event | None = None

    @property
    def cancelled(self) -> threading.Event:
        """Set when the engine cancels this task; long-running code should check it."""
        event = self._cancelled
        if event is None:
            with self._child_lock:
                if self._cancelled is None:
                    self._cancelled = threading.Event()
                event = self._cancelled
        return event

    # --- identity ------------------------------------------------------------------------

    @property
    def workflow_run_id(self) -> str:
        """Id of the run this task belongs to."""
        return self._action.workflow_run_id

    @property
    def task_run_external_id(self) -> str:
        """Id of this task's run (the same across retries)."""
        return self._action.task_run_external_id

    @property
    def task_run_id(self) -> str:
        """Alias of ``task_run_external_id``."""
        return self._action.task_run_external_id

    @property
    def task_name(self) -> str:
        """Readable id of this task within its workflow."""
        return self._action.task_name or self._action.job_name

    @property
    def action_id(self) -> str:
        """``<workflow>:<task>`` as registered."""
        return self._action.action_id

    @property
    def worker_id(self) -> str:
        """Id the engine gave the worker running this task."""
        return self._action.worker_id

    @property
    def retry_count(self) -> int:
        """0 on the first attempt, then 1, 2, ..."""
        return self._action.retry_count

    @property
    def attempt_number(self) -> int:
        """1 on the first attempt."""
        return self._action.retry_count + 1

    @property
    def priority(self) -> int:
        """Priority the run was triggered with."""
        return self._action.priority

    @property
    def additional_metadata(self) -> dict[str, Any]:
        """Metadata the run was triggered with."""
        return metadata_object(self._action.additional_metadata)

    @property
    def triggered_by(self) -> str:
        """What started the run: "manual" (a trigger), "event", "cron" or "schedule"."""
        return self._triggered_by

    @property
    def triggering_event_id(self) -> str | None:
        """Id of the event that started the run (None unless ``triggered_by`` is "event")."""
        return self._action.triggering_event_id

    @property
    def triggering_event_key(self) -> str | None:
        """Key of the event that started the run."""
        return self._action.triggering_event_key

    @property
    def filter_payload(self) -> dict[str, Any]:
        """The payload of the event filter that let the triggering event through."""
        return dict(self._filter_payload)

    @property
    def parent_workflow_run_id(self) -> str | None:
        """Id of the run whose task triggered this run (None for a top-level run)."""
        return self._action.parent_workflow_run_id

    @property
    def child_index(self) -> int:
        """This run's place among the children its parent task triggered (0, 1, ...)."""
        return self._action.child_index

    @property
    def child_key(self) -> str | None:
        """The ``child_key`` its parent task triggered this run with."""
        return self._action.child_key

    @property
    def task_run_errors(self) -> dict[str, str]:
        """In an on-failure task: ``{task name: error}`` of the tasks that failed."""
        return dict(self._errors)

    @property
    def workflow_input(self) -> dict[str, Any]:
        """The run's input as JSON (before validation into a model)."""
        return dict(self._input)

    # --- cancellation --------------------------------------------------------------------

    @property
    def is_cancelled(self) -> bool:
        """True once the engine has cancelled this task."""
        event = self._cancelled
        return event is not None and event.is_set()

    @property
    def exit_flag(self) -> bool:
        """Alias of ``is_cancelled``."""
        return self.is_cancelled

    # --- data from parents ---------------------------------------------------------------

    def task_output(self, task: TaskOutput[OutT]) -> OutT:
        """Output of a parent task, parsed into its output model if it declares one."""
        if task.name not in self._parents:
            raise NotFound(
                f"no output of {task.name!r} in this run of {self.task_name!r}; "
                "is it listed in parents=?"
            )
        return task.parse_output(self._parents[task.name])

    def was_skipped(self, task: TaskOutput[Any]) -> bool:
        """Whether a parent task was skipped by its ``skip_if`` conditions."""
        output = self._parents.get(task.name)
        return isinstance(output, dict) and output.get("skipped") is True

    # --- engine side calls ---------------------------------------------------------------

    def log(self, message: str, *, level: str = "INFO") -> None:
        """Attach a log line to this task run (sent in the background; never raises)."""
        self._services.put_log(self._action, str(message)[:MAX_LOG_CHARS], level.upper())

    def _next_stream_index(self) -> int:
        with self._stream_lock:
            index = self._stream_index
            self._stream_index += 1
            return index

    def put_stream(self, data: str | bytes) -> None:
        """Send a chunk to whoever streams this run."""
        payload = data.encode() if isinstance(data, str) else data
        self._services.put_stream(self._action, payload, self._next_stream_index())

    async def aio_put_stream(self, data: str | bytes) -> None:
        """Send a chunk to whoever streams this run."""
        payload = data.encode() if isinstance(data, str) else data
        await self._services.aio_put_stream(self._action, payload, self._next_stream_index())

    def refresh_timeout(self, increment_by: timedelta) -> None:
        """Give the running attempt ``increment_by`` more time before it times out."""
        self._services.refresh_timeout(self._action, format_duration(increment_by))

    async def aio_refresh_timeout(self, increment_by: timedelta) -> None:
        """Give the running attempt ``increment_by`` more time before it times out."""
        await self._services.aio_refresh_timeout(self._action, format_duration(increment_by))

    def release_slot(self) -> None:
        """Free this task's worker slot now, e.g. before a long wait on something external."""
        self._services.release_slot(self._action)

    async def aio_release_slot(self) -> None:
        """Free this task's worker slot now."""
        await self._services.aio_release_slot(self._action)

    # --- worker labels -------------------------------------------------------------------

    @property
    def worker_labels(self) -> dict[str, str | int]:
        """Labels of the worker running this task."""
        return self._services.worker_labels()

    def upsert_worker_labels(self, labels: Mapping[str, str | int]) -> None:
        """Add or change labels of the worker running this task (e.g. which model it has
        loaded), so later tasks with matching ``desired_worker_labels`` come here. They last
        for the worker's lifetime, across re-registrations."""
        self._services.upsert_worker_labels(labels)

    async def aio_upsert_worker_labels(self, labels: Mapping[str, str | int]) -> None:
        """Add or change labels of the worker running this task."""
        await asyncio.to_thread(self._services.upsert_worker_labels, labels)

    # --- children ------------------------------------------------------------------------

    def _next_child_index(self) -> int:
        """0, 1, 2, ... for the runs this attempt triggers: a retried attempt starts over,
        so its children line up with the first attempt's ones."""
        with self._child_lock:
            index = self._child_index
            self._child_index += 1
            return index

    def __repr__(self) -> str:
        return f"<Context {self.action_id} run={self.task_run_external_id}>"
