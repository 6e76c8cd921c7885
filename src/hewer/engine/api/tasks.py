"""Task endpoints: cancel by ids or by filter (what ``hatchet.runs.cancel`` and
``ctx.cancel()`` call)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from hewer.domain import RunFilter
from hewer.engine.api._http import json_object, optional_list_of_str
from hewer.engine.api.filters import parse_time, run_filter
from hewer.engine.core.service import EngineCore
from hewer.errors import InvalidInput

CANCEL_REASON = "cancelled by request"


def _filter(value: Any) -> RunFilter:
    if not isinstance(value, dict):
        raise InvalidInput("'filter' must be a JSON object")
    since = value.get("since")
    if not isinstance(since, str):
        raise InvalidInput("'filter.since' is required (an ISO 8601 time)")
    until = value.get("until")
    if until is not None and not isinstance(until, str):
        raise InvalidInput("'filter.until' must be an ISO 8601 time")
    return run_filter(
        since=parse_time(since, "filter.since"),
        until=parse_time(until, "filter.until") if until is not None else None,
        statuses=optional_list_of_str(value, "statuses") or (),
        workflows=optional_list_of_str(value, "workflowIds") or (),
        additional_metadata=optional_list_of_str(value, "additionalMetadata") or (),
    )


class TaskRoutes:
    def __init__(self, core: EngineCore) -> None:
        self.core = core

    async def cancel(self, request: Request, tenant_id: str) -> Any:
        """``{"externalIds": [...]}`` (run or task ids) or ``{"filter": {...}}`` ->
        ``{"ids": [cancelled task ids]}``. Ids of unknown or finished runs cancel nothing."""
        body = await json_object(request)
        ids = optional_list_of_str(body, "externalIds")
        raw_filter = body.get("filter")
        if ids and raw_filter is not None:
            raise InvalidInput("give 'externalIds' or 'filter', not both")
        if ids:
            if any(not i.strip() for i in ids):
                raise InvalidInput("'externalIds' must not contain empty ids")
            cancelled = await self.core.cancel(tenant_id, ids, CANCEL_REASON)
        elif raw_filter is not None:
            cancelled = await self.core.cancel_matching(
                tenant_id, _filter(raw_filter), CANCEL_REASON
            )
        else:
            raise InvalidInput("give 'externalIds' (a non-empty list) or 'filter'")
        return {"ids": cancelled}
