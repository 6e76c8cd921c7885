"""``hw.rate_limits``: declaring static rate-limit keys (``WorkflowService/PutRateLimit``)."""

from __future__ import annotations

from typing import Any

import grpc

from hewer.sdk import _wire
from hewer.sdk._connection import TRANSIENT_CODES
from hewer.sdk._controls import RateLimitDuration, check_int32, check_name, coerce_enum
from hewer.sdk._core import ClientCore
from hewer.sdk._retry import aio_call_with_retry, call_with_retry, translate

PUT_TIMEOUT_SECONDS = 10.0


def put_request(key: str, limit: int, duration: RateLimitDuration | str) -> Any:
    """Validated ``PutRateLimitRequest``."""
    check_name(key, "a rate limit key")
    check_int32(limit, "a rate limit", minimum=0)
    return _wire.put_rate_limit_request(
        key, limit, coerce_enum(RateLimitDuration, duration, "duration")
    )


class RateLimits:
    """Static rate-limit keys that tasks consume with ``RateLimit(static_key=...)``."""

    def __init__(self, client: ClientCore) -> None:
        self._client = client

    def put(
        self, key: str, limit: int, duration: RateLimitDuration = RateLimitDuration.MINUTE
    ) -> None:
        """Create or change the key ``key``: at most ``limit`` units per ``duration``.

        Keys are not namespaced (as in Hatchet). Putting a key again replaces its limit.
        """
        request = put_request(key, limit, duration)
        pool = self._client._pool
        stub = _wire.workflow_stub(pool.sync())
        what = f"put rate limit {key!r}"
        try:
            # Setting a limit is idempotent, so any transient failure may be repeated.
            call_with_retry(
                lambda: stub.PutRateLimit(
                    request, metadata=pool.metadata, timeout=PUT_TIMEOUT_SECONDS
                ),
                what=what,
                retry_codes=TRANSIENT_CODES,
            )
        except grpc.RpcError as exc:
            raise translate(exc, what) from exc

    async def aio_put(
        self, key: str, limit: int, duration: RateLimitDuration = RateLimitDuration.MINUTE
    ) -> None:
        """Create or change the key ``key``: at most ``limit`` units per ``duration``."""
        request = put_request(key, limit, duration)
        pool = self._client._pool
        stub = _wire.workflow_stub(pool.aio())
        what = f"put rate limit {key!r}"
        try:
            await aio_call_with_retry(
                lambda: stub.PutRateLimit(
                    request, metadata=pool.metadata, timeout=PUT_TIMEOUT_SECONDS
                ),
                what=what,
                retry_codes=TRANSIENT_CODES,
            )
        except grpc.RpcError as exc:
            raise translate(exc, what) from exc
