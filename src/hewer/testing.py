"""Test helpers for Hewer users and for our own suite: an engine in a background thread.

``EngineThread`` runs a real engine (real gRPC and HTTP on loopback, real SQLite file) on its
own event loop, so synchronous SDK calls in the test thread can talk to it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from hewer.config import ClientSettings, EngineSettings
from hewer.engine.app import Engine

T = TypeVar("T")


class EngineThread:
    """A running engine on a free port; ``with EngineThread(tmp_path) as engine: ...``."""

    def __init__(self, directory: Path, **settings: Any) -> None:
        base: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "api_port": 0,
            "database": directory / "hewer.db",
            "state_dir": directory / ".hewer",
        }
        base.update(settings)
        self.settings = EngineSettings(**base)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hewer-engine")
        self.engine = Engine(self.settings)

    def start(self) -> EngineThread:
        self._thread.start()
        self.call(self.engine.start())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.call(self.engine.stop(grace=0.5))
            self.call(_cancel_leftovers())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the engine's loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def call_soon(self, fn: Callable[[], Any]) -> None:
        self._loop.call_soon_threadsafe(fn)

    @property
    def address(self) -> str:
        return self.engine.address

    @property
    def api_url(self) -> str:
        """Base URL of the engine's HTTP API."""
        return self.engine.api_url

    @property
    def token(self) -> str:
        return self.engine.token

    def client_settings(self, **overrides: Any) -> ClientSettings:
        """Client settings that reach this engine."""
        values: dict[str, Any] = {"token": self.token, "host_port": self.address}
        values.update(overrides)
        return ClientSettings(**values)

    def __enter__(self) -> EngineThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _cancel_leftovers() -> None:
    """Cancel what the gRPC server left behind, so the loop closes with nothing pending."""
    current = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() if t is not current]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)
