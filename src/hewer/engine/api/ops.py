"""What operators and orchestrators ask every engine replica, whatever its role:
``/health`` (the process answers), ``/ready`` (its database answers, so it can take
calls) and ``/metrics`` (Prometheus). None needs a token: probes and scrapers carry none,
and none of them reveals a task's data."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hewer.engine.metrics import EngineMetrics
from hewer.errors import StoreError
from hewer.store import Store

logger = logging.getLogger(__name__)

PATHS = frozenset({"/health", "/ready", "/metrics"})
READY_TIMEOUT_S = 5.0


def build_ops_app(
    store: Store, metrics: EngineMetrics, role: Callable[[], dict[str, Any]]
) -> Starlette:
    """``role()`` adds this replica's part (replica id, whether it schedules) to answers."""

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", **role()})

    async def ready(request: Request) -> Response:
        # The store opened (migrations applied) before this app was served; what is left
        # to know is whether the database answers now.
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await store.ping()
        except (StoreError, TimeoutError) as exc:
            reason = str(exc) or f"the database did not answer within {READY_TIMEOUT_S:.0f}s"
            return JSONResponse({"status": "unavailable", "reason": reason, **role()}, 503)
        return JSONResponse({"status": "ready", **role()})

    async def scrape(request: Request) -> Response:
        try:
            body = await metrics.render()
        except StoreError as exc:
            return JSONResponse({"errors": [{"description": f"database: {exc}"}]}, 503)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            Route("/metrics", scrape, methods=["GET"]),
        ]
    )
