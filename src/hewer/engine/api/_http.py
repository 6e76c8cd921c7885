"""What every REST endpoint shares: authentication, JSON bodies, errors in Hatchet's shape.

Errors are ``{"errors": [{"description": "..."}]}`` (Hatchet's ``APIErrors``), with the
status of the domain error: 400 bad input, 401 no or bad token, 403 another tenant's path,
404 unknown object, 409 wrong state, 501 not built, 503 database unavailable.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hewer.durations import InvalidDuration
from hewer.engine.core import scopes
from hewer.engine.core.auth import TokenAuthority, Unauthenticated, bearer
from hewer.engine.core.scopes import Permission
from hewer.engine.core.service import FailedPrecondition
from hewer.errors import (
    AlreadyExists,
    HewerError,
    InvalidInput,
    NotFound,
    NotSupported,
    PermissionDenied,
)
from hewer.store import StoreError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


class Forbidden(HewerError):
    """The token is valid but names another tenant than the path."""


class PayloadTooLarge(HewerError):
    """The request body is larger than the API accepts."""


_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (Unauthenticated, 401),
    (Forbidden, 403),
    (PermissionDenied, 403),
    (NotFound, 404),
    (InvalidInput, 400),
    (InvalidDuration, 400),
    (PayloadTooLarge, 413),
    (FailedPrecondition, 409),
    (NotSupported, 501),
    (AlreadyExists, 409),
    (StoreError, 503),
)


# What a 503 (the database is unreachable) tells clients to wait before trying again.
RETRY_AFTER_SECONDS = 5


def error_response(status: int, message: str) -> JSONResponse:
    headers: dict[str, str] | None = None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    elif status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return JSONResponse({"errors": [{"description": message}]}, status_code=status, headers=headers)


def response_for(exc: Exception, what: str) -> JSONResponse:
    """The error response for ``exc``; anything unexpected is logged and answered 500."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return error_response(status, str(exc))
    logger.exception("%s failed", what)
    return error_response(500, f"internal error in {what}")


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path, wrong method) in the same JSON shape."""
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        {"errors": [{"description": exc.detail}]},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def server_error(request: Request, exc: Exception) -> Response:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error")


Handler = Callable[[Request, str], Awaitable[Any]]


def endpoint(
    auth: TokenAuthority,
) -> Callable[[Handler, Permission], Callable[[Request], Awaitable[Response]]]:
    """Wrap a handler ``(request, tenant_id) -> JSON value`` (or a ready response):
    authenticate the bearer token, check a ``{tenant}`` path parameter against it and the
    token's scope against what the route ``needs``, translate domain errors."""

    def wrap(fn: Handler, needs: Permission) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(fn)
        async def handle(request: Request) -> Response:
            try:
                header = request.headers.get("authorization")
                principal = await auth.verify(bearer(header))
                tenant = request.path_params.get("tenant")
                if tenant is not None and tenant != principal.tenant_id:
                    raise Forbidden(f"the token does not grant access to tenant {tenant!r}")
                scopes.check(principal.scope, needs, f"{request.method} {request.url.path}")
                request.state.principal = principal
                result = await fn(request, principal.tenant_id)
                return result if isinstance(result, Response) else JSONResponse(result)
            except Exception as exc:
                return response_for(exc, fn.__name__)

        return handle

    return wrap


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (400 otherwise, 413 when too large)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"request body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidInput("request body is empty (expected a JSON object)")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"request body must be a JSON object, got {type(value).__name__}")
    return value


def optional_list_of_str(body: dict[str, Any], key: str) -> list[str] | None:
    """``body[key]`` as a list of strings, None when absent or null (400 if malformed)."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"'{key}' must be a list of strings")
    return value
