"""The store fixtures: every test in this folder runs against every backend.

Only ``store`` knows which backend it is; add a backend by adding a param. ``Machine``
drives the engine's state machine (:mod:`hewer.engine.core.transitions`) over a store the
way the engine loop does: one transaction per call, rows loaded for the ops, the ops
applied in order, the changed rows written.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from hewer.domain import Assignment, Keys, NewRun, TaskDef, Workflow
from hewer.engine.core.transitions import Assign, Context, CreateRuns, Op
from hewer.engine.core.versions import Versions
from hewer.store import SqliteStore, Store
from hewer.store.postgres import PostgresStore
from tests.pg import fresh_database

NOW = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        backend: Store = SqliteStore(tmp_path / "store.db")
        await backend.open()
        yield backend
        await backend.close()
        return
    async with fresh_database() as url:
        backend = PostgresStore(url)
        await backend.open()
        try:
            yield backend
        finally:
            await backend.close()


class Machine:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.versions = Versions()
        self.now = NOW
        self.keepers: frozenset[str] = frozenset()
        self.max_reassignments: int | None = 3

    async def apply(self, *ops: Op[Any]) -> list[Any]:
        """Apply ``ops`` in one transaction; their results, in order."""
        keys = Keys()
        seqs = 0
        for op in ops:
            op.keys(keys)
            seqs += op.seqs
        ctx = Context(self.now, self.versions.cache, self.max_reassignments, self.keepers)
        async with self.store.write() as tx:
            ws = await tx.load(keys, self.versions.cache, seqs)
            self.versions.add(ws.versions.values())
            for op in ops:
                op.apply(ctx, ws)
            tx.stage(ws.changes)
        return [op.result for op in ops]

    async def one(self, op: Op[Any]) -> Any:
        return (await self.apply(op))[0]

    async def workflow(self, tenant_id: str, name: str, tasks: Sequence[TaskDef]) -> Workflow:
        wf = Workflow("", tenant_id, name, "", tuple(tasks))
        stored = await self.store.workflow_put(wf, str(uuid.uuid4()), self.now)
        self.versions.add([stored])
        return stored

    async def run(
        self, wf: Workflow, input: str = '{"x":1}', priority: int = 1, **kw: Any
    ) -> NewRun:
        run_id = str(uuid.uuid4())
        task_ids = (run_id,) if len(wf.tasks) == 1 else tuple(str(uuid.uuid4()) for _ in wf.tasks)
        new = NewRun(run_id, wf, input, None, priority, task_ids, **kw)
        await self.one(CreateRuns([new]))
        return new

    async def assign(
        self, task_id: str, tenant_id: str, worker: str = "w1", retry: int = 0
    ) -> list[Any]:
        a = Assignment(task_id, tenant_id, worker, retry, {"default": 1})
        return list(await self.one(Assign([a])))


@pytest.fixture
def machine(store: Store) -> Machine:
    return Machine(store)


async def tenant(store: Store, name: str = "t1") -> str:
    return (await store.tenant_ensure(name, NOW)).id
