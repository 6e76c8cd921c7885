"""Driver for the Hewer rows: ``hewer engine`` on SQLite, with a worker of our SDK
(``--variant hewer``) or of the unmodified hatchet-sdk (``--variant hatchet``), or on
PostgreSQL (a scratch database on ``--pg-dsn``) with a worker of our SDK
(``--variant hewer-pg``; ``hewer-pg-2r``: two replicas, worker and client on the one that
relays).

Both rows trigger and wait through the Hewer SDK's async client, so they differ only in
the worker. Run by ``bench/compare.py``; writes an ``Outcome`` as JSON to ``--out``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bench.harness.common import (
    KILL_AFTER_SECONDS,
    Child,
    Children,
    Outcome,
    Sizes,
    Timeout,
    await_until,
    driver_args,
    exit_on_sigterm,
    log,
    own_cpu_seconds,
    percentile,
    rate,
    read_marks,
    recording,
    sizes_from,
    version_of,
    wait_until,
    with_scratch_database,
)

T = TypeVar("T")


class Setup:
    """The engine and how to start workers against it."""

    def __init__(
        self,
        children: Children,
        workdir: Path,
        variant: str,
        sizes: Sizes,
        database_url: str | None = None,
        replicas: int = 1,
    ) -> None:
        self.children = children
        self.replicas = replicas
        self.relay: Child | None = None
        self.workdir = workdir
        self.variant = variant
        self.sizes = sizes
        self.state = workdir / "state"
        self.marks = workdir / "marks"
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith(("HEWER_", "HATCHET_"))
        }
        self.env = dict(
            inherited,  # engine defaults, whatever the caller's shell has set
            HEWER_STATE_DIR=str(self.state),
            HEWER_DATABASE=str(workdir / "hewer.db"),
            HEWER_PORT="0",
            HEWER_API_PORT="0",
            BENCH_SLOTS=str(sizes.slots),
            BENCH_MARKS=str(self.marks),
            PYTHONUNBUFFERED="1",
        )
        if database_url:
            self.env["HEWER_DATABASE_URL"] = database_url
        self.engine: Child | None = None
        self.token = ""
        self.address = ""
        self.workers = 0

    def start_engine(self) -> Child:
        """The engine (with ``replicas=2``, a second one over the same database after it:
        the first schedules, the second relays; workers and the client use the second)."""
        engine, self.token, self.address = self._start_one("engine", self.state)
        if self.replicas == 2:
            self.relay, self.token, self.address = self._start_one(
                "engine-relay", self.workdir / "state-relay"
            )
        # The driver's own client (bench.app's Hewer) finds the engine through its token.
        os.environ.update(HEWER_STATE_DIR=str(self.state), HEWER_TOKEN=self.token)
        os.environ.update(HEWER_HOST_PORT=self.address)
        self.env.update(HEWER_STATE_DIR=str(self.state), HEWER_TOKEN=self.token)
        self.env.update(HEWER_HOST_PORT=self.address)
        self.engine = engine
        return engine

    def engine_cpu_seconds(self) -> float:
        engines = [e for e in (self.engine, self.relay) if e is not None]
        return sum(e.cpu_seconds() for e in engines)

    def _start_one(self, name: str, state: Path) -> tuple[Child, str, str]:
        env = dict(self.env, HEWER_STATE_DIR=str(state))
        env.pop("HEWER_TOKEN", None)
        env.pop("HEWER_HOST_PORT", None)
        engine = self.children.start(
            name, [sys.executable, "-m", "hewer", "engine", "--log-level", "warning"], env
        )
        token_file = state / "token"

        def token_ready() -> tuple[str, str] | None:
            engine.check_alive()
            try:
                token = token_file.read_text().strip()
                payload = token.split(".")[1]
                claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
                return token, str(claims["grpc_broadcast_address"])
            except (OSError, IndexError, ValueError, KeyError):
                return None

        token, address = wait_until(token_ready, 60, f"the {name}'s token file")
        host, port = address.rsplit(":", 1)

        def listening() -> bool:
            engine.check_alive()
            try:
                with socket.create_connection((host, int(port)), timeout=1):
                    return True
            except OSError:
                return False

        wait_until(listening, 30, f"the {name} to listen on {address}")
        return engine, token, address

    def start_worker(self) -> Child:
        self.workers += 1
        name = f"worker-{self.workers}"
        if self.variant == "hatchet":
            env = {k: v for k, v in self.env.items() if not k.startswith("HATCHET_")}
            env.update(
                HATCHET_CLIENT_TOKEN=self.token,
                HATCHET_CLIENT_HOST_PORT=self.address,
                HATCHET_CLIENT_TLS_STRATEGY="none",
            )
            argv = [sys.executable, "-m", "bench.harness.hatchet_worker"]
            return self.children.start(name, argv, env)
        argv = [sys.executable, "-m", "hewer", "worker", "start", "bench.app:make_worker"]
        return self.children.start(name, [*argv, "--log-level", "warning"], self.env)


async def watched(aw: Awaitable[T], children: Sequence[Child], within: float, what: str) -> T:
    """Await ``aw`` while checking that ``children`` stay alive, with a deadline."""
    task = asyncio.ensure_future(aw)
    deadline = time.monotonic() + within
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.2)
            if done:
                return task.result()
            for child in children:
                child.check_alive()
            if time.monotonic() > deadline:
                raise Timeout(f"timed out after {within:.0f}s waiting for {what}")
    finally:
        if not task.done():
            task.cancel()


async def run(setup: Setup, outcome: Outcome) -> None:
    sizes = setup.sizes
    engine = setup.start_engine()
    from bench import app  # after the engine is up: its client reads the environment
    from hewer import NotFound

    log(f"{outcome.label}: engine up on {setup.address}; warm-up worker")

    # Warm-up: a worker registers the tasks (W1 queues before any worker runs), one run
    # goes through, then it leaves.
    warm = setup.start_worker()

    async def registered() -> bool:
        warm.check_alive()
        try:
            await asyncio.wait_for(app.anoop.aio_run(app.Tick(n=-1)), 30)
            return True
        except NotFound:
            return False

    await await_until(registered, 120, "the warm-up run", interval=0.1)
    warm.stop(grace=30)

    worker: Child | None = None
    if "w1" in sizes.workloads:
        log(f"{outcome.label}: W1 bulk enqueue of {sizes.tasks}")
        inputs = [app.Tick(n=i) for i in range(sizes.tasks)]
        began = time.perf_counter()
        refs: list[Any] = []
        for i in range(0, len(inputs), sizes.bulk_chunk):
            refs.extend(await app.anoop.aio_run_many_no_wait(inputs[i : i + sizes.bulk_chunk]))
        outcome.bulk_per_s = rate(len(refs), time.perf_counter() - began)

        log(f"{outcome.label}: W1 drain with one worker of {sizes.slots} slots")
        cpu_before, client_before = setup.engine_cpu_seconds(), own_cpu_seconds()
        worker = setup.start_worker()
        results = await watched(
            asyncio.gather(*(ref.aio_result() for ref in refs)),
            [engine, worker],
            max(300.0, sizes.tasks / 10),
            "the W1 drain",
        )
        elapsed = time.perf_counter() - worker.started
        outcome.engine_cpu_us = (setup.engine_cpu_seconds() - cpu_before) / sizes.tasks * 1e6
        outcome.worker_cpu_us = worker.cpu_seconds() / sizes.tasks * 1e6
        outcome.client_cpu_us = (own_cpu_seconds() - client_before) / sizes.tasks * 1e6
        assert len(results) == sizes.tasks and all("started" in r for r in results)
        outcome.w1_seconds = elapsed
        outcome.w1_tasks_per_s = rate(sizes.tasks, elapsed)
        log(f"{outcome.label}: W1 {outcome.w1_tasks_per_s:.0f} tasks/s")

    if worker is None:
        worker = setup.start_worker()
        await watched(app.anoop.aio_run(app.Tick(n=-2)), [engine, worker], 120, "a first run")

    if "w2" in sizes.workloads:
        count = int(sizes.w2_rate * sizes.w2_seconds)
        log(f"{outcome.label}: W2 {count} tasks at {sizes.w2_rate:.0f}/s")
        sent: list[tuple[float, Any]] = []
        interval = 1.0 / sizes.w2_rate
        next_at = time.perf_counter()
        for i in range(count):
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            at = time.time()
            sent.append((at, await app.anoop.aio_run_no_wait(app.Tick(n=i))))
            next_at += interval
        outputs = await watched(
            asyncio.gather(*(ref.aio_result() for _, ref in sent)), [engine, worker], 120, "W2"
        )
        ms = [(out["started"] - at) * 1000 for (at, _), out in zip(sent, outputs, strict=True)]
        outcome.w2_p50_ms, outcome.w2_p99_ms = percentile(ms, 50), percentile(ms, 99)
        outcome.w2_count = count

    if "w2r" in sizes.workloads:
        log(f"{outcome.label}: W2r {sizes.w2r_count} sequential round trips")
        trips: list[float] = []
        for i in range(sizes.w2r_count):
            began = time.perf_counter()
            await watched(app.anoop.aio_run(app.Tick(n=i)), [engine, worker], 60, "W2r")
            trips.append((time.perf_counter() - began) * 1000)
        outcome.w2r_p50_ms, outcome.w2r_p99_ms = percentile(trips, 50), percentile(trips, 99)

    if "w3" in sizes.workloads:
        await w3(setup, outcome, worker)


async def w3(setup: Setup, outcome: Outcome, worker: Child) -> None:
    from bench import app

    log(f"{outcome.label}: W3 kill the worker {KILL_AFTER_SECONDS:.0f}s into a slow task")
    await app.slow.aio_run_no_wait(app.Tick(n=0))

    async def first_start() -> float | None:
        worker.check_alive()
        marks = read_marks(setup.marks)
        return marks[0][0] if marks else None

    started = await await_until(first_start, 60, "the slow task to start")
    await asyncio.sleep(max(0.0, started + KILL_AFTER_SECONDS - time.time()))
    killed_at = time.time()
    worker.kill()
    replacement = setup.start_worker()

    async def rerun() -> float | None:
        replacement.check_alive()
        marks = read_marks(setup.marks)
        return marks[1][0] if len(marks) > 1 else None

    try:
        rerun_at = await await_until(rerun, setup.sizes.w3_deadline, "the re-run", interval=0.05)
        outcome.w3_seconds = rerun_at - killed_at
        log(f"{outcome.label}: W3 re-run {outcome.w3_seconds:.1f}s after the kill")
    except Timeout:
        outcome.w3_note = f"no re-run within {setup.sizes.w3_deadline:.0f}s"


VARIANTS = {
    # variant: (row label, store, worker)
    "hewer": ("Hewer, Hewer SDK worker", "SQLite, durable", "hewer"),
    "hatchet": ("Hewer, hatchet-sdk worker", "SQLite, durable", "hatchet"),
    "hewer-pg": ("Hewer on PostgreSQL, Hewer SDK worker", "PostgreSQL, durable", "hewer"),
    "hewer-pg-2r": (
        "Hewer on PostgreSQL, 2 replicas, worker and client on the relaying one",
        "PostgreSQL, durable",
        "hewer",
    ),
}


def main() -> None:
    exit_on_sigterm()
    args = driver_args(__doc__.splitlines()[0])
    sizes = sizes_from(args)
    variant = args.variant or "hewer"
    if variant not in VARIANTS:
        sys.exit(f"unknown variant {variant!r}")
    label, store, worker = VARIANTS[variant]
    outcome = Outcome(system=variant, label=label, store=store)
    worker_kind = (
        "Hewer SDK worker (`hewer worker start`)"
        if worker == "hewer"
        else "unmodified hatchet-sdk 1.43.1 worker"
    )
    engine_kind = (
        "PostgreSQL, a scratch database, server as found"
        if variant.startswith("hewer-pg")
        else "SQLite WAL, synchronous=FULL"
    )
    outcome.settings = [
        f"engine defaults ({engine_kind}); {worker_kind}, slots={sizes.slots}, async no-op",
        "client: Hewer SDK, async (aio_run_many_no_wait 1,000 a call, aio_run_no_wait, "
        "aio_run); W1 done = every run's result received over the results stream",
        "W3: killed worker's task re-queued after HEWER_INACTIVE_AFTER (default 30s)",
    ]
    outcome.versions = version_of("hewer", *(["hatchet-sdk"] if worker == "hatchet" else []))
    with recording(outcome, args.out), Children(args.workdir) as children:
        if not variant.startswith("hewer-pg"):
            asyncio.run(run(Setup(children, args.workdir, worker, sizes), outcome))
            return
        replicas = 2 if variant == "hewer-pg-2r" else 1

        async def go(dsn: str, _admin: Any) -> None:
            await run(Setup(children, args.workdir, worker, sizes, dsn, replicas), outcome)

        asyncio.run(with_scratch_database(args.pg_dsn, "bench_hewer", go))


if __name__ == "__main__":
    main()
