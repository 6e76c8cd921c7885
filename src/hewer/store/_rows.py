"""Row mapping both backends share: column lists (in the order of the records' fields) and
conversions of stored rows to records where the drivers return the same values."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import fields
from typing import Any, Protocol

from hewer.domain import (
    AttemptRow,
    CronRecord,
    DurableLog,
    EventRecord,
    FilterRecord,
    IdempotencyRow,
    Keys,
    RunRow,
    RunStatus,
    ScheduleRecord,
    StickyStrategy,
    TaskRow,
    TaskStatus,
    WorkerRecord,
    WorkerStatus,
    WorkingSet,
    metadata_object,
)


class StoredRow(Protocol):
    """What both drivers return for a row: its values, by position and in order."""

    def __getitem__(self, index: int, /) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...


TASK = [f.name for f in fields(TaskRow)]
RUN = [f.name for f in fields(RunRow)]
ATTEMPT = [f.name for f in fields(AttemptRow)]
EVENT = [f.name for f in fields(EventRecord)]
SCHEDULE = [f.name for f in fields(ScheduleRecord)]
FILTER = [f.name for f in fields(FilterRecord)]
CRON = [f.name for f in fields(CronRecord)]
# The task columns a transition may change (every update writes all of them).
TASK_MUTABLE = [
    "status",
    "retry_count",
    "app_retries",
    "reassignments",
    "worker_id",
    "acked",
    "slot_released",
    "desired_worker_id",
    "available_at",
    "queued_at",
    "schedule_deadline",
    "assigned_at",
    "started_at",
    "timeout_at",
    "finished_at",
    "output",
    "error",
    "waiting",
]
TASK_STATUS = {s.value: s for s in TaskStatus}
RUN_STATUS = {s.value: s for s in RunStatus}


def run_row(r: StoredRow) -> RunRow:
    row = RunRow(*r)
    row.status = RUN_STATUS[row.status]
    if row.sticky is not None:
        row.sticky = StickyStrategy(row.sticky)
    return row


def event_record(r: StoredRow) -> EventRecord:
    return EventRecord(*r)


def filter_record(r: StoredRow) -> FilterRecord:
    row = FilterRecord(*r)
    row.declarative = bool(row.declarative)
    return row


def schedule_record(r: StoredRow) -> ScheduleRecord:
    return ScheduleRecord(*r)


def cron_record(r: StoredRow) -> CronRecord:
    row = CronRecord(*r)
    row.declared, row.enabled = bool(row.declared), bool(row.enabled)
    return row


def idempotency_row(r: StoredRow) -> IdempotencyRow:
    """A key's row with, last, whether the run that holds it has finished."""
    return IdempotencyRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]))


def worker_record(row: StoredRow) -> WorkerRecord:
    """A worker row: id, tenant, name, then actions, slot config, labels and runtime info
    as JSON text, then status, reason and times, and the token it registered with."""
    return WorkerRecord(
        id=row[0],
        tenant_id=row[1],
        name=row[2],
        actions=tuple(json.loads(row[3])),
        slot_config=json.loads(row[4]),
        labels=json.loads(row[5]),
        runtime_info=json.loads(row[6]),
        status=WorkerStatus(row[7]),
        status_reason=row[8],
        status_changed_at=row[9],
        last_heartbeat_at=row[10],
        created_at=row[11],
        owner_token=row[12],
    )


def metadata_matches(meta_text: str | None, wanted: Iterable[tuple[str, str]]) -> bool:
    """Whether a run's additional metadata (JSON text) has every wanted key with a value
    whose ``str()`` is the one given (what a filter from a query string can say)."""
    meta = metadata_object(meta_text)
    return all(str(meta.get(k)) == v for k, v in wanted)


def durable_wanted(ws: WorkingSet, keys: Keys) -> set[str]:
    """The tasks whose durable logs a load reads: those named, and every task an event of
    the batch waits on (a durable task waits for events while it runs)."""
    wanted = set(keys.durable)
    for ids in ws.waiters.values():
        wanted.update(ids)
    return wanted


def durable_log(r: StoredRow) -> DurableLog:
    return DurableLog.from_row(r[0], r[1], bool(r[2]), r[3])
