"""Hewer: durable task orchestration, wire-compatible with Hatchet."""

from __future__ import annotations

from hewer.config import ClientSettings
from hewer.errors import (
    ConfigurationError,
    HewerError,
    InvalidInput,
    NonRetryableError,
    NotFound,
    RetryAfter,
    TaskRunError,
)
from hewer.sdk import (
    Context,
    Hewer,
    RunFilter,
    RunRef,
    StandaloneTask,
    Task,
    TaskOptions,
    Worker,
    WorkerInfo,
    WorkerState,
    Workflow,
)

__all__ = [
    "ClientSettings",
    "ConfigurationError",
    "Context",
    "Hewer",
    "HewerError",
    "InvalidInput",
    "NonRetryableError",
    "NotFound",
    "RetryAfter",
    "RunFilter",
    "RunRef",
    "StandaloneTask",
    "Task",
    "TaskOptions",
    "TaskRunError",
    "Worker",
    "WorkerInfo",
    "WorkerState",
    "Workflow",
]
