"""Assignment and flow-control options: the exact protobuf each produces, the defaults, and
the errors a bad declaration raises at once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from hewer import (
    ClientSettings,
    ConcurrencyExpression,
    ConcurrencyLimitStrategy,
    ConfigurationError,
    Context,
    DesiredWorkerLabel,
    Hewer,
    RateLimit,
    RateLimitDuration,
    StickyStrategy,
    TaskOptions,
    WorkerLabelComparator,
    WorkerState,
    WorkflowOptions,
    defaults,
    domain,
)
from hewer._proto.v1 import workflows_pb2 as v1
from hewer._proto.v1.shared import trigger_pb2
from hewer.sdk import _wire

GREATER_OR_EQUAL = WorkerLabelComparator.GREATER_THAN_OR_EQUAL


def client() -> Hewer:
    return Hewer(settings=ClientSettings(token="t", host_port="localhost:1"))


def one_task(**options: Any) -> Any:
    """The CreateTaskOpts of a standalone task declared with ``options``."""
    hw = client()

    @hw.task(name="t", **options)
    def t(input: dict[str, Any], ctx: Context) -> None:
        return None

    (task,) = t.workflow.put_request().tasks
    return task


# --- defaults ----------------------------------------------------------------------------


def test_defaults_are_hewer_defaults() -> None:
    opts = TaskOptions()
    assert opts.retries == defaults.RETRIES
    assert opts.execution_timeout == timedelta(seconds=defaults.EXECUTION_TIMEOUT_S)
    assert opts.schedule_timeout == timedelta(seconds=defaults.SCHEDULE_TIMEOUT_S)
    assert dict(opts.slot_requests) == {defaults.DEFAULT_SLOT_TYPE: 1}
    heartbeat = ClientSettings.model_fields["heartbeat_interval"].default
    assert heartbeat == timedelta(seconds=defaults.HEARTBEAT_INTERVAL_S)
    for priority in (defaults.MIN_PRIORITY, defaults.MAX_PRIORITY):
        assert WorkflowOptions(default_priority=priority).default_priority == priority
    for priority in (defaults.MIN_PRIORITY - 1, defaults.MAX_PRIORITY + 1):
        with pytest.raises(ConfigurationError, match="priority must be from 1 to 3"):
            WorkflowOptions(default_priority=priority)


def test_defaults_send_nothing_extra() -> None:
    hw = client()
    wf = hw.workflow("wf")

    @wf.task()
    def a(input: dict[str, Any], ctx: Context) -> None:
        return None

    request = wf.put_request()
    assert not request.HasField("sticky")
    assert not request.HasField("default_priority")
    assert not request.HasField("concurrency")
    assert list(request.concurrency_arr) == []
    (task,) = request.tasks
    assert dict(task.slot_requests) == {"default": 1}
    assert dict(task.worker_labels) == {}
    assert list(task.concurrency) == []
    assert list(task.rate_limits) == []

    opts = TaskOptions()
    assert dict(opts.slot_requests) == {"default": 1}
    assert dict(opts.desired_worker_labels or {}) == {}
    assert opts.concurrency == ()
    assert opts.rate_limits == ()
    assert ConcurrencyExpression("input.k") == ConcurrencyExpression(
        "input.k", 1, ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN
    )
    assert RateLimit(static_key="k").duration is RateLimitDuration.MINUTE
    label = DesiredWorkerLabel("x")
    assert (label.required, label.weight, label.comparator) == (
        False,
        None,
        WorkerLabelComparator.EQUAL,
    )


# --- affinity ----------------------------------------------------------------------------


def test_desired_worker_labels_on_a_task() -> None:
    task = one_task(
        desired_worker_labels={
            "gpu": DesiredWorkerLabel("a100", required=True),
            "memory": DesiredWorkerLabel(32, comparator=GREATER_OR_EQUAL, weight=50),
            "zone": DesiredWorkerLabel("eu", comparator=WorkerLabelComparator.NOT_EQUAL),
        }
    )
    gpu, memory, zone = (task.worker_labels[k] for k in ("gpu", "memory", "zone"))

    assert gpu.str_value == "a100" and not gpu.HasField("int_value")
    assert gpu.HasField("required") and gpu.required is True
    # comparator is always sent, EQUAL (0) included; weight only when given.
    assert gpu.HasField("comparator") and gpu.comparator == trigger_pb2.EQUAL
    assert not gpu.HasField("weight")

    assert memory.int_value == 32 and not memory.HasField("str_value")
    assert memory.HasField("required") and memory.required is False
    assert memory.comparator == trigger_pb2.GREATER_THAN_OR_EQUAL
    assert memory.HasField("weight") and memory.weight == 50

    assert zone.comparator == trigger_pb2.NOT_EQUAL


@pytest.mark.parametrize(
    ("comparator", "wire"),
    [
        (WorkerLabelComparator.EQUAL, 0),
        (WorkerLabelComparator.NOT_EQUAL, 1),
        (WorkerLabelComparator.GREATER_THAN, 2),
        (WorkerLabelComparator.GREATER_THAN_OR_EQUAL, 3),
        (WorkerLabelComparator.LESS_THAN, 4),
        (WorkerLabelComparator.LESS_THAN_OR_EQUAL, 5),
    ],
)
def test_comparator_wire_values(comparator: WorkerLabelComparator, wire: int) -> None:
    task = one_task(desired_worker_labels={"n": DesiredWorkerLabel(1, comparator=comparator)})
    assert task.worker_labels["n"].comparator == wire


def test_desired_label_values_and_comparators_from_text() -> None:
    assert DesiredWorkerLabel(1, comparator="less_than").comparator is (  # type: ignore[arg-type]
        WorkerLabelComparator.LESS_THAN
    )
    # A bool is a word to whoever wrote it; it travels as text, as worker labels do.
    assert DesiredWorkerLabel(True).value == "True"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DesiredWorkerLabel("a100", comparator=GREATER_OR_EQUAL), "compares integers"),
        (lambda: DesiredWorkerLabel(2**31), "<= 2147483647"),
        (lambda: DesiredWorkerLabel(1.5), "string or an integer"),  # type: ignore[arg-type]
        (lambda: DesiredWorkerLabel(1, weight=2**40), "weight"),
        (lambda: DesiredWorkerLabel(1, required="yes"), "required"),  # type: ignore[arg-type]
        (lambda: DesiredWorkerLabel(1, comparator="ABOUT"), "comparator"),  # type: ignore[arg-type]
        (lambda: TaskOptions(desired_worker_labels={"gpu": "a100"}), "DesiredWorkerLabel"),  # type: ignore[dict-item]
        (lambda: TaskOptions(desired_worker_labels={"": DesiredWorkerLabel(1)}), "key"),
    ],
)
def test_bad_labels_fail_at_declaration(build: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()


# --- slots -------------------------------------------------------------------------------


def test_slot_requests() -> None:
    task = one_task(slot_requests={"gpu": 2, "default": 1})
    assert dict(task.slot_requests) == {"gpu": 2, "default": 1}
    assert dict(one_task(slot_requests={"default": 4}).slot_requests) == {"default": 4}


@pytest.mark.parametrize(
    ("slot_requests", "message"),
    [
        ({"default": 0}, ">= 1"),
        ({"gpu": -1}, ">= 1"),
        ({}, "at least one slot type"),
        ({"": 1}, "slot type"),
        ({"default": True}, "integer"),
    ],
)
def test_bad_slot_requests(slot_requests: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        TaskOptions(slot_requests=slot_requests)


def test_options_are_frozen_copies() -> None:
    given = {"gpu": 2}
    opts = TaskOptions(slot_requests=given)
    given["gpu"] = 99
    assert dict(opts.slot_requests) == {"gpu": 2}
    with pytest.raises(TypeError):
        opts.slot_requests["gpu"] = 3  # type: ignore[index]


# --- sticky and priority -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sticky", "wire"), [(StickyStrategy.SOFT, v1.StickyStrategy.SOFT), (StickyStrategy.HARD, 1)]
)
def test_sticky_workflow(sticky: StickyStrategy, wire: int) -> None:
    hw = client()
    wf = hw.workflow("wf", sticky=sticky, default_priority=3)

    @wf.task()
    def a(input: dict[str, Any], ctx: Context) -> None:
        return None

    request = wf.put_request()
    assert request.HasField("sticky") and request.sticky == wire
    assert request.default_priority == 3


def test_standalone_task_takes_sticky_and_priority_for_its_workflow() -> None:
    hw = client()

    @hw.task(sticky=StickyStrategy.HARD, default_priority=2)
    def t(input: dict[str, Any], ctx: Context) -> None:
        return None

    request = t.workflow.put_request()
    assert request.sticky == v1.StickyStrategy.HARD
    assert request.default_priority == 2
    assert WorkflowOptions(sticky="soft").sticky is StickyStrategy.SOFT  # type: ignore[arg-type]


def test_bad_workflow_options() -> None:
    hw = client()
    with pytest.raises(ConfigurationError, match="sticky"):
        hw.workflow("wf", sticky="sometimes")  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="priority"):
        hw.workflow("wf", default_priority=0)
    with pytest.raises(ConfigurationError, match="priority"):
        hw.task(default_priority=4)
    with pytest.raises(ConfigurationError, match="sticky"):
        hw.task(sticky="sometimes")  # type: ignore[arg-type]


# --- concurrency -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "wire"),
    [
        (ConcurrencyLimitStrategy.CANCEL_IN_PROGRESS, 0),
        (ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN, 3),
        (ConcurrencyLimitStrategy.CANCEL_NEWEST, 4),
        (ConcurrencyLimitStrategy.CANCEL_QUEUED_EXCEPT_NEWEST, 5),
        (ConcurrencyLimitStrategy.CANCEL_QUEUED_EXCEPT_OLDEST, 6),
    ],
)
def test_concurrency_strategy_wire_values(strategy: ConcurrencyLimitStrategy, wire: int) -> None:
    (limit,) = one_task(concurrency=ConcurrencyExpression("input.k", 2, strategy)).concurrency
    assert limit.HasField("limit_strategy") and limit.limit_strategy == wire
    assert v1.ConcurrencyLimitStrategy.Name(wire) == strategy.name


def test_concurrency_int_shorthand() -> None:
    (limit,) = one_task(concurrency=5).concurrency
    assert limit.expression == "'constant'"
    assert limit.max_runs == 5
    assert limit.limit_strategy == v1.GROUP_ROUND_ROBIN
    assert not limit.HasField("max_runs_expression")
    assert not limit.HasField("name")
    assert not limit.HasField("is_tenant_scoped")


def test_task_concurrency_list_keeps_its_order() -> None:
    first, second = one_task(
        concurrency=[
            ConcurrencyExpression("input.user", 2, ConcurrencyLimitStrategy.CANCEL_IN_PROGRESS),
            ConcurrencyExpression(
                "input.group", max_runs_expression="input.tier == 'pro' ? 5 : 1", name="tiers"
            ),
        ]
    ).concurrency
    assert (first.expression, first.max_runs, first.limit_strategy) == (
        "input.user",
        2,
        v1.CANCEL_IN_PROGRESS,
    )
    assert not first.HasField("max_runs_expression")
    assert second.expression == "input.group"
    assert second.max_runs_expression == "input.tier == 'pro' ? 5 : 1"
    # The static fallback hatchet-sdk sends alongside an expression.
    assert second.HasField("max_runs") and second.max_runs == 1
    assert second.limit_strategy == v1.GROUP_ROUND_ROBIN
    assert second.name == "tiers"


def test_workflow_concurrency_goes_to_concurrency_arr() -> None:
    hw = client()
    one = hw.workflow("one", concurrency=ConcurrencyExpression("input.k", 2))
    many = hw.workflow(
        "many",
        concurrency=[
            ConcurrencyExpression("input.a", 4, ConcurrencyLimitStrategy.CANCEL_NEWEST),
            ConcurrencyExpression("input.b", 1, ConcurrencyLimitStrategy.CANCEL_IN_PROGRESS),
        ],
    )
    shorthand = hw.workflow("shorthand", concurrency=3)
    for wf in (one, many, shorthand):

        @wf.task()
        def a(input: dict[str, Any], ctx: Context) -> None:
            return None

    request = one.put_request()
    assert not request.HasField("concurrency")
    (limit,) = request.concurrency_arr
    assert (limit.expression, limit.max_runs, limit.limit_strategy) == (
        "input.k",
        2,
        v1.GROUP_ROUND_ROBIN,
    )
    # Workflow limits stay off the tasks.
    assert list(request.tasks[0].concurrency) == []

    first, second = many.put_request().concurrency_arr
    assert (first.expression, first.max_runs, first.limit_strategy) == (
        "input.a",
        4,
        v1.CANCEL_NEWEST,
    )
    assert (second.expression, second.limit_strategy) == ("input.b", v1.CANCEL_IN_PROGRESS)

    (const,) = shorthand.put_request().concurrency_arr
    assert (const.expression, const.max_runs, const.limit_strategy) == (
        "'constant'",
        3,
        v1.GROUP_ROUND_ROBIN,
    )


def test_standalone_concurrency_limits_the_task() -> None:
    # As hatchet-sdk: a standalone task's concurrency is task-level, not workflow-level.
    hw = client()

    @hw.task(concurrency=ConcurrencyExpression("input.k", 2))
    def t(input: dict[str, Any], ctx: Context) -> None:
        return None

    request = t.workflow.put_request()
    assert list(request.concurrency_arr) == []
    assert not request.HasField("concurrency")
    assert [c.expression for c in request.tasks[0].concurrency] == ["input.k"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ConcurrencyExpression(""), "non-empty"),
        (lambda: ConcurrencyExpression("   "), "non-empty"),
        (lambda: ConcurrencyExpression("input.k", 0), "max_runs must be >= 1"),
        (lambda: ConcurrencyExpression("input.k", -3), "max_runs must be >= 1"),
        (lambda: ConcurrencyExpression("input.k", True), "integer"),
        (lambda: ConcurrencyExpression("input.k", limit_strategy="QUEUE_NEWEST"), "limit_strategy"),  # type: ignore[arg-type]
        (lambda: ConcurrencyExpression("input.k", max_runs_expression=""), "max_runs_expression"),
        (lambda: ConcurrencyExpression("input.k", 3, max_runs_expression="input.n"), "not both"),
        (lambda: ConcurrencyExpression("input.k", name=""), "name"),
        (lambda: TaskOptions(concurrency=0), "at least one run"),
        (lambda: TaskOptions(concurrency=["input.k"]), "not a ConcurrencyExpression"),  # type: ignore[list-item]
        (lambda: TaskOptions(concurrency="input.k"), "int, a ConcurrencyExpression"),  # type: ignore[arg-type]
        (lambda: WorkflowOptions(concurrency=-1), "at least one run"),
    ],
)
def test_bad_concurrency_fails_at_declaration(build: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()


def test_strategy_names_are_accepted() -> None:
    limit = ConcurrencyExpression("input.k", limit_strategy="cancel_newest")  # type: ignore[arg-type]
    assert limit.limit_strategy is ConcurrencyLimitStrategy.CANCEL_NEWEST


# --- enums shared with the engine --------------------------------------------------------


def test_flow_enums_are_the_domain_ones() -> None:
    assert ConcurrencyLimitStrategy is domain.ConcurrencyStrategy
    assert WorkerLabelComparator is domain.LabelComparator
    assert StickyStrategy is domain.StickyStrategy
    assert WorkerState is domain.WorkerStatus
    # Every member has its protobuf value, named alike.
    assert {s.name for s in StickyStrategy} == {
        v1.StickyStrategy.Name(w) for w in _wire.STICKY_STRATEGIES.values()
    }
    assert {s.name for s in ConcurrencyLimitStrategy} == {
        v1.ConcurrencyLimitStrategy.Name(w) for w in _wire.CONCURRENCY_STRATEGIES.values()
    }
    assert {c.name for c in WorkerLabelComparator} == {
        trigger_pb2.WorkerLabelComparator.Name(w) for w in _wire.LABEL_COMPARATORS.values()
    }


@pytest.mark.parametrize("text", ["SOFT", "soft", " Soft "])
def test_sticky_from_text_in_any_case(text: str) -> None:
    assert WorkflowOptions(sticky=text).sticky is StickyStrategy.SOFT  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["GROUP_ROUND_ROBIN", "group_round_robin", "Group_Round_Robin"])
def test_strategy_from_text_in_any_case(text: str) -> None:
    limit = ConcurrencyExpression("input.k", limit_strategy=text)  # type: ignore[arg-type]
    assert limit.limit_strategy is ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN
    (wire,) = one_task(concurrency=limit).concurrency
    assert wire.limit_strategy == v1.GROUP_ROUND_ROBIN


@pytest.mark.parametrize("text", ["GREATER_THAN_OR_EQUAL", "greater_than_or_equal"])
def test_comparator_from_text_in_any_case(text: str) -> None:
    label = DesiredWorkerLabel(4, comparator=text)  # type: ignore[arg-type]
    assert label.comparator is WorkerLabelComparator.GREATER_THAN_OR_EQUAL


def test_unknown_enum_text_names_the_choices() -> None:
    with pytest.raises(
        ConfigurationError, match="sticky must be one of SOFT, HARD; got 'sometimes'"
    ):
        WorkflowOptions(sticky="sometimes")  # type: ignore[arg-type]


# --- rate limits -------------------------------------------------------------------------


def test_static_rate_limit() -> None:
    (limit,) = one_task(rate_limits=[RateLimit(static_key="api", units=2)]).rate_limits
    assert limit.key == "api"
    assert not limit.HasField("key_expr")
    assert limit.HasField("units") and limit.units == 2
    assert not limit.HasField("units_expr")
    # A static key's limit comes from PutRateLimit; "-1" says so (as hatchet-sdk sends).
    assert limit.limit_values_expr == "-1"
    assert limit.HasField("duration") and limit.duration == v1.MINUTE


def test_dynamic_rate_limits() -> None:
    cel, fixed = one_task(
        rate_limits=[
            RateLimit(
                dynamic_key="input.user",
                units="input.cost",
                limit="input.limit",
                duration=RateLimitDuration.SECOND,
            ),
            RateLimit(dynamic_key="input.org", units=3, limit=100, duration=RateLimitDuration.HOUR),
        ]
    ).rate_limits
    # key carries the expression too, as hatchet-sdk sends it.
    assert (cel.key, cel.key_expr) == ("input.user", "input.user")
    assert not cel.HasField("units") and cel.units_expr == "input.cost"
    assert cel.limit_values_expr == "input.limit"
    assert cel.duration == v1.SECOND

    assert (fixed.key, fixed.key_expr) == ("input.org", "input.org")
    assert fixed.units == 3 and not fixed.HasField("units_expr")
    assert fixed.limit_values_expr == "100"
    assert fixed.duration == v1.HOUR


@pytest.mark.parametrize(("duration", "wire"), [(d, i) for i, d in enumerate(RateLimitDuration)])
def test_rate_limit_durations(duration: RateLimitDuration, wire: int) -> None:
    (limit,) = one_task(rate_limits=[RateLimit(static_key="k", duration=duration)]).rate_limits
    assert limit.duration == wire
    assert v1.RateLimitDuration.Name(wire) == duration.value


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RateLimit(), "exactly one"),
        (lambda: RateLimit(static_key="a", dynamic_key="input.b", limit=1), "exactly one"),
        (lambda: RateLimit(dynamic_key="input.user"), "needs a limit"),
        (lambda: RateLimit(static_key=""), "static_key"),
        (lambda: RateLimit(dynamic_key=" ", limit=1), "dynamic_key"),
        (lambda: RateLimit(static_key="k", units=0), "units must be >= 1"),
        (lambda: RateLimit(static_key="k", units=""), "units"),
        (lambda: RateLimit(dynamic_key="input.u", limit=0), "limit must be >= 1"),
        (lambda: RateLimit(static_key="k", duration="fortnight"), "duration"),  # type: ignore[arg-type]
        (lambda: TaskOptions(rate_limits=["k"]), "not a RateLimit"),  # type: ignore[list-item]
    ],
)
def test_bad_rate_limits_fail_at_declaration(build: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()


def test_put_rate_limit_request() -> None:
    request = _wire.put_rate_limit_request("api", 10, RateLimitDuration.HOUR)
    assert (request.key, request.limit, request.duration) == ("api", 10, 2)


def test_hw_rate_limits_put(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[Any, dict[str, Any]]] = []

    class Stub:
        def PutRateLimit(self, request: Any, **kwargs: Any) -> Any:
            sent.append((request, kwargs))

    monkeypatch.setattr(_wire, "workflow_stub", lambda channel: Stub())
    hw = client()
    hw.rate_limits.put("api", 10)
    hw.rate_limits.put("api", 3, RateLimitDuration.SECOND)
    (first, kwargs), (second, _) = sent
    assert (first.key, first.limit, first.duration) == ("api", 10, 1)  # MINUTE by default
    assert (second.limit, second.duration) == (3, 0)
    assert kwargs["metadata"] == (("authorization", "bearer t"),)
    with pytest.raises(ConfigurationError):
        hw.rate_limits.put("", 1)
    with pytest.raises(ConfigurationError):
        hw.rate_limits.put("api", -1)
    with pytest.raises(ConfigurationError):
        hw.rate_limits.put("api", 1, "fortnight")  # type: ignore[arg-type]
    assert len(sent) == 2
    hw.close()


async def test_hw_rate_limits_aio_put(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []

    class Stub:
        async def PutRateLimit(self, request: Any, **kwargs: Any) -> Any:
            sent.append(request)

    monkeypatch.setattr(_wire, "workflow_stub", lambda channel: Stub())
    hw = client()
    await hw.rate_limits.aio_put("api", 7, RateLimitDuration.DAY)
    (request,) = sent
    assert (request.key, request.limit, request.duration) == ("api", 7, 3)
    await hw.aclose()


# --- everything together -----------------------------------------------------------------


def test_all_task_options_together() -> None:
    task = one_task(
        retries=2,
        execution_timeout=timedelta(minutes=2),
        desired_worker_labels={"gpu": DesiredWorkerLabel("a100", required=True)},
        slot_requests={"gpu": 1},
        concurrency=2,
        rate_limits=[RateLimit(static_key="api")],
    )
    assert task.retries == 2 and task.timeout == "2m"
    assert set(task.worker_labels) == {"gpu"}
    assert dict(task.slot_requests) == {"gpu": 1}
    assert [c.max_runs for c in task.concurrency] == [2]
    assert [r.key for r in task.rate_limits] == ["api"]
