"""Helpers shared by the test tiers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from hewer.domain import Changes
from hewer.engine.core.scopes import Scope
from hewer.store import SqliteStore
from hewer.testing import EngineThread

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], timeout: float = 20.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


class GatedStore(SqliteStore):
    """A SQLite store that holds the commit of a transaction at a gate while ``gate`` is
    set and the transaction writes what ``holds`` picks (e.g. new runs), so a test can
    cancel a caller while its write is in flight."""

    def __init__(self, path: Path, holds: Callable[[Changes], bool]) -> None:
        super().__init__(path)
        self.holds = holds
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Any]:
        async with super().write() as tx:
            staged: list[Changes] = []
            stage = tx.stage

            def recording(changes: Changes) -> None:
                staged.append(changes)
                stage(changes)

            tx.stage = recording  # type: ignore[method-assign]
            yield tx
            if self.gate is not None and any(self.holds(c) for c in staged):
                self.entered.set()
                await self.gate.wait()


def scoped_token(engine: EngineThread, scope: Scope, name: str | None = None) -> str:
    """A new token of the engine's default tenant with ``scope``."""
    return engine.call(
        engine.engine.auth.mint(
            engine.engine.default_tenant_id,
            name or f"{scope.value}-token",
            3600,
            server_url=engine.api_url,
            grpc_address=engine.address,
            scope=scope,
        )
    )
