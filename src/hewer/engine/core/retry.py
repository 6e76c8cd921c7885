"""Retries, backoff and the reassignment cap: pure decisions over a task's counters."""

from __future__ import annotations

from hewer import defaults
from hewer.domain import TaskDef, TaskRow


def retry_delay(
    attempt: int, factor: float | None, max_s: float | None, retry_after_ms: int | None
) -> float:
    """Seconds before retry number ``attempt`` (1 for the first retry) may start:
    the task's own ``RetryAfter`` if it asked for one, else ``min(max, factor^attempt)``
    (no backoff factor: at once)."""
    if retry_after_ms is not None and retry_after_ms >= 0:
        return retry_after_ms / 1000.0
    if not factor:
        return 0.0
    cap = max_s if max_s is not None else defaults.BACKOFF_MAX_S
    try:
        return float(min(cap, factor**attempt))
    except OverflowError:
        return cap


def may_retry(task: TaskRow, definition: TaskDef, should_not_retry: bool) -> bool:
    """Whether a failure in user code gets another attempt: retries left, and the task did
    not say it must not be retried."""
    return not should_not_retry and task.app_retries < definition.retries


def gives_up(task: TaskRow, max_reassignments: int | None) -> bool:
    """Whether losing the task's worker once more fails it (a poison task must not crash
    workers forever); ``None`` never gives up."""
    return max_reassignments is not None and task.reassignments >= max_reassignments
