"""The worker's action stream, kept open for as long as the worker runs.

It is ``hewer.v1.Worker/Listen`` (actions in batches) when the engine answered Hello at the
last registration, otherwise ``Dispatcher/ListenV2`` (one action per message); both mean
the same, and so do their errors.

Whatever ends a stream (EOF, an error, the engine restarting, or the heartbeat thread saying
the engine lost it), the listener opens a fresh one on a fresh channel after a short jittered
backoff, forever: a worker must never sit connected-but-deaf. If the engine no longer knows
the worker id, the worker registers again and listens under the new id.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from hewer.errors import HewerError
from hewer.sdk import _wire
from hewer.sdk._connection import Connection, status_code, status_details
from hewer.sdk._time import LISTEN_BACKOFF, Backoff, Clock

logger = logging.getLogger(__name__)

# A stream that stayed up this long counts as healthy: the next failure backs off from 0.
HEALTHY_STREAM_SECONDS = 5.0
# How long one attempt waits for a connection before starting over on a fresh channel.
CONNECT_TIMEOUT_SECONDS = 5.0
# Codes with which the engine says it does not know (or no longer accepts) the worker id.
REREGISTER_CODES = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED})


class ActionListener:
    """Reads assigned actions and hands each to ``on_action`` (on the loop's thread)."""

    def __init__(
        self,
        connection: Connection,
        *,
        worker_id: Callable[[], str],
        engine: Callable[[], _wire.EngineLimits | None] = lambda: None,
        reregister: Callable[[], Awaitable[None]],
        on_action: Callable[[_wire.Action], None],
        on_listening: Callable[[str, bool], None],
        clock: Clock,
        running: Callable[[], Sequence[tuple[str, int]]] = lambda: (),
        settle_seconds: float = 1.0,
        backoff: Backoff = LISTEN_BACKOFF,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._connection = connection
        self._worker_id = worker_id
        self._engine = engine
        self._reregister = reregister
        self._on_action = on_action
        self._on_listening = on_listening
        self._running = running
        self._clock = clock
        self._settle = settle_seconds
        self._backoff = backoff
        self._rng = rng
        self._call: Any = None
        self._opened_at = 0.0
        self._interrupted = False
        self._stopping = False
        self.connections = 0
        """Streams opened so far (1 + reconnects)."""

    @property
    def listening(self) -> bool:
        """A stream is open (read from any thread by the health server)."""
        return self._call is not None

    def stop_listening(self) -> None:
        """Close the stream at once (the worker is stopping): the engine stops offering work
        as soon as it sees the stream go, before the rest of the shutdown has begun."""
        self._stopping = True
        if self._call is not None:
            self._call.cancel()

    def request_reconnect(self, since: float) -> None:
        """Drop the current stream if it was open well before ``since`` (monotonic seconds).

        Called (on the loop) when a heartbeat sent at ``since`` was told the stream is gone.
        A stream opened after that heartbeat is already a fresh one, and one opened just
        before it may not have reached the engine yet: the next heartbeat will tell.
        """
        if self._call is not None and self._opened_at + self._settle <= since:
            self._interrupted = True
            self._call.cancel()

    async def run(self) -> None:
        """Listen until cancelled."""
        attempt = 0
        while True:
            if self._stopping:
                # Stopped on purpose: no new stream; wait for the worker to cancel us.
                await asyncio.get_running_loop().create_future()
            opened = self._clock.monotonic()
            healthy = await self._listen_once()
            if healthy or self._clock.monotonic() - opened >= HEALTHY_STREAM_SECONDS:
                attempt = 0
            delay = self._backoff.delay(attempt, self._rng)
            attempt += 1
            logger.debug("reconnecting the action listener in %.3fs", delay)
            await asyncio.sleep(delay)

    async def _listen_once(self) -> bool:
        """One stream, start to end; True if it delivered anything."""
        worker_id = self._worker_id()
        limits = self._engine()
        channel = self._connection.aio_channel()
        delivered = False
        try:
            try:
                await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_SECONDS)
            except TimeoutError:
                logger.warning(
                    "cannot reach the engine at %s; still trying", self._connection.address
                )
                return False
            # The engine need not answer anything until it has work, so the stream counts
            # as open once the request is on a ready connection.
            if limits is not None:
                call = _wire.hewer_worker_stub(channel).Listen(
                    _wire.batch_listen_request(
                        worker_id, limits.max_actions_per_batch, self._running()
                    ),
                    metadata=self._connection.metadata,
                )
            else:
                call = _wire.dispatcher_stub(channel).ListenV2(
                    _wire.listen_request(worker_id), metadata=self._connection.metadata
                )
            self._call = call
            self._opened_at = self._clock.monotonic()
            self._interrupted = False
            self.connections += 1
            self._on_listening(worker_id, self.connections > 1)
            on_action = self._on_action
            from_proto = _wire.Action.from_proto
            if limits is not None:
                async for batch in call:
                    delivered = True
                    for message in batch.actions:
                        on_action(from_proto(message, worker_id))
            else:
                async for message in call:
                    delivered = True
                    on_action(from_proto(message, worker_id))
            logger.info("received EOF from engine on the action stream; reconnecting")
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._interrupted or (task is not None and task.cancelling()):
                raise
            logger.info("action stream dropped on the engine's word; reconnecting")
        except grpc.RpcError as exc:
            await self._on_error(exc, worker_id, batched=limits is not None)
        except Exception:
            logger.exception("action listener broke; reconnecting")
        finally:
            self._call = None
            await channel.close(None)
        return delivered

    async def _on_error(self, exc: grpc.RpcError, worker_id: str, *, batched: bool) -> None:
        code = status_code(exc)
        # An engine without hewer.v1 now (it was replaced by an older one): registering
        # again asks Hello again, and the next stream is ListenV2.
        gone = batched and code == grpc.StatusCode.UNIMPLEMENTED
        if code in REREGISTER_CODES or gone:
            logger.warning(
                "engine does not know worker %s (%s: %s); registering again",
                worker_id,
                code.name if code else "?",
                status_details(exc),
            )
            try:
                await self._reregister()
            except (grpc.RpcError, HewerError) as again:
                logger.warning("registering again failed (%s); will retry", again)
            except Exception:
                logger.exception("registering again failed; will retry")
            return
        logger.warning(
            "action stream failed (%s: %s); reconnecting",
            code.name if code else "?",
            status_details(exc),
        )
