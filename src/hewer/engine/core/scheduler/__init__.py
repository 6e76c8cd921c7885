"""Scheduling: slot pools and their capacity index (``pools``), concurrency gates
(``gates``), rate limits (``rates``), and the decisions (``scheduler``)."""

from __future__ import annotations

from hewer.engine.core.scheduler.pools import WorkerSlots, worker_slots
from hewer.engine.core.scheduler.scheduler import MAX_BATCH, Scheduler

__all__ = ["MAX_BATCH", "Scheduler", "WorkerSlots", "worker_slots"]
