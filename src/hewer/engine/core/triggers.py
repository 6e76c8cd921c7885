"""What starts runs besides a direct trigger: pushed events, scheduled runs and crons.

- An event is stored with the runs it starts (every workflow of the tenant whose event
  triggers hold its key), in one transaction.
- A scheduled run fires once, at its time: the row is locked and marked fired in the
  transaction that creates its run, so neither a second engine nor a restart fires it again,
  and one deleted before it fired never does.
- A cron fires at each tick the same way, fenced on the tick it judged due. After a time no
  engine ran (or the database was down), a cron whose ticks were missed fires once, late,
  and goes on from the next tick after now: missed ticks are not replayed one by one.

The ticker runs in the core of the engine that schedules (the lease holder, with replicas).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cronsim import CronSim, CronSimError

from hewer.domain import (
    CronRecord,
    EventRecord,
    FilterRecord,
    NewRun,
    RunLinks,
    ScheduleRecord,
    Workflow,
    metadata_object,
)
from hewer.engine.core import cel
from hewer.engine.core.clock import Clock
from hewer.engine.core.component import Component
from hewer.engine.core.ingest import Ingest, TriggerSpec, json_object_text, new_ids
from hewer.engine.core.loop import EngineLoop
from hewer.engine.core.sessions import FailedPrecondition
from hewer.engine.core.transitions import CreateRuns, FireTriggers, Firing, Wake
from hewer.engine.core.workflows import Workflows, check_priority
from hewer.errors import HewerError, InvalidInput, NotFound
from hewer.store import Store

logger = logging.getLogger(__name__)

TICK_INTERVAL_S = 0.25  # how often due scheduled runs and cron ticks are looked for
FIRE_BATCH = 200
MAX_EVENT_KEY = 1024
MAX_SCHEDULES_PER_CALL = 1000


@dataclass(frozen=True, slots=True)
class EventSpec:
    key: str
    payload: str = ""
    additional_metadata: str | None = None
    priority: int | None = None
    scope: str | None = None
    timestamp: float | None = None


def event_metadata(meta: str | None, event_id: str, key: str) -> str:
    """A run's metadata from its event's: ``hatchet__`` keys the pusher set are dropped
    (but the source run and task of an event pushed from a task), the event's id and key
    are added, as upstream does."""
    given = metadata_object(meta)
    out = {k: v for k, v in given.items() if not k.startswith("hatchet__")}
    for kept in ("hatchet__source_workflow_run_id", "hatchet__source_step_run_id"):
        if kept in given:
            out[kept] = given[kept]
    out["hatchet__event_id"] = event_id
    out["hatchet__event_key"] = key
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


def passing(event: EventRecord, filters: Sequence[FilterRecord] | None) -> list[str | None]:
    """The runs an event starts of one workflow, by the payload of the filter that let each
    through: one run (no payload) for a workflow without filters; else one per filter of the
    event's scope whose expression holds (none when the event has no scope, or no filter of
    its scope holds). A filter whose expression fails on this event lets nothing through."""
    if not filters:
        return [None]
    if event.scope is None:
        return []
    data = json.loads(event.payload)
    meta = metadata_object(event.additional_metadata)
    out: list[str | None] = []
    for f in filters:
        if f.scope != event.scope or not f.expression.strip():
            continue
        try:
            holds = cel.compile_expression(f.expression).truth(
                data,
                meta,
                payload=json.loads(f.payload),
                event_id=event.id,
                event_key=event.key,
            )
        except HewerError as exc:
            logger.warning("event filter %s failed on event %s: %s", f.id, event.id, exc)
            continue
        if holds:
            out.append(f.payload)
    return out


def metadata_and_priority(meta: str | None, priority: int | None) -> str | None:
    """What a trigger-to-be stores: its metadata validated (None when there is none), once
    its priority, if any, is known to be in range."""
    if priority:
        check_priority(priority)
    return json_object_text(meta, "additional_metadata") if meta else None


def next_tick(expression: str, after: float) -> float:
    """The first tick of a cron expression strictly after ``after`` (UTC)."""
    start = datetime.fromtimestamp(after, UTC)
    try:
        return next(iter(CronSim(expression, start))).timestamp()
    except (CronSimError, StopIteration) as exc:
        raise InvalidInput(f"cron expression {expression!r} is not valid: {exc}") from None


def check_cron(expression: str) -> str:
    text = " ".join(expression.split())
    if len(text.split(" ")) not in (5, 6):
        raise InvalidInput(
            f"cron expression {expression!r} is not valid: it needs 5 fields "
            "(minute hour day-of-month month day-of-week), or 6 with seconds first"
        )
    next_tick(text, 0.0)
    return text


class Triggers(Component):
    def __init__(
        self,
        store: Store,
        clock: Clock,
        loop: EngineLoop,
        ingest: Ingest,
        workflows: Workflows,
        *,
        interval: float = TICK_INTERVAL_S,
    ) -> None:
        self.store = store
        self.clock = clock
        self.loop = loop
        self.ingest = ingest
        self.workflows = workflows
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ events

    async def push(self, tenant_id: str, specs: Sequence[EventSpec]) -> list[EventRecord]:
        """Store events and start the runs of every workflow they trigger, together."""
        now = self.clock.now()
        events: list[EventRecord] = []
        matches: list[tuple[EventRecord, str | None, list[Workflow]]] = []
        ids = new_ids(len(specs))
        for event_id, spec in zip(ids, specs, strict=True):
            key = spec.key.strip()
            if not key:
                raise InvalidInput("event key must not be empty")
            if len(key) > MAX_EVENT_KEY:
                raise InvalidInput(f"event key is longer than {MAX_EVENT_KEY} characters")
            payload = json_object_text(spec.payload, "event payload")
            meta = metadata_and_priority(spec.additional_metadata, spec.priority)
            event = EventRecord(
                event_id,
                tenant_id,
                key,
                payload,
                meta,
                spec.priority or None,
                spec.scope or None,
                spec.timestamp or now,
            )
            events.append(event)
            matches.append((event, meta, await self.workflows.by_event(tenant_id, key)))
        # One read of the filters of every workflow any of these events starts.
        filters = await self._filters(
            tenant_id, list({wf.id: wf for _, _, wfs in matches for wf in wfs}.values())
        )
        runs: list[NewRun] = []
        for event, meta, matched in matches:
            run_meta = event_metadata(meta, event.id, event.key)
            for wf in matched:
                for filter_payload in passing(event, filters.get(wf.id)):
                    links = RunLinks(
                        event_id=event.id,
                        event_key=event.key,
                        triggered_by="event",
                        filter_payload=filter_payload,
                    )
                    trigger = TriggerSpec(
                        wf.name, event.payload, run_meta, event.priority, links=links
                    )
                    runs.append(self.ingest.new_run(tenant_id, wf, trigger))
        await self.loop.run(CreateRuns(runs, events))
        return events

    async def _filters(
        self, tenant_id: str, workflows: Sequence[Workflow]
    ) -> dict[str, list[FilterRecord]]:
        if not workflows:
            return {}
        by_workflow: dict[str, list[FilterRecord]] = {}
        for f in await self.store.filters_of(tenant_id, [wf.id for wf in workflows]):
            by_workflow.setdefault(f.workflow_id, []).append(f)
        return by_workflow

    # ------------------------------------------------------------------ event filters

    async def filter_put(
        self,
        tenant_id: str,
        workflow_id: str,
        scope: str,
        expression: str,
        payload: str | None,
        filter_id: str | None = None,
    ) -> FilterRecord:
        """Create a filter (or, given ``filter_id``, change that one)."""
        if not scope.strip():
            raise InvalidInput("a filter needs a scope")
        cel.compile_expression(expression)
        now = self.clock.now()
        existing = None
        if filter_id is not None:
            existing = await self.filter_get(tenant_id, filter_id)
            workflow_id = existing.workflow_id
        elif workflow_id not in {wf.id for wf in await self.store.workflows_current(tenant_id)}:
            raise NotFound(f"workflow {workflow_id!r} not found")
        record = FilterRecord(
            filter_id or str(uuid.uuid4()),
            tenant_id,
            workflow_id,
            scope,
            expression,
            json_object_text(payload, "payload"),
            existing.declarative if existing else False,
            existing.created_at if existing else now,
            now,
        )
        await self.store.filter_put(record)
        return record

    async def filter_get(self, tenant_id: str, filter_id: str) -> FilterRecord:
        found = await self.store.filter_get(tenant_id, filter_id)
        if found is None:
            raise NotFound(f"filter {filter_id!r} not found")
        return found

    async def filter_delete(self, tenant_id: str, filter_id: str) -> FilterRecord:
        found = await self.filter_get(tenant_id, filter_id)
        await self.store.filter_delete(tenant_id, filter_id)
        return found

    async def declare_filters(self, workflow: Workflow) -> None:
        """Replace the workflow's declarative filters with those of its definition."""
        now = self.clock.now()
        records = [
            FilterRecord(
                str(uuid.uuid4()),
                workflow.tenant_id,
                workflow.id,
                scope,
                expression,
                payload,
                True,
                now,
                now,
            )
            for expression, scope, payload in workflow.default_filters
        ]
        await self.store.filters_declare(workflow.tenant_id, workflow.id, records)

    # ------------------------------------------------------------------ scheduled runs

    async def schedule(
        self,
        tenant_id: str,
        workflow_name: str,
        times: Sequence[float],
        input: str,
        additional_metadata: str | None,
        priority: int | None,
    ) -> list[ScheduleRecord]:
        if not times:
            raise InvalidInput("give at least one time to run at")
        if len(times) > MAX_SCHEDULES_PER_CALL:
            raise InvalidInput(f"at most {MAX_SCHEDULES_PER_CALL} times per call")
        await self.workflows.current(tenant_id, workflow_name)  # NotFound if none
        input_text = json_object_text(input, "input")
        meta = metadata_and_priority(additional_metadata, priority)
        now = self.clock.now()
        records = [
            ScheduleRecord(
                id, tenant_id, workflow_name, at, input_text, meta, priority or None, now
            )
            for id, at in zip(new_ids(len(times)), times, strict=True)
        ]
        await self.store.schedule_insert(records)
        return records

    async def schedule_get(self, tenant_id: str, schedule_id: str) -> ScheduleRecord:
        found = await self.store.schedule_get(tenant_id, schedule_id)
        if found is None:
            raise NotFound(f"scheduled run {schedule_id!r} not found")
        return found

    async def schedule_move(self, tenant_id: str, schedule_id: str, trigger_at: float) -> None:
        if not await self.store.schedule_move(tenant_id, schedule_id, trigger_at):
            await self.schedule_get(tenant_id, schedule_id)  # NotFound if there is none
            raise FailedPrecondition(f"scheduled run {schedule_id!r} has fired already")

    async def schedule_delete(self, tenant_id: str, schedule_id: str) -> None:
        if not await self.store.schedule_delete(tenant_id, schedule_id):
            raise NotFound(f"scheduled run {schedule_id!r} not found")

    # ------------------------------------------------------------------ crons

    async def cron_create(
        self,
        tenant_id: str,
        workflow_name: str,
        name: str,
        expression: str,
        input: str,
        additional_metadata: str | None,
        priority: int | None,
    ) -> CronRecord:
        if not name.strip():
            raise InvalidInput("cron name must not be empty")
        await self.workflows.current(tenant_id, workflow_name)
        expression = check_cron(expression)
        meta = metadata_and_priority(additional_metadata, priority)
        now = self.clock.now()
        record = CronRecord(
            new_ids(1)[0],
            tenant_id,
            workflow_name,
            name,
            expression,
            json_object_text(input, "input"),
            meta,
            priority or None,
            now,
            next_tick(expression, now),
        )
        await self.store.cron_insert(record)
        return record

    async def declare_crons(self, workflow: Workflow) -> None:
        """Make the workflow's declared crons those of its definition (a tick already
        planned for an expression it keeps stays)."""
        now = self.clock.now()
        input_text = json_object_text(workflow.cron_input, "cron_input")
        records = [
            CronRecord(
                new_ids(1)[0],
                workflow.tenant_id,
                workflow.name,
                expression,
                expression,
                input_text,
                None,
                None,
                now,
                next_tick(expression, now),
                declared=True,
            )
            for expression in workflow.cron_triggers
        ]
        await self.store.crons_declare(workflow.tenant_id, workflow.name, records)

    async def cron_get(self, tenant_id: str, cron_id: str) -> CronRecord:
        found = await self.store.cron_get(tenant_id, cron_id)
        if found is None:
            raise NotFound(f"cron {cron_id!r} not found")
        return found

    async def cron_delete(self, tenant_id: str, cron_id: str) -> None:
        if not await self.store.cron_delete(tenant_id, cron_id):
            raise NotFound(f"cron {cron_id!r} not found")

    # ------------------------------------------------------------------ firing

    async def fire_due(self) -> list[str]:
        """Start the runs of every scheduled run and cron tick that is due; returns their
        run ids."""
        if self.loop.unavailable is not None:
            return []
        now = self.clock.now()
        firings: list[Firing] = []
        for schedule in await self.store.schedules_due(now, FIRE_BATCH):
            run = await self._new_run(schedule, "schedule", f"scheduled run {schedule.id}")
            firings.append(Firing(run, schedule_id=schedule.id))
        for cron in await self.store.crons_due(now, FIRE_BATCH):
            run = await self._new_run(cron, "cron", f"cron {cron.name!r}")
            try:
                after = next_tick(cron.expression, now)
            except InvalidInput:
                after = now + 3600.0  # an expression stored before validation got stricter
            firings.append(Firing(run, cron_id=cron.id, tick=cron.next_at, next_tick=after))
        woken = [t.id for t in await self.store.tasks_wake_due(now, FIRE_BATCH)]
        if woken:
            await self.loop.run(Wake(woken))
        if not firings:
            return []
        return await self.loop.run(FireTriggers(firings))

    async def _new_run(
        self, due: ScheduleRecord | CronRecord, triggered_by: str, what: str
    ) -> NewRun | None:
        """The run a due scheduled run or cron tick starts (None: it cannot start)."""
        spec = TriggerSpec(
            due.workflow_name,
            due.input,
            due.additional_metadata,
            due.priority,
            links=RunLinks(triggered_by=triggered_by),
        )
        try:
            wf = await self.workflows.current(due.tenant_id, spec.workflow_name)
            return self.ingest.new_run(due.tenant_id, wf, spec)
        except HewerError as exc:
            # Its workflow is gone, or no longer takes that input: this tick (or scheduled
            # run) is given up, said once; a cron tries again at its next tick.
            logger.warning("%s of workflow %r could not start: %s", what, spec.workflow_name, exc)
            return None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._forever(), name="hewer-triggers")

    async def stop(self, grace: float = 0.0) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _forever(self) -> None:
        failing = False
        while True:
            try:
                await self.fire_due()
            except Exception as exc:
                # Said once per outage, not four times a second while the database is away.
                level = logging.DEBUG if failing else logging.WARNING
                logger.log(level, "could not start due scheduled runs or crons: %s", exc)
                failing = True
            else:
                if failing:
                    logger.info("starting due scheduled runs and crons again")
                failing = False
            await asyncio.sleep(self.interval)
