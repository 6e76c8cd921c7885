"""Counters the core keeps (schedule timeouts, rate-limit refusals) stay monotonic across
scheduling terms: a new core starts from zero, the engine's metrics add what the old one
counted."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from hewer.engine.metrics import EngineMetrics


def fake_core(timed_out: dict[str, int], limited: dict[str, int]) -> Any:
    return SimpleNamespace(
        sweeps=SimpleNamespace(schedule_timeouts=timed_out),
        scheduler=SimpleNamespace(rate_limited=lambda: dict(limited)),
    )


def test_counts_add_up_over_terms() -> None:
    metrics = EngineMetrics(cast(Any, None))
    first = fake_core({"t1": 2}, {"t1": 5})
    metrics.core = first
    assert metrics.counts() == {"timed_out": {"t1": 2}, "rate_limited": {"t1": 5}}
    first.sweeps.schedule_timeouts["t1"] = 3  # counted on during the term
    metrics.core = None  # the term ends (this replica relays)
    assert metrics.counts() == {"timed_out": {"t1": 3}, "rate_limited": {"t1": 5}}
    metrics.core = fake_core({"t2": 1}, {"t1": 1})  # a new term, a new core from zero
    assert metrics.counts() == {"timed_out": {"t1": 3, "t2": 1}, "rate_limited": {"t1": 6}}
