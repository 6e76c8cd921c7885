"""Retrying unary calls through engine restarts, and turning RPC errors into Hewer errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import TypeVar

import grpc
from google.rpc import status_pb2  # type: ignore[import-untyped]

from hewer._proto.v1 import workflows_pb2 as v1_workflows_pb2
from hewer.errors import (
    ConfigurationError,
    HewerError,
    IdempotencyCollisionError,
    InvalidInput,
    NotFound,
)
from hewer.sdk._connection import status_code, status_details
from hewer.sdk._time import CALL_BACKOFF, SYSTEM_CLOCK, Backoff, Clock

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Only "the engine was not reached" is safe to repeat for calls that create things:
# repeating after an ambiguous answer (INTERNAL, DEADLINE_EXCEEDED) could create a run twice.
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


def _should_retry(
    exc: BaseException,
    retry_codes: Collection[grpc.StatusCode],
    attempt: int,
    attempts: int | None,
    started: float,
    give_up_after: float | None,
    clock: Clock,
) -> bool:
    if status_code(exc) not in retry_codes:
        return False
    if attempts is not None and attempt + 1 >= attempts:
        return False
    return give_up_after is None or clock.monotonic() - started < give_up_after


def call_with_retry(
    call: Callable[[], T],
    *,
    what: str,
    retry_codes: Collection[grpc.StatusCode] = UNREACHABLE,
    attempts: int | None = 5,
    give_up_after: float | None = None,
    backoff: Backoff = CALL_BACKOFF,
    clock: Clock = SYSTEM_CLOCK,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run a blocking call, repeating it on ``retry_codes`` with backoff."""
    started = clock.monotonic()
    attempt = 0
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if not _should_retry(
                exc, retry_codes, attempt, attempts, started, give_up_after, clock
            ):
                raise
            delay = backoff.delay(attempt)
            logger.info("%s failed (%s), retrying in %.2fs", what, status_code(exc), delay)
            attempt += 1
            sleep(delay)


async def aio_call_with_retry(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    retry_codes: Collection[grpc.StatusCode] = UNREACHABLE,
    attempts: int | None = 5,
    give_up_after: float | None = None,
    backoff: Backoff = CALL_BACKOFF,
    clock: Clock = SYSTEM_CLOCK,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Await a call, repeating it on ``retry_codes`` with backoff."""
    started = clock.monotonic()
    attempt = 0
    while True:
        try:
            return await call()
        except grpc.RpcError as exc:
            if not _should_retry(
                exc, retry_codes, attempt, attempts, started, give_up_after, clock
            ):
                raise
            delay = backoff.delay(attempt)
            logger.info("%s failed (%s), retrying in %.2fs", what, status_code(exc), delay)
            attempt += 1
            await sleep(delay)


COLLISION = "idempotency key collision"


def collision(exc: grpc.RpcError, what: str) -> IdempotencyCollisionError:
    """The run(s) an idempotency key collision names, from the status detail."""
    existing: list[str] = []
    created: list[str] = []
    trailer = getattr(exc, "trailing_metadata", None)
    raw = (
        next(
            (v for k, v in (trailer() or ()) if k == "grpc-status-details-bin"),
            None,
        )
        if callable(trailer)
        else None
    )
    details = status_pb2.Status.FromString(raw).details if isinstance(raw, bytes) else ()
    for detail in details:
        single = v1_workflows_pb2.IdempotencyCollisionError()
        bulk = v1_workflows_pb2.BulkTriggerIdempotencyCollisionError()
        if detail.Unpack(single):
            existing.append(single.existing_run_external_id)
        elif detail.Unpack(bulk):
            created.extend(bulk.successful_workflow_run_external_ids)
            existing.extend(c.existing_run_external_id for c in bulk.collisions)
    return IdempotencyCollisionError(
        f"{what}: {COLLISION} (held by run {', '.join(existing) or '?'})", existing, created
    )


def translate(exc: grpc.RpcError, what: str) -> HewerError:
    """A Hewer error for an RPC error the caller cannot do anything about by retrying."""
    code = status_code(exc)
    details = status_details(exc)
    message = f"{what}: {details}"
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(message)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(message)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return ConfigurationError(f"{what}: the engine rejected the token ({details})")
    if code == grpc.StatusCode.ALREADY_EXISTS and details == COLLISION:
        return collision(exc, what)
    name = code.name if code is not None else "error"
    return HewerError(f"{what} failed ({name}): {details}")
