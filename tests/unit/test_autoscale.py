"""The autoscaler's decisions on a fake clock: a change needs its condition to hold for the
whole period, the bounds hold, and the range is parsed strictly."""

from __future__ import annotations

import pytest

from hewer.autoscale import AutoscaleError, Decider, Policy, parse_range

POLICY = Policy(minimum=1, maximum=3, threshold=4, slots=2, up_after=10, idle_after=30)


def test_a_full_queue_adds_one_worker_per_sustained_period() -> None:
    d = Decider(POLICY)
    assert d.decide(1, queued=9, running=2, now=0) == 0
    assert d.decide(1, queued=9, running=2, now=9.9) == 0
    assert d.decide(1, queued=9, running=2, now=10) == +1
    # The period starts again after a change: no second worker at once.
    assert d.decide(2, queued=9, running=4, now=10.1) == 0
    assert d.decide(2, queued=9, running=4, now=20.1) == +1
    assert d.decide(3, queued=9, running=6, now=40) == 0  # at the maximum
    assert d.decide(3, queued=9, running=6, now=400) == 0


def test_a_dip_below_the_threshold_restarts_the_period() -> None:
    d = Decider(POLICY)
    assert d.decide(1, queued=9, running=2, now=0) == 0
    assert d.decide(1, queued=4, running=2, now=5) == 0  # not above the threshold
    assert d.decide(1, queued=9, running=2, now=12) == 0
    assert d.decide(1, queued=9, running=2, now=22) == +1


def test_idle_workers_are_retired_one_at_a_time_down_to_the_minimum() -> None:
    d = Decider(POLICY)
    # Two running fit on one worker fewer (2 slots): idle.
    assert d.decide(3, queued=0, running=2, now=0) == 0
    assert d.decide(3, queued=0, running=2, now=30) == -1
    assert d.decide(2, queued=0, running=0, now=31) == 0
    assert d.decide(2, queued=0, running=0, now=61) == -1
    assert d.decide(1, queued=0, running=0, now=1000) == 0


def test_busy_workers_are_kept_even_with_nothing_queued() -> None:
    d = Decider(POLICY)
    assert d.decide(3, queued=0, running=5, now=0) == 0  # 5 > 2 workers x 2 slots
    assert d.decide(3, queued=0, running=5, now=100) == 0


def test_below_the_minimum_a_worker_is_added_at_once_and_zero_wakes_on_any_work() -> None:
    assert Decider(POLICY).decide(0, queued=0, running=0, now=0) == +1
    zero = Decider(Policy(minimum=0, maximum=2, threshold=8, slots=2, up_after=1, idle_after=1))
    assert zero.decide(0, queued=0, running=0, now=0) == 0
    assert zero.decide(0, queued=1, running=0, now=1) == 0
    assert zero.decide(0, queued=1, running=0, now=2) == +1
    assert zero.decide(1, queued=0, running=0, now=3) == 0
    assert zero.decide(1, queued=0, running=0, now=4) == -1


@pytest.mark.parametrize(("text", "expected"), [("1:4", (1, 4)), ("0:1", (0, 1)), ("2:2", (2, 2))])
def test_ranges(text: str, expected: tuple[int, int]) -> None:
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["4:1", "0:0", "-1:2", "1", "a:b", ":3", "1:"])
def test_bad_ranges(text: str) -> None:
    with pytest.raises(AutoscaleError):
        parse_range(text)
