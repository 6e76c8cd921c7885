"""``Hewer``: the client object tasks, workflows and workers hang off.

The top of the SDK: it builds the features (``_task``, ``_worker``, ``_runs_api``,
``_admin``, ``_rate_limits``), which know the client only as a ``ClientCore``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, Unpack, overload

from pydantic import BaseModel

from hewer.config import ClientSettings
from hewer.domain import StickyStrategy
from hewer.sdk._admin import Metrics, Workers
from hewer.sdk._core import ClientCore
from hewer.sdk._options import (
    DefaultFilter,
    DurableTaskKwargs,
    IdempotencyConfig,
    TaskKwargs,
    TaskOptions,
    WorkflowKwargs,
    WorkflowOptions,
)
from hewer.sdk._rate_limits import RateLimits
from hewer.sdk._runs_api import Runs
from hewer.sdk._task import (
    DurableStandaloneDecorator,
    StandaloneDecorator,
    StandaloneTask,
    Workflow,
    durable_options,
)
from hewer.sdk._time import SYSTEM_CLOCK, Clock
from hewer.sdk._triggers import Crons, Events, Filters, Scheduled
from hewer.sdk._worker import Worker

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)


class Hewer(ClientCore):
    """Entry point of the SDK: declares tasks and workflows, triggers runs, makes workers.

    Settings come from ``HEWER_*`` environment variables unless given. Nothing touches the
    network or the filesystem until the first call that needs the engine.
    """

    def __init__(
        self,
        *,
        settings: ClientSettings | None = None,
        token: str | None = None,
        host_port: str | None = None,
        namespace: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        overrides: dict[str, Any] = {
            k: v
            for k, v in (("token", token), ("host_port", host_port), ("namespace", namespace))
            if v is not None
        }
        if settings is None:
            settings = ClientSettings(**overrides)
        elif overrides:
            settings = settings.model_copy(update=overrides)
        super().__init__(settings, clock)
        self.runs = Runs(self)
        """Runs by workflow name and run id (``hw.runs.trigger("name", {...})``)."""
        self.workers = Workers(self)
        """The tenant's workers: ``list()``, ``get(id)``, ``pause(id)``, ``resume(id)``."""
        self.rate_limits = RateLimits(self)
        """Static rate-limit keys: ``put(key, limit, duration)``."""
        self.metrics = Metrics(self)
        """Queue depths per task: ``task_stats([names])``, ``queued([names])``."""
        self.events = Events(self)
        """Push events: ``push(key, payload)``, ``bulk_push([EventPush(...)])``."""
        self.scheduled = Scheduled(self)
        """Runs at a time: ``create``, ``list``, ``get``, ``delete``."""
        self.filters = Filters(self)
        """Event filters: ``create``, ``list``, ``get``, ``delete``."""
        self.crons = Crons(self)
        """Runs at every tick of a cron expression: ``create``, ``list``, ``get``,
        ``delete``."""

    # --- declarations --------------------------------------------------------------------

    def task(
        self,
        *,
        name: str | None = None,
        default_priority: int | None = None,
        sticky: StickyStrategy | None = None,
        on_events: Sequence[str] = (),
        on_crons: Sequence[str] = (),
        cron_input: Mapping[str, Any] | None = None,
        idempotency: IdempotencyConfig | None = None,
        default_filters: Sequence[DefaultFilter] = (),
        **options: Unpack[TaskKwargs],
    ) -> StandaloneDecorator:
        """Decorator making a function a standalone task (a one-task workflow).

        ``name`` defaults to the function name; ``default_priority`` and ``sticky`` apply to
        its workflow, as do ``on_events`` (event keys that start a run, the event's payload
        as input), ``on_crons`` (cron expressions, UTC) and ``cron_input``; the other options
        are those of ``TaskOptions`` (``concurrency`` limits the task itself, as hatchet-sdk
        does).
        """
        return self._standalone(
            name,
            TaskOptions(**options),
            WorkflowKwargs(
                default_priority=default_priority,
                sticky=sticky,
                on_events=on_events,
                on_crons=on_crons,
                cron_input=cron_input,
                idempotency=idempotency,
                default_filters=default_filters,
            ),
        )

    def durable_task(
        self,
        *,
        name: str | None = None,
        default_priority: int | None = None,
        sticky: StickyStrategy | None = None,
        on_events: Sequence[str] = (),
        on_crons: Sequence[str] = (),
        cron_input: Mapping[str, Any] | None = None,
        idempotency: IdempotencyConfig | None = None,
        default_filters: Sequence[DefaultFilter] = (),
        **options: Unpack[DurableTaskKwargs],
    ) -> DurableStandaloneDecorator:
        """Decorator making an async function a standalone durable task: its
        ``DurableContext`` sleeps, waits for events, memoises values and spawns children
        through a log that survives its worker (options as ``task``, plus
        ``eviction_policy``; it takes a "durable" slot unless ``slot_requests`` says
        otherwise)."""
        return self._standalone(
            name,
            durable_options(options),
            WorkflowKwargs(
                default_priority=default_priority,
                sticky=sticky,
                on_events=on_events,
                on_crons=on_crons,
                cron_input=cron_input,
                idempotency=idempotency,
                default_filters=default_filters,
            ),
        )

    def _standalone(
        self, name: str | None, opts: TaskOptions, workflow_options: WorkflowKwargs
    ) -> Callable[[Callable[..., Any]], StandaloneTask[Any, Any]]:
        # Checked now, so a bad value fails where the decorator is written.
        WorkflowOptions(**workflow_options)

        def decorate(fn: Callable[..., Any]) -> StandaloneTask[Any, Any]:
            task_name = name or str(getattr(fn, "__name__", ""))
            workflow: Workflow[Any] = Workflow(self, task_name, **workflow_options)
            task = workflow.add_task(fn, name=task_name, options=opts)
            return StandaloneTask(workflow, task)

        return decorate

    @overload
    def workflow(
        self,
        name: str,
        *,
        input_validator: type[ModelT],
        **options: Unpack[WorkflowKwargs],
    ) -> Workflow[ModelT]: ...

    @overload
    def workflow(
        self,
        name: str,
        *,
        input_validator: None = None,
        **options: Unpack[WorkflowKwargs],
    ) -> Workflow[dict[str, Any]]: ...

    def workflow(
        self,
        name: str,
        *,
        input_validator: type[BaseModel] | None = None,
        **options: Unpack[WorkflowKwargs],
    ) -> Workflow[Any]:
        """A new, empty workflow; add tasks with ``@workflow.task(...)``.

        Options (``WorkflowOptions``): ``default_priority`` (1..3), ``sticky``
        (``StickyStrategy.SOFT``/``HARD``), ``concurrency`` (limits over whole runs).
        """
        return Workflow(self, name, input_validator=input_validator, **options)

    def worker(
        self,
        name: str,
        *,
        slots: int | None = None,
        workflows: Sequence[Workflow[Any] | StandaloneTask[Any, Any]] = (),
        labels: Mapping[str, str | int] | None = None,
        slot_config: Mapping[str, int] | None = None,
        healthcheck_port: int | None = None,
    ) -> Worker:
        """A worker that serves ``workflows``.

        ``slots`` is the size of its "default" slot pool (100 if not given): how many
        ordinary tasks it runs at once. ``slot_config`` adds pools of other slot types
        (``{"gpu": 2}``) for tasks declaring ``slot_requests``; its "default" entry, if any,
        sets the default pool. ``labels`` (``{key: str | int}``) are what tasks'
        ``desired_worker_labels`` match; change them later with ``worker.upsert_labels``.
        ``healthcheck_port`` (or ``HEWER_WORKER_HEALTHCHECK_PORT``) serves ``/health`` and
        ``/metrics`` there while the worker runs (0: any free port, see ``health_port``).
        """
        return Worker(
            self,
            name,
            slots=slots,
            workflows=workflows,
            labels=labels,
            slot_config=slot_config,
            healthcheck_port=healthcheck_port,
        )

    def __repr__(self) -> str:
        return f"<Hewer namespace={self.namespace!r}>"
