"""Declaring tasks and workflows: naming, namespacing, registration and trigger requests."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from hewer import ClientSettings, ConfigurationError, Context, Hewer
from hewer._proto import dispatcher_pb2
from hewer.sdk import TaskOptions
from hewer.sdk._controls import check_worker_labels
from hewer.sdk._core import normalize_namespace
from hewer.sdk._wire import register_request
from hewer.sdk._worker import build_registry


class In(BaseModel):
    x: int


class Out(BaseModel):
    y: int


def client(namespace: str = "") -> Hewer:
    # Explicit settings: nothing is read from the environment or disk.
    return Hewer(settings=ClientSettings(token="t", host_port="localhost:1", namespace=namespace))


def test_standalone_task_is_a_workflow_named_after_the_function() -> None:
    hw = client()

    @hw.task()
    def Double(input: In, ctx: Context) -> Out:
        return Out(y=input.x * 2)

    assert Double.name == "Double"
    assert Double.workflow.name == "Double"
    assert [t.name for t in Double.workflow.tasks] == ["Double"]
    assert Double.task.action_id == "double:double"
    assert Double.task.input_model is In
    assert Double.task.output_model is Out
    assert not Double.task.is_async


def test_task_name_override_and_async_detection() -> None:
    hw = client()

    @hw.task(name="Resize-Image")
    async def resize(input: In, ctx: Context) -> dict[str, Any]:
        return {}

    assert resize.name == "Resize-Image"
    assert resize.task.action_id == "resize-image:resize-image"
    assert resize.task.is_async
    assert resize.task.output_model is None


@pytest.mark.parametrize(
    ("raw", "expected"), [("", ""), ("Team", "team_"), ("team_", "team_"), (" A_B ", "a_b_")]
)
def test_namespace_normalization(raw: str, expected: str) -> None:
    assert normalize_namespace(raw) == expected


def test_namespace_applies_to_workflow_names_and_action_ids() -> None:
    hw = client("Staging")
    wf = hw.workflow("Pipeline")

    @wf.task()
    def Step(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    assert wf.namespaced_name == "staging_Pipeline"
    assert Step.action_id == "staging_pipeline:step"
    # Already-prefixed names are not prefixed twice.
    assert hw.namespaced("staging_Pipeline") == "staging_Pipeline"
    assert wf.put_request().name == "staging_Pipeline"


def test_put_workflow_request_fields() -> None:
    hw = client()
    wf = hw.workflow("pipeline", input_validator=In, default_priority=2)

    @wf.task(
        retries=3,
        execution_timeout=timedelta(seconds=90),
        schedule_timeout=timedelta(minutes=10),
        backoff_factor=2.0,
        backoff_max=timedelta(seconds=30),
    )
    def a(input: In, ctx: Context) -> dict[str, Any]:
        return {}

    @wf.task(parents=[a])
    def b(input: In, ctx: Context) -> dict[str, Any]:
        return {}

    request = wf.put_request()
    assert request.name == "pipeline"
    assert request.HasField("default_priority") and request.default_priority == 2
    first, second = request.tasks
    assert first.readable_id == "a"
    assert first.action == "pipeline:a"
    assert first.timeout == "90s"
    assert first.schedule_timeout == "10m"
    assert first.inputs == "{}"
    assert list(first.parents) == []
    assert first.retries == 3
    assert first.backoff_factor == 2.0
    assert first.backoff_max_seconds == 30
    assert dict(first.slot_requests) == {"default": 1}

    assert second.readable_id == "b"
    assert list(second.parents) == ["a"]
    assert second.timeout == "1m"  # default execution timeout, 60 s
    assert second.schedule_timeout == "5m"
    assert second.retries == 0
    assert not second.HasField("backoff_factor")
    assert not second.HasField("backoff_max_seconds")


def test_standalone_default_priority_unset_by_default() -> None:
    hw = client()

    @hw.task()
    def t(input: In, ctx: Context) -> None:
        return None

    request = t.workflow.put_request()
    assert not request.HasField("default_priority")
    assert [task.action for task in request.tasks] == ["t:t"]


def test_workflow_input_model_defaults_to_the_validator() -> None:
    hw = client()
    wf = hw.workflow("wf", input_validator=In)

    @wf.task()
    def untyped(input: Any, ctx: Context) -> dict[str, Any]:
        return {}

    assert untyped.input_model is In


def test_parents_must_belong_to_the_same_workflow() -> None:
    hw = client()
    one, two = hw.workflow("one"), hw.workflow("two")

    @one.task()
    def a(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    with pytest.raises(ConfigurationError, match="another workflow"):

        @two.task(parents=[a])
        def b(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
            return {}


def test_duplicate_task_names_are_refused() -> None:
    wf = client().workflow("wf")

    @wf.task(name="Step")
    def a(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    with pytest.raises(ConfigurationError, match="already has a task"):

        @wf.task(name="step")
        def b(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
            return {}


def test_task_functions_must_take_input_and_ctx() -> None:
    hw = client()
    with pytest.raises(ConfigurationError, match=r"\(input, ctx\)"):

        @hw.task()  # type: ignore[arg-type]
        def lonely(input: In) -> None:
            return None


def test_invalid_options_fail_at_declaration() -> None:
    with pytest.raises(ConfigurationError):
        TaskOptions(retries=-1)
    with pytest.raises(ConfigurationError):
        TaskOptions(execution_timeout=timedelta(0))
    with pytest.raises(ConfigurationError):
        client().workflow("wf", default_priority=7)
    assert TaskOptions(backoff_max=timedelta(seconds=1.5)).backoff_max_seconds == 2


def test_registry_refuses_colliding_action_ids() -> None:
    hw = client()

    @hw.task(name="Same")
    def first(input: In, ctx: Context) -> None:
        return None

    @hw.task(name="same")
    def second(input: In, ctx: Context) -> None:
        return None

    with pytest.raises(ConfigurationError, match="same:same"):
        build_registry([first.workflow, second.workflow])


def test_worker_collects_actions_of_tasks_and_workflows() -> None:
    hw = client("ns")

    @hw.task()
    def single(input: In, ctx: Context) -> None:
        return None

    wf = hw.workflow("Flow")

    @wf.task()
    def a(input: In, ctx: Context) -> None:
        return None

    @wf.task(parents=[a])
    def b(input: In, ctx: Context) -> None:
        return None

    worker = hw.worker("w", slots=3, workflows=[single, wf], labels={"gpu": "a100", "n": 2})
    assert worker.actions == ["ns_single:single", "ns_flow:a", "ns_flow:b"]
    assert worker.id is None
    assert not worker.ready.is_set()
    with pytest.raises(ConfigurationError):
        hw.worker("w", slots=0, workflows=[wf])


def test_register_request_fields() -> None:
    labels = check_worker_labels({"gpu": "a100", "n": 2, "flag": True})
    request = register_request("ns_w", ["a:a", "b:b"], {"default": 5}, labels)
    assert request.worker_name == "ns_w"
    assert list(request.actions) == ["a:a", "b:b"]
    assert list(request.services) == ["default"]
    assert dict(request.slot_config) == {"default": 5}
    assert not request.HasField("slots")
    assert request.labels["gpu"].str_value == "a100"
    assert request.labels["n"].int_value == 2
    assert not request.labels["n"].HasField("str_value")
    assert request.labels["flag"].str_value == "True"
    assert request.runtime_info.language == dispatcher_pb2.PYTHON
    assert request.runtime_info.sdk_version
    assert request.runtime_info.language_version.count(".") == 2


def test_trigger_request_fields() -> None:
    hw = client("ns")

    @hw.task()
    def t(input: In, ctx: Context) -> Out:
        return Out(y=1)

    request = t._request({"x": "3"}, {"additional_metadata": {"source": "test"}, "priority": 3})
    assert request.name == "ns_t"
    assert json.loads(request.input) == {"x": 3}
    assert json.loads(request.additional_metadata) == {"source": "test"}
    assert request.HasField("child_index") and request.child_index == 0
    assert request.priority == 3

    bare = t._request(In(x=1), {})
    assert not bare.HasField("additional_metadata")
    assert not bare.HasField("priority")
    with pytest.raises(ConfigurationError):
        t._request(In(x=1), {"priority": 9})
