"""Workflow versions in memory: immutable once stored, so they are cached for good."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from hewer.domain import Workflow
from hewer.store import Store


class Versions:
    def __init__(self) -> None:
        self.cache: dict[str, Workflow] = {}

    def add(self, workflows: Iterable[Workflow]) -> None:
        for wf in workflows:
            self.cache.setdefault(wf.version_id, wf)

    async def ensure(self, store: Store, version_ids: Collection[str]) -> None:
        """Load the versions of ``version_ids`` that are not cached yet."""
        missing = [v for v in version_ids if v not in self.cache]
        if missing:
            self.add(await store.workflow_versions(missing))
