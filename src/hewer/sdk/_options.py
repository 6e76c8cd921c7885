"""Task options: one frozen dataclass, and the keyword set the decorators accept."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TypedDict

from hewer.errors import ConfigurationError

DEFAULT_EXECUTION_TIMEOUT = timedelta(seconds=60)
DEFAULT_SCHEDULE_TIMEOUT = timedelta(minutes=5)
DEFAULT_SLOTS = 100
PRIORITY_RANGE = range(1, 4)


class TaskKwargs(TypedDict, total=False):
    """Keyword options of ``@hw.task(...)`` and ``@workflow.task(...)``; see ``TaskOptions``."""

    retries: int
    execution_timeout: timedelta
    schedule_timeout: timedelta
    backoff_factor: float | None
    backoff_max: timedelta | None


@dataclass(frozen=True, kw_only=True)
class TaskOptions:
    """How the engine runs one task."""

    retries: int = 0
    """Extra attempts after a failure (0 = run once)."""
    execution_timeout: timedelta = DEFAULT_EXECUTION_TIMEOUT
    """How long one attempt may run before the engine fails it."""
    schedule_timeout: timedelta = DEFAULT_SCHEDULE_TIMEOUT
    """How long the task may wait for a worker before the engine fails it."""
    backoff_factor: float | None = None
    """Retry delay grows as ``backoff_factor ** attempt`` seconds (None: retry at once)."""
    backoff_max: timedelta | None = None
    """Upper bound on the retry delay (whole seconds on the wire)."""

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigurationError(f"retries must be >= 0, got {self.retries}")
        for label, value in (
            ("execution_timeout", self.execution_timeout),
            ("schedule_timeout", self.schedule_timeout),
        ):
            if value <= timedelta(0):
                raise ConfigurationError(f"{label} must be positive, got {value}")
        if self.backoff_factor is not None and self.backoff_factor <= 0:
            raise ConfigurationError(f"backoff_factor must be > 0, got {self.backoff_factor}")
        if self.backoff_max is not None and self.backoff_max < timedelta(seconds=1):
            raise ConfigurationError(f"backoff_max must be at least 1s, got {self.backoff_max}")

    @property
    def backoff_max_seconds(self) -> int | None:
        """``backoff_max`` as whole seconds, rounded up, or None."""
        if self.backoff_max is None:
            return None
        seconds = self.backoff_max.total_seconds()
        return int(seconds) + (0 if seconds == int(seconds) else 1)


def check_priority(priority: int | None) -> int | None:
    """Validate a run priority (1 = lowest .. 3 = highest)."""
    if priority is not None and priority not in PRIORITY_RANGE:
        raise ConfigurationError(f"priority must be 1, 2 or 3, got {priority}")
    return priority
