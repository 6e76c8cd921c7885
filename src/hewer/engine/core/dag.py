"""DAG progression and run status: pure decisions over a run's task rows.

A task is PENDING until every parent is terminal; then it is QUEUED if all of them
completed, else SKIPPED (an upstream task failed or was cancelled), and skipping cascades.
A run is finished once every task is terminal: FAILED if any task failed, else CANCELLED if
any was cancelled, else COMPLETED.

A workflow's on-failure task waits until every other task is terminal; then it is queued
if one of them failed, else skipped. The run is FAILED either way it ends.
"""

from __future__ import annotations

from collections.abc import Sequence

from hewer.domain import RunStatus, TaskRow, TaskStatus, Workflow

SKIPPED_ERROR = "an upstream task did not complete"

_TERMINAL = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.SKIPPED}
)


def topological(workflow: Workflow) -> tuple[str, ...]:
    """The workflow's tasks ordered so that every parent comes before its children
    (registration refuses cycles). Iterative, so a long chain cannot exhaust the stack."""
    order: list[str] = []
    placed: set[str] = set()
    for task in workflow.tasks:
        if task.on_failure:
            continue
        stack = [(task.readable_id, False)]
        while stack:
            node, expanded = stack.pop()
            if node in placed:
                continue
            if expanded:
                placed.add(node)
                order.append(node)
                continue
            stack.append((node, True))
            for parent in workflow.step(node).parents:
                if parent not in placed:
                    stack.append((parent, False))
    return tuple(order)


_ORDER: dict[str, tuple[str, ...]] = {}


def _order(workflow: Workflow) -> tuple[str, ...]:
    order = _ORDER.get(workflow.version_id)
    if order is None:
        order = _ORDER[workflow.version_id] = topological(workflow)
    return order


def ready(tasks: Sequence[TaskRow], workflow: Workflow) -> tuple[list[TaskRow], list[TaskRow]]:
    """Decide the run's PENDING tasks whose parents are all terminal: ``(to queue, to
    skip)``, in topological order, cascading (a task whose parent is skipped here is skipped
    too). The rows are not changed; the caller applies both lists."""
    if len(tasks) == 1:
        # A one-task run's task was queued at creation, unless conditions hold it back.
        (only,) = tasks
        if only.status is TaskStatus.PENDING and only.waiting is None:
            return [only], []
        return [], []
    by_name = {t.readable_id: t for t in tasks}
    status = {t.readable_id: t.status for t in tasks}
    to_queue: list[TaskRow] = []
    to_skip: list[TaskRow] = []
    for name in _order(workflow):
        row = by_name.get(name)
        if row is None or status[name] is not TaskStatus.PENDING or row.waiting is not None:
            continue  # a waiting task was judged already: its conditions wake it
        parents = [status.get(p, TaskStatus.COMPLETED) for p in workflow.step(name).parents]
        if not all(s in _TERMINAL for s in parents):
            continue
        if all(s is TaskStatus.COMPLETED for s in parents):
            status[name] = TaskStatus.QUEUED
            to_queue.append(row)
        else:
            status[name] = TaskStatus.SKIPPED
            to_skip.append(row)
    handler = workflow.on_failure
    if handler is not None:
        row = by_name.get(handler.readable_id)
        others = [s for n, s in status.items() if n != handler.readable_id]
        if (
            row is not None
            and row.status is TaskStatus.PENDING
            and all(s in _TERMINAL for s in others)
        ):
            if any(s is TaskStatus.FAILED for s in others):
                to_queue.append(row)
            else:
                to_skip.append(row)
    return to_queue, to_skip


def run_status(tasks: Sequence[TaskRow]) -> RunStatus | None:
    """The finished run's status, or None while any task is not terminal."""
    failed = cancelled = False
    for t in tasks:
        s = t.status
        if s not in _TERMINAL:
            return None
        failed = failed or s is TaskStatus.FAILED
        cancelled = cancelled or s is TaskStatus.CANCELLED
    if failed:
        return RunStatus.FAILED
    return RunStatus.CANCELLED if cancelled else RunStatus.COMPLETED


def started(tasks: Sequence[TaskRow]) -> bool:
    """Whether any task of the run has left the queue (an unfinished run is then RUNNING)."""
    return any(t.status not in (TaskStatus.QUEUED, TaskStatus.PENDING) for t in tasks)
