"""Start records the tasks write (stdlib only: imported by every system's worker).

``BENCH_MARKS``: one ``<time.time()> <pid>`` line per start of W3's slow task, so the
driver sees the re-run after it killed a worker. ``BENCH_STARTS``: ``<n> <time.time()>``
per W2 job, for systems that keep no results (pgqueuer).
"""

from __future__ import annotations

import os
from pathlib import Path


def mark_start(started: float) -> None:
    """Record a start of the slow task in ``BENCH_MARKS``."""
    with open(os.environ["BENCH_MARKS"], "a") as marks:
        marks.write(f"{started} {os.getpid()}\n")


def record_start(n: str, started: float) -> None:
    """Record the start of W2 job ``n`` in ``BENCH_STARTS``."""
    with open(os.environ["BENCH_STARTS"], "a") as starts:
        starts.write(f"{n} {started}\n")


def read_marks(path: Path) -> list[tuple[float, int]]:
    """``(time, pid)`` of every start of the slow task so far."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    marks: list[tuple[float, int]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            marks.append((float(parts[0]), int(parts[1])))
    return marks
