"""The one lifecycle contract of the engine's long-running parts."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Component:
    """``start()``, ``stop(grace)`` (idempotent: a second stop does nothing), and
    ``async with`` for both."""

    async def start(self) -> None:
        """Begin work; returns once the component is ready."""

    async def stop(self, grace: float = 0.0) -> None:
        """Finish what is in flight for at most ``grace`` seconds, then stop."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
