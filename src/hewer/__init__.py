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
    RunRef,
    StandaloneTask,
    Task,
    TaskOptions,
    Worker,
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
    "RunRef",
    "StandaloneTask",
    "Task",
    "TaskOptions",
    "TaskRunError",
    "Worker",
    "Workflow",
]
