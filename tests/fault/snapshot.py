"""The fault tests' view of an engine's state, read through the store (never the file)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Coroutine, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from hewer.domain import AttemptRow, TaskRow
from hewer.engine.core.history import attempts
from hewer.store import Store, StoreError, open_store

T = TypeVar("T")

TERMINAL_RUN = ("completed", "failed", "cancelled")


def _row(obj: Any) -> dict[str, Any]:
    out = dataclasses.asdict(obj)
    return {k: (str(v) if hasattr(v, "value") else v) for k, v in out.items()}


async def read_state(store: Store) -> dict[str, list[dict[str, Any]]]:
    """``runs``, ``tasks`` (with their definitions' timeouts), ``task_attempts`` (every
    attempt, the live one with outcome None) and ``workers``, as plain dicts."""
    runs = await store.runs_list()
    tasks = await store.tasks_list()
    ended = await store.attempts_list()
    workers = await store.workers_list()
    versions = {
        v.version_id: v for v in await store.workflow_versions({r.version_id for r in runs})
    }
    version_of = {r.id: r.version_id for r in runs}
    by_task: dict[str, list[AttemptRow]] = {}
    for a in ended:
        by_task.setdefault(a.task_id, []).append(a)
    task_rows = []
    attempt_rows = []
    for t in tasks:
        row = _row(t)
        wf = versions.get(version_of.get(t.run_id, ""))
        if wf is not None and t.readable_id in wf.steps:
            step = wf.step(t.readable_id)
            row["timeout_s"] = step.timeout_s
            row["schedule_timeout_s"] = step.schedule_timeout_s
        task_rows.append(row)
        attempt_rows.extend(_row(a) for a in attempts(t, by_task.get(t.id, ())))
    return {
        "runs": [_row(r) for r in runs],
        "tasks": task_rows,
        "task_attempts": attempt_rows,
        "workers": [_row(w) for w in workers],
    }


class StoreReader:
    """A store opened on an engine's database from a thread of its own, for tests that
    run outside the engine's event loop (the engine may be another process)."""

    def __init__(self, database: Path | str) -> None:
        self._store = open_store(str(database))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._store.open())

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    call = _call

    @property
    def store(self) -> Store:
        """The store, for reads through ``call`` (the store's methods are coroutines)."""
        return self._store

    def state(self) -> dict[str, list[dict[str, Any]]]:
        return self._call(read_state(self._store))

    def tasks(self) -> list[TaskRow]:
        return self._call(self._store.tasks_list())

    def runs_terminal(self, run_ids: Iterable[str]) -> int:
        wanted = set(run_ids)
        return sum(
            1
            for r in self._call(self._store.runs_list())
            if r.id in wanted and r.status in TERMINAL_RUN
        )

    def worker_active(self, name: str) -> bool:
        try:
            workers = self._call(self._store.workers_list())
        except StoreError:
            return False
        return any(w.name == name and w.status == "active" for w in workers)

    def close(self) -> None:
        try:
            self._call(self._store.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read(path: Path | str) -> dict[str, list[dict[str, Any]]]:
    """One snapshot of the state (opens and closes a store)."""
    with StoreReader(path) as reader:
        return reader.state()
