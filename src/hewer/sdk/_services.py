"""The worker's own engine connection, and the side calls tasks make through ``Context``.

Log lines go out from a background thread so ``ctx.log`` never blocks a task and never
fails it; the other side calls are made where they are called from (blocking from sync
tasks, awaited from async ones) and their errors are logged, not raised.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import grpc.aio

from hewer.sdk import _wire
from hewer.sdk._connection import TRANSIENT_CODES, Connection, status_code
from hewer.sdk._controls import LabelValue
from hewer.sdk._durable import DurableStream
from hewer.sdk._labels import WorkerLabelSet
from hewer.sdk._retry import call_with_retry, translate
from hewer.sdk._time import Clock

logger = logging.getLogger(__name__)

LOG_QUEUE_SIZE = 1000
SIDE_CALL_TIMEOUT_SECONDS = 10.0
LABEL_CALL_ATTEMPTS = 3
_STOP = object()


class WorkerServices:
    """Channels and stubs of one running worker; implements ``TaskServices``."""

    def __init__(
        self,
        connection: Connection,
        clock: Clock,
        labels: WorkerLabelSet | None = None,
        *,
        worker_id: Callable[[], str] | None = None,
    ) -> None:
        self.connection = connection
        self._worker_id = worker_id
        self._durable: DurableStream | None = None
        self.clock = clock
        self.labels = labels if labels is not None else WorkerLabelSet()
        self.metadata = connection.metadata
        self._sync_channel: grpc.Channel | None = None
        self._aio_channel: grpc.aio.Channel | None = None
        # Stubs on the asyncio channel, made once (building one per call costs more than
        # the call's own Python overhead).
        self._aio_stubs: dict[str, Any] = {}
        self._logs: queue.Queue[Any] = queue.Queue(maxsize=LOG_QUEUE_SIZE)
        self._log_thread: threading.Thread | None = None
        self._dropped_logs = 0
        # Called once a task gave its slot back: the runner makes room for one more thread,
        # since the engine may now send a task while the releasing body still runs.
        self.on_slot_released: Callable[[], None] | None = None

    def open(self) -> None:
        """Create the channels (inside the worker's running loop) and the log sender."""
        self._aio_channel = self.connection.aio_channel()
        self._aio_stubs = {
            "dispatcher": _wire.dispatcher_stub(self._aio_channel),
            "admin": _wire.admin_stub(self._aio_channel),
            "events": _wire.events_stub(self._aio_channel),
            "hewer_worker": _wire.hewer_worker_stub(self._aio_channel),
            "durable": _wire.durable_stub(self._aio_channel),
        }
        self._sync_channel = self.connection.sync_channel()
        self._log_thread = threading.Thread(target=self._send_logs, name="hewer-logs", daemon=True)
        self._log_thread.start()

    def _aio_stub(self, name: str) -> Any:
        assert self._aio_channel is not None, "services not open"
        return self._aio_stubs[name]

    @property
    def aio_dispatcher(self) -> Any:
        """``Dispatcher`` stub on the worker's asyncio channel."""
        return self._aio_stub("dispatcher")

    @property
    def aio_admin(self) -> Any:
        """``v1.AdminService`` stub on the worker's asyncio channel."""
        return self._aio_stub("admin")

    @property
    def aio_events(self) -> Any:
        """``EventsService`` stub on the worker's asyncio channel."""
        return self._aio_stub("events")

    @property
    def aio_hewer_worker(self) -> Any:
        """``hewer.v1.Worker`` stub on the worker's asyncio channel."""
        return self._aio_stub("hewer_worker")

    async def report(self, request: Any, deadline: float) -> Any:
        """One ``hewer.v1.Worker/Report`` call (a ``ReportBatch``), with a deadline of
        ``deadline`` seconds; returns its results.

        Uncompressed: a batch of reports is small next to what gzip costs per message."""
        return await self.aio_hewer_worker.Report(
            request,
            metadata=self.metadata,
            timeout=deadline,
            compression=grpc.Compression.NoCompression,
        )

    @property
    def _sync(self) -> grpc.Channel:
        assert self._sync_channel is not None, "services not open"
        return self._sync_channel

    def close_logs(self, timeout: float) -> None:
        """Stop the log sender after it sent what is queued (blocking, at most ``timeout``)."""
        thread, self._log_thread = self._log_thread, None
        if thread is None:
            return
        try:
            self._logs.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        thread.join(timeout)

    def durable_stream(self) -> DurableStream:
        """The worker's durable task stream (opened when a durable task first uses it)."""
        if self._durable is None:
            worker_id = self._worker_id
            if worker_id is None:
                raise RuntimeError("these services belong to no worker")
            self._durable = DurableStream(
                lambda: self._aio_stub("durable"), self.metadata, worker_id
            )
        return self._durable

    async def aclose(self) -> None:
        """Close the durable stream and the channels."""
        if self._durable is not None:
            await self._durable.close()
            self._durable = None
        if self._aio_channel is not None:
            await self._aio_channel.close(None)
            self._aio_channel = None
            self._aio_stubs = {}
        if self._sync_channel is not None:
            self._sync_channel.close()
            self._sync_channel = None

    # --- TaskServices --------------------------------------------------------------------

    def put_log(self, action: _wire.Action, message: str, level: str) -> None:
        item = (action.task_run_external_id, action.retry_count, message, level, self.clock.now())
        try:
            self._logs.put_nowait(item)
        except queue.Full:
            self._dropped_logs += 1
            if self._dropped_logs in (1, 100) or self._dropped_logs % 10_000 == 0:
                logger.warning("task log queue full; %d lines dropped so far", self._dropped_logs)

    def _send_logs(self) -> None:
        stub = _wire.events_stub(self._sync)
        while (item := self._logs.get()) is not _STOP:
            run_id, retry_count, message, level, at = item
            request = _wire.put_log_request(run_id, message, at, level, retry_count)
            try:
                stub.PutLog(request, metadata=self.metadata, timeout=SIDE_CALL_TIMEOUT_SECONDS)
            except grpc.RpcError as exc:
                # Logs are best-effort; a task must not fail or stall because of them.
                logger.debug("PutLog failed: %s", status_code(exc))
            except Exception:
                logger.debug("PutLog failed", exc_info=True)

    def put_stream(self, action: _wire.Action, data: bytes, index: int) -> None:
        request = _wire.put_stream_request(
            action.task_run_external_id, data, self.clock.now(), index
        )
        try:
            _wire.events_stub(self._sync).PutStreamEvent(
                request, metadata=self.metadata, timeout=SIDE_CALL_TIMEOUT_SECONDS
            )
        except grpc.RpcError as exc:
            logger.warning("put_stream failed for %s: %s", action.task_run_external_id, exc)

    async def aio_put_stream(self, action: _wire.Action, data: bytes, index: int) -> None:
        request = _wire.put_stream_request(
            action.task_run_external_id, data, self.clock.now(), index
        )
        try:
            await self.aio_events.PutStreamEvent(
                request, metadata=self.metadata, timeout=SIDE_CALL_TIMEOUT_SECONDS
            )
        except grpc.RpcError as exc:
            logger.warning("put_stream failed for %s: %s", action.task_run_external_id, exc)

    def refresh_timeout(self, action: _wire.Action, increment: str) -> None:
        request = _wire.refresh_timeout_request(action.task_run_external_id, increment)
        try:
            _wire.dispatcher_stub(self._sync).RefreshTimeout(
                request, metadata=self.metadata, timeout=SIDE_CALL_TIMEOUT_SECONDS
            )
        except grpc.RpcError as exc:
            logger.warning("refresh_timeout failed for %s: %s", action.task_run_external_id, exc)

    async def aio_refresh_timeout(self, action: _wire.Action, increment: str) -> None:
        request = _wire.refresh_timeout_request(action.task_run_external_id, increment)
        try:
            await self.aio_dispatcher.RefreshTimeout(
                request, metadata=self.metadata, timeout=SIDE_CALL_TIMEOUT_SECONDS
            )
        except grpc.RpcError as exc:
            logger.warning("refresh_timeout failed for %s: %s", action.task_run_external_id, exc)

    def release_slot(self, action: _wire.Action) -> None:
        request = _wire.release_slot_request(action.task_run_external_id)
        # Room for one more thread first: the engine may send the next task as soon as it
        # has committed the release, before its answer reaches us.
        self._slot_released()
        try:
            _wire.dispatcher_stub(self._sync).ReleaseSlot(
                request, metadata=self.metadata, timeout=SIDE_CALL_TIMEOUT_SECONDS
            )
        except grpc.RpcError as exc:
            logger.warning("release_slot failed for %s: %s", action.task_run_external_id, exc)

    def _slot_released(self) -> None:
        if self.on_slot_released is not None:
            self.on_slot_released()

    async def aio_release_slot(self, action: _wire.Action) -> None:
        request = _wire.release_slot_request(action.task_run_external_id)
        self._slot_released()
        try:
            await self.aio_dispatcher.ReleaseSlot(
                request, metadata=self.metadata, timeout=SIDE_CALL_TIMEOUT_SECONDS
            )
        except grpc.RpcError as exc:
            logger.warning("release_slot failed for %s: %s", action.task_run_external_id, exc)

    def upsert_worker_labels(self, labels: Mapping[str, str | int]) -> None:
        self.labels.upsert(labels)

    def worker_labels(self) -> dict[str, str | int]:
        return self.labels.labels

    # --- worker calls --------------------------------------------------------------------

    def send_worker_labels(self, worker_id: str, labels: Mapping[str, LabelValue]) -> None:
        """``Dispatcher/UpsertWorkerLabels`` (blocking); raises HewerError on failure."""
        request = _wire.upsert_labels_request(worker_id, labels)
        stub = _wire.dispatcher_stub(self._sync)
        what = f"upsert labels of worker {worker_id}"
        try:
            # Setting labels is idempotent, so a transient failure may be repeated.
            call_with_retry(
                lambda: stub.UpsertWorkerLabels(
                    request, metadata=self.metadata, timeout=SIDE_CALL_TIMEOUT_SECONDS
                ),
                what=what,
                retry_codes=TRANSIENT_CODES,
                attempts=LABEL_CALL_ATTEMPTS,
                clock=self.clock,
            )
        except grpc.RpcError as exc:
            raise translate(exc, what) from exc
