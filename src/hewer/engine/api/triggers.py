"""Crons and scheduled runs in Hatchet's REST shapes (``hatchet.cron`` and
``hatchet.scheduled`` feature clients): create, list, get, delete."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from hewer.domain import CronRecord, FilterRecord, RunStatus, ScheduleRecord, Workflow
from hewer.engine.api._http import json_object, optional_list_of_str
from hewer.engine.api.filters import metadata_pairs, parse_time
from hewer.engine.api.workers import iso
from hewer.engine.core.service import EngineCore
from hewer.engine.core.transitions import details
from hewer.errors import HewerError, InvalidInput

MAX_PAGE = 1000
MAX_BULK = 500  # ids per bulk call, as upstream's API
DEFAULT_PAGE = 50

# A fired scheduled run's status as Hatchet's ScheduledWorkflows.workflowRunStatus.
_RUN_STATUS = {
    RunStatus.QUEUED: "QUEUED",
    RunStatus.RUNNING: "RUNNING",
    RunStatus.COMPLETED: "SUCCEEDED",
    RunStatus.FAILED: "FAILED",
    RunStatus.CANCELLED: "CANCELLED",
}


def page(request: Request) -> tuple[int, int]:
    """``limit`` and ``offset`` query parameters (400 when not whole numbers in range)."""
    values: list[int] = []
    for key, default, top in (("limit", DEFAULT_PAGE, MAX_PAGE), ("offset", 0, None)):
        raw = request.query_params.get(key)
        if raw is None or raw == "":
            values.append(default)
            continue
        try:
            value = int(raw)
        except ValueError:
            raise InvalidInput(f"{key!r} must be a whole number, got {raw!r}") from None
        if value < 0 or (top is not None and not 1 <= value <= top):
            raise InvalidInput(f"{key!r} is out of range: {value}")
        values.append(value)
    return values[0], values[1]


def _json_text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput(f"{key!r} must be a JSON object")
    return json.dumps(value, separators=(",", ":"))


def _priority(body: dict[str, Any]) -> int | None:
    value = body.get("priority")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput("'priority' must be a whole number (1 to 3)")
    return value


def _meta(record_id: str, created_at: float) -> dict[str, str]:
    return {"id": record_id, "createdAt": iso(created_at), "updatedAt": iso(created_at)}


class TriggerRoutes:
    def __init__(self, core: EngineCore) -> None:
        self.core = core

    async def _workflows(self, tenant_id: str, names: set[str]) -> dict[str, Workflow | None]:
        found: dict[str, Workflow | None] = {}
        for name in names:
            try:
                found[name] = await self.core.workflow(tenant_id, name)
            except HewerError:
                found[name] = None  # deleted since: shown with what the record knows
        return found

    # ------------------------------------------------------------------ crons

    def _cron_json(self, cron: CronRecord, wf: Workflow | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metadata": _meta(cron.id, cron.created_at),
            "tenantId": cron.tenant_id,
            "workflowVersionId": wf.version_id if wf else "",
            "workflowId": wf.id if wf else "",
            "workflowName": cron.workflow_name,
            "cron": cron.expression,
            "name": cron.name,
            "input": json.loads(cron.input),
            "additionalMetadata": json.loads(cron.additional_metadata or "{}"),
            "enabled": cron.enabled,
            "method": "DEFAULT" if cron.declared else "API",
            "nextRunAt": iso(cron.next_at),
        }
        if cron.priority is not None:
            out["priority"] = cron.priority
        return out

    async def cron_create(self, request: Request, tenant_id: str) -> Any:
        body = await json_object(request)
        name, expression = body.get("cronName"), body.get("cronExpression")
        if not isinstance(name, str) or not isinstance(expression, str):
            raise InvalidInput("'cronName' and 'cronExpression' are required strings")
        cron = await self.core.cron_create(
            tenant_id,
            request.path_params["workflow"],
            name,
            expression,
            _json_text(body, "input") or "{}",
            _json_text(body, "additionalMetadata"),
            _priority(body),
        )
        wf = await self.core.workflow(tenant_id, cron.workflow_name)
        return self._cron_json(cron, wf)

    async def cron_list(self, request: Request, tenant_id: str) -> Any:
        limit, offset = page(request)
        workflow = request.query_params.get("workflowName") or None
        name = request.query_params.get("cronName") or None
        crons = await self.core.crons_list(tenant_id, workflow, limit, offset, name)
        wfs = await self._workflows(tenant_id, {c.workflow_name for c in crons})
        return {
            "rows": [self._cron_json(c, wfs[c.workflow_name]) for c in crons],
            "pagination": {"current_page": offset // limit + 1, "num_pages": 0},
        }

    async def cron_get(self, request: Request, tenant_id: str) -> Any:
        cron = await self.core.cron_get(tenant_id, request.path_params["cron"])
        wfs = await self._workflows(tenant_id, {cron.workflow_name})
        return self._cron_json(cron, wfs[cron.workflow_name])

    async def cron_delete(self, request: Request, tenant_id: str) -> Any:
        await self.core.cron_delete(tenant_id, request.path_params["cron"])
        return Response(status_code=204)

    # ------------------------------------------------------------------ scheduled runs

    async def _schedules_json(
        self, tenant_id: str, records: list[ScheduleRecord]
    ) -> list[dict[str, Any]]:
        wfs = await self._workflows(tenant_id, {s.workflow_name for s in records})
        fired = [s.run_id for s in records if s.run_id]
        runs = {r.id: details(r, tasks) for r, tasks in await self.core.runs(tenant_id, fired)}
        out = []
        for s in records:
            wf = wfs[s.workflow_name]
            row: dict[str, Any] = {
                "metadata": _meta(s.id, s.created_at),
                "tenantId": s.tenant_id,
                "workflowVersionId": wf.version_id if wf else "",
                "workflowId": wf.id if wf else "",
                "workflowName": s.workflow_name,
                "triggerAt": iso(s.trigger_at),
                "input": json.loads(s.input),
                "additionalMetadata": json.loads(s.additional_metadata or "{}"),
                "method": "API",
            }
            if s.priority is not None:
                row["priority"] = s.priority
            run = runs.get(s.run_id or "")
            if run is not None:
                row["workflowRunId"] = run.id
                row["workflowRunStatus"] = _RUN_STATUS[run.status]
            out.append(row)
        return out

    async def schedule_create(self, request: Request, tenant_id: str) -> Any:
        body = await json_object(request)
        at = body.get("triggerAt")
        if not isinstance(at, str):
            raise InvalidInput("'triggerAt' is required (an ISO 8601 time)")
        (record,) = await self.core.schedule_runs(
            tenant_id,
            request.path_params["workflow"],
            [parse_time(at, "triggerAt")],
            _json_text(body, "input") or "{}",
            _json_text(body, "additionalMetadata"),
            _priority(body),
        )
        return (await self._schedules_json(tenant_id, [record]))[0]

    async def schedule_list(self, request: Request, tenant_id: str) -> Any:
        limit, offset = page(request)
        workflow = request.query_params.get("workflowName") or None
        records = await self.core.schedules_list(tenant_id, workflow, limit, offset)
        return {
            "rows": await self._schedules_json(tenant_id, records),
            "pagination": {"current_page": offset // limit + 1, "num_pages": 0},
        }

    async def schedule_get(self, request: Request, tenant_id: str) -> Any:
        record = await self.core.schedule_get(tenant_id, request.path_params["scheduled"])
        return (await self._schedules_json(tenant_id, [record]))[0]

    async def schedule_delete(self, request: Request, tenant_id: str) -> Any:
        await self.core.schedule_delete(tenant_id, request.path_params["scheduled"])
        return Response(status_code=204)

    async def schedule_update(self, request: Request, tenant_id: str) -> Any:
        """``{"triggerAt": ISO}``: a new time for a scheduled run that has not fired."""
        body = await json_object(request)
        at = body.get("triggerAt")
        if not isinstance(at, str):
            raise InvalidInput("'triggerAt' is required (an ISO 8601 time)")
        schedule_id = request.path_params["scheduled"]
        await self.core.schedule_move(tenant_id, schedule_id, parse_time(at, "triggerAt"))
        record = await self.core.schedule_get(tenant_id, schedule_id)
        return (await self._schedules_json(tenant_id, [record]))[0]

    async def schedule_bulk_delete(self, request: Request, tenant_id: str) -> Any:
        """``{"scheduledWorkflowRunIds": [...]}`` or ``{"filter": {"workflowId"?,
        "additionalMetadata"?: ["k:v"]}}`` -> ``{"deletedIds", "errors"}``."""
        body = await json_object(request)
        ids = body.get("scheduledWorkflowRunIds")
        raw_filter = body.get("filter")
        if ids is not None:
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise InvalidInput("'scheduledWorkflowRunIds' must be a list of ids")
            if len(ids) > MAX_BULK:
                raise InvalidInput(f"at most {MAX_BULK} ids per call")
        elif isinstance(raw_filter, dict):
            ids = [s.id for s in await self._matching(tenant_id, raw_filter)]
        else:
            raise InvalidInput("give 'scheduledWorkflowRunIds' or 'filter'")
        deleted, errors = [], []
        for schedule_id in ids:
            try:
                await self.core.schedule_delete(tenant_id, schedule_id)
                deleted.append(schedule_id)
            except HewerError as exc:
                errors.append({"id": schedule_id, "error": str(exc)})
        return {"deletedIds": deleted, "errors": errors}

    async def schedule_bulk_update(self, request: Request, tenant_id: str) -> Any:
        """``{"updates": [{"id", "triggerAt"}, ...]}`` -> ``{"updatedIds", "errors"}``."""
        body = await json_object(request)
        updates = body.get("updates")
        if not isinstance(updates, list) or not updates or len(updates) > MAX_BULK:
            raise InvalidInput(f"'updates' must list 1 to {MAX_BULK} updates")
        updated, errors = [], []
        for item in updates:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise InvalidInput("each update needs an 'id' and a 'triggerAt'")
            at = item.get("triggerAt")
            if not isinstance(at, str):
                raise InvalidInput("each update needs an 'id' and a 'triggerAt'")
            try:
                await self.core.schedule_move(tenant_id, item["id"], parse_time(at, "triggerAt"))
                updated.append(item["id"])
            except HewerError as exc:
                errors.append({"id": item["id"], "error": str(exc)})
        return {"updatedIds": updated, "errors": errors}

    async def _matching(self, tenant_id: str, raw: dict[str, Any]) -> list[ScheduleRecord]:
        workflow_id = raw.get("workflowId")
        wanted = metadata_pairs(optional_list_of_str(raw, "additionalMetadata") or ())
        names = None
        if workflow_id is not None:
            names = {
                wf.name for wf in await self.core.workflows_list(tenant_id) if wf.id == workflow_id
            }
        out = []
        offset = 0
        while True:
            page_rows = await self.core.schedules_list(tenant_id, None, MAX_PAGE, offset)
            for s in page_rows:
                if s.run_id is None and (names is None or s.workflow_name in names):
                    meta = json.loads(s.additional_metadata or "{}")
                    if all(str(meta.get(k)) == v for k, v in wanted):
                        out.append(s)
            if len(page_rows) < MAX_PAGE:
                return out
            offset += MAX_PAGE


class FilterRoutes:
    """Event filters in Hatchet's shapes (``hatchet.filters``), and the workflow list the
    SDK reads a workflow's id from (``workflow.create_filter``)."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core

    @staticmethod
    def _json(f: FilterRecord) -> dict[str, Any]:
        return {
            "metadata": {
                "id": f.id,
                "createdAt": iso(f.created_at),
                "updatedAt": iso(f.updated_at),
            },
            "tenantId": f.tenant_id,
            "workflowId": f.workflow_id,
            "scope": f.scope,
            "expression": f.expression,
            "payload": json.loads(f.payload),
            "isDeclarative": f.declarative,
        }

    async def list(self, request: Request, tenant_id: str) -> Any:
        limit, offset = page(request)
        workflows = request.query_params.getlist("workflowIds") or None
        scopes = request.query_params.getlist("scopes") or None
        rows = await self.core.filters_list(tenant_id, workflows, scopes, limit, offset)
        return {
            "rows": [self._json(f) for f in rows],
            "pagination": {"current_page": offset // limit + 1, "num_pages": 0},
        }

    async def create(self, request: Request, tenant_id: str) -> Any:
        body = await json_object(request)
        workflow, expression, scope = (
            body.get("workflowId"),
            body.get("expression"),
            body.get("scope"),
        )
        if not all(isinstance(v, str) for v in (workflow, expression, scope)):
            raise InvalidInput("'workflowId', 'expression' and 'scope' are required strings")
        assert isinstance(workflow, str) and isinstance(expression, str)
        assert isinstance(scope, str)
        record = await self.core.filter_put(
            tenant_id, workflow, scope, expression, _json_text(body, "payload")
        )
        return self._json(record)

    async def get(self, request: Request, tenant_id: str) -> Any:
        return self._json(await self.core.filter_get(tenant_id, request.path_params["filter"]))

    async def update(self, request: Request, tenant_id: str) -> Any:
        body = await json_object(request)
        current = await self.core.filter_get(tenant_id, request.path_params["filter"])
        expression, scope = body.get("expression"), body.get("scope")
        for key, value in (("expression", expression), ("scope", scope)):
            if value is not None and not isinstance(value, str):
                raise InvalidInput(f"{key!r} must be a string")
        record = await self.core.filter_put(
            tenant_id,
            current.workflow_id,
            scope if isinstance(scope, str) else current.scope,
            expression if isinstance(expression, str) else current.expression,
            _json_text(body, "payload") if "payload" in body else current.payload,
            filter_id=current.id,
        )
        return self._json(record)

    async def delete(self, request: Request, tenant_id: str) -> Any:
        return self._json(await self.core.filter_delete(tenant_id, request.path_params["filter"]))

    async def workflows(self, request: Request, tenant_id: str) -> Any:
        """``GET /api/v1/tenants/{tenant}/workflows[?name=]``: id and name of each."""
        name = request.query_params.get("name")
        rows = [
            {
                "metadata": _meta(wf.id, 0.0),
                "name": wf.name,
                "tenantId": wf.tenant_id,
            }
            for wf in await self.core.workflows_list(tenant_id)
            if name is None or wf.name == name
        ]
        return {"rows": rows, "pagination": {"current_page": 1, "num_pages": 1}}
