"""What every gRPC adapter shares: authentication and error translation at the edge."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from hewer.durations import InvalidDuration
from hewer.engine.core.auth import TokenAuthority, Unauthenticated, bearer
from hewer.engine.core.service import EngineCore, FailedPrecondition
from hewer.errors import InvalidInput, NotFound, NotSupported
from hewer.store import StoreError

logger = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")

# Each domain error maps to one status; the SDK treats these as final (no retry), except
# FAILED_PRECONDITION, which a worker answers by reopening its stream.
_STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidDuration, grpc.StatusCode.INVALID_ARGUMENT),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (NotSupported, grpc.StatusCode.UNIMPLEMENTED),
    # The database is busy or away: worth retrying, unlike the rest.
    (StoreError, grpc.StatusCode.UNAVAILABLE),
)


def status_for(exc: Exception) -> grpc.StatusCode | None:
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return None


class Servicer:
    """Base of the adapters: the engine core, and the caller's tenant from its token."""

    def __init__(self, core: EngineCore, auth: TokenAuthority) -> None:
        self.core = core
        self.auth = auth

    async def tenant(self, context: aio.ServicerContext[Any, Any]) -> str:
        metadata = dict(context.invocation_metadata() or ())
        value = metadata.get("authorization")
        principal = await self.auth.verify(bearer(value if isinstance(value, str) else None))
        return principal.tenant_id


Handler = Callable[[Any, str, Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]


def unary(fn: Handler) -> Callable[[Any, Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]:
    """Wrap a unary handler: authenticate, then translate domain errors to statuses."""

    @functools.wraps(fn)
    async def wrapper(self: Servicer, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            tenant_id = await self.tenant(context)
            return await fn(self, tenant_id, request, context)
        except Exception as exc:
            await abort_for(exc, context, fn.__name__)

    return wrapper


async def abort_for(exc: Exception, context: aio.ServicerContext[Any, Any], method: str) -> None:
    """Abort the call with the status of ``exc``; unknown errors become INTERNAL."""
    if isinstance(exc, aio.AbortError):
        raise exc
    code = status_for(exc)
    if code is None:
        logger.exception("%s failed", method)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")
    else:
        await context.abort(code, str(exc))
