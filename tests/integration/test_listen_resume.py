"""A worker that reconnects names the attempts it runs, so that an engine that restarted
meanwhile never takes them for starts lost on the way (and runs them twice)."""

from __future__ import annotations

import grpc

from hewer._proto.hewer.v1 import worker_pb2 as pb
from hewer._proto.hewer.v1 import worker_pb2_grpc as pb_grpc
from hewer.domain import TaskDef
from hewer.engine.core.service import TriggerSpec
from hewer.testing import EngineThread
from tests.helpers import wait_for


def test_a_reconnecting_listener_acknowledges_what_it_runs(engine: EngineThread) -> None:
    core = engine.engine.core
    tenant = engine.engine.default_tenant_id
    engine.call(core.put_workflow(tenant, "held", [TaskDef("held", "held:held")], None))
    worker = engine.call(core.register_worker(tenant, "raw", ["held:held"], {"default": 1}, {}, {}))
    (run_id,) = engine.call(core.trigger(tenant, [TriggerSpec("held", "{}")]))
    metadata = (("authorization", f"Bearer {engine.token}"),)

    def acked() -> bool:
        (task,) = engine.call(engine.engine.store.tasks_list(tenant))
        return task.acked

    with grpc.insecure_channel(engine.address) as channel:
        stub = pb_grpc.WorkerStub(channel)
        first = stub.Listen(pb.ListenRequest(worker_id=worker.id), metadata=metadata)
        (action,) = next(first).actions
        assert action.task_run_external_id == run_id
        first.cancel()  # the stream breaks before the worker said STARTED
        assert not acked()
        running = pb.RunningAttempt(
            task_run_external_id=action.task_run_external_id, retry_count=action.retry_count
        )
        again = stub.Listen(
            pb.ListenRequest(worker_id=worker.id, running=[running]), metadata=metadata
        )
        try:
            wait_for(acked, what="the attempt counted as started")
        finally:
            again.cancel()
