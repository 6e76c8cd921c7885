"""Rate limits in the engine core: static and dynamic keys, refill, no busy loop."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hewer.domain import RateLimitSpec, TaskDef
from hewer.engine.core.service import ActionKind, Session, TriggerSpec
from hewer.errors import InvalidInput
from tests.unit.test_core import Rig


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path / "core.db")
    await r.start()
    yield r
    await r.core.stop()
    await r.store.close()


async def setup(rig: Rig, spec: RateLimitSpec) -> Session:
    await rig.core.put_workflow(
        rig.tenant, "rl", [TaskDef("call", "rl:call", rate_limits=(spec,))], None
    )
    record = await rig.core.register_worker(rig.tenant, "w", ["rl:call"], {"default": 50}, {}, {})
    return await rig.core.open_session(rig.tenant, record.id)


async def started(rig: Rig, session: Session) -> int:
    await rig.settle()
    count = 0
    while not session._queue.empty():
        action = await session.next()
        assert action is not None and action.kind is ActionKind.START
        count += 1
    return count


async def test_static_limit_comes_back_each_window(rig: Rig) -> None:
    await rig.core.put_rate_limit(rig.tenant, "api", 2, 10.0)
    session = await setup(rig, RateLimitSpec(key="api", units=1, duration_s=10.0))
    await rig.core.trigger(rig.tenant, [TriggerSpec("rl", "{}") for _ in range(5)])
    assert await started(rig, session) == 2
    rig.clock.advance(9.9)  # the window is not over: nothing more
    assert await started(rig, session) == 0
    rig.clock.advance(0.2)  # a new window: the whole limit is back
    assert await started(rig, session) == 2
    rig.clock.advance(10.0)
    assert await started(rig, session) == 1


async def test_dynamic_keys_are_limited_each_on_their_own(rig: Rig) -> None:
    spec = RateLimitSpec(key_expr="input.user", units=1, limit_expr="1", duration_s=60.0)
    session = await setup(rig, spec)
    users = ["a", "a", "b", "b", "c"]
    await rig.core.trigger(rig.tenant, [TriggerSpec("rl", json.dumps({"user": u})) for u in users])
    assert await started(rig, session) == 3  # one per user until the window refills


async def test_static_keys_must_be_declared_and_expressions_must_compile(rig: Rig) -> None:
    await setup(rig, RateLimitSpec(key="undeclared", units=1))
    with pytest.raises(InvalidInput, match="not declared"):
        await rig.core.trigger(rig.tenant, [TriggerSpec("rl", "{}")])
    with pytest.raises(InvalidInput, match=r"input\.user \+"):
        await rig.core.put_workflow(
            rig.tenant,
            "bad",
            [
                TaskDef(
                    "t",
                    "bad:t",
                    rate_limits=(RateLimitSpec(key_expr="input.user +", limit_expr="1"),),
                )
            ],
            None,
        )
    with pytest.raises(InvalidInput, match="limit"):
        await rig.core.put_rate_limit(rig.tenant, "zero", 0, 1.0)
