"""Token scopes, as each kind of token's holder would try them: every gRPC method (found
from the proto descriptors, so a method added later is covered) and every REST route, with
a token of each scope; a worker token running real tasks that spawn children."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory

from hewer import Context, Hewer
from hewer._proto import workflows_pb2_grpc as wg
from hewer._proto.v1.shared import trigger_pb2 as w0
from hewer.engine.core.scopes import GRANTS, METHODS, SPAWNING, Permission, Scope
from hewer.engine.grpc.relay import method_shapes
from hewer.testing import EngineThread
from tests.grpc_raw import call_raw, input_type
from tests.helpers import scoped_token, wait_for
from tests.integration.test_rest import http, park_workflow, tenant

DENIED = grpc.StatusCode.PERMISSION_DENIED


def mint(engine: EngineThread, scope: Scope) -> str:
    return scoped_token(engine, scope)


def _code(channel: grpc.Channel, method: str, token: str) -> grpc.StatusCode:
    empty = message_factory.GetMessageClass(input_type(method))().SerializeToString()
    md = [("authorization", f"bearer {token}")]
    return call_raw(channel, method, empty, md, timeout=2, stream_timeout=1)


@pytest.fixture
def channel(engine: EngineThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(engine.address) as ch:
        yield ch


def test_every_method_is_open_exactly_to_the_scopes_that_grant_it(
    engine: EngineThread, channel: grpc.Channel
) -> None:
    tokens = {scope: mint(engine, scope) for scope in Scope}
    served = [
        m
        for m in sorted(method_shapes())
        if _code(channel, m, tokens[Scope.ADMIN]) is not grpc.StatusCode.UNIMPLEMENTED
    ]
    # A method the engine serves must have been given a permission on purpose.
    assert set(served) <= set(METHODS), set(served) - set(METHODS)
    for method in served:
        needed = METHODS[method]
        for scope, token in tokens.items():
            code = _code(channel, method, token)
            if needed in GRANTS[scope]:
                assert code is not grpc.StatusCode.PERMISSION_DENIED, (method, scope)
            elif method in SPAWNING and Permission.SPAWN in GRANTS[scope]:
                # A worker token may trigger as a child spawn only: an empty request names
                # no parent (refused), or no run at all (invalid).
                assert code in (DENIED, grpc.StatusCode.INVALID_ARGUMENT), (method, scope)
            else:
                assert code is DENIED, (method, scope, code)


def test_rest_routes_follow_the_same_scopes(engine: EngineThread) -> None:
    park_workflow(engine, "scoped")
    run_id = engine.call(engine.engine.core.trigger(tenant(engine), [_spec("scoped")]))[0]
    t = tenant(engine)
    routes = [
        ("GET", f"/api/v1/tenants/{t}/worker", None, Permission.READ),
        ("GET", f"/api/v1/tenants/{t}/task-stats", None, Permission.READ),
        ("GET", f"/api/v1/tenants/{t}/step-run-queue-metrics", None, Permission.READ),
        ("POST", f"/api/v1/stable/tenants/{t}/tasks/cancel", {"externalIds": [run_id]}, None),
    ]
    for scope in Scope:
        token = mint(engine, scope)
        for method, path, body, needed in routes:
            status, answer, _ = http(engine, method, path, body, token=token)
            granted = (needed is None and Permission.RUN in GRANTS[scope]) or (
                needed is not None and needed in GRANTS[scope]
            )
            if granted:
                assert status == 200, (scope, path, answer)
            else:
                assert status == 403, (scope, path, status)
                assert "may not call" in answer["errors"][0]["description"]


def _spec(name: str) -> Any:
    from hewer.engine.core.ingest import TriggerSpec

    return TriggerSpec(name, "{}")


def test_a_worker_token_runs_tasks_and_spawns_children_but_triggers_nothing_else(
    engine: EngineThread,
) -> None:
    worker_token = mint(engine, Scope.WORKER)
    hw = Hewer(settings=engine.client_settings(token=worker_token, heartbeat_interval=0.2))
    child = hw.workflow("scoped-child")

    @child.task()
    def kid(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"n": input["n"] * 2}

    @hw.task(name="scoped-parent")
    def parent(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        # Spawned from a running task: allowed for the token its worker holds.
        return {"kid": child.run({"n": input["n"]})["kid"]["n"]}

    worker = hw.worker("scoped-worker", slots=4, workflows=[parent, child])
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(20)
        # A client token triggers; the worker token's worker runs the run and its child.
        client = Hewer(settings=engine.client_settings(token=mint(engine, Scope.CLIENT)))
        try:
            top = client.runs.trigger("scoped-parent", {"n": 21})
            assert top.result() == {"scoped-parent": {"kid": 42}}
        finally:
            client.close()
        # It read its child's result (above); it reads no run its tasks did not spawn.
        (kid_run,) = [
            r.id
            for r in engine.call(engine.engine.store.runs_list(tenant(engine)))
            if r.workflow_name == "scoped-child"
        ]
        from hewer._proto.v1 import workflows_pb2 as v1
        from hewer._proto.v1 import workflows_pb2_grpc as v1g

        admin = v1g.AdminServiceStub(grpc.insecure_channel(engine.address))
        as_worker = [("authorization", f"bearer {worker_token}")]
        mine = admin.GetRunDetails(v1.GetRunDetailsRequest(external_id=kid_run), metadata=as_worker)
        assert mine.done and json.loads(mine.input) == {"n": 21}
        with pytest.raises(grpc.RpcError) as refused:
            admin.GetRunDetails(v1.GetRunDetailsRequest(external_id=top.run_id), metadata=as_worker)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        status, _, _ = http(
            engine, "GET", f"/api/v1/stable/workflow-runs/{top.run_id}", token=worker_token
        )
        assert status == 403
        status, _, _ = http(
            engine, "GET", f"/api/v1/stable/workflow-runs/{kid_run}/status", token=worker_token
        )
        assert status == 200
        # The worker token on its own may not start runs.
        stub = wg.WorkflowServiceStub(grpc.insecure_channel(engine.address))
        md = [("authorization", f"bearer {worker_token}")]
        with pytest.raises(grpc.RpcError) as refused:
            stub.TriggerWorkflow(
                w0.TriggerWorkflowRequest(name="scoped-child", input="{}"), metadata=md
            )
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "only child runs" in (refused.value.details() or "")
        # Naming a parent task that is not running on its worker does not help either.
        with pytest.raises(grpc.RpcError) as refused:
            stub.TriggerWorkflow(
                w0.TriggerWorkflowRequest(
                    name="scoped-child", input="{}", parent_task_run_external_id="not-a-task"
                ),
                metadata=md,
            )
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        worker.stop()
        thread.join(20)
        hw.close()
    wait_for(lambda: not thread.is_alive(), what="worker stopped")


def test_a_worker_token_cannot_spawn_from_or_pause_another_tokens_worker(
    engine: EngineThread,
) -> None:
    from hewer._proto import dispatcher_pb2 as d
    from hewer._proto import dispatcher_pb2_grpc as dg

    owner, intruder = mint(engine, Scope.WORKER), mint(engine, Scope.WORKER)
    park_workflow(engine, "held")
    channel = grpc.insecure_channel(engine.address)
    dispatcher = dg.DispatcherStub(channel)
    md = [("authorization", f"bearer {owner}")]
    worker = dispatcher.Register(
        d.WorkerRegisterRequest(worker_name="owner", actions=["held:act"]), metadata=md
    )
    listen = dispatcher.ListenV2(d.WorkerListenRequest(worker_id=worker.worker_id), metadata=md)
    engine.call(engine.engine.core.trigger(tenant(engine), [_spec("held")]))
    action = next(iter(listen))  # a task running on the owner's worker
    stub = wg.WorkflowServiceStub(channel)
    request = w0.TriggerWorkflowRequest(
        name="held", input="{}", parent_task_run_external_id=action.task_run_external_id
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.TriggerWorkflow(request, metadata=[("authorization", f"bearer {intruder}")])
    assert refused.value.code() is DENIED
    # The owner's own token may spawn from it.
    assert stub.TriggerWorkflow(request, metadata=md).workflow_run_id
    # Pausing is for the worker's own token (hatchet-sdk pauses itself as it stops).
    path = f"/api/v1/workers/{worker.worker_id}"
    status, _, _ = http(engine, "PATCH", path, {"isPaused": True}, token=intruder)
    assert status == 403
    status, body, _ = http(engine, "PATCH", path, {"isPaused": True}, token=owner)
    assert status == 200 and body["status"] == "PAUSED"
    listen.cancel()
    channel.close()
