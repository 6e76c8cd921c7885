"""The Starlette application: routes, their authentication and the error shape."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hewer.engine.api._http import endpoint, http_exception, server_error
from hewer.engine.api.tasks import TaskRoutes
from hewer.engine.api.workers import WorkerRoutes
from hewer.engine.core.auth import TokenAuthority
from hewer.engine.core.service import EngineCore


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def build_app(core: EngineCore, auth: TokenAuthority) -> Starlette:
    """The REST API of one engine. Every route but ``/health`` needs a bearer token."""
    authed = endpoint(auth)
    workers = WorkerRoutes(core)
    tasks = TaskRoutes(core)
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/api/v1/workers/{worker}", authed(workers.get), methods=["GET"]),
        Route("/api/v1/workers/{worker}", authed(workers.update), methods=["PATCH"]),
        Route("/api/v1/tenants/{tenant}/worker", authed(workers.list), methods=["GET"]),
        Route(
            "/api/v1/stable/tenants/{tenant}/tasks/cancel",
            authed(tasks.cancel),
            methods=["POST"],
        ),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_exception, Exception: server_error},
    )
