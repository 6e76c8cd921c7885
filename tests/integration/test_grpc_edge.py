"""The gRPC edge with raw stubs: authentication, tenant isolation, bad input, limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hewer._proto import dispatcher_pb2 as d
from hewer._proto import dispatcher_pb2_grpc as dg
from hewer._proto import events_pb2 as ev
from hewer._proto import events_pb2_grpc as evg
from hewer._proto import workflows_pb2 as w0
from hewer._proto import workflows_pb2_grpc as wg
from hewer._proto.hewer.v1 import worker_pb2 as hw
from hewer._proto.hewer.v1 import worker_pb2_grpc as hwg
from hewer._proto.v1 import workflows_pb2 as v1
from hewer._proto.v1 import workflows_pb2_grpc as v1g
from hewer._proto.v1.shared import trigger_pb2 as tr
from hewer.engine.app import revoke_token
from hewer.testing import EngineThread
from tests.helpers import wait_for

LIMIT = 256 * 1024


class Stubs:
    def __init__(self, engine: EngineThread, token: str) -> None:
        self.channel = grpc.insecure_channel(
            engine.address,
            options=[("grpc.max_send_message_length", 16 * LIMIT)],
        )
        self.md = [("authorization", f"bearer {token}")]
        self.dispatcher = dg.DispatcherStub(self.channel)
        self.admin = v1g.AdminServiceStub(self.channel)
        self.workflows = wg.WorkflowServiceStub(self.channel)
        self.events = evg.EventsServiceStub(self.channel)

    def put_one_task(self, name: str = "edge") -> None:
        self.admin.PutWorkflow(
            v1.CreateWorkflowVersionRequest(
                name=name, tasks=[v1.CreateTaskOpts(readable_id="t", action=f"{name}:t")]
            ),
            metadata=self.md,
        )

    def complete(self, worker_id: str, action: Any, payload: str) -> None:
        """Report ``action``'s attempt COMPLETED with ``payload``, as its worker."""
        self.dispatcher.SendStepActionEvent(
            d.StepActionEvent(
                worker_id=worker_id,
                task_run_external_id=action.task_run_external_id,
                retry_count=action.retry_count,
                event_type=d.STEP_EVENT_TYPE_COMPLETED,
                event_payload=payload,
            ),
            metadata=self.md,
        )

    def trigger(self, name: str = "edge", input: str = "{}", **kw: Any) -> str:
        resp = self.workflows.TriggerWorkflow(
            tr.TriggerWorkflowRequest(name=name, input=input, **kw), metadata=self.md
        )
        return str(resp.workflow_run_id)


@pytest.fixture
def small_engine(tmp_path: Path, database_url: str) -> Iterator[EngineThread]:
    with EngineThread(tmp_path, database_url=database_url, max_message_bytes=LIMIT) as running:
        yield running


@pytest.fixture
def stubs(small_engine: EngineThread) -> Stubs:
    return Stubs(small_engine, small_engine.token)


def other_tenant_token(engine: EngineThread, tenant: str = "other") -> str:
    async def mint() -> str:
        found = await engine.engine.store.tenant_ensure(tenant, engine.engine.clock.now())
        return await engine.engine.auth.mint(
            found.id, "test", 3600, server_url="http://x", grpc_address=engine.address
        )

    return engine.call(mint())


def code_of(fn: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details() or ""


def test_calls_without_a_valid_token_are_unauthenticated(
    small_engine: EngineThread, stubs: Stubs
) -> None:
    get_version = stubs.dispatcher.GetVersion
    assert code_of(lambda: get_version(d.GetVersionRequest()))[0] is (
        grpc.StatusCode.UNAUTHENTICATED
    )
    for bad in ("bearer nonsense", "basic abc", small_engine.token):
        md = [("authorization", bad)]
        code, details = code_of(lambda md=md: get_version(d.GetVersionRequest(), metadata=md))
        assert code is grpc.StatusCode.UNAUTHENTICATED, bad
        assert details
    forged = small_engine.token[:-6] + "AAAAAA"
    code, _ = code_of(
        lambda: get_version(d.GetVersionRequest(), metadata=[("authorization", f"bearer {forged}")])
    )
    assert code is grpc.StatusCode.UNAUTHENTICATED

    async def expired() -> str:
        return await small_engine.engine.auth.mint(
            small_engine.engine.default_tenant_id, "old", -1, server_url="x", grpc_address="y"
        )

    old = small_engine.call(expired())
    code, details = code_of(
        lambda: get_version(d.GetVersionRequest(), metadata=[("authorization", f"bearer {old}")])
    )
    assert code is grpc.StatusCode.UNAUTHENTICATED and "expired" in details
    assert "v0.111.0" in get_version(d.GetVersionRequest(), metadata=stubs.md).version


def test_revoked_token_is_refused(small_engine: EngineThread) -> None:
    token = other_tenant_token(small_engine, "revocable")
    stubs = Stubs(small_engine, token)
    stubs.dispatcher.GetVersion(d.GetVersionRequest(), metadata=stubs.md)
    assert asyncio.run(revoke_token(small_engine.settings, token))

    def refused() -> bool:
        try:
            stubs.dispatcher.GetVersion(d.GetVersionRequest(), metadata=stubs.md)
        except grpc.RpcError as exc:
            return exc.code() is grpc.StatusCode.UNAUTHENTICATED
        return False

    # Validations are cached for a few seconds; revocation must win within that window.
    wait_for(refused, timeout=10, what="revoked token refused")


def test_revoking_a_token_closes_its_open_streams_within_seconds(
    small_engine: EngineThread, stubs: Stubs
) -> None:
    import time

    from hewer.engine.core.auth import CACHE_SECONDS, STREAM_RECHECK_SECONDS

    stubs.put_one_task()
    token = other_tenant_token(small_engine, "default")
    revocable = Stubs(small_engine, token)
    worker = revocable.dispatcher.Register(
        d.WorkerRegisterRequest(worker_name="leaver", actions=["edge:t"]), metadata=revocable.md
    )
    listen = revocable.dispatcher.ListenV2(
        d.WorkerListenRequest(worker_id=worker.worker_id), metadata=revocable.md
    )
    first = stubs.trigger()
    assert next(listen).workflow_run_id == first
    assert asyncio.run(revoke_token(small_engine.settings, token))
    revoked = time.monotonic()
    with pytest.raises(grpc.RpcError) as ended:
        for action in listen:  # nothing more is meant for it: the stream must end
            raise AssertionError(f"a revoked stream got {action.workflow_run_id}")
    took = time.monotonic() - revoked
    assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (ended.value.details() or "")
    assert took <= CACHE_SECONDS + STREAM_RECHECK_SECONDS + 2.0, took
    # Its subscription to runs answers nothing more either.
    with pytest.raises(grpc.RpcError) as ended:
        list(
            revocable.dispatcher.SubscribeToWorkflowRuns(
                iter([d.SubscribeToWorkflowRunsRequest(workflow_run_id=first)]),
                metadata=revocable.md,
                timeout=10,
            )
        )
    assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # Work triggered now goes to a worker whose token holds, not to the revoked one.
    other = stubs.dispatcher.Register(
        d.WorkerRegisterRequest(worker_name="stayer", actions=["edge:t"]), metadata=stubs.md
    )
    second = stubs.trigger()
    stream = stubs.dispatcher.ListenV2(
        d.WorkerListenRequest(worker_id=other.worker_id), metadata=stubs.md
    )
    assert next(iter(stream)).workflow_run_id == second
    stream.cancel()


def test_a_worker_id_is_only_good_with_the_token_it_registered_with(
    small_engine: EngineThread, stubs: Stubs
) -> None:
    stubs.put_one_task()
    worker = stubs.dispatcher.Register(
        d.WorkerRegisterRequest(worker_name="real", actions=["edge:t"]), metadata=stubs.md
    )
    listen = iter(
        stubs.dispatcher.ListenV2(
            d.WorkerListenRequest(worker_id=worker.worker_id), metadata=stubs.md
        )
    )
    run_id = stubs.trigger(input='{"secret": 1}')
    action = next(listen)
    # Another valid token of the same tenant, knowing the worker's id (it is in listings).
    other = Stubs(small_engine, other_tenant_token(small_engine, "default"))
    worker_id = worker.worker_id
    forged = d.StepActionEvent(
        worker_id=worker_id,
        task_run_external_id=action.task_run_external_id,
        retry_count=action.retry_count,
        event_type=d.STEP_EVENT_TYPE_COMPLETED,
        event_payload='{"forged": true}',
    )
    for label, call in {
        "listen": lambda: next(
            iter(
                other.dispatcher.ListenV2(
                    d.WorkerListenRequest(worker_id=worker_id), metadata=other.md
                )
            )
        ),
        "heartbeat": lambda: other.dispatcher.Heartbeat(
            d.HeartbeatRequest(worker_id=worker_id), metadata=other.md
        ),
        "report": lambda: other.dispatcher.SendStepActionEvent(forged, metadata=other.md),
        "batched report": lambda: hwg.WorkerStub(other.channel).Report(
            hw.ReportBatch(events=[forged]), metadata=other.md
        ),
        "labels": lambda: other.dispatcher.UpsertWorkerLabels(
            d.UpsertWorkerLabelsRequest(worker_id=worker_id), metadata=other.md
        ),
        "unsubscribe": lambda: other.dispatcher.Unsubscribe(
            d.WorkerUnsubscribeRequest(worker_id=worker_id), metadata=other.md
        ),
        # Calls about the task's attempt, which name no worker, are the worker's too.
        "release slot": lambda: other.dispatcher.ReleaseSlot(
            d.ReleaseSlotRequest(task_run_external_id=action.task_run_external_id),
            metadata=other.md,
        ),
        "refresh timeout": lambda: other.dispatcher.RefreshTimeout(
            d.RefreshTimeoutRequest(
                task_run_external_id=action.task_run_external_id, increment_timeout_by="1h"
            ),
            metadata=other.md,
        ),
        "log": lambda: other.events.PutLog(
            ev.PutLogRequest(task_run_external_id=action.task_run_external_id, message="x"),
            metadata=other.md,
        ),
        "stream": lambda: other.events.PutStreamEvent(
            ev.PutStreamEventRequest(
                task_run_external_id=action.task_run_external_id, message=b"forged"
            ),
            metadata=other.md,
        ),
    }.items():
        code, details = code_of(call)
        assert code is grpc.StatusCode.PERMISSION_DENIED, (label, code)
        assert "another token" in details, label
    # The real worker kept its stream and its task: its own report completes the run.
    stubs.complete(worker_id, action, '{"real": true}')

    def done() -> Any:
        details = stubs.admin.GetRunDetails(
            v1.GetRunDetailsRequest(external_id=run_id), metadata=stubs.md
        )
        return details if details.done else None

    (task,) = wait_for(done, what="the run completed").task_runs.values()
    assert json.loads(task.output) == {"real": True}
    second = stubs.trigger()
    assert next(listen).workflow_run_id == second  # still this worker's stream


def test_tenants_cannot_see_or_touch_each_other(small_engine: EngineThread, stubs: Stubs) -> None:
    stubs.put_one_task()
    run_id = stubs.trigger()
    worker = stubs.dispatcher.Register(
        d.WorkerRegisterRequest(worker_name="a", actions=["edge:t"]), metadata=stubs.md
    )
    intruder = Stubs(small_engine, other_tenant_token(small_engine))

    code, _ = code_of(
        lambda: intruder.admin.GetRunDetails(
            v1.GetRunDetailsRequest(external_id=run_id), metadata=intruder.md
        )
    )
    assert code is grpc.StatusCode.NOT_FOUND
    code, _ = code_of(lambda: intruder.trigger("edge"))
    assert code is grpc.StatusCode.NOT_FOUND
    for call in (
        lambda: intruder.dispatcher.Heartbeat(
            d.HeartbeatRequest(worker_id=worker.worker_id), metadata=intruder.md
        ),
        lambda: intruder.dispatcher.Unsubscribe(
            d.WorkerUnsubscribeRequest(worker_id=worker.worker_id), metadata=intruder.md
        ),
        lambda: next(
            iter(
                intruder.dispatcher.ListenV2(
                    d.WorkerListenRequest(worker_id=worker.worker_id), metadata=intruder.md
                )
            )
        ),
    ):
        assert code_of(call)[0] is grpc.StatusCode.NOT_FOUND
    cancelled = intruder.admin.CancelTasks(
        v1.CancelTasksRequest(external_ids=[run_id]), metadata=intruder.md
    )
    assert list(cancelled.cancelled_tasks) == []
    details = stubs.admin.GetRunDetails(
        v1.GetRunDetailsRequest(external_id=run_id), metadata=stubs.md
    )
    assert details.status == v1.QUEUED


def test_bad_input_gets_a_clear_status(stubs: Stubs) -> None:
    stubs.put_one_task()
    cases = {
        "not json": ("[1, 2", grpc.StatusCode.INVALID_ARGUMENT, "not valid JSON"),
        "array": ("[1, 2]", grpc.StatusCode.INVALID_ARGUMENT, "JSON object"),
        "nan": ('{"x": NaN}', grpc.StatusCode.INVALID_ARGUMENT, "not valid JSON"),
        "deep": ("[" * 100_000 + "]" * 100_000, grpc.StatusCode.INVALID_ARGUMENT, "JSON"),
        "surrogate": ('{"a": "\\ud800"}', grpc.StatusCode.INVALID_ARGUMENT, "surrogate"),
        # Python reads 1e400 as infinity, and would hand it on as Infinity (not JSON).
        "overflow": ('{"x": 1e400}', grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
        "negative overflow": ('{"x": [-1e999]}', grpc.StatusCode.INVALID_ARGUMENT, "range"),
        # Neither backend can keep a NUL in text: refused on both, rather than altered.
        "nul": ('{"a": "x\\u0000y"}', grpc.StatusCode.INVALID_ARGUMENT, "NUL"),
        "nul key": ('{"a": {"k\\u0000": 1}}', grpc.StatusCode.INVALID_ARGUMENT, "NUL"),
    }
    for label, (text, expected, words) in cases.items():
        code, details = code_of(lambda text=text: stubs.trigger(input=text))
        assert code is expected and words in details, label
    code, details = code_of(lambda: stubs.trigger(input="{}", priority=7))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "priority" in details
    code, details = code_of(lambda: stubs.trigger("does-not-exist"))
    assert code is grpc.StatusCode.NOT_FOUND and "does-not-exist" in details
    code, details = code_of(
        lambda: stubs.workflows.TriggerWorkflow(
            tr.TriggerWorkflowRequest(name="edge", additional_metadata="nope"), metadata=stubs.md
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "additional_metadata" in details
    # Nothing half-created: the run list of the good trigger still works.
    assert stubs.trigger(input='{"ok": true}')


def test_bad_workflow_definitions_are_refused(stubs: Stubs) -> None:
    def put(*tasks: Any, **kw: Any) -> tuple[grpc.StatusCode, str]:
        request = v1.CreateWorkflowVersionRequest(name="bad", tasks=list(tasks), **kw)
        return code_of(lambda: stubs.admin.PutWorkflow(request, metadata=stubs.md))

    task = v1.CreateTaskOpts
    code, details = put(
        task(readable_id="a", action="bad:a", parents=["b"]),
        task(readable_id="b", action="bad:b", parents=["a"]),
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "cycle" in details
    code, details = put(task(readable_id="a", action="bad:a", parents=["ghost"]))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "ghost" in details
    code, details = put(task(readable_id="a", action="bad:a", timeout="soon"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "duration" in details
    code, details = put(task(readable_id="a", action="bad:a", timeout="1e20"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "out of range" in details
    code, details = put(task(readable_id="a", action="bad:a", backoff_factor=float("nan")))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "backoff_factor" in details
    code, details = put()
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    code, details = put(
        task(readable_id="a", action="bad:a"),
        concurrency=v1.Concurrency(expression="input.x +", max_runs=1),
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "input.x +" in details
    code, details = put(task(readable_id="a", action="bad:a", batch=v1.TaskBatchConfig()))
    assert code is grpc.StatusCode.UNIMPLEMENTED and "batching" in details


def test_oversized_messages_are_refused_and_the_engine_carries_on(stubs: Stubs) -> None:
    from hewer.engine.core.service import ASSIGNMENT_RESERVE_BYTES

    stubs.put_one_task()
    fits = json.dumps({"blob": "x" * (LIMIT - ASSIGNMENT_RESERVE_BYTES - 64)})
    run_id = stubs.trigger(input=fits)
    # Under the request limit, but its assignment would not fit in a message to a worker:
    # refused now, rather than accepted and then lost.
    code, details = code_of(lambda: stubs.trigger(input=json.dumps({"blob": "x" * (LIMIT - 1024)})))
    assert (
        code is grpc.StatusCode.INVALID_ARGUMENT
        and f"at most {LIMIT - ASSIGNMENT_RESERVE_BYTES}" in details
    )
    # What was accepted is delivered.
    worker = stubs.dispatcher.Register(
        d.WorkerRegisterRequest(worker_name="a", actions=["edge:t"]), metadata=stubs.md
    )
    listen = stubs.dispatcher.ListenV2(
        d.WorkerListenRequest(worker_id=worker.worker_id), metadata=stubs.md
    )
    action = next(iter(listen))
    assert action.workflow_run_id == run_id
    assert len(action.action_payload) > LIMIT - ASSIGNMENT_RESERVE_BYTES
    listen.cancel()
    code, details = code_of(lambda: stubs.trigger(input=json.dumps({"blob": "x" * (LIMIT + 1)})))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(LIMIT) in details
    assert stubs.trigger(input="{}")


def test_a_task_whose_parents_outputs_cannot_be_sent_fails_saying_why(
    small_engine: EngineThread, stubs: Stubs
) -> None:
    task = v1.CreateTaskOpts
    stubs.admin.PutWorkflow(
        v1.CreateWorkflowVersionRequest(
            name="fan",
            tasks=[
                task(readable_id="a", action="fan:a"),
                task(readable_id="b", action="fan:b"),
                task(readable_id="join", action="fan:join", parents=["a", "b"]),
            ],
        ),
        metadata=stubs.md,
    )
    run_id = stubs.trigger("fan")
    worker = stubs.dispatcher.Register(
        d.WorkerRegisterRequest(worker_name="a", actions=["fan:a", "fan:b", "fan:join"]),
        metadata=stubs.md,
    )
    listen = iter(
        stubs.dispatcher.ListenV2(
            d.WorkerListenRequest(worker_id=worker.worker_id), metadata=stubs.md
        )
    )
    # Each output fits; together, in the join task's assignment, they do not.
    big = json.dumps({"blob": "y" * (LIMIT * 2 // 3)})
    for _ in range(2):
        action = next(listen)
        stubs.complete(worker.worker_id, action, big)

    engine = small_engine
    tenant = engine.engine.default_tenant_id

    def failed() -> Any:
        details = engine.call(engine.engine.core.run_details(tenant, run_id))
        return details if str(details.status) == "failed" else None

    details = wait_for(failed, what="the join task failed")
    join = next(t for t in details.tasks if t.readable_id == "join")
    assert join.error and "message limit" in join.error and "cannot be sent" in join.error
    # Reading the run back: too large for one message, said plainly; a subscriber gets the
    # outputs that fit and, for the others, why not.
    code, message = code_of(
        lambda: stubs.admin.GetRunDetails(
            v1.GetRunDetailsRequest(external_id=run_id), metadata=stubs.md
        )
    )
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "message limit" in message
    (event,) = stubs.dispatcher.SubscribeToWorkflowRuns(
        iter([d.SubscribeToWorkflowRunsRequest(workflow_run_id=run_id)]), metadata=stubs.md
    )
    by_name = {r.task_name: r for r in event.results}
    assert "cannot be sent" in by_name["join"].error
    assert sum(bool(r.output) for r in event.results) == 1
    assert sum("does not fit" in r.error for r in event.results) == 1
    # The worker's stream survived the task it could not be sent: it still gets work.
    run2 = stubs.trigger("fan")
    assert next(listen).workflow_run_id == run2


def test_unimplemented_methods_say_so(stubs: Stubs) -> None:
    code, _ = code_of(
        lambda: stubs.events.ReplaySingleEvent(
            ev.ReplayEventRequest(event_id="e"), metadata=stubs.md
        )
    )
    assert code is grpc.StatusCode.UNIMPLEMENTED


def test_bad_pushes_and_schedules_are_refused(stubs: Stubs) -> None:
    code, details = code_of(
        lambda: stubs.events.Push(ev.PushEventRequest(key="", payload="{}"), metadata=stubs.md)
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "key" in details
    code, details = code_of(
        lambda: stubs.events.Push(ev.PushEventRequest(key="k", payload="[1]"), metadata=stubs.md)
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "JSON object" in details
    code, details = code_of(
        lambda: stubs.events.BulkPush(ev.BulkPushEventRequest(), metadata=stubs.md)
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    code, details = code_of(
        lambda: stubs.workflows.ScheduleWorkflow(
            w0.ScheduleWorkflowRequest(name="edge"), metadata=stubs.md
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "time" in details
    code, details = code_of(
        lambda: stubs.workflows.ScheduleWorkflow(
            w0.ScheduleWorkflowRequest(name="no-such", schedules=[Timestamp(seconds=1)]),
            metadata=stubs.md,
        )
    )
    assert code is grpc.StatusCode.NOT_FOUND


def test_heartbeat_without_stream_asks_for_reconnect(stubs: Stubs) -> None:
    stubs.put_one_task()
    worker = stubs.dispatcher.Register(
        d.WorkerRegisterRequest(worker_name="a", actions=["edge:t"]), metadata=stubs.md
    )
    code, _ = code_of(
        lambda: stubs.dispatcher.Heartbeat(
            d.HeartbeatRequest(worker_id=worker.worker_id), metadata=stubs.md
        )
    )
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    code, _ = code_of(
        lambda: stubs.dispatcher.Heartbeat(d.HeartbeatRequest(worker_id="nope"), metadata=stubs.md)
    )
    assert code is grpc.StatusCode.NOT_FOUND


def test_an_output_that_cannot_be_stored_fails_its_task_with_the_reason(stubs: Stubs) -> None:
    stubs.put_one_task()
    worker = stubs.dispatcher.Register(
        d.WorkerRegisterRequest(worker_name="a", actions=["edge:t"]), metadata=stubs.md
    )
    listen = iter(
        stubs.dispatcher.ListenV2(
            d.WorkerListenRequest(worker_id=worker.worker_id), metadata=stubs.md
        )
    )
    for payload, words in (
        ('{"x": 1e400}', "out of range"),
        ('{"x": NaN}', "NaN"),
        ('{"x": "\\u0000"}', "NUL"),
    ):
        run_id = stubs.trigger()
        action = next(listen)
        stubs.complete(worker.worker_id, action, payload)

        def failed(run_id: str = run_id) -> Any:
            details = stubs.admin.GetRunDetails(
                v1.GetRunDetailsRequest(external_id=run_id), metadata=stubs.md
            )
            return details if details.status == v1.FAILED else None

        details = wait_for(failed, what=f"the run failed for {payload}")
        (task,) = details.task_runs.values()
        assert words in task.error and "cannot be stored" in task.error, task.error


def test_subscriptions_answer_finished_and_unknown_runs(stubs: Stubs) -> None:
    stubs.put_one_task()
    run_id = stubs.trigger(input='{"v": 1}')
    worker = stubs.dispatcher.Register(
        d.WorkerRegisterRequest(worker_name="a", actions=["edge:t"]), metadata=stubs.md
    )
    listen = stubs.dispatcher.ListenV2(
        d.WorkerListenRequest(worker_id=worker.worker_id), metadata=stubs.md
    )
    action = next(iter(listen))
    assert json.loads(action.action_payload)["input"] == {"v": 1}
    stubs.complete(worker.worker_id, action, '{"done": true}')
    listen.cancel()

    def finished() -> bool:
        details = stubs.admin.GetRunDetails(
            v1.GetRunDetailsRequest(external_id=run_id), metadata=stubs.md
        )
        return bool(details.done)

    wait_for(finished, what="run finished")
    # Subscribing after the run finished still answers. A duplicate request that arrives
    # while the first is pending shares its answer; one arriving after it gets its own.
    requests = [
        d.SubscribeToWorkflowRunsRequest(workflow_run_id=i) for i in (run_id, run_id, "ghost")
    ]
    events = list(stubs.dispatcher.SubscribeToWorkflowRuns(iter(requests), metadata=stubs.md))
    assert {e.workflow_run_id for e in events} == {run_id, "ghost"}
    assert len(events) in (2, 3)
    for event in events:
        if event.workflow_run_id == run_id:
            assert json.loads(event.results[0].output) == {"done": True}
        else:
            assert "not found" in event.results[0].error


def test_a_1500_task_chain_registers_fails_as_one_and_a_larger_workflow_is_refused(
    engine: EngineThread,
) -> None:
    """DAG checks, run creation and the failure cascade are iterative: a deep chain hits no
    recursion limit (its first task fails, and the 1,499 behind it end with the run); the
    workflow size limit is said, not hit as an internal error."""
    import threading

    from hewer import Context, Hewer, HewerError, TaskOptions, TaskRunError
    from hewer.engine.core.workflows import MAX_TASKS_PER_WORKFLOW
    from tests.conftest import HEARTBEAT

    client = Hewer(settings=engine.client_settings(heartbeat_interval=HEARTBEAT))
    try:
        chain = client.workflow("deep-chain")

        def first(input: dict[str, Any], ctx: Context) -> None:
            raise ValueError("the head of the chain fails")

        previous = chain.add_task(first, name="s0", options=TaskOptions(retries=0))
        for i in range(1, 1500):
            previous = chain.add_task(lambda input, ctx: None, name=f"s{i}", parents=[previous])
        worker = client.worker("chain-worker", slots=2, workflows=[chain])
        thread = threading.Thread(target=worker.start, daemon=True)
        thread.start()
        assert worker.ready.wait(30)
        try:
            with pytest.raises(TaskRunError, match="the head of the chain fails"):
                chain.run({})
        finally:
            worker.stop()
            thread.join(30)

        wide = client.workflow("too-wide")
        for i in range(MAX_TASKS_PER_WORKFLOW + 1):
            wide.add_task(lambda input, ctx: None, name=f"t{i}")
        with pytest.raises(HewerError, match=f"the limit is {MAX_TASKS_PER_WORKFLOW}"):
            client.worker("wide-worker", workflows=[wide]).start()
    finally:
        client.close()
