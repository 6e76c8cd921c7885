"""Service ``WorkflowService``: triggering runs (one or in bulk)."""

from __future__ import annotations

from typing import Any

from hewer._proto import workflows_pb2 as pb
from hewer._proto import workflows_pb2_grpc as pb_grpc
from hewer.defaults import MAX_BULK_TRIGGER
from hewer.engine.core.service import TriggerSpec
from hewer.engine.grpc._common import Servicer, unary
from hewer.engine.grpc._labels import desired_labels
from hewer.engine.grpc.admin import rate_limit_seconds
from hewer.errors import InvalidInput


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
    )


class WorkflowServicer(Servicer, pb_grpc.WorkflowServiceServicer):  # type: ignore[misc]
    @unary
    async def PutRateLimit(self, tenant_id: str, request: Any, context: Any) -> Any:
        await self.core.put_rate_limit(
            tenant_id, request.key, request.limit, rate_limit_seconds(request.duration)
        )
        return pb.PutRateLimitResponse()

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
