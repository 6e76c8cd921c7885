from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hewer.testing import EngineThread

# Timing scaled down from 4 s / 30 s in the same ratio, so tests exercise the real logic fast.
HEARTBEAT = 0.2
INACTIVE_AFTER = 1.5


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[EngineThread]:
    with EngineThread(
        tmp_path, heartbeat_interval=HEARTBEAT, inactive_after=INACTIVE_AFTER
    ) as running:
        yield running
