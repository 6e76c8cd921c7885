"""No-op task throughput and trigger-to-start latency on the embedded SQLite engine.

    python bench/throughput.py [--tasks 5000] [--workers 2] [--slots 10] [--rate 200]

Starts a real engine and real worker processes, then:
1. throughput: triggers N tasks in bulk and waits until all have completed (tasks/s);
2. latency: triggers one task at a time at a steady rate and reports how long each waited
   from trigger to the start of its body (p50/p95/p99).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def start(args: argparse.Namespace, state: Path) -> list[subprocess.Popen[bytes]]:
    env = dict(
        os.environ,
        HEWER_STATE_DIR=str(state / "state"),
        HEWER_DATABASE=str(state / "bench.db"),
        HEWER_PORT="0",
        HEWER_API_PORT="0",
        BENCH_SLOTS=str(args.slots),
    )
    os.environ.update(env)
    hewer = [sys.executable, "-m", "hewer"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    engine = subprocess.Popen([*hewer, "engine", "--log-level", "warning"], env=env, **quiet)
    token = state / "state" / "token"
    deadline = time.monotonic() + 30
    while not token.exists():
        if time.monotonic() > deadline or engine.poll() is not None:
            sys.exit("engine did not start")
        time.sleep(0.05)
    workers = [
        subprocess.Popen(
            [*hewer, "worker", "start", "bench.app:make_worker", "--log-level", "warning"],
            env=env,
            cwd=REPO,
            **quiet,
        )
        for _ in range(args.workers)
    ]
    return [engine, *workers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0, help="tasks/s for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="hewer-bench-"))
    procs = start(args, state)
    try:
        sys.path.insert(0, str(REPO))
        from bench import app
        from hewer import NotFound

        deadline = time.monotonic() + 60
        while True:  # warm up once the workers have registered the task
            try:
                app.noop.run(app.Tick(n=-1))
                break
            except NotFound:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

        began = time.perf_counter()
        app.noop.run_many([app.Tick(n=i) for i in range(args.tasks)])
        elapsed = time.perf_counter() - began
        print(
            f"throughput: {args.tasks} no-op tasks, {args.workers} workers x {args.slots} slots: "
            f"{elapsed:.2f}s = {args.tasks / elapsed:.0f} tasks/s"
        )

        refs = []
        interval = 1.0 / args.rate
        count = int(args.rate * args.seconds)
        next_at = time.perf_counter()
        for i in range(count):
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            refs.append((time.time(), app.noop.run_no_wait(app.Tick(n=i))))
            next_at += interval
        latencies = [ref.result()["started"] - sent for sent, ref in refs]
        ms = [v * 1000 for v in latencies]
        print(
            f"latency: {count} tasks at {args.rate:.0f}/s, trigger-to-start ms: "
            f"p50 {percentile(ms, 50):.1f}  p95 {percentile(ms, 95):.1f}  "
            f"p99 {percentile(ms, 99):.1f}  mean {statistics.fmean(ms):.1f}"
        )
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
