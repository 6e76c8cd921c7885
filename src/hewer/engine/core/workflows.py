"""Workflow registration: definitions are validated here, stored as immutable versions,
and the current version of each name is cached for triggers."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from collections.abc import Sequence

from hewer import defaults
from hewer.domain import (
    ConcurrencySpec,
    IdempotencySpec,
    RateLimitSpec,
    StickyStrategy,
    TaskDef,
    Workflow,
)
from hewer.engine.core import cel, conditions
from hewer.engine.core.clock import Clock
from hewer.engine.core.versions import Versions
from hewer.errors import InvalidInput, NotFound
from hewer.store import Store

# Triggers use the cached current version this long before asking the store again (another
# engine replica may have registered a newer one).
CURRENT_TTL_S = 1.0


MAX_TASKS_PER_WORKFLOW = 2_000
"""Tasks one workflow may hold: every run creates them all in one transaction."""


def check_priority(priority: int) -> None:
    if not defaults.MIN_PRIORITY <= priority <= defaults.MAX_PRIORITY:
        raise InvalidInput(
            f"priority must be between {defaults.MIN_PRIORITY} and {defaults.MAX_PRIORITY}"
        )


class Workflows:
    def __init__(self, store: Store, clock: Clock, versions: Versions) -> None:
        self.store = store
        self.clock = clock
        self.versions = versions
        self._current: dict[tuple[str, str], tuple[Workflow, float]] = {}
        self._by_event: dict[str, tuple[dict[str, list[Workflow]], float]] = {}

    async def put(
        self,
        tenant_id: str,
        name: str,
        tasks: Sequence[TaskDef],
        default_priority: int | None,
        sticky: StickyStrategy | None = None,
        concurrency: Sequence[ConcurrencySpec] = (),
        event_triggers: Sequence[str] = (),
        cron_triggers: Sequence[str] = (),
        cron_input: str | None = None,
        idempotency: IdempotencySpec | None = None,
        default_filters: Sequence[tuple[str, str, str]] = (),
    ) -> Workflow:
        check_definition(name, tasks, concurrency)
        if idempotency is not None:
            cel.compile_expression(idempotency.expression)
        for expression, scope, _ in default_filters:
            if not scope.strip():
                raise InvalidInput(f"workflow {name!r}: a default filter needs a scope")
            cel.compile_expression(expression)
        priority = default_priority or defaults.DEFAULT_PRIORITY
        check_priority(priority)
        draft = Workflow(
            "",
            tenant_id,
            name,
            "",
            tuple(tasks),
            priority,
            sticky,
            tuple(concurrency),
            tuple(dict.fromkeys(event_triggers)),
            tuple(dict.fromkeys(cron_triggers)),
            cron_input,
            idempotency,
            tuple(default_filters),
        )
        text = json.dumps(draft.definition_json(), sort_keys=True, separators=(",", ":"))
        checksum = hashlib.sha256(text.encode()).hexdigest()
        stored = await self.store.workflow_put(draft, checksum, self.clock.now())
        self.versions.add([stored])
        self._current[(tenant_id, name)] = (stored, self.clock.monotonic() + CURRENT_TTL_S)
        self._by_event.pop(tenant_id, None)
        return stored

    async def by_event(self, tenant_id: str, key: str) -> list[Workflow]:
        """The current versions of the tenant's workflows an event of ``key`` triggers."""
        cached = self._by_event.get(tenant_id)
        if cached is None or cached[1] <= self.clock.monotonic():
            index: dict[str, list[Workflow]] = {}
            found = await self.store.workflows_current(tenant_id)
            self.versions.add(found)
            for wf in found:
                for event_key in wf.event_triggers:
                    index.setdefault(event_key, []).append(self.versions.cache[wf.version_id])
            cached = self._by_event[tenant_id] = (index, self.clock.monotonic() + CURRENT_TTL_S)
        matched: dict[str, Workflow] = {wf.id: wf for wf in cached[0].get(key, [])}
        for pattern, wfs in cached[0].items():
            # "order:*": a star stands for any run of characters, as upstream's patterns.
            if "*" in pattern and fnmatch.fnmatchcase(key, _glob(pattern)):
                matched.update((wf.id, wf) for wf in wfs)
        return list(matched.values())

    async def current(self, tenant_id: str, name: str) -> Workflow:
        """The version new runs of ``name`` get."""
        cached = self._current.get((tenant_id, name))
        if cached is not None and cached[1] > self.clock.monotonic():
            return cached[0]
        found = await self.store.workflow_get_by_name(tenant_id, name)
        if found is None:
            raise NotFound(f"workflow {name!r} not found")
        self.versions.add([found])
        found = self.versions.cache[found.version_id]
        self._current[(tenant_id, name)] = (found, self.clock.monotonic() + CURRENT_TTL_S)
        return found


def _glob(pattern: str) -> str:
    """An event-trigger pattern as an fnmatch pattern: only ``*`` is special."""
    return "".join(f"[{c}]" if c in "?[]" else c for c in pattern)


def check_definition(
    name: str, tasks: Sequence[TaskDef], concurrency: Sequence[ConcurrencySpec]
) -> None:
    """Refuse a definition that could never run as written."""
    if not name.strip():
        raise InvalidInput("workflow name must not be empty")
    if not tasks:
        raise InvalidInput(f"workflow {name!r} has no tasks")
    if len(tasks) > MAX_TASKS_PER_WORKFLOW:
        raise InvalidInput(
            f"workflow {name!r} has {len(tasks)} tasks; the limit is {MAX_TASKS_PER_WORKFLOW}"
        )
    if sum(t.on_failure for t in tasks) > 1:
        raise InvalidInput(f"workflow {name!r} has more than one on-failure task")
    seen: set[str] = set()
    for t in tasks:
        if not t.readable_id or not t.action_id:
            raise InvalidInput(f"workflow {name!r}: every task needs a readable_id and action")
        if t.readable_id in seen:
            raise InvalidInput(f"workflow {name!r}: duplicate task {t.readable_id!r}")
        seen.add(t.readable_id)
        if t.conditions:
            conditions.check(t.readable_id, t.conditions, t.parents)
        if t.on_failure and t.parents:
            raise InvalidInput(f"on-failure task {t.readable_id!r} must not have parents")
        if t.retries < 0:
            raise InvalidInput(f"task {t.readable_id!r}: retries must be >= 0")
        if any(n <= 0 for n in t.slot_requests.values()):
            raise InvalidInput(f"task {t.readable_id!r}: slot requests must be positive")
        for label, value in (
            ("backoff_factor", t.backoff_factor),
            ("backoff_max", t.backoff_max_s),
        ):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InvalidInput(f"task {t.readable_id!r}: {label} must be positive")
    handlers = {t.readable_id for t in tasks if t.on_failure}
    for t in tasks:
        for p in t.parents:
            if p not in seen:
                raise InvalidInput(f"task {t.readable_id!r}: unknown parent {p!r}")
            if p in handlers:
                raise InvalidInput(f"task {t.readable_id!r}: the on-failure task is no parent")
    _check_acyclic(name, tasks)
    for spec in (*concurrency, *(c for t in tasks for c in t.concurrency)):
        _check_concurrency(spec)
    for t in tasks:
        for rate in t.rate_limits:
            _check_rate_limit(t.readable_id, rate)


def _check_acyclic(name: str, tasks: Sequence[TaskDef]) -> None:
    """Iterative depth-first search, so a long chain cannot exhaust the stack."""
    parents = {t.readable_id: t.parents for t in tasks}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for task in tasks:
        if state.get(task.readable_id):
            continue
        path: list[str] = []
        stack: list[tuple[str, int]] = [(task.readable_id, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                if state.get(node) == 2:
                    continue
                state[node] = 1
                path.append(node)
            ps = parents[node]
            if i < len(ps):
                stack.append((node, i + 1))
                nxt = ps[i]
                mark = state.get(nxt)
                if mark == 1:
                    cycle = [*path[path.index(nxt) :], nxt]
                    raise InvalidInput(f"workflow {name!r} has a cycle: {' -> '.join(cycle)}")
                if mark != 2:
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                path.pop()


def _check_concurrency(spec: ConcurrencySpec) -> None:
    if spec.max_runs < 1:
        raise InvalidInput(f"concurrency {spec.expression!r}: max_runs must be at least 1")
    if spec.tenant_scoped and not spec.name:
        raise InvalidInput(f"concurrency {spec.expression!r}: a tenant-scoped limit needs a name")
    cel.compile_expression(spec.expression)
    if spec.max_runs_expression:
        cel.compile_expression(spec.max_runs_expression)


def _check_rate_limit(task: str, spec: RateLimitSpec) -> None:
    if spec.key_expr:
        cel.compile_expression(spec.key_expr)
        if not spec.limit_expr:
            raise InvalidInput(f"task {task!r}: a dynamic rate limit needs a limit")
        if not is_int(spec.limit_expr):
            cel.compile_expression(spec.limit_expr)
    elif not spec.key:
        raise InvalidInput(f"task {task!r}: a rate limit needs a key or a key expression")
    if spec.units_expr:
        cel.compile_expression(spec.units_expr)
    elif spec.units is not None and spec.units < 1:
        raise InvalidInput(f"task {task!r}: rate limit units must be at least 1")
    if not spec.duration_s > 0:
        raise InvalidInput(f"task {task!r}: rate limit duration must be positive")


def is_int(text: str) -> bool:
    try:
        int(text.strip())
    except ValueError:
        return False
    return True


__all__ = ["Workflows", "check_definition", "check_priority", "is_int"]
