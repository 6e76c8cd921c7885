"""Time sources and retry pacing for the SDK.

Everything that waits or stamps a time goes through a ``Clock`` so tests can pin it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Where the SDK reads time from."""

    def now(self) -> datetime:
        """Current wall-clock time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for intervals and deadlines)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        import time

        return time.monotonic()


SYSTEM_CLOCK: Clock = SystemClock()


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential backoff: ``min(cap, initial * factor**attempt)``, scaled by jitter."""

    initial: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.5
    """Fraction of the delay that is randomised: 0.5 means a delay in [50 %, 100 %]."""

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        # Cap the exponent first so huge attempt counts cannot overflow a float.
        base = min(self.cap, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * rng())


# Worker listener reconnects: quick first retry, never more than 5 s apart, forever.
LISTEN_BACKOFF = Backoff(initial=0.1, cap=5.0)
# Unary calls that must get through (results, registration): patient but bounded per try.
CALL_BACKOFF = Backoff(initial=0.5, cap=5.0)
