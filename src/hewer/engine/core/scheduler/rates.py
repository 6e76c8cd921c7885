"""Rate limits: token buckets per (tenant, key), refilled by whole windows (as upstream)."""

from __future__ import annotations

from dataclasses import dataclass

from hewer.domain import QueueItem, RateClaim


@dataclass(slots=True)
class Bucket:
    """``limit`` units per window of ``duration_s``; the whole limit comes back when a
    window ends, the first window starting at first use."""

    limit: int
    duration_s: float
    tokens: float
    stamp: float  # when the current window started

    def refill(self, now: float) -> None:
        if now - self.stamp >= self.duration_s:
            windows = (now - self.stamp) // self.duration_s
            self.stamp += windows * self.duration_s
            self.tokens = float(self.limit)

    def wait(self, units: int, now: float) -> float:
        """Seconds until ``units`` are available (after a refill at ``now``)."""
        if units > self.limit:
            return float("inf")
        if self.tokens >= units:
            return 0.0
        return max(0.0, self.stamp + self.duration_s - now)

    def resize(self, limit: int, duration_s: float, now: float) -> None:
        self.refill(now)
        self.limit, self.duration_s = limit, duration_s
        self.tokens = min(self.tokens, float(limit))


class RateLimits:
    """Static limits as declared, dynamic ones as each task names them."""

    def __init__(self) -> None:
        self._static: dict[tuple[str, str], tuple[int, float]] = {}
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self.wake: float | None = None  # when a limited task may fit again
        self.refused: dict[str, int] = {}
        """Per tenant, times a queued task was held back by a rate limit (for metrics)."""

    def declare(self, tenant_id: str, key: str, limit: int, duration_s: float, now: float) -> None:
        self._static[(tenant_id, key)] = (limit, duration_s)
        bucket = self._buckets.get((tenant_id, key))
        if bucket is not None:
            bucket.resize(limit, duration_s, now)

    def _bucket(self, tenant_id: str, claim: RateClaim, now: float) -> Bucket | None:
        key = (tenant_id, claim.key)
        if claim.limit is not None:  # dynamic: the task says what the limit is
            limit, duration = claim.limit, claim.duration_s
        elif key in self._static:
            limit, duration = self._static[key]
        else:
            return None  # a static key nobody declared: wait until it is
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(limit, duration, float(limit), now)
        elif (bucket.limit, bucket.duration_s) != (limit, duration):
            bucket.resize(limit, duration, now)
        return bucket

    def allow(self, item: QueueItem, now: float) -> bool:
        """Whether every limit of the item has its units now; if not, note when to look
        again (no busy loop)."""
        for claim in item.rates:
            bucket = self._bucket(item.tenant_id, claim, now)
            if bucket is None:
                return self._refuse(item.tenant_id)
            bucket.refill(now)
            wait = bucket.wait(claim.units, now)
            if wait > 0:
                if wait != float("inf"):
                    at = now + wait
                    self.wake = at if self.wake is None else min(self.wake, at)
                return self._refuse(item.tenant_id)
        return True

    def _refuse(self, tenant_id: str) -> bool:
        self.refused[tenant_id] = self.refused.get(tenant_id, 0) + 1
        return False

    def consume(self, item: QueueItem, sign: int = 1) -> None:
        """Take the item's units (``sign`` -1: give them back)."""
        for claim in item.rates:
            bucket = self._buckets.get((item.tenant_id, claim.key))
            if bucket is not None:
                bucket.tokens = min(float(bucket.limit), bucket.tokens - sign * claim.units)
