"""Engine and SDK over loopback gRPC: tasks, DAGs, failures, load and a killed worker."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from hewer import Context, Hewer, NonRetryableError, TaskRunError
from hewer.testing import EngineThread
from tests.helpers import wait_for
from tests.integration.conftest import WorkerFactory


class In(BaseModel):
    x: int


class Out(BaseModel):
    y: int


def test_one_task_sync_async_and_no_wait(client: Hewer, in_process_worker: Any) -> None:
    @client.task(name="double")
    def double(input: In, ctx: Context) -> Out:
        return Out(y=input.x * 2)

    @client.task(name="async-inc")
    async def inc(input: In, ctx: Context) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"y": input.x + 1}

    in_process_worker(client, [double, inc])
    assert double.run(In(x=21)) == Out(y=42)
    assert double.run({"x": 2}) == Out(y=4)
    assert asyncio.run(double.aio_run(In(x=5))) == Out(y=10)
    assert inc.run(In(x=1)) == {"y": 2}
    ref = double.run_no_wait(In(x=7))
    assert ref.result() == Out(y=14)
    assert double.run_many([In(x=i) for i in range(5)]) == [Out(y=2 * i) for i in range(5)]


def test_three_task_dag_passes_parent_outputs(client: Hewer, in_process_worker: Any) -> None:
    wf = client.workflow(name="pipeline", input_validator=In)

    @wf.task()
    def fetch(input: In, ctx: Context) -> dict[str, int]:
        return {"v": input.x}

    @wf.task(parents=[fetch])
    def square(input: In, ctx: Context) -> dict[str, int]:
        return {"v": ctx.task_output(fetch)["v"] ** 2}

    @wf.task(parents=[fetch, square])
    def total(input: In, ctx: Context) -> dict[str, int]:
        return {"v": ctx.task_output(fetch)["v"] + ctx.task_output(square)["v"]}

    in_process_worker(client, [wf])
    result = wf.run(In(x=3))
    assert result == {"fetch": {"v": 3}, "square": {"v": 9}, "total": {"v": 12}}
    assert asyncio.run(wf.aio_run(In(x=2)))["total"] == {"v": 6}


def test_failing_task_fails_the_run_and_skips_descendants(
    client: Hewer, in_process_worker: Any, engine: EngineThread
) -> None:
    calls: Counter[str] = Counter()

    @client.task(name="boom", retries=2)
    def boom(input: In, ctx: Context) -> Out:
        calls["boom"] += 1
        raise ValueError(f"bad input {input.x}")

    @client.task(name="final")
    def final(input: In, ctx: Context) -> Out:
        calls["final"] += 1
        raise NonRetryableError("never again")

    wf = client.workflow(name="broken")

    @wf.task()
    def first(input: In, ctx: Context) -> dict[str, int]:
        raise RuntimeError("first failed")

    @wf.task(parents=[first])
    def after(input: In, ctx: Context) -> dict[str, int]:
        calls["after"] += 1
        return {}

    in_process_worker(client, [boom, final, wf])
    with pytest.raises(TaskRunError, match="bad input 3"):
        boom.run(In(x=3))
    assert calls["boom"] == 3  # first attempt + 2 retries
    with pytest.raises(TaskRunError, match="never again"):
        final.run(In(x=1))
    assert calls["final"] == 1
    with pytest.raises(TaskRunError, match="first failed") as info:
        wf.run(In(x=1))
    assert calls["after"] == 0
    details = engine.call(
        engine.engine.core.run_details(engine.engine.default_tenant_id, info.value.run_id)
    )
    assert details.status == "failed"
    assert {t.readable_id: t.status for t in details.tasks} == {
        "first": "failed",
        "after": "skipped",
    }


def _executions(log_dir: Path) -> dict[str, list[tuple[str, float, float]]]:
    """Per worker process: (task id, start, end) of every execution."""
    out: dict[str, list[tuple[str, float, float]]] = {}
    for path in log_dir.glob("*.log"):
        rows = []
        for line in path.read_text().splitlines():
            task_id, start, end = line.split()
            rows.append((task_id, float(start), float(end)))
        out[path.stem] = rows
    return out


def _max_concurrency(rows: list[tuple[str, float, float]]) -> int:
    events = sorted([(s, 1) for _, s, _ in rows] + [(e, -1) for _, _, e in rows])
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


@pytest.mark.slow
def test_2000_tasks_over_two_workers_respect_slots_and_run_once(
    app: Any, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    spawn_worker("a", slots=5)
    spawn_worker("b", slots=5)
    outputs = app.noop.run_many([app.Item(n=i) for i in range(2000)])
    assert sorted(o["n"] for o in outputs) == list(range(2000))

    executions = _executions(tmp_path / "executions")
    assert len(executions) == 2, "both workers took work"
    all_ids = [task_id for rows in executions.values() for task_id, _, _ in rows]
    assert len(all_ids) == 2000 and len(set(all_ids)) == 2000, "every task ran exactly once"
    for pid, rows in executions.items():
        assert _max_concurrency(rows) <= 5, f"worker {pid} ran more than 5 tasks at once"
        assert len(rows) > 200, "work spread across both workers"


def test_sigkilled_worker_tasks_complete_on_another(
    app: Any, spawn_worker: WorkerFactory, tmp_path: Path, engine: EngineThread
) -> None:
    victim = spawn_worker("victim", slots=1)
    ref = app.slow.run_no_wait(app.Sleep(seconds=1.0))
    executions = tmp_path / "executions"
    wait_for(
        lambda: list(executions.glob(f"started-{victim.pid}-*")),
        timeout=20,
        what="task started on the victim",
    )
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    survivor = spawn_worker("survivor", slots=1)
    result = ref.result()
    assert result["pid"] == survivor.pid
    assert result["retry_count"] == 1  # a new attempt; the dead one is fenced off

    def victim_inactive() -> bool:
        workers = engine.call(engine.engine.store.workers_list())
        return any(w.name == "victim" and w.status == "inactive" for w in workers)

    wait_for(victim_inactive, what="victim marked INACTIVE")
