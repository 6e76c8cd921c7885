"""Hewer's registration and trigger requests against what hatchet-sdk 1.43.1 builds for the
same declarations.

hatchet-sdk registers the same protobuf full names as Hewer, so it never runs in this
process: a subprocess builds its requests and prints them as JSON, and only the JSON is
compared. Differences Hewer makes on purpose are asserted, not normalized away.
"""

from __future__ import annotations

import base64
import contextvars
import importlib.util
import json
import os
import subprocess
import sys
from typing import Any, cast

import pytest
from google.protobuf.json_format import MessageToDict

from hewer import (
    ClientSettings,
    ConcurrencyExpression,
    ConcurrencyLimitStrategy,
    Context,
    DesiredWorkerLabel,
    DurableContext,
    Hewer,
    RateLimit,
    RateLimitDuration,
    StickyStrategy,
    WorkerLabelComparator,
)
from hewer.sdk import _wire
from hewer.sdk._context import Context as TaskContext
from hewer.sdk._context import TaskServices, enter_task
from tests.unit.test_sdk_runner import FakeServices, action

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("hatchet_sdk") is None, reason="hatchet-sdk is not installed"
)

CE = ConcurrencyExpression
CLS = ConcurrencyLimitStrategy
DWL = DesiredWorkerLabel
CMP = WorkerLabelComparator

# Declarations on the hatchet-sdk side; each has a twin in ``hewer_requests`` below.
HATCHET_SCRIPT = r"""
import json, warnings
warnings.simplefilter("ignore")  # dict-form desired labels are deprecated upstream
from google.protobuf.json_format import MessageToDict
from hatchet_sdk import Hatchet, ConcurrencyExpression as CE, ConcurrencyLimitStrategy as CLS
from hatchet_sdk import StickyStrategy, Context, EmptyModel
from hatchet_sdk.labels import DesiredWorkerLabel as DWL
from hatchet_sdk.rate_limit import RateLimit, RateLimitDuration as RLD
from hatchet_sdk.types.labels import WorkerLabelComparator as CMP
from hatchet_sdk.types.trigger import TriggerWorkflowOptions
from hatchet_sdk.runnables import contextvars as cv

def d(msg):
    return MessageToDict(msg, preserving_proto_field_name=True)

h = Hatchet()
out = {}

@h.task(name="solo", default_priority=2, sticky=StickyStrategy.SOFT, concurrency=3,
        slot_cost=2, rate_limits=[RateLimit(static_key="api", units=2)],
        desired_worker_labels={"gpu": DWL(value="a100", required=True, comparator=CMP.EQUAL)})
def solo(input: EmptyModel, ctx: Context) -> None: ...
out["solo"] = d(solo._workflow.to_proto())

@h.task(name="limits", default_priority=1,
        concurrency=[
            CE(expression="input.user", max_runs=2, limit_strategy=CLS.CANCEL_IN_PROGRESS),
            CE(expression="input.group", max_runs="input.tier == 'pro' ? 5 : 1",
               limit_strategy=CLS.GROUP_ROUND_ROBIN, name="tiers"),
        ],
        rate_limits=[
            RateLimit(dynamic_key="input.user", units="input.cost", limit="input.limit",
                      duration=RLD.SECOND),
            RateLimit(dynamic_key="input.org", units=3, limit=100, duration=RLD.HOUR),
            RateLimit(static_key="fixed", limit=7, duration=RLD.DAY),
        ],
        desired_worker_labels={
            "memory": DWL(value=32, comparator=CMP.GREATER_THAN_OR_EQUAL, weight=50),
            "zone": DWL(value="eu", comparator=CMP.NOT_EQUAL),
        })
def limits(input: EmptyModel, ctx: Context) -> None: ...
out["limits"] = d(limits._workflow.to_proto())

flow = h.workflow(name="flow", sticky=StickyStrategy.HARD, default_priority=3, concurrency=[
    CE(expression="input.a", max_runs=4, limit_strategy=CLS.CANCEL_NEWEST),
    CE(expression="'constant'", max_runs=9, limit_strategy=CLS.CANCEL_QUEUED_EXCEPT_NEWEST),
    CE(expression="input.b", max_runs=1, limit_strategy=CLS.CANCEL_QUEUED_EXCEPT_OLDEST),
])
@flow.task(concurrency=2)
def first(input: EmptyModel, ctx: Context) -> None: ...
@flow.task(parents=[first], concurrency=[
    CE(expression="input.c", max_runs=1, limit_strategy=CLS.GROUP_ROUND_ROBIN)])
def second(input: EmptyModel, ctx: Context) -> None: ...
out["flow"] = d(flow.to_proto())

single = h.workflow(name="single", default_priority=1, concurrency=CE(
    expression="input.k", max_runs=2, limit_strategy=CLS.GROUP_ROUND_ROBIN))
@single.task()
def only(input: EmptyModel, ctx: Context) -> None: ...
out["single"] = d(single.to_proto())

@h.task(name="plain")
def plain(input: EmptyModel, ctx: Context) -> None: ...
out["plain"] = d(plain._workflow.to_proto())

from hatchet_sdk import DurableContext
@h.durable_task(name="lasting", default_priority=1)
async def lasting(input: EmptyModel, ctx: DurableContext) -> None: ...
out["lasting"] = d(lasting._workflow.to_proto())

admin = h._client.admin
out["trigger_top"] = d(admin._create_workflow_run_request(
    "solo", json.dumps({"x": 1}), TriggerWorkflowOptions(
        priority=3, additional_metadata={"a": "b"}, desired_worker_label={
            "memory": DWL(value=8, comparator=CMP.LESS_THAN, weight=5, required=True),
            "gpu": DWL(value="h100", comparator=CMP.EQUAL),
        })))
cv.ctx_workflow_run_id.set("wf-run")
cv.ctx_step_run_id.set("run-1")
cv.ctx_worker_id.set("w-1")
cv.ctx_action_key.set("run-1/1")
out["child_sticky"] = d(admin._create_workflow_run_request(
    "solo", json.dumps({"x": 2}), TriggerWorkflowOptions(sticky=True)))
out["child_plain"] = d(admin._create_workflow_run_request(
    "solo", json.dumps({"x": 3}), TriggerWorkflowOptions()))
print(json.dumps(out))
"""


def _token() -> str:
    def part(data: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {
        "sub": "tenant",
        "server_url": "http://localhost:1",
        "grpc_broadcast_address": "localhost:1",
    }
    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


@pytest.fixture(scope="module")
def hatchet() -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATCHET_")}
    env.update(HATCHET_CLIENT_TOKEN=_token(), HATCHET_CLIENT_TLS_STRATEGY="none")
    proc = subprocess.run(
        [sys.executable, "-c", HATCHET_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    # hatchet-sdk sends an empty ``conditions {}`` on every task; Hewer has no conditions.
    for request in result.values():
        for task in request.get("tasks", ()):
            assert task.pop("conditions") == {}
    return result


def d(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = MessageToDict(message, preserving_proto_field_name=True)
    return result


def hewer_requests() -> dict[str, Any]:
    hw = Hewer(settings=ClientSettings(token="t", host_port="localhost:1"))
    out: dict[str, Any] = {}

    @hw.task(
        name="solo",
        default_priority=2,
        sticky=StickyStrategy.SOFT,
        concurrency=3,
        slot_requests={"default": 2},
        rate_limits=[RateLimit(static_key="api", units=2)],
        desired_worker_labels={"gpu": DWL("a100", required=True)},
    )
    def solo(input: dict[str, Any], ctx: Context) -> None:
        return None

    out["solo"] = d(solo.workflow.put_request())

    @hw.task(
        name="limits",
        default_priority=1,
        concurrency=[
            CE("input.user", 2, CLS.CANCEL_IN_PROGRESS),
            CE("input.group", max_runs_expression="input.tier == 'pro' ? 5 : 1", name="tiers"),
        ],
        rate_limits=[
            RateLimit(
                dynamic_key="input.user",
                units="input.cost",
                limit="input.limit",
                duration=RateLimitDuration.SECOND,
            ),
            RateLimit(dynamic_key="input.org", units=3, limit=100, duration=RateLimitDuration.HOUR),
            RateLimit(static_key="fixed", limit=7, duration=RateLimitDuration.DAY),
        ],
        desired_worker_labels={
            "memory": DWL(32, comparator=CMP.GREATER_THAN_OR_EQUAL, weight=50),
            "zone": DWL("eu", comparator=CMP.NOT_EQUAL),
        },
    )
    def limits(input: dict[str, Any], ctx: Context) -> None:
        return None

    out["limits"] = d(limits.workflow.put_request())

    flow = hw.workflow(
        "flow",
        sticky=StickyStrategy.HARD,
        default_priority=3,
        concurrency=[
            CE("input.a", 4, CLS.CANCEL_NEWEST),
            CE("'constant'", 9, CLS.CANCEL_QUEUED_EXCEPT_NEWEST),
            CE("input.b", 1, CLS.CANCEL_QUEUED_EXCEPT_OLDEST),
        ],
    )

    @flow.task(concurrency=2)
    def first(input: dict[str, Any], ctx: Context) -> None:
        return None

    @flow.task(parents=[first], concurrency=[CE("input.c")])
    def second(input: dict[str, Any], ctx: Context) -> None:
        return None

    out["flow"] = d(flow.put_request())

    single = hw.workflow("single", default_priority=1, concurrency=CE("input.k", 2))

    @single.task()
    def only(input: dict[str, Any], ctx: Context) -> None:
        return None

    out["single"] = d(single.put_request())

    @hw.task(name="plain")
    def plain(input: dict[str, Any], ctx: Context) -> None:
        return None

    out["plain"] = d(plain.workflow.put_request())

    @hw.durable_task(name="lasting", default_priority=1)
    async def lasting(input: dict[str, Any], ctx: DurableContext) -> None:
        return None

    out["lasting"] = d(lasting.workflow.put_request())

    out["trigger_top"] = d(
        solo._request(
            {"x": 1},
            {
                "priority": 3,
                "additional_metadata": {"a": "b"},
                "desired_worker_labels": {
                    "memory": DWL(8, comparator=CMP.LESS_THAN, weight=5, required=True),
                    "gpu": DWL("h100"),
                },
            },
        )
    )

    # From inside a task (worker "w-1", run "wf-run"), marked as the runner marks it.
    ctx = TaskContext(action("solo:solo", run="run-1"), services=cast(TaskServices, FakeServices()))

    def spawn() -> None:
        enter_task(ctx)
        out["child_sticky"] = d(solo._request({"x": 2}, {"sticky": True}))
        out["child_plain"] = d(solo._request({"x": 3}, {}))

    contextvars.copy_context().run(spawn)
    return out


@pytest.fixture(scope="module")
def ours() -> dict[str, Any]:
    return hewer_requests()


def _json_fields(request: dict[str, Any]) -> dict[str, Any]:
    """JSON text fields parsed (spacing differs: hatchet-sdk uses json.dumps defaults)."""
    return {
        k: json.loads(v) if k in ("input", "additional_metadata") else v for k, v in request.items()
    }


@pytest.mark.parametrize("case", ["solo", "limits", "flow", "trigger_top", "lasting"])
def test_same_request_as_hatchet_sdk(
    hatchet: dict[str, Any], ours: dict[str, Any], case: str
) -> None:
    assert _json_fields(ours[case]) == _json_fields(hatchet[case])


@pytest.mark.parametrize("case", ["child_sticky", "child_plain"])
def test_child_runs_match_hatchet_sdk(
    hatchet: dict[str, Any], ours: dict[str, Any], case: str
) -> None:
    # Each side numbered its two children 0 and 1 in the same order.
    assert _json_fields(ours[case]) == _json_fields(hatchet[case])
    assert hatchet["child_sticky"]["desired_worker_id"] == "w-1"
    assert "desired_worker_id" not in hatchet["child_plain"]


def test_single_workflow_limit_uses_the_repeated_field(
    hatchet: dict[str, Any], ours: dict[str, Any]
) -> None:
    # hatchet-sdk puts a lone workflow ConcurrencyExpression in the legacy scalar field 7;
    # Hewer always uses concurrency_arr (field 12), which hatchet-sdk itself uses for lists.
    theirs, mine = dict(hatchet["single"]), dict(ours["single"])
    assert mine.pop("concurrency_arr") == [theirs.pop("concurrency")]
    assert mine == theirs


def test_defaults_differ_only_in_default_priority(
    hatchet: dict[str, Any], ours: dict[str, Any]
) -> None:
    # hatchet-sdk always sends default_priority 1; Hewer leaves it unset (the engine's
    # default is 1 too).
    theirs, mine = dict(hatchet["plain"]), dict(ours["plain"])
    assert theirs.pop("default_priority") == 1
    assert "default_priority" not in mine
    assert mine == theirs


def test_comparator_is_always_sent() -> None:
    # hatchet-sdk omits an unset comparator; Hewer sends EQUAL explicitly (what the engine
    # assumes when it is absent), so the declarations above name it on the hatchet side.
    request = _wire.trigger_request("x", "{}", desired_worker_labels={"k": DWL("v")})
    assert d(request)["desired_worker_labels"]["k"] == {
        "str_value": "v",
        "required": False,
        "comparator": "EQUAL",
    }
