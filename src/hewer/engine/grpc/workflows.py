"""Service ``WorkflowService``: triggering runs (one or in bulk)."""

from __future__ import annotations

from typing import Any

from hewer._proto import workflows_pb2 as pb
from hewer._proto import workflows_pb2_grpc as pb_grpc
from hewer.defaults import MAX_BULK_TRIGGER
from hewer.domain import NO_LINKS, RunLinks
from hewer.engine.core.service import TriggerSpec
from hewer.engine.grpc._common import Servicer, seconds_of, timestamp, unary
from hewer.engine.grpc._labels import desired_labels
from hewer.engine.grpc.admin import rate_limit_seconds
from hewer.errors import InvalidInput


def run_links(request: Any) -> RunLinks:
    """A child run's link to the task that spawns it (none for a top-level run)."""
    parent_task = (
        request.parent_task_run_external_id
        if request.HasField("parent_task_run_external_id")
        else None
    )
    if not parent_task:
        return NO_LINKS
    return RunLinks(
        parent_run_id=request.parent_id if request.HasField("parent_id") else None,
        parent_task_id=parent_task,
        child_index=request.child_index if request.HasField("child_index") else None,
        child_key=request.child_key if request.HasField("child_key") else None,
    )


def trigger_spec(request: Any) -> TriggerSpec:
    if not request.name:
        raise InvalidInput("workflow name must not be empty")
    return TriggerSpec(
        workflow_name=request.name,
        input=request.input,
        additional_metadata=(
            request.additional_metadata if request.HasField("additional_metadata") else None
        ),
        priority=request.priority if request.HasField("priority") else None,
        desired_labels=desired_labels(request.desired_worker_labels),
        desired_worker_id=(
            request.desired_worker_id if request.HasField("desired_worker_id") else None
        ),
        links=run_links(request),
    )


class WorkflowServicer(Servicer, pb_grpc.WorkflowServiceServicer):  # type: ignore[misc]
    @unary
    async def PutRateLimit(self, tenant_id: str, request: Any, context: Any) -> Any:
        await self.core.put_rate_limit(
            tenant_id, request.key, request.limit, rate_limit_seconds(request.duration)
        )
        return pb.PutRateLimitResponse()

    @unary
    async def ScheduleWorkflow(self, tenant_id: str, request: Any, context: Any) -> Any:
        if not request.name:
            raise InvalidInput("workflow name must not be empty")
        times = [seconds_of(t, "schedules") for t in request.schedules]
        schedules = await self.core.schedule_runs(
            tenant_id,
            request.name,
            times,
            request.input,
            request.additional_metadata if request.HasField("additional_metadata") else None,
            request.priority if request.HasField("priority") else None,
        )
        workflow = await self.core.workflow(tenant_id, request.name)
        now = timestamp(self.core.clock.now())
        return pb.WorkflowVersion(
            id=workflow.version_id,
            created_at=now,
            updated_at=now,
            workflow_id=workflow.id,
            scheduled_workflows=[
                pb.ScheduledWorkflow(id=s.id, trigger_at=timestamp(s.trigger_at)) for s in schedules
            ],
        )

    @unary
    async def TriggerWorkflow(self, tenant_id: str, request: Any, context: Any) -> Any:
        await self.check_spawn(tenant_id, [request.parent_task_run_external_id])
        (run_id,) = await self.core.trigger(tenant_id, [trigger_spec(request)])
        return pb.TriggerWorkflowResponse(workflow_run_id=run_id)

    @unary
    async def BulkTriggerWorkflow(self, tenant_id: str, request: Any, context: Any) -> Any:
        if not request.workflows:
            raise InvalidInput("workflows must not be empty")
        if len(request.workflows) > MAX_BULK_TRIGGER:
            raise InvalidInput(f"at most {MAX_BULK_TRIGGER} workflows per bulk trigger")
        parents = [w.parent_task_run_external_id for w in request.workflows]
        await self.check_spawn(tenant_id, parents)
        run_ids = await self.core.trigger(tenant_id, [trigger_spec(w) for w in request.workflows])
        return pb.BulkTriggerWorkflowResponse(workflow_run_ids=run_ids)
