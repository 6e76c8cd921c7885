"""What every gRPC adapter shares: authentication and error translation at the edge."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import status_pb2  # type: ignore[import-untyped]
from grpc import aio
from grpc_status import rpc_status

from hewer._proto.v1 import workflows_pb2 as v1_workflows_pb2
from hewer.durations import InvalidDuration
from hewer.engine.core import scopes
from hewer.engine.core.auth import (
    STREAM_RECHECK_SECONDS,
    Principal,
    TokenAuthority,
    Unauthenticated,
    bearer,
)
from hewer.engine.core.service import EngineCore, FailedPrecondition
from hewer.errors import (
    AlreadyExists,
    IdempotencyCollision,
    InvalidInput,
    NotFound,
    NotSupported,
    PermissionDenied,
    TooLarge,
)
from hewer.store import StoreError

logger = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")

# Each domain error maps to one status; the SDK treats these as final (no retry), except
# FAILED_PRECONDITION, which a worker answers by reopening its stream.
_STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (TooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
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
        """The caller's tenant; the call's principal is then :func:`caller`."""
        metadata = dict(context.invocation_metadata() or ())
        value = metadata.get("authorization")
        principal = await self.auth.verify(bearer(value if isinstance(value, str) else None))
        _CALLER.set(principal)
        # Every call is checked here, at authentication; a call whose method is unknown
        # (not wrapped by ``tolerant``) needs what only admin tokens have.
        method = _METHOD.get("")
        _SPAWN_ONLY.set(not scopes.check_method(principal.scope, method))
        return principal.tenant_id

    async def check_spawn(self, tenant_id: str, parent_task_ids: list[str]) -> None:
        """For a caller that may trigger only child runs (a worker token): every trigger
        must name a parent task that runs on one of its own workers."""
        if not _SPAWN_ONLY.get(True):
            return
        who = caller()
        for parent in dict.fromkeys(parent_task_ids):
            if not parent:
                raise PermissionDenied(
                    "a worker token may trigger only child runs (from a task it runs)"
                )
            await self.core.check_spawn(tenant_id, parent, who)


class TokenWatch:
    """Checks the token of a long-lived stream again every STREAM_RECHECK_SECONDS; once it
    is revoked or expired, ``stop()`` ends the stream and ``reason`` says why."""

    def __init__(
        self, auth: TokenAuthority, context: aio.ServicerContext[Any, Any], stop: Callable[[], Any]
    ) -> None:
        value = dict(context.invocation_metadata() or ()).get("authorization")
        self._token = bearer(value if isinstance(value, str) else None)
        self._auth = auth
        self._stop = stop
        self.reason: str | None = None
        self._task = asyncio.create_task(self._run(), name="hewer-token-watch")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(STREAM_RECHECK_SECONDS)
            try:
                await self._auth.verify(self._token)
            except Unauthenticated as exc:
                self.reason = str(exc)
                self._stop()
                return
            except Exception:  # the database is away: the next round checks again
                logger.debug("could not check a stream's token", exc_info=True)

    async def valid(self) -> bool:
        """Whether the token still holds (checked now; a failure is kept as ``reason``)."""
        if self.reason is None:
            try:
                await self._auth.verify(self._token)
            except Unauthenticated as exc:
                self.reason = str(exc)
        return self.reason is None

    async def check(self, context: aio.ServicerContext[Any, Any]) -> None:
        """For streams that answer what they are sent: end the call with UNAUTHENTICATED
        if the token went bad."""
        if not await self.valid():
            await self.refuse_if_invalid(context)

    def cancel(self) -> None:
        """Stop watching (however the stream ended)."""
        self._task.cancel()

    async def refuse_if_invalid(self, context: aio.ServicerContext[Any, Any]) -> None:
        """If the token went bad, end the call with UNAUTHENTICATED (not a clean end)."""
        if self.reason is not None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, self.reason)


# Each call runs in a task of its own, with its own copy of the context.
_CALLER: ContextVar[Principal] = ContextVar("hewer_grpc_caller")
_METHOD: ContextVar[str] = ContextVar("hewer_grpc_method")
_SPAWN_ONLY: ContextVar[bool] = ContextVar("hewer_grpc_spawn_only")


def caller() -> Principal:
    """Who makes the current call (set by :meth:`Servicer.tenant`)."""
    return _CALLER.get()


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
    if isinstance(exc, IdempotencyCollision):
        # grpc's aio stubs lack abort_with_status, which the aio context has.
        aborting: Any = context
        await aborting.abort_with_status(collision_status(exc, bulk=method.startswith("Bulk")))
    code = status_for(exc)
    if code is None:
        logger.exception("%s failed", method)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")
    else:
        await context.abort(code, str(exc))


class Undecodable:
    """Stands for a request message that did not parse, so the call is refused with
    INVALID_ARGUMENT by us (grpc would answer UNKNOWN and log a traceback per call)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def tolerant(method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
    """``handler`` with a request decoder that never raises: a request that is not a valid
    message (random bytes, invalid UTF-8 in a string field) gets INVALID_ARGUMENT. A method
    the engine does not implement answers UNIMPLEMENTED with no traceback (grpc logs one
    per call for the generated stubs' NotImplementedError)."""
    decode = handler.request_deserializer
    if decode is None:
        return handler
    unimplemented = f"{method} is not implemented by this engine"

    def safe_decode(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as exc:  # protobuf's DecodeError, UnicodeDecodeError
            return Undecodable(f"{method}: the request is not a valid message ({exc})")

    async def refuse(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)

    async def checked(
        requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for request in requests:
            await refuse(request, context)
            yield request

    async def drain(result: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        if result is _UNIMPLEMENTED:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, unimplemented)
        if hasattr(result, "__aiter__"):
            async for item in result:
                yield item
        else:  # a handler that writes with context.write() and returns nothing
            await result

    async def once(result: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        if result is _UNIMPLEMENTED:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, unimplemented)
        return await result

    h = cast(Any, handler)
    if h.unary_unary is not None:
        inner_uu = h.unary_unary

        async def unary_unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            _METHOD.set(method)  # read at authentication, for the token's scope
            await refuse(request, context)
            return await once(_call(inner_uu, request, context), context)

        return h._replace(request_deserializer=safe_decode, unary_unary=unary_unary)
    if h.unary_stream is not None:
        inner_us = h.unary_stream

        async def unary_stream(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            _METHOD.set(method)
            await refuse(request, context)
            async for item in drain(_call(inner_us, request, context), context):
                yield item

        return h._replace(request_deserializer=safe_decode, unary_stream=unary_stream)
    if h.stream_unary is not None:
        inner_su = h.stream_unary

        async def stream_unary(
            requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]
        ) -> Any:
            _METHOD.set(method)
            return await once(_call(inner_su, checked(requests, context), context), context)

        return h._replace(request_deserializer=safe_decode, stream_unary=stream_unary)
    inner_ss = h.stream_stream

    async def stream_stream(
        requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        _METHOD.set(method)
        async for item in drain(_call(inner_ss, checked(requests, context), context), context):
            yield item

    return h._replace(request_deserializer=safe_decode, stream_stream=stream_stream)


_UNIMPLEMENTED = object()


def _call(fn: Any, request: Any, context: Any) -> Any:
    """``fn(request, context)``; the generated stub of a method no servicer implements
    raises NotImplementedError at once, which becomes the _UNIMPLEMENTED marker (an error
    raised later, inside a real handler, stays the error it is)."""
    try:
        return fn(request, context)
    except NotImplementedError:
        return _UNIMPLEMENTED


def collision_status(exc: IdempotencyCollision, *, bulk: bool) -> grpc.Status:
    """ALREADY_EXISTS "idempotency key collision", with the detail hatchet-sdk unpacks:
    the first collision (a single trigger), or every collision and the runs created."""
    errors = [
        v1_workflows_pb2.IdempotencyCollisionError(
            existing_run_external_id=existing, colliding_run_external_id=colliding
        )
        for existing, colliding in exc.collisions
    ]
    detail = any_pb2.Any()
    if bulk:
        detail.Pack(
            v1_workflows_pb2.BulkTriggerIdempotencyCollisionError(
                successful_workflow_run_external_ids=exc.created, collisions=errors
            )
        )
    else:
        detail.Pack(errors[0])
    status = status_pb2.Status(
        code=grpc.StatusCode.ALREADY_EXISTS.value[0], message=str(exc), details=[detail]
    )
    return rpc_status.to_status(status)


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def seconds_of(ts: timestamp_pb2.Timestamp, what: str) -> float:
    """A request's Timestamp as epoch seconds; one protobuf itself calls invalid (nanos out
    of range, a year beyond 1..9999) is the client's mistake, said as InvalidInput."""
    try:
        ts.ToMicroseconds()  # checks it
    except ValueError as exc:
        raise InvalidInput(f"{what}: {exc}") from None
    return int(ts.ToNanoseconds()) / 1e9
