"""Worker-side options: slot pools, labels at registration, and labels changed at run time
(``worker.upsert_labels``, ``ctx.upsert_worker_labels``)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any, cast

import grpc
import pytest

from hewer import ClientSettings, ConfigurationError, Context, Hewer, HewerError
from hewer._proto import dispatcher_pb2
from hewer._proto.hewer.v1 import worker_pb2
from hewer.sdk import _wire
from hewer.sdk._connection import Connection
from hewer.sdk._context import TaskServices
from hewer.sdk._labels import WorkerLabelSet
from hewer.sdk._services import WorkerServices
from hewer.sdk._worker import Worker, resolve_slot_config
from tests.unit.test_sdk_liveness import Failure
from tests.unit.test_sdk_runner import FixedClock, action


def client() -> Hewer:
    return Hewer(settings=ClientSettings(token="t", host_port="localhost:1"))


def noop_workflow(hw: Hewer, **options: Any) -> Any:
    @hw.task(name="t", **options)
    def t(input: dict[str, Any], ctx: Context) -> None:
        return None

    return t


# --- slot pools --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slots", "slot_config", "expected"),
    [
        (None, None, {"default": 100}),
        (5, None, {"default": 5}),
        (None, {"gpu": 2}, {"default": 100, "gpu": 2}),
        (3, {"gpu": 2, "io": 50}, {"default": 3, "gpu": 2, "io": 50}),
        (None, {"default": 10, "gpu": 1}, {"default": 10, "gpu": 1}),
        (10, {"default": 10}, {"default": 10}),
    ],
)
def test_slot_pools(
    slots: int | None, slot_config: dict[str, int] | None, expected: dict[str, int]
) -> None:
    assert resolve_slot_config(slots, slot_config) == expected
    worker = client().worker("w", slots=slots, slot_config=slot_config)
    assert worker.slot_config == expected
    assert worker.slots == expected["default"]


@pytest.mark.parametrize(
    ("slots", "slot_config", "message"),
    [
        (0, None, "at least one slot"),
        (-1, None, "at least one slot"),
        (5, {"default": 6}, "disagree"),
        (None, {"gpu": 0}, ">= 1"),
        (None, {"": 1}, "slot type"),
        (None, {"gpu": 1.5}, "integer"),
    ],
)
def test_bad_slot_pools(slots: int | None, slot_config: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        client().worker("w", slots=slots, slot_config=slot_config)


def test_register_request_carries_every_pool() -> None:
    worker = client().worker("w", slots=3, slot_config={"gpu": 2}, labels={"zone": "eu", "n": 4})
    request = _wire.register_request("w", worker.actions, worker.slot_config, worker.labels)
    assert dict(request.slot_config) == {"default": 3, "gpu": 2}
    assert not request.HasField("slots")
    assert request.labels["zone"].str_value == "eu"
    assert request.labels["n"].int_value == 4 and not request.labels["n"].HasField("str_value")


def test_a_task_needing_a_missing_pool_is_refused() -> None:
    hw = client()
    task = noop_workflow(hw, slot_requests={"gpu": 1})
    with pytest.raises(ConfigurationError, match="'gpu'"):
        hw.worker("w", workflows=[task])
    assert hw.worker("w", workflows=[task], slot_config={"gpu": 1}).slot_config["gpu"] == 1


def test_a_task_needing_more_than_a_pool_holds_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hw = client()
    task = noop_workflow(hw, slot_requests={"gpu": 4})
    with caplog.at_level(logging.WARNING, logger="hewer.sdk._worker"):
        hw.worker("w", workflows=[task], slot_config={"gpu": 2})
    assert "needs 4 'gpu' slots" in caplog.text


# --- labels ------------------------------------------------------------------------------


def test_worker_labels_are_checked_at_declaration() -> None:
    hw = client()
    worker = hw.worker("w", labels={"gpu": "a100", "n": 2, "flag": True})
    assert worker.labels == {"gpu": "a100", "n": 2, "flag": "True"}
    with pytest.raises(ConfigurationError, match="string or an integer"):
        hw.worker("w", labels={"gpu": 1.5})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match="<= 2147483647"):
        hw.worker("w", labels={"n": 2**31})
    with pytest.raises(ConfigurationError, match="key"):
        hw.worker("w", labels={"": "x"})


def test_upsert_labels_request() -> None:
    request = _wire.upsert_labels_request("w-1", {"model": "llama", "vram": 24})
    assert isinstance(request, dispatcher_pb2.UpsertWorkerLabelsRequest)
    assert request.worker_id == "w-1"
    assert request.labels["model"].str_value == "llama"
    assert not request.labels["model"].HasField("int_value")
    assert request.labels["vram"].int_value == 24
    assert not request.labels["vram"].HasField("str_value")


class Sent:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, str | int]] = []
        self.fail = fail

    def __call__(self, labels: Mapping[str, str | int]) -> None:
        if self.fail:
            raise HewerError("engine unreachable")
        self.calls.append(dict(labels))


def test_label_set_before_and_after_registration() -> None:
    labels = WorkerLabelSet({"a": 1})
    labels.upsert({"b": "x"})  # not registered: kept locally only
    snapshot, version = labels.snapshot()
    assert snapshot == {"a": 1, "b": "x"}

    sent = Sent()
    labels.connect(sent, version)  # registration carried everything: nothing to catch up
    assert sent.calls == []
    labels.upsert({"b": "y", "c": 3})
    assert sent.calls == [{"b": "y", "c": 3}]  # only what changed
    assert labels.labels == {"a": 1, "b": "y", "c": 3}
    labels.upsert({})
    assert len(sent.calls) == 1

    labels.disconnect()
    labels.upsert({"d": 4})
    assert len(sent.calls) == 1
    assert labels.labels["d"] == 4


def test_label_set_catches_up_on_upserts_during_registration() -> None:
    labels = WorkerLabelSet({"a": 1})
    _, version = labels.snapshot()  # what Register carries
    labels.upsert({"b": 2})  # lands while Register is in flight
    sent = Sent()
    labels.connect(sent, version)
    assert sent.calls == [{"a": 1, "b": 2}]


def test_label_set_failures() -> None:
    labels = WorkerLabelSet()
    labels.connect(Sent(fail=True), since=0)
    with pytest.raises(HewerError, match="unreachable"):
        labels.upsert({"a": 1})
    assert labels.labels == {"a": 1}  # kept: the next registration carries it
    with pytest.raises(ConfigurationError):
        labels.upsert({"a": 2.5})
    assert labels.labels == {"a": 1}

    # A failed catch-up after registering is logged, not raised.
    catch_up = WorkerLabelSet()
    _, version = catch_up.snapshot()
    catch_up.upsert({"x": 1})
    catch_up.connect(Sent(fail=True), version)


def test_concurrent_upserts_reach_the_engine_in_merge_order() -> None:
    labels = WorkerLabelSet()
    sent = Sent()
    labels.connect(sent, since=0)
    start = threading.Barrier(8)

    def upsert(n: int) -> None:
        start.wait()
        for i in range(50):
            labels.upsert({"key": n * 1000 + i, f"t{n}": i})

    threads = [threading.Thread(target=upsert, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sent.calls) == 400
    # The last call the engine saw for "key" is the value the worker kept.
    assert sent.calls[-1]["key"] == labels.labels["key"]
    assert all(labels.labels[f"t{n}"] == 49 for n in range(8))


def test_worker_upsert_labels_before_start_is_kept() -> None:
    worker = client().worker("w", labels={"a": 1})
    worker.upsert_labels({"a": 2, "b": "x"})
    asyncio.run(worker.aio_upsert_labels({"c": 3}))
    assert worker.labels == {"a": 2, "b": "x", "c": 3}


# --- the engine call ---------------------------------------------------------------------


class LabelStub:
    def __init__(self, errors: list[grpc.StatusCode] | None = None) -> None:
        self.requests: list[Any] = []
        self.errors = list(errors or [])

    def UpsertWorkerLabels(self, request: Any, **kwargs: Any) -> Any:
        self.requests.append(request)
        if self.errors:
            raise Failure(self.errors.pop(0))
        return dispatcher_pb2.UpsertWorkerLabelsResponse(worker_id=request.worker_id)


def services_with(stub: LabelStub, monkeypatch: pytest.MonkeyPatch) -> WorkerServices:
    monkeypatch.setattr(_wire, "dispatcher_stub", lambda channel: stub)
    monkeypatch.setattr("hewer.sdk._retry.time.sleep", lambda seconds: None)
    services = WorkerServices(Connection(token="t", address="localhost:1"), FixedClock())
    services._sync_channel = cast(grpc.Channel, object())
    return services


def test_send_worker_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    stub = LabelStub(errors=[grpc.StatusCode.UNAVAILABLE])
    services = services_with(stub, monkeypatch)
    services.send_worker_labels("w-9", {"model": "llama"})
    # Idempotent, so a transient failure is repeated.
    assert [r.worker_id for r in stub.requests] == ["w-9", "w-9"]
    assert stub.requests[-1].labels["model"].str_value == "llama"

    failing = services_with(LabelStub(errors=[grpc.StatusCode.NOT_FOUND]), monkeypatch)
    with pytest.raises(HewerError, match="upsert labels of worker w-9"):
        failing.send_worker_labels("w-9", {"model": "llama"})


def test_ctx_upsert_worker_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    stub = LabelStub()
    services = services_with(stub, monkeypatch)
    services.labels.upsert({"zone": "eu"})
    services.labels.connect(lambda labels: services.send_worker_labels("w-1", labels), 1)
    ctx = Context(action("wf:t"), services=cast(TaskServices, services))

    ctx.upsert_worker_labels({"model": "llama", "vram": 24})
    asyncio.run(ctx.aio_upsert_worker_labels({"model": "mistral"}))

    first, second = stub.requests
    assert first.worker_id == "w-1"
    assert {k: v.str_value or v.int_value for k, v in first.labels.items()} == {
        "model": "llama",
        "vram": 24,
    }
    assert dict(second.labels).keys() == {"model"}
    assert ctx.worker_labels == {"zone": "eu", "model": "mistral", "vram": 24}


# --- registration ------------------------------------------------------------------------


class RegisterServices:
    """What ``Worker._register_all`` uses, with a Register that lets an upsert land while
    it is in flight."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.metadata = (("authorization", "bearer t"),)
        self.clock = FixedClock()
        self.registered: list[Any] = []
        self.sent: list[tuple[str, dict[str, str | int]]] = []
        self.aio_admin = self
        self.aio_dispatcher = self
        self.aio_hewer_worker = self
        self.calls: list[str] = []

    async def PutWorkflow(self, request: Any, **kwargs: Any) -> Any:
        self.calls.append("PutWorkflow")
        return None

    async def GetVersion(self, request: Any, **kwargs: Any) -> Any:
        self.calls.append("GetVersion")
        return dispatcher_pb2.GetVersionResponse(version="v0.0.0")

    async def Hello(self, request: Any, **kwargs: Any) -> Any:
        self.calls.append("Hello")
        return worker_pb2.HelloResponse(
            version="v0.0.0", max_actions_per_batch=7, max_reports_per_call=9, max_runs_per_wait=11
        )

    async def Register(self, request: Any, **kwargs: Any) -> Any:
        self.calls.append("Register")
        self.registered.append(request)
        if len(self.registered) == 1:
            await asyncio.to_thread(self.worker.upsert_labels, {"late": "yes"})
        return dispatcher_pb2.WorkerRegisterResponse(worker_id=f"w-{len(self.registered)}")

    def send_worker_labels(self, worker_id: str, labels: Mapping[str, str | int]) -> None:
        self.sent.append((worker_id, dict(labels)))


async def test_registration_sends_pools_and_labels_and_catches_up() -> None:
    hw = client()
    task = noop_workflow(hw, slot_requests={"gpu": 1})
    worker = hw.worker(
        "w", slots=4, slot_config={"gpu": 2}, workflows=[task], labels={"zone": "eu"}
    )
    services = RegisterServices(worker)

    await worker._register_all(cast(WorkerServices, services))
    (request,) = services.registered
    assert services.calls == ["PutWorkflow", "GetVersion", "Hello", "Register"]
    assert worker.engine_limits is not None
    assert worker.engine_limits.max_reports_per_call == 9
    assert dict(request.slot_config) == {"default": 4, "gpu": 2}
    assert {k: v.str_value for k, v in request.labels.items()} == {"zone": "eu"}
    # The upsert that landed during Register goes out once the worker has its id.
    assert services.sent == [("w-1", {"zone": "eu", "late": "yes"})]

    await asyncio.to_thread(worker.upsert_labels, {"zone": "us"})
    assert services.sent[-1] == ("w-1", {"zone": "us"})

    # Re-registering (engine restart) carries every label, and later upserts use the new id.
    await worker._register_all(cast(WorkerServices, services))
    assert {k: v.str_value for k, v in services.registered[1].labels.items()} == {
        "zone": "us",
        "late": "yes",
    }
    await asyncio.to_thread(worker.upsert_labels, {"zone": "ap"})
    assert services.sent[-1] == ("w-2", {"zone": "ap"})
    assert len(services.sent) == 3
