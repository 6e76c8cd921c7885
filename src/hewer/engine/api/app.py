"""The Starlette application: routes, their authentication and the error shape."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from hewer.engine.api._http import endpoint, http_exception, server_error
from hewer.engine.api.runs import RunRoutes
from hewer.engine.api.stats import StatsRoutes
from hewer.engine.api.tasks import TaskRoutes
from hewer.engine.api.triggers import FilterRoutes, TriggerRoutes
from hewer.engine.api.workers import WorkerRoutes
from hewer.engine.core.auth import TokenAuthority
from hewer.engine.core.scopes import Permission
from hewer.engine.core.service import EngineCore
from hewer.engine.metrics import EngineMetrics


def build_app(core: EngineCore, auth: TokenAuthority, metrics: EngineMetrics) -> Starlette:
    """The REST API of one engine; every route needs a bearer token (``/health``, ``/ready``
    and ``/metrics``, which need none, are served beside it: :mod:`hewer.engine.api.ops`)."""
    authed = endpoint(auth)
    READ, WORK = Permission.READ, Permission.WORK
    workers = WorkerRoutes(core)
    tasks = TaskRoutes(core)
    stats = StatsRoutes(core, metrics)
    triggers = TriggerRoutes(core)
    filters = FilterRoutes(core)
    runs = RunRoutes(core)
    wrs = "/api/v1/stable/workflow-runs/{run}"
    wfs = "/api/v1/tenants/{tenant}/workflows"
    fls = "/api/v1/stable/tenants/{tenant}/filters"
    RUN, DEFINE = Permission.RUN, Permission.DEFINE
    routes = [
        Route(wrs, authed(runs.get, READ), methods=["GET"]),
        Route(f"{wrs}/status", authed(runs.status, READ), methods=["GET"]),
        Route(wfs, authed(filters.workflows, READ), methods=["GET"]),
        Route(fls, authed(filters.list, READ), methods=["GET"]),
        Route(fls, authed(filters.create, DEFINE), methods=["POST"]),
        Route(f"{fls}/{{filter}}", authed(filters.get, READ), methods=["GET"]),
        Route(f"{fls}/{{filter}}", authed(filters.update, DEFINE), methods=["PATCH"]),
        Route(f"{fls}/{{filter}}", authed(filters.delete, DEFINE), methods=["DELETE"]),
        Route(f"{wfs}/crons", authed(triggers.cron_list, READ), methods=["GET"]),
        Route(f"{wfs}/crons/{{cron}}", authed(triggers.cron_get, READ), methods=["GET"]),
        Route(f"{wfs}/crons/{{cron}}", authed(triggers.cron_delete, DEFINE), methods=["DELETE"]),
        Route(f"{wfs}/{{workflow}}/crons", authed(triggers.cron_create, DEFINE), methods=["POST"]),
        Route(f"{wfs}/scheduled", authed(triggers.schedule_list, READ), methods=["GET"]),
        Route(
            f"{wfs}/scheduled/{{scheduled}}", authed(triggers.schedule_get, READ), methods=["GET"]
        ),
        Route(
            f"{wfs}/scheduled/{{scheduled}}",
            authed(triggers.schedule_delete, RUN),
            methods=["DELETE"],
        ),
        Route(
            f"{wfs}/{{workflow}}/scheduled", authed(triggers.schedule_create, RUN), methods=["POST"]
        ),
        Route(
            f"{wfs}/scheduled/{{scheduled}}",
            authed(triggers.schedule_update, RUN),
            methods=["PATCH"],
        ),
        Route(
            f"{wfs}/scheduled/bulk-delete",
            authed(triggers.schedule_bulk_delete, RUN),
            methods=["POST"],
        ),
        Route(
            f"{wfs}/scheduled/bulk-update",
            authed(triggers.schedule_bulk_update, RUN),
            methods=["POST"],
        ),
        Route("/api/v1/workers/{worker}", authed(workers.get, READ), methods=["GET"]),
        Route("/api/v1/workers/{worker}", authed(workers.update, WORK), methods=["PATCH"]),
        Route("/api/v1/tenants/{tenant}/worker", authed(workers.list, READ), methods=["GET"]),
        Route(
            "/api/v1/tenants/{tenant}/task-stats", authed(stats.task_stats, READ), methods=["GET"]
        ),
        Route(
            "/api/v1/stable/tenants/{tenant}/task-metrics",
            authed(stats.task_metrics, READ),
            methods=["GET"],
        ),
        Route(
            "/api/v1/tenants/{tenant}/step-run-queue-metrics",
            authed(stats.queue_metrics, READ),
            methods=["GET"],
        ),
        Route(
            "/api/v1/tenants/{tenant}/prometheus-metrics",
            authed(stats.prometheus, READ),
            methods=["GET"],
        ),
        Route(
            "/api/v1/stable/tenants/{tenant}/tasks/cancel",
            authed(tasks.cancel, Permission.RUN),
            methods=["POST"],
        ),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_exception, Exception: server_error},
    )
