"""Worker heartbeats, from a thread of their own.

The thread has its own blocking channel, so a task that blocks the event loop (or sync tasks
that take every pool thread) cannot delay a heartbeat and get the worker declared dead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc

from hewer.sdk import _wire
from hewer.sdk._connection import Connection, status_code, status_details
from hewer.sdk._time import Clock

logger = logging.getLogger(__name__)

HEARTBEAT_TIMEOUT_SECONDS = 5.0
# Codes with which the engine says it no longer has this worker's stream (or the worker).
STREAM_LOST_CODES = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND})


class Heartbeater:
    """Sends ``Dispatcher/Heartbeat`` every ``interval`` until stopped."""

    def __init__(
        self,
        connection: Connection,
        *,
        worker_id: Callable[[], str | None],
        interval: timedelta,
        on_stream_lost: Callable[[float], None],
        draining: Callable[[], bool],
        clock: Clock,
    ) -> None:
        self._connection = connection
        self._worker_id = worker_id
        self._interval = interval.total_seconds()
        self._on_stream_lost = on_stream_lost
        self._draining = draining
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        """Heartbeats the engine accepted (for health checks and tests)."""
        self.last_ok: bool | None = None
        """Whether the last heartbeat was accepted (None before the first)."""

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hewer-heartbeat", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = HEARTBEAT_TIMEOUT_SECONDS + 1) -> None:
        """Stop sending and wait for the thread (blocking, idempotent)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        channel = self._connection.sync_channel()
        stub = _wire.dispatcher_stub(channel)
        failures = 0
        try:
            while not self._stop.is_set():
                started = self._clock.monotonic()
                worker_id = self._worker_id()
                if worker_id is not None:
                    failures = self._beat(stub, worker_id, started, failures)
                # Pace from the start of the beat so a slow call does not stretch the interval.
                delay = max(0.0, started + self._interval - self._clock.monotonic())
                self._stop.wait(delay)
        finally:
            channel.close()

    def _beat(self, stub: Any, worker_id: str, started: float, failures: int) -> int:
        request = _wire.heartbeat_request(worker_id, self._clock.now())
        try:
            stub.Heartbeat(
                request, metadata=self._connection.metadata, timeout=HEARTBEAT_TIMEOUT_SECONDS
            )
        except grpc.RpcError as exc:
            return self._failed(exc, worker_id, started, failures + 1)
        self.sent += 1
        self.last_ok = True
        logger.debug("heartbeat sent for worker %s", worker_id)
        if failures:
            logger.info("heartbeats to the engine work again (worker %s)", worker_id)
        return 0

    def _failed(self, exc: grpc.RpcError, worker_id: str, started: float, failures: int) -> int:
        code = status_code(exc)
        if code in STREAM_LOST_CODES:
            if self._draining() and code == grpc.StatusCode.FAILED_PRECONDITION:
                # Expected: we closed our own stream to stop taking work.
                logger.debug("heartbeat while draining: %s", status_details(exc))
                return failures
            self.last_ok = False
            logger.warning(
                "engine lost the action stream of worker %s (%s); reconnecting",
                worker_id,
                code.name if code else "?",
            )
            self._on_stream_lost(started)
            return failures
        self.last_ok = False
        # One miss is noise; a run of them matters, but an engine down for minutes must not
        # flood the log at one line per interval.
        if failures == 1:
            log = logger.info
        elif failures <= 5 or failures % 25 == 0:
            log = logger.warning
        else:
            return failures
        log(
            "heartbeat %d for worker %s failed: %s %s",
            failures,
            worker_id,
            code.name if code else "",
            status_details(exc),
        )
        return failures
