"""Context: parent outputs, run facts, side calls."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import pytest
from pydantic import BaseModel

from hewer import ClientSettings, Context, Hewer, NotFound
from hewer.sdk._context import MAX_LOG_CHARS, TaskServices
from tests.unit.test_sdk_runner import FakeServices, action


class AOut(BaseModel):
    a: int


def make() -> tuple[Any, Any, Any]:
    hw = Hewer(settings=ClientSettings(token="t", host_port="localhost:1"))
    wf = hw.workflow("wf")

    @wf.task()
    def a(input: dict[str, Any], ctx: Context) -> AOut:
        return AOut(a=1)

    @wf.task()
    def raw(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    @wf.task(parents=[a, raw])
    def b(input: dict[str, Any], ctx: Context) -> None:
        return None

    return a, raw, b


def ctx_with(parents: dict[str, Any], services: FakeServices | None = None) -> Context:
    return Context(
        action("wf:b"),
        services=cast(TaskServices, services or FakeServices()),
        input={"x": 1},
        parents=parents,
    )


def test_task_output_parses_into_the_parent_output_model() -> None:
    a, raw, _ = make()
    ctx = ctx_with({"a": {"a": 5}, "raw": {"free": True}})
    out = ctx.task_output(a)
    assert isinstance(out, AOut) and out.a == 5
    assert ctx.task_output(raw) == {"free": True}


def test_task_output_of_a_non_parent_names_the_task() -> None:
    a, _, _ = make()
    with pytest.raises(NotFound, match="'a'"):
        ctx_with({}).task_output(a)


def test_run_facts() -> None:
    ctx = ctx_with({})
    assert ctx.workflow_run_id == "wf-run"
    assert ctx.task_run_external_id == "run-1"
    assert ctx.retry_count == 1
    assert ctx.attempt_number == 2
    assert ctx.worker_id == "w-1"
    assert ctx.additional_metadata == {"k": "v"}
    assert ctx.workflow_input == {"x": 1}
    assert not ctx.is_cancelled
    ctx.cancelled.set()
    assert ctx.is_cancelled and ctx.exit_flag


def test_side_calls() -> None:
    services = FakeServices()
    ctx = ctx_with({}, services)
    ctx.log("x" * (MAX_LOG_CHARS + 5), level="warn")
    ctx.put_stream("one")
    ctx.put_stream(b"two")
    ctx.refresh_timeout(timedelta(seconds=10))
    ctx.refresh_timeout(timedelta(minutes=5))
    assert services.logs == [("x" * MAX_LOG_CHARS, "WARN")]
    assert services.streams == [(b"one", 0), (b"two", 1)]
    assert services.refreshes == ["10s", "5m"]
