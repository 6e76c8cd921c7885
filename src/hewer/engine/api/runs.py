"""Run endpoints in Hatchet's shapes: a run's details (``hatchet.runs.get``) and its status
(``hatchet.runs.get_status``).

Hatchet's statuses are coarser than ours: a run is QUEUED until a task of it runs, RUNNING
while one does (or while it is unfinished with some tasks done), then COMPLETED, FAILED or
CANCELLED. A task a ``skip_if`` skipped is COMPLETED (its output is ``{"skipped": true}``);
one that never ran because an upstream task did not complete is CANCELLED.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.requests import Request

from hewer.domain import RunRow, TaskRow, TaskStatus
from hewer.engine.api.workers import iso
from hewer.engine.core.service import EngineCore
from hewer.engine.core.transitions import details
from hewer.errors import NotFound

TASK_STATUS = {
    TaskStatus.PENDING: "QUEUED",
    TaskStatus.QUEUED: "QUEUED",
    TaskStatus.RUNNING: "RUNNING",
    TaskStatus.COMPLETED: "COMPLETED",
    TaskStatus.SKIPPED: "CANCELLED",  # never ran: an upstream task did not complete
    TaskStatus.FAILED: "FAILED",
    TaskStatus.CANCELLED: "CANCELLED",
}

# Step ids in Hatchet's shapes are UUIDs; ours are "<version>:<task>", so they are derived.
_STEP_NAMESPACE = uuid.UUID("0b3f4a9e-2c61-4e0f-8d7a-5a1e6f3c9b24")


def step_uuid(version_id: str, readable_id: str) -> str:
    return str(uuid.uuid5(_STEP_NAMESPACE, f"{version_id}:{readable_id}"))


def run_status(run: RunRow, tasks: list[TaskRow]) -> str:
    """A run's status (as the core tells clients) as Hatchet's V1TaskStatus."""
    return str(details(run, tasks).status).upper()


def _object(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {"value": value}


def _meta(id_: str, created: float, updated: float | None) -> dict[str, str]:
    return {"id": id_, "createdAt": iso(created), "updatedAt": iso(updated or created)}


def task_summary(run: RunRow, task: TaskRow) -> dict[str, Any]:
    """A task as Hatchet's V1TaskSummary."""
    body: dict[str, Any] = {
        "metadata": _meta(task.id, task.created_at, task.finished_at or task.started_at),
        "actionId": task.action_id,
        "attempt": task.retry_count + 1,
        "retryCount": task.retry_count,
        "createdAt": iso(task.created_at),
        "displayName": task.readable_id,
        "input": _object(run.input),
        "numSpawnedChildren": 0,
        "output": _object(task.output),
        "status": TASK_STATUS[task.status],
        "taskExternalId": task.id,
        "taskId": task.seq,
        "taskInsertedAt": iso(task.created_at),
        "tenantId": run.tenant_id,
        "type": "DAG" if run.task_count > 1 else "TASK",
        "workflowId": run.workflow_name,
        "workflowName": run.workflow_name,
        "workflowRunExternalId": run.id,
        "workflowVersionId": run.version_id,
        "additionalMetadata": _object(run.additional_metadata),
    }
    if task.error:
        body["errorMessage"] = task.error
    if task.started_at is not None:
        body["startedAt"] = iso(task.started_at)
    if task.finished_at is not None:
        body["finishedAt"] = iso(task.finished_at)
        if task.started_at is not None:
            body["duration"] = round((task.finished_at - task.started_at) * 1000)
    if task.worker_id:
        body["workerId"] = task.worker_id
    return body


def run_json(run: RunRow, tasks: list[TaskRow]) -> dict[str, Any]:
    """A run as Hatchet's V1WorkflowRun."""
    finished = run.finished_at
    body: dict[str, Any] = {
        "metadata": _meta(run.id, run.created_at, finished),
        "status": run_status(run, tasks),
        "tenantId": run.tenant_id,
        "displayName": run.workflow_name,
        "workflowId": run.workflow_name,
        "workflowVersionId": run.version_id,
        "input": _object(run.input),
        "output": {t.readable_id: _object(t.output) for t in tasks if t.output is not None},
        "additionalMetadata": _object(run.additional_metadata),
        "createdAt": iso(run.created_at),
    }
    started = [t.started_at for t in tasks if t.started_at is not None]
    if started:
        body["startedAt"] = iso(min(started))
    if finished is not None:
        body["finishedAt"] = iso(finished)
        if started:
            body["duration"] = round((finished - min(started)) * 1000)
    errors = [t.error for t in tasks if t.error and t.status is TaskStatus.FAILED]
    if errors:
        body["errorMessage"] = errors[0]
    if run.parent_task_id:
        body["parentTaskExternalId"] = run.parent_task_id
    return body


class RunRoutes:
    def __init__(self, core: EngineCore) -> None:
        self.core = core

    async def _run(self, request: Request, tenant_id: str) -> tuple[RunRow, list[TaskRow]]:
        run_id = request.path_params["run"]
        await self.core.check_run_readers(tenant_id, [run_id], request.state.principal)
        found = await self.core.runs(tenant_id, [run_id])
        if not found:
            raise NotFound(f"run {run_id!r} not found")
        run, tasks = found[0]
        return run, sorted(tasks, key=lambda t: t.seq)

    async def get(self, request: Request, tenant_id: str) -> Any:
        """Hatchet's V1WorkflowRunDetails: the run, its tasks and its DAG's shape."""
        run, tasks = await self._run(request, tenant_id)
        children: dict[str, list[str]] = {t.readable_id: [] for t in tasks}
        workflow = await self.core.workflow_version(tenant_id, run.version_id)
        for step in workflow.tasks if workflow is not None else ():
            for parent in step.parents:
                children.setdefault(parent, []).append(step.readable_id)
        return {
            "run": run_json(run, tasks),
            "taskEvents": [],
            "shape": [
                {
                    "taskExternalId": t.id,
                    "stepId": step_uuid(run.version_id, t.readable_id),
                    "childrenStepIds": [
                        step_uuid(run.version_id, c) for c in children.get(t.readable_id, [])
                    ],
                    "taskName": t.readable_id,
                }
                for t in tasks
            ],
            "tasks": [task_summary(run, t) for t in tasks],
        }

    async def status(self, request: Request, tenant_id: str) -> Any:
        """Hatchet's V1TaskStatus of the run, as a JSON string."""
        run, tasks = await self._run(request, tenant_id)
        return run_status(run, tasks)
