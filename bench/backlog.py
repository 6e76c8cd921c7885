"""Engine memory and drain rate as the backlog grows: queue up to a million tasks.

    python bench/backlog.py [--tasks 1000000] [--sample 20000] [--slots 8]

Starts a real engine (SQLite in a temporary directory), queues ``--tasks`` no-op tasks in
bulk (1,000 per call) and prints the engine's resident memory (RSS) at each checkpoint
(100k, 250k, 500k, 1M queued). Then a worker of ``--slots`` slots starts and the time
until the ``--sample``-th task (queue order is FIFO) has finished gives the drain rate at
that backlog. The same drain is measured on a fresh engine with only ``--sample`` tasks
queued, for the ratio. No assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = (20_000, 100_000, 250_000, 500_000, 1_000_000)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Engine:
    def __init__(self, work: Path, slots: int) -> None:
        self.work = work
        self.env = dict(
            {k: v for k, v in os.environ.items() if not k.startswith("HEWER_")},
            HEWER_STATE_DIR=str(work / "state"),
            HEWER_DATABASE=str(work / "bench.db"),
            HEWER_PORT="0",
            HEWER_API_PORT="0",
            BENCH_SLOTS=str(slots),
            PYTHONPATH=str(REPO),
        )
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        engine = subprocess.Popen(
            [sys.executable, "-m", "hewer", "engine", "--log-level", "warning"],
            env=self.env,
            **quiet,
        )
        self.procs.append(engine)
        token = self.work / "state" / "token"
        deadline = time.monotonic() + 60
        while not token.exists():
            if time.monotonic() > deadline or engine.poll() is not None:
                raise SystemExit("engine did not start")
            time.sleep(0.05)
        os.environ.update(self.env)
        return engine

    def worker(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hewer", "worker", "start", "bench.app:make_worker"],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


async def queue(app: Any, count: int, engine_pid: int, report: bool) -> list[Any]:
    refs: list[Any] = []
    started = time.perf_counter()
    marks = [c for c in CHECKPOINTS if c <= count] if report else []
    while len(refs) < count:
        n = min(1000, count - len(refs))
        refs.extend(
            await app.anoop.aio_run_many_no_wait([app.Tick(n=len(refs) + i) for i in range(n)])
        )
        if marks and len(refs) >= marks[0]:
            elapsed = time.perf_counter() - started
            print(
                f"  queued {marks.pop(0):>9,}: engine RSS {rss_mb(engine_pid):7.1f} MB "
                f"({len(refs) / elapsed:,.0f} runs/s so far)",
                flush=True,
            )
    return refs


async def drain(engine: Engine, refs: list[Any], sample: int) -> float:
    """Seconds from the worker's start until the sample-th task has finished."""
    began = time.perf_counter()
    engine.worker()
    await refs[sample - 1].aio_result()
    return time.perf_counter() - began


async def measure(args: argparse.Namespace, count: int, report: bool) -> tuple[float, float]:
    work = Path(tempfile.mkdtemp(prefix="hewer-backlog-"))
    engine = Engine(work, args.slots)
    try:
        proc = engine.start()
        sys.path.insert(0, str(REPO))
        from bench import app

        # A client for this engine (the module's client reads the address at import).
        app = importlib.reload(app)
        warm = engine.worker()
        await _ready(app)
        warm.send_signal(signal.SIGTERM)
        warm.wait(timeout=60)
        refs = await queue(app, count, proc.pid, report)
        seconds = await drain(engine, refs, args.sample)
        return args.sample / seconds, rss_mb(proc.pid)
    finally:
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)


async def _ready(app: Any) -> None:
    from hewer import NotFound

    deadline = time.monotonic() + 60
    while True:
        try:
            await app.anoop.aio_run(app.Tick(n=-1))
            return
        except NotFound:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def main(args: argparse.Namespace) -> None:
    print(f"backlog bench: up to {args.tasks:,} queued no-op tasks, 1 worker x {args.slots} slots")
    small_rate, small_rss = await measure(args, args.sample, report=False)
    print(f"  {args.sample:,} queued: drain {small_rate:,.0f} tasks/s, RSS {small_rss:.1f} MB")
    big_rate, big_rss = await measure(args, args.tasks, report=True)
    print(
        f"  {args.tasks:,} queued: drain of the first {args.sample:,} {big_rate:,.0f} tasks/s "
        f"({big_rate / small_rate:.2f}x the rate at {args.sample:,}), RSS after {big_rss:.1f} MB"
    )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=20_000)
    parser.add_argument("--slots", type=int, default=8)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
