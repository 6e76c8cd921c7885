from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hewer.testing import EngineThread

# hatchet-sdk heartbeats every 4 s and that cannot be changed, so its engine keeps a window
# well above it (the other tiers scale both constants down together).
HATCHET_INACTIVE_AFTER = 10.0


@pytest.fixture
def engine(tmp_path: Path, database_url: str) -> Iterator[EngineThread]:
    with EngineThread(
        tmp_path, database_url=database_url, inactive_after=HATCHET_INACTIVE_AFTER
    ) as running:
        yield running
