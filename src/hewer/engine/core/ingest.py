"""Triggers: validate at the edge, evaluate each run's concurrency and rate-limit claims,
and write the runs durably before anyone gets their ids."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from hewer.domain import (
    NO_LINKS,
    ConcurrencySpec,
    DesiredLabel,
    GateClaim,
    IdempotencyClaim,
    NewRun,
    RateClaim,
    RateLimitRecord,
    RateLimitSpec,
    RunLinks,
    Workflow,
)
from hewer.engine.core import cel
from hewer.engine.core.loop import EngineLoop, run_holder, task_holder
from hewer.engine.core.transitions import CreateRuns
from hewer.engine.core.workflows import Workflows, check_priority, is_int
from hewer.errors import IdempotencyCollision, InvalidInput


@dataclass(frozen=True, slots=True)
class TriggerSpec:
    workflow_name: str
    input: str = ""
    additional_metadata: str | None = None
    priority: int | None = None
    desired_labels: tuple[DesiredLabel, ...] = ()
    desired_worker_id: str | None = None  # a sticky child run: start on this worker
    links: RunLinks = NO_LINKS


# The actions a connected worker of the tenant runs (None: no such worker connected).
WorkerActions = Callable[[str, str], Collection[str] | None]


class Ingest:
    def __init__(
        self,
        loop: EngineLoop,
        workflows: Workflows,
        rate_limits: dict[tuple[str, str], RateLimitRecord],
        worker_actions: WorkerActions,
        max_payload_bytes: int | None = None,
    ) -> None:
        self.loop = loop
        self.workflows = workflows
        self.rate_limits = rate_limits
        self.worker_actions = worker_actions
        self.max_payload_bytes = max_payload_bytes
        """The most input plus metadata a run may carry: what still fits in the message
        that assigns its first task (None: no bound)."""

    async def trigger(self, tenant_id: str, specs: Sequence[TriggerSpec]) -> list[str]:
        """Create runs durably, then queue their root tasks; returns run ids in order."""
        found: dict[str, Workflow] = {}
        runs: list[NewRun] = []
        for spec in specs:
            wf = found.get(spec.workflow_name)
            if wf is None:
                wf = found[spec.workflow_name] = await self.workflows.current(
                    tenant_id, spec.workflow_name
                )
            runs.append(self.new_run(tenant_id, wf, spec))
        op = CreateRuns(runs)
        ids = await self.loop.run(op)
        if op.collisions:
            raise IdempotencyCollision(
                [i for i in ids if i],
                [(c.existing_run_id, c.colliding_run_id) for c in op.collisions],
            )
        return ids

    def new_run(self, tenant_id: str, wf: Workflow, spec: TriggerSpec) -> NewRun:
        input_text = json_object_text(spec.input, "input")
        meta = (
            json_object_text(spec.additional_metadata, "additional_metadata")
            if spec.additional_metadata
            else None
        )
        limit = self.max_payload_bytes
        if limit is not None:
            # Metadata travels twice in an assignment (beside the input, and on its own).
            size = len(input_text.encode()) + 2 * len((meta or "").encode())
            if size > limit:
                raise InvalidInput(
                    f"input and additional metadata take {size} bytes in the message that "
                    f"assigns the task; at most {limit} fit (the message size limit, less "
                    "room for the rest of the assignment)"
                )
        priority = spec.priority if spec.priority else wf.default_priority
        check_priority(priority)
        ids = new_ids(1 if len(wf.tasks) == 1 else 1 + len(wf.tasks))
        run_id = ids[0]
        # A one-task run shares its id with the task, so either id names both.
        task_ids = (run_id,) if len(wf.tasks) == 1 else tuple(ids[1:])
        if spec.desired_worker_id is not None:
            self._check_sticky_child(tenant_id, wf, spec.desired_worker_id)
        return NewRun(
            run_id,
            wf,
            input_text,
            meta,
            priority,
            task_ids,
            spec.desired_labels,
            spec.desired_worker_id,
            gate_claims(tenant_id, wf, run_id, task_ids, input_text, meta),
            self._rate_claims(tenant_id, wf, input_text, meta),
            spec.links,
            self._idempotency(wf, input_text, meta),
        )

    def _idempotency(
        self, wf: Workflow, input_text: str, meta_text: str | None
    ) -> IdempotencyClaim | None:
        spec = wf.idempotency
        if spec is None:
            return None
        data = json.loads(input_text)
        meta = json.loads(meta_text) if meta_text else {}
        key = cel.compile_expression(spec.expression).key(data, meta)
        return IdempotencyClaim(wf.id, key, self.loop.clock.now() + spec.ttl_s, spec.method)

    def _check_sticky_child(self, tenant_id: str, wf: Workflow, worker_id: str) -> None:
        """A run may start on a given worker only if its workflow is sticky and that worker
        runs its tasks (as upstream requires for sticky child runs)."""
        if wf.sticky is None:
            raise InvalidInput(
                f"workflow {wf.name!r} cannot be sticky: it declares no sticky strategy"
            )
        actions = self.worker_actions(tenant_id, worker_id)
        if actions is None:
            raise InvalidInput(f"sticky worker {worker_id!r} is not connected")
        missing = {t.action_id for t in wf.tasks} - set(actions)
        if missing:
            raise InvalidInput(
                f"workflow {wf.name!r} cannot be sticky to worker {worker_id!r}: it does not "
                f"run {sorted(missing)}"
            )

    def _rate_claims(
        self, tenant_id: str, wf: Workflow, input_text: str, meta_text: str | None
    ) -> tuple[tuple[RateClaim, ...], ...]:
        """Each task's rate-limit units, keys and limits evaluated from the run's input."""
        if not any(t.rate_limits for t in wf.tasks):
            return ()
        data = json.loads(input_text)
        meta = json.loads(meta_text) if meta_text else {}

        def claim(spec: RateLimitSpec) -> RateClaim:
            units = spec.units if spec.units is not None else 1
            if spec.units_expr:
                units = cel.compile_expression(spec.units_expr).integer(data, meta)
            if units < 1:
                raise InvalidInput(f"rate limit units must be at least 1, got {units}")
            if spec.key_expr:
                key = cel.compile_expression(spec.key_expr).key(data, meta)
                limit = _limit_value(spec.limit_expr, data, meta)
                return RateClaim(key, units, limit, spec.duration_s)
            assert spec.key is not None
            if (tenant_id, spec.key) not in self.rate_limits:
                raise InvalidInput(
                    f"rate limit {spec.key!r} is not declared (PutRateLimit / "
                    "hw.rate_limits.put) for this tenant"
                )
            return RateClaim(spec.key, units, None, spec.duration_s)

        return tuple(tuple(claim(spec) for spec in t.rate_limits) for t in wf.tasks)


def _reject_constant(name: str) -> object:
    raise InvalidInput(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # Python would read it as infinity and write it back as Infinity, which no JSON
        # parser (nor PostgreSQL) takes.
        raise InvalidInput(f"the number {text[:40]} is out of range for JSON")
    return value


def strict_json(text: str) -> Any:
    """Parse JSON as RFC 8259 defines it and both backends can store it: no NaN or
    Infinity, no number beyond the range of a double, no NUL character in a string or a
    key (PostgreSQL text cannot hold one). Raises InvalidInput or ValueError."""
    value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    if "\\u" in text and _holds_nul(value):
        raise InvalidInput("a string holds a NUL character (\\u0000), which cannot be stored")
    return value


def _holds_nul(value: Any) -> bool:
    # Iterative: a deeply nested document must not hit the recursion limit here.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            for key, inner in item.items():
                if "\x00" in key:
                    return True
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)
    return False


def json_object_text(text: str | None, what: str) -> str:
    """Validate that ``text`` is a JSON object (empty means ``{}``); return text to store:
    ``text`` itself when nothing in it needs a second look, else compact text."""
    if text is None or not text.strip():
        return "{}"
    try:
        value = strict_json(text)
    except InvalidInput as exc:
        raise InvalidInput(f"{what}: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    if "\\u" not in text and (text.isascii() or _encodes(text)):
        return text  # valid as it is: no escapes that could hide a lone surrogate
    try:
        compact = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        compact.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} holds a lone surrogate (\\ud800-\\udfff)") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"{what} cannot be stored: {exc}") from None
    return compact


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def new_ids(n: int) -> list[str]:
    """``n`` fresh ids: UUIDs of version 7 (time first, then a counter, then randomness),
    so ids made one after the other sort together and an index on them grows at its end
    instead of at random places (several times cheaper to insert into)."""
    global _last_ms, _counter
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        ms = _last_ms  # the clock went back or did not move: keep counting
    else:
        _last_ms, _counter = ms, 0
    raw = os.urandom(8 * n).hex()
    out = []
    for i in range(n):
        _counter += 1
        if _counter > 0xFFF:  # 4,096 ids in one millisecond: borrow the next one
            _last_ms += 1
            ms, _counter = _last_ms, 0
        r = raw[16 * i : 16 * i + 16]
        out.append(
            f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7{_counter:03x}-"
            f"{_VARIANT[int(r[0], 16) & 3]}{r[1:4]}-{r[4:16]}"
        )
    return out


_VARIANT = "89ab"
_last_ms = 0
_counter = 0


def _limit_value(text: str | None, data: Any, meta: Any) -> int:
    if text is None:
        raise InvalidInput("a dynamic rate limit needs a limit")
    value = int(text.strip()) if is_int(text) else cel.compile_expression(text).integer(data, meta)
    if value < 1:
        raise InvalidInput(f"rate limit value must be at least 1, got {value}")
    return value


def gate_claims(
    tenant_id: str,
    wf: Workflow,
    run_id: str,
    task_ids: Sequence[str],
    input_text: str,
    meta_text: str | None,
) -> tuple[tuple[GateClaim, ...], ...]:
    """Each task's concurrency claims: the workflow's limits (held by the run), then its own
    (held by the task), each key evaluated once from the run's input and metadata."""
    if not wf.concurrency and not any(t.concurrency for t in wf.tasks):
        return ()
    data = json.loads(input_text)
    meta = json.loads(meta_text) if meta_text else {}

    def claim(spec: ConcurrencySpec, gate: str, holder: str, per_run: bool) -> GateClaim:
        key = cel.compile_expression(spec.expression).key(data, meta, workflow_run_id=run_id)
        max_runs = spec.max_runs
        if spec.max_runs_expression:
            limit = cel.compile_expression(spec.max_runs_expression)
            max_runs = limit.integer(data, meta, workflow_run_id=run_id)
            if max_runs < 1:
                raise InvalidInput(f"max_runs_expression gave {max_runs}; it must be >= 1")
        if spec.tenant_scoped and spec.name:
            gate = f"scoped/{spec.name}"
        return GateClaim(gate, key, max_runs, spec.strategy, holder, per_run, tenant_id)

    run_claims = tuple(
        claim(spec, f"{wf.id}/run/{spec.name or i}", run_holder(run_id), True)
        for i, spec in enumerate(wf.concurrency)
    )
    return tuple(
        run_claims
        + tuple(
            claim(spec, f"{wf.id}/{task.readable_id}/{spec.name or i}", task_holder(task_id), False)
            for i, spec in enumerate(task.concurrency)
        )
        for task, task_id in zip(wf.tasks, task_ids, strict=True)
    )


def gate_spec(wf: Workflow, gate: str) -> ConcurrencySpec | None:
    """The limit of ``wf`` a gate name of :func:`gate_claims` stands for (None if the name
    is not one of this version's)."""
    if gate.startswith("scoped/"):
        name = gate.removeprefix("scoped/")
        specs = [*wf.concurrency, *(c for t in wf.tasks for c in t.concurrency)]
        return next((c for c in specs if c.tenant_scoped and c.name == name), None)
    owner, sep, rest = gate.partition("/")
    scope, sep2, label = rest.rpartition("/")
    if not (sep and sep2) or owner != wf.id:
        return None
    if scope == "run":
        candidates: tuple[ConcurrencySpec, ...] = wf.concurrency
    elif scope in wf.steps:
        candidates = wf.step(scope).concurrency
    else:
        return None
    for i, spec in enumerate(candidates):
        if (spec.name or str(i)) == label:
            return spec
    return None


def check_rate_limit_put(key: str, limit: int, duration_s: float) -> None:
    if not key.strip():
        raise InvalidInput("rate limit key must not be empty")
    if limit < 1:
        raise InvalidInput(f"rate limit {key!r}: limit must be at least 1")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise InvalidInput(f"rate limit {key!r}: duration must be positive")
