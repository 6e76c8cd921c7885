"""A task's attempts, as operators and checkers see them."""

from __future__ import annotations

from collections.abc import Iterable

from hewer.domain import AttemptRow, TaskRow, TaskStatus


def attempts(task: TaskRow, ended: Iterable[AttemptRow]) -> list[AttemptRow]:
    """Every attempt of ``task``, oldest first: the ones kept apart from it (they ended
    while it went on), then the one its own row describes: the live attempt (``outcome``
    None) or the last one, which ended with the task."""
    out = sorted((a for a in ended if a.task_id == task.id), key=lambda a: a.retry_count)
    if task.worker_id is not None and all(a.retry_count != task.retry_count for a in out):
        live = task.status is TaskStatus.RUNNING
        out.append(
            AttemptRow(
                task.id,
                task.retry_count,
                task.worker_id,
                task.assigned_at,
                task.started_at,
                None if live else task.finished_at,
                None if live else str(task.status),
                holds_slot=task.holds_slot(),
                error=task.error,
            )
        )
    return out
