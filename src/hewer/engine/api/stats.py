"""Metrics reads: the Task Stats API autoscalers poll, and the routes of hatchet-sdk's
metrics client (task counts, queue depths, the tenant's Prometheus series)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from hewer.engine.api.filters import parse_time
from hewer.engine.api.workers import iso
from hewer.engine.core.service import EngineCore
from hewer.engine.core.stats import StatusStat, TaskStat
from hewer.engine.metrics import EngineMetrics
from hewer.errors import InvalidInput, NotSupported

MAX_TASK_NAMES = 1000


def _status_json(stat: StatusStat, *, queues: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"total": stat.total}
    if queues:
        body["queues"] = dict(sorted(stat.queues.items()))
    body["concurrency"] = [
        {
            "expression": c.expression,
            "type": c.strategy.upper(),  # upstream's enum spelling, GROUP_ROUND_ROBIN
            "keys": dict(sorted(c.keys.items())),
        }
        for c in stat.concurrency
    ]
    if stat.oldest is not None:
        body["oldest"] = iso(stat.oldest)
    if stat.oldest_first is not None:
        body["oldestExcludingRetries"] = iso(stat.oldest_first)
    return body


def task_stat_json(stat: TaskStat) -> dict[str, Any]:
    """Upstream's ``TaskStat``: both states always present, so a ``valueLocation`` such as
    ``my-task.running.total`` never points at a missing key."""
    return {
        "queued": _status_json(stat.queued, queues=True),
        "running": _status_json(stat.running, queues=False),
    }


def _names(request: Request) -> list[str] | None:
    names = [
        n.strip() for value in request.query_params.getlist("taskNames") for n in value.split(",")
    ]
    if not names:
        return None
    if any(not n for n in names):
        raise InvalidInput("'taskNames' must not contain empty names")
    if len(names) > MAX_TASK_NAMES:
        raise InvalidInput(f"at most {MAX_TASK_NAMES} 'taskNames' at once, got {len(names)}")
    return names


def _time(request: Request, key: str) -> float | None:
    text = request.query_params.get(key)
    if text is None or not text.strip():
        return None
    # A '+' of an unencoded UTC offset arrives as a space.
    return parse_time(text.strip().replace(" ", "+"), key)


class StatsRoutes:
    def __init__(self, core: EngineCore, metrics: EngineMetrics) -> None:
        self.core = core
        self.metrics = metrics

    async def task_stats(self, request: Request, tenant_id: str) -> Any:
        """``{task name: {"queued": {...}, "running": {...}}}``; with ``taskNames`` (repeated
        or comma-separated) exactly those names, zeros included."""
        stats = await self.core.task_stats(tenant_id, _names(request))
        return {name: task_stat_json(stat) for name, stat in sorted(stats.items())}

    async def task_metrics(self, request: Request, tenant_id: str) -> Any:
        """``[{"status": "QUEUED", "count": n}, ...]``: tasks of the runs created in the
        window, every state listed."""
        for unsupported, why in (
            ("parent_task_external_id", "child runs do not record their parent task yet"),
            ("triggering_event_external_id", "runs triggered by events do not exist yet"),
        ):
            if request.query_params.get(unsupported):
                raise NotSupported(f"filtering task metrics by {unsupported}: {why}")
        since, until = _time(request, "since"), _time(request, "until")
        if since is not None and until is not None and until < since:
            raise InvalidInput("'until' is before 'since'")
        workflows = request.query_params.getlist("workflow_ids")
        if any(not w.strip() for w in workflows):
            raise InvalidInput("'workflow_ids' must not contain empty ids")
        counts = await self.core.task_counts(tenant_id, since, until, workflows)
        return [{"status": status, "count": n} for status, n in counts.items()]

    async def queue_metrics(self, request: Request, tenant_id: str) -> Any:
        """``{"queues": {queue (action id): queued tasks}}``."""
        return {"queues": await self.core.queue_depths(tenant_id)}

    async def prometheus(self, request: Request, tenant_id: str) -> Any:
        """The tenant's own series of the engine's ``/metrics`` (those labelled with it)."""
        body = await self.metrics.render(tenant_id=tenant_id)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
