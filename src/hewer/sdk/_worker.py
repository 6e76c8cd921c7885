"""``Worker``: registers workflows, listens for assignments, runs them, stops gracefully.

Lifecycle of ``async_start``: PutWorkflow for each workflow, GetVersion, Hello (does the
engine offer Hewer's batched ``hewer.v1`` calls?), Register, then the action listener (a
task on the loop) and heartbeats (a thread). With ``hewer.v1`` the listener reads batches
of actions and reports go out in batches; without it, the Hatchet calls (ListenV2, one
SendStepActionEvent per report). It returns after a graceful stop: stop listening, let
running tasks finish within the grace period and report, stop heartbeats, Unsubscribe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from hewer import defaults
from hewer.errors import ConfigurationError, HewerError
from hewer.sdk import _wire
from hewer.sdk._connection import TRANSIENT_CODES, status_code, status_details
from hewer.sdk._controls import check_int32, check_port, check_slot_counts
from hewer.sdk._core import ClientCore
from hewer.sdk._health import HealthServer, WorkerHealth, WorkerProbes
from hewer.sdk._heartbeat import Heartbeater
from hewer.sdk._labels import WorkerLabelSet
from hewer.sdk._listener import ActionListener
from hewer.sdk._options import DURABLE_SLOT_TYPE
from hewer.sdk._retry import aio_call_with_retry, translate
from hewer.sdk._runner import Runner
from hewer.sdk._services import WorkerServices
from hewer.sdk._task import StandaloneTask, Task, Workflow
from hewer.sdk._time import Backoff

logger = logging.getLogger(__name__)

REGISTER_BACKOFF = Backoff(initial=0.5, cap=5.0)

REGISTER_TIMEOUT_SECONDS = 30.0
UNSUBSCRIBE_TIMEOUT_SECONDS = 5.0
REGISTRATION_ATTEMPTS = 5
PUT_WORKFLOW_CONCURRENCY = 5
LOG_FLUSH_SECONDS = 2.0


@dataclass(slots=True)
class _HealthRun:
    server: HealthServer
    watch: asyncio.Task[None]

    async def stop(self) -> None:
        self.watch.cancel()
        await asyncio.gather(self.watch, return_exceptions=True)
        await asyncio.to_thread(self.server.stop)


def build_registry(workflows: Sequence[Workflow[Any]]) -> dict[str, Task[Any, Any]]:
    """``{action id: task}``; refuses two tasks that would share an action id."""
    registry: dict[str, Task[Any, Any]] = {}
    for workflow in workflows:
        if not workflow.tasks:
            raise ConfigurationError(f"workflow {workflow.name!r} has no tasks")
        for task in workflow.all_tasks:
            if task.action_id in registry:
                raise ConfigurationError(
                    f"two tasks register the action {task.action_id!r}: "
                    f"{registry[task.action_id]!r} and {task!r}"
                )
            registry[task.action_id] = task
    return registry


def resolve_slot_config(slots: int | None, slot_config: Mapping[str, int] | None) -> dict[str, int]:
    """The worker's slot pools: ``slots`` as the "default" pool (100 if neither it nor
    ``slot_config`` sizes it), plus ``slot_config``'s pools."""
    pools = dict(check_slot_counts(slot_config, "slot_config"))
    if slots is not None:
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ConfigurationError(f"a worker needs at least one slot, got {slots!r}")
        check_int32(slots, "slots")
        configured = pools.get(defaults.DEFAULT_SLOT_TYPE)
        if configured is not None and configured != slots:
            raise ConfigurationError(
                f"slots={slots} and slot_config['default']={configured} disagree; give one"
            )
    pools.setdefault(
        defaults.DEFAULT_SLOT_TYPE, slots if slots is not None else defaults.DEFAULT_SLOTS
    )
    return pools


def check_slot_requests(registry: Mapping[str, Task[Any, Any]], pools: Mapping[str, int]) -> None:
    """Refuse tasks needing a slot type the worker has no pool of; warn about tasks needing
    more units than a pool holds (the engine never places them here, only on bigger
    workers)."""
    for task in registry.values():
        for slot_type, units in task.options.slot_requests.items():
            size = pools.get(slot_type)
            if size is None:
                raise ConfigurationError(
                    f"{task!r} needs {units} {slot_type!r} slot(s), but the worker has no "
                    f"{slot_type!r} pool; add it to slot_config (pools: {dict(pools)})"
                )
            if units > size:
                logger.warning(
                    "%r needs %d %r slots but this worker's pool holds %d; it will only run "
                    "on workers with a bigger pool",
                    task,
                    units,
                    slot_type,
                    size,
                )


class Worker:
    """Runs the tasks of ``workflows`` as the engine assigns them, as many at once as its
    slot pools allow."""

    def __init__(
        self,
        client: ClientCore,
        name: str,
        *,
        slots: int | None = None,
        workflows: Sequence[Workflow[Any] | StandaloneTask[Any, Any]],
        labels: Mapping[str, str | int] | None = None,
        slot_config: Mapping[str, int] | None = None,
        healthcheck_port: int | None = None,
    ) -> None:
        if not name:
            raise ConfigurationError("a worker needs a name")
        self._client = client
        self.client = client
        """The client the worker registers and reports through."""
        self.name = name
        self._labels = WorkerLabelSet(labels)
        self.workflows: list[Workflow[Any]] = [
            w.workflow if isinstance(w, StandaloneTask) else w for w in workflows
        ]
        self._registry = build_registry(self.workflows)
        self.slot_config = resolve_slot_config(slots, slot_config)
        """Size of each slot pool by slot type, as registered."""
        if any(DURABLE_SLOT_TYPE in t.options.slot_requests for t in self._registry.values()):
            self.slot_config.setdefault(DURABLE_SLOT_TYPE, defaults.DEFAULT_DURABLE_SLOTS)
        self.slots = self.slot_config[defaults.DEFAULT_SLOT_TYPE]
        """Size of the "default" slot pool."""
        check_slot_requests(self._registry, self.slot_config)
        self.id: str | None = None
        """Engine id of this worker once registered (changes if it has to register again)."""
        self.engine_limits: _wire.EngineLimits | None = None
        """What the engine answered to ``Hello`` at the last registration; None if it offers
        no ``hewer.v1`` (then the worker uses the Hatchet calls only)."""
        self.ready = threading.Event()
        """Set once the worker listens for assignments; cleared when it stops."""
        self._stop_requested = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._draining = False
        self._signalled = False
        self._running = False
        self._listener: ActionListener | None = None
        self.healthcheck_port = (
            healthcheck_port
            if healthcheck_port is not None
            else client.settings.worker_healthcheck_port
        )
        """Port of the /health and /metrics server (None: off); may be changed before
        ``start()``."""
        if self.healthcheck_port is not None:
            check_port(self.healthcheck_port, "healthcheck_port")
        self.health: WorkerHealth | None = None
        """What the health server reports, while it runs."""
        self.health_port: int | None = None
        """Port the health server listens on, while it runs."""

    @property
    def actions(self) -> list[str]:
        """Action ids this worker registers."""
        return list(self._registry)

    @property
    def labels(self) -> dict[str, str | int]:
        """A copy of the worker's labels (as registered and upserted since)."""
        return self._labels.labels

    # --- labels --------------------------------------------------------------------------

    def upsert_labels(self, labels: Mapping[str, str | int]) -> None:
        """Add or change labels of this worker, from any thread (blocking while the engine is
        told). Before the worker registers they are simply kept and sent at registration;
        they survive re-registrations. Raises HewerError if the running worker cannot tell
        the engine (the labels are kept and go out with the next registration)."""
        self._labels.upsert(labels)

    async def aio_upsert_labels(self, labels: Mapping[str, str | int]) -> None:
        """``upsert_labels`` without blocking the event loop."""
        await asyncio.to_thread(self._labels.upsert, labels)

    # --- public lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Run the worker, blocking until it has stopped gracefully (SIGTERM/SIGINT/stop())."""
        asyncio.run(self.async_start())

    async def async_start(self) -> None:
        """Run the worker inside the running loop until it has stopped gracefully."""
        if self._running:
            raise HewerError(f"worker {self.name!r} is already running")
        self._running = True
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_event = asyncio.Event()
        if self._stop_requested.is_set():
            self._stop_event.set()
        installed = self._install_signal_handlers(loop)
        try:
            await self._run()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            self.ready.clear()
            self._loop = None
            self._stop_event = None
            self._listener = None
            self._running = False

    def stop(self) -> None:
        """Ask the worker to stop gracefully; safe from any thread, returns at once."""
        self._stop_requested.set()
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None:
            # A closed loop means the worker is done anyway.
            with contextlib.suppress(RuntimeError):
                if self._listener is not None:
                    # The stream goes first, so that the engine offers nothing more.
                    loop.call_soon_threadsafe(self._listener.stop_listening)
                loop.call_soon_threadsafe(event.set)

    # --- signals -------------------------------------------------------------------------

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        # Only the main thread may own signal handlers; a worker run from another thread
        # (tests, embedding) is stopped with stop().
        if threading.current_thread() is not threading.main_thread():
            return []
        installed: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            installed.append(sig)
        return installed

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._signalled:
            logger.warning("second %s: exiting now, abandoning running tasks", name)
            os._exit(1)
        self._signalled = True
        logger.info("received %s: stopping gracefully (send it again to exit at once)", name)
        self.stop()

    # --- the run -------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._stop_event is not None
        settings = self._client.settings
        connection = self._client.connection
        logger.info(
            "starting worker '%s' (slots %s) against the engine at %s",
            self._client.namespaced(self.name),
            self.slot_config,
            connection.address,
        )
        services = WorkerServices(
            connection, self._client.clock, self._labels, worker_id=self._current_id
        )
        services.open()
        runner = Runner(
            registry=self._registry,
            services=services,
            # One thread per slot unit of every pool: a task never waits for a thread.
            slots=sum(self.slot_config.values()),
            max_message_bytes=settings.max_message_bytes,
            engine=lambda: self.engine_limits,
        )
        loop = asyncio.get_running_loop()
        listener = self._listener = ActionListener(
            connection,
            worker_id=self._current_id,
            engine=lambda: self.engine_limits,
            reregister=lambda: self._register_all(services),
            on_action=runner.handle,
            on_listening=lambda worker_id, again: self._on_listening(worker_id, again, beats),
            clock=self._client.clock,
            running=runner.attempts,
            settle_seconds=min(1.0, settings.heartbeat_interval.total_seconds()),
        )

        def stream_lost(since: float) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed: shutting down
                loop.call_soon_threadsafe(listener.request_reconnect, since)

        beats = Heartbeater(
            connection,
            worker_id=lambda: self.id,
            interval=settings.heartbeat_interval,
            on_stream_lost=stream_lost,
            draining=lambda: self._draining,
            clock=self._client.clock,
        )
        listen_task: asyncio.Task[None] | None = None
        self._draining = False
        health: _HealthRun | None = None
        try:
            health = self._start_health(runner, listener, beats)
            if not await self._register_until_reachable(services):
                return
            listen_task = asyncio.create_task(listener.run(), name="hewer-listener")
            stop_wait = asyncio.create_task(self._stop_event.wait(), name="hewer-stop-wait")
            await asyncio.wait({listen_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            if listen_task.done() and not listen_task.cancelled():
                # run() only returns by cancellation; anything else is a bug worth shouting.
                logger.error("action listener ended unexpectedly: %r", listen_task.exception())
            logger.info("worker %s stopping: no new tasks; %d running", self.name, runner.running)
            self._draining = True
            listen_task.cancel()
            await asyncio.gather(listen_task, return_exceptions=True)
            await runner.drain(settings.grace_period.total_seconds())
        finally:
            if listen_task is not None and not listen_task.done():
                listen_task.cancel()
                await asyncio.gather(listen_task, return_exceptions=True)
            # May wait for an upsert in flight; the channel it uses closes below.
            await asyncio.to_thread(self._labels.disconnect)
            await asyncio.to_thread(beats.stop)
            if self.id is not None:
                await self._unsubscribe(services)
            await asyncio.to_thread(services.close_logs, LOG_FLUSH_SECONDS)
            await services.aclose()
            runner.shutdown()
            if health is not None:
                await health.stop()
                self.health_port = None
            logger.info("worker %s stopped", self.name)

    def _start_health(
        self, runner: Runner, listener: ActionListener, beats: Heartbeater
    ) -> _HealthRun | None:
        if self.healthcheck_port is None:
            return None
        settings = self._client.settings
        probes = WorkerProbes(
            listening=lambda: listener.listening,
            heartbeats=lambda: (beats.sent, beats.last_ok),
            draining=lambda: self._draining,
            used_slots=runner.used_slots,
        )
        health = self.health = WorkerHealth(
            self.slot_config,
            probes,
            loop_threshold=settings.worker_healthcheck_loop_threshold.total_seconds(),
        )
        runner.on_finished = health.finished
        try:
            server = HealthServer(health, settings.worker_healthcheck_host, self.healthcheck_port)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve health checks on {settings.worker_healthcheck_host}:"
                f"{self.healthcheck_port}: {exc}"
            ) from exc
        server.start()
        self.health_port = server.port
        watch = asyncio.create_task(health.watch_loop(), name="hewer-loop-probe")
        return _HealthRun(server, watch)

    def _current_id(self) -> str:
        assert self.id is not None, "worker not registered"
        return self.id

    def _on_listening(self, worker_id: str, again: bool, beats: Heartbeater) -> None:
        if again:
            logger.info("action listener reconnected: %s", worker_id)
        else:
            logger.info("acquired action listener: %s", worker_id)
        # Heartbeats start with the first stream: before it the engine would only answer
        # that the worker has no stream.
        beats.start()
        self.ready.set()

    async def _register_until_reachable(self, services: WorkerServices) -> bool:
        """Register, waiting (with backoff) for as long as the engine is unreachable; a worker
        started before its engine simply waits. False if stopped before registering."""
        stop = self._stop_event
        assert stop is not None
        attempt = 0
        while not stop.is_set():
            try:
                await self._register_all(services)
                return not stop.is_set()
            except HewerError as exc:
                cause = exc.__cause__
                if not (isinstance(cause, grpc.RpcError) and status_code(cause) in TRANSIENT_CODES):
                    raise
                delay = REGISTER_BACKOFF.delay(attempt)
                attempt += 1
                logger.warning("engine not reachable (%s); retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        return False

    async def _register_all(self, services: WorkerServices) -> None:
        """PutWorkflow for every workflow, GetVersion, then Register (sets ``self.id``)."""
        limit = asyncio.Semaphore(PUT_WORKFLOW_CONCURRENCY)

        async def put(workflow: Workflow[Any]) -> None:
            async with limit:
                request = workflow.put_request()
                await self._call(
                    services,
                    lambda: services.aio_admin.PutWorkflow(
                        request, metadata=services.metadata, timeout=REGISTER_TIMEOUT_SECONDS
                    ),
                    f"register workflow {workflow.namespaced_name!r}",
                )

        await asyncio.gather(*(put(w) for w in self.workflows))
        await self._engine_version(services)
        self.engine_limits = await self._hello(services)
        worker_name = self._client.namespaced(self.name)
        labels, version = self._labels.snapshot()
        request = _wire.register_request(worker_name, self.actions, self.slot_config, labels)
        response = await self._call(
            services,
            lambda: services.aio_dispatcher.Register(
                request, metadata=services.metadata, timeout=REGISTER_TIMEOUT_SECONDS
            ),
            f"register worker {worker_name!r}",
        )
        worker_id = self.id = str(response.worker_id)
        # Upserts from now on go to the engine under this id; any that landed while Register
        # was in flight are sent now.
        await asyncio.to_thread(
            self._labels.connect,
            lambda changed: services.send_worker_labels(worker_id, changed),
            version,
        )
        logger.info("'%s' waiting for %s", worker_name, self.actions)

    async def _call(self, services: WorkerServices, call: Any, what: str) -> Any:
        try:
            return await aio_call_with_retry(
                call,
                what=what,
                retry_codes=TRANSIENT_CODES,
                attempts=REGISTRATION_ATTEMPTS,
                clock=services.clock,
            )
        except grpc.RpcError as exc:
            raise translate(exc, what) from exc

    async def _engine_version(self, services: WorkerServices) -> str | None:
        try:
            response = await aio_call_with_retry(
                lambda: services.aio_dispatcher.GetVersion(
                    _wire.get_version_request(),
                    metadata=services.metadata,
                    timeout=REGISTER_TIMEOUT_SECONDS,
                ),
                what="get engine version",
                retry_codes=TRANSIENT_CODES,
                attempts=3,
                clock=services.clock,
            )
        except grpc.RpcError as exc:
            logger.debug("engine version unknown: %s", status_code(exc))
            return None
        version = str(response.version)
        logger.debug("engine version %s", version)
        return version

    async def _hello(self, services: WorkerServices) -> _wire.EngineLimits | None:
        """``hewer.v1.Worker/Hello``: the engine's batch limits, or None if it does not answer
        (an engine without ``hewer.v1`` says UNIMPLEMENTED): then the Hatchet calls."""
        try:
            response = await aio_call_with_retry(
                lambda: services.aio_hewer_worker.Hello(
                    _wire.hello_request(),
                    metadata=services.metadata,
                    timeout=REGISTER_TIMEOUT_SECONDS,
                ),
                what="hello",
                retry_codes=TRANSIENT_CODES,
                attempts=3,
                clock=services.clock,
            )
        except grpc.RpcError as exc:
            code = status_code(exc)
            logger.info(
                "engine offers no batched calls (%s); using the Hatchet calls",
                code.name if code else "?",
            )
            return None
        limits = _wire.EngineLimits.from_proto(response)
        logger.debug("engine offers hewer.v1: %s", limits)
        return limits

    async def _unsubscribe(self, services: WorkerServices) -> None:
        assert self.id is not None
        try:
            await services.aio_dispatcher.Unsubscribe(
                _wire.unsubscribe_request(self.id),
                metadata=services.metadata,
                timeout=UNSUBSCRIBE_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as exc:
            logger.warning(
                "unsubscribe of worker %s failed: %s %s",
                self.id,
                status_code(exc),
                status_details(exc),
            )

    def __repr__(self) -> str:
        return f"<Worker {self.name} id={self.id} slots={self.slot_config}>"
