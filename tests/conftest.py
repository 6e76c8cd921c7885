from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from hewer.testing import EngineThread

T = TypeVar("T")

# Timing scaled down from 4 s / 30 s in the same ratio, so tests exercise the real logic fast.
HEARTBEAT = 0.2
INACTIVE_AFTER = 1.5


def wait_for(
    condition: Callable[[], T], timeout: float = 20.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[EngineThread]:
    with EngineThread(
        tmp_path, heartbeat_interval=HEARTBEAT, inactive_after=INACTIVE_AFTER
    ) as running:
        yield running
