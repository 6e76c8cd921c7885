"""Hewer side by side with its peers: the same no-op workload on the same machine, one
system after another, in one table.

    bash bench/setup                                   # once: creates .venv-bench
    .venv-bench/bin/python bench/compare.py            # every system, 20,000 tasks
    .venv-bench/bin/python bench/compare.py --quick    # smoke run, smaller numbers
    .venv-bench/bin/python bench/compare.py --systems hewer,taskiq --tasks 5000
    .venv-bench/bin/python bench/compare.py --hewer-rev HEAD~3   # Hewer from a commit

Systems (``--systems``):
  hewer     ``hewer engine`` on SQLite (the embedded default) + a Hewer SDK worker
  hatchet   the same engine + an unmodified hatchet-sdk 1.43.1 worker (triggered and
            awaited with the Hewer SDK client, so the row differs only in the worker)
  hewer-pg  ``hewer engine --database-url postgresql://...`` (a scratch database on the
            machine's PostgreSQL) + a Hewer SDK worker
  hewer-pg-2r  the same with two engine replicas over that database: the first schedules,
            the worker and the client connect to the second, which relays to the first
  taskiq    taskiq + taskiq-redis (ListQueueBroker, Redis result backend); no persistence
  pgqueuer  pgqueuer + asyncpg on PostgreSQL (durable tables), in a database of its own

Every system gets one worker process with 8 concurrent slots running an async no-op task
that returns ``time.time()`` at its start. Workloads (``--workloads``):
  w1   drain: enqueue ``--tasks`` tasks in bulk (1,000 per call; "bulk enqueue/s"), then
       start the worker and time until all are done, worker start-up included (tasks/s)
  w2   latency: one trigger every 20 ms (50/s) for 10 s; trigger-to-start latency, from the
       client's time.time() just before the trigger call to the task's; p50 / p99 ms
  w2r  round trip: trigger, wait for the result, next; 200 times; p50 ms
  w3   recovery: SIGKILL the worker 1 s into a 5 s task, start a new worker, time from the
       kill until the task starts again (n/a for a system that never re-delivers)
For the Hewer rows it also reports the engine's CPU time (user + system, its process tree)
during the W1 drain per task, and for every row the worker's CPU per task (W1, start-up
included). Ratios compare each system's W1 and bulk numbers with the fastest peer's.

Each system runs in a driver process of its own (``bench/harness/drive_*.py``; hatchet-sdk
and hewer cannot share a process), which starts every service process in a process group
of its own and kills them all when it ends; temp dirs and the PostgreSQL database are
removed. Needs Redis on 127.0.0.1:6379 (taskiq) and PostgreSQL on 127.0.0.1:5432, user
postgres (pgqueuer), unless those systems are left out.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/compare.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

from bench.harness.common import Outcome, Sizes  # noqa: E402

SYSTEMS = {
    # name: (driver module, variant, modules it needs)
    "hewer": ("bench.harness.drive_hewer", "hewer", ["hewer"]),
    "hatchet": ("bench.harness.drive_hewer", "hatchet", ["hewer", "hatchet_sdk"]),
    "hewer-pg": ("bench.harness.drive_hewer", "hewer-pg", ["hewer", "asyncpg"]),
    "hewer-pg-2r": ("bench.harness.drive_hewer", "hewer-pg-2r", ["hewer", "asyncpg"]),
    "taskiq": ("bench.harness.drive_taskiq", "", ["taskiq", "taskiq_redis", "redis"]),
    "pgqueuer": ("bench.harness.drive_pgqueuer", "", ["pgqueuer", "asyncpg"]),
}
PEERS = ("taskiq", "pgqueuer")
TEMP_PREFIX = "hewer-compare-"  # then <pid of compare.py>-<system>-
DRIVER_GRACE = 60.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument("--tasks", type=int, default=None, help="W1 tasks (default 20000)")
    parser.add_argument("--quick", action="store_true", help="smaller numbers, a smoke run")
    parser.add_argument("--workloads", default="w1,w2,w2r,w3", help="comma-separated")
    parser.add_argument("--slots", type=int, default=8, help="worker slots / concurrency")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379", help="no db number")
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--hewer-rev", help="run Hewer from this git revision's src/")
    parser.add_argument("--json", type=Path, help="also write the outcomes here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs (logs)")
    args = parser.parse_args()
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    args.workloads = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    bad = [w for w in args.workloads if w not in ("w1", "w2", "w2r", "w3")]
    if bad:
        parser.error(f"unknown workloads {bad}")
    return args


def sizes_for(args: argparse.Namespace) -> Sizes:
    if args.quick:
        sizes = Sizes(tasks=2_000, w2_seconds=3.0, w2r_count=50, w3_deadline=60.0)
    else:
        sizes = Sizes()
    if args.tasks is not None:
        sizes.tasks = args.tasks
    sizes.slots = args.slots
    sizes.workloads = args.workloads
    return sizes


# --- preflight -----------------------------------------------------------------------------


def preflight(args: argparse.Namespace) -> None:
    """Fail early and clearly: missing packages, Redis or PostgreSQL not reachable."""
    missing = sorted(
        {m for s in args.systems for m in SYSTEMS[s][2] if find_spec(m) is None} - {""}
    )
    if missing or find_spec("psutil") is None:
        sys.exit(
            f"missing packages {missing + ([] if find_spec('psutil') else ['psutil'])} in "
            f"{sys.executable}: run `bash bench/setup` and use .venv-bench/bin/python"
        )
    if "taskiq" in args.systems:
        import redis

        try:
            redis.Redis.from_url(args.redis_url, socket_connect_timeout=3).ping()
        except redis.RedisError as exc:
            sys.exit(
                f"Redis is not reachable at {args.redis_url} ({exc}); start it, pass "
                "--redis-url, or leave taskiq out (--systems ...)"
            )
    if "pgqueuer" in args.systems:
        import asyncio

        import asyncpg

        async def probe() -> None:
            connection = await asyncpg.connect(args.pg_dsn, timeout=5)
            await connection.close()

        try:
            asyncio.run(probe())
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            sys.exit(
                f"PostgreSQL is not reachable at {args.pg_dsn} ({exc}); start it, pass "
                "--pg-dsn, or leave pgqueuer out (--systems ...)"
            )


def sweep_stale_temp_dirs() -> None:
    """Remove temp dirs left by a compare.py that was SIGKILLed (its pid is in the name)."""
    for path in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*-*-*"):
        pid = path.name.removeprefix(TEMP_PREFIX).split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


def hewer_source(rev: str | None, scratch: Path) -> tuple[dict[str, str], str]:
    """Environment for the drivers and a description of which Hewer code runs."""
    if rev is None:
        try:
            head = git("rev-parse", "--short", "HEAD")
            dirty = git("status", "--porcelain", "--", "src")
        except (OSError, subprocess.CalledProcessError):
            return {}, f"{REPO / 'src'} (not a git checkout)"
        return {}, f"working tree at {head}" + (" + uncommitted changes in src/" if dirty else "")
    try:
        commit = git("rev-parse", "--short", rev)
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"--hewer-rev {rev}: not a revision of a git checkout at {REPO} ({exc})")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit, "src"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(scratch, filter="data")
    return {"PYTHONPATH": str(scratch / "src")}, f"src/ of {commit} ({rev})"


def git(*argv: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *argv], check=True, capture_output=True, text=True
    ).stdout.strip()


# --- running the drivers -------------------------------------------------------------------


def run_system(
    name: str, args: argparse.Namespace, sizes: Sizes, extra_env: dict[str, str]
) -> Outcome:
    module, variant, _ = SYSTEMS[name]
    workdir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-{name}-"))
    out = workdir / "outcome.json"
    argv = [sys.executable, "-m", module, "--out", str(out), "--workdir", str(workdir)]
    argv += ["--sizes", json.dumps(dataclasses.asdict(sizes)), "--variant", variant]
    argv += ["--redis-url", args.redis_url, "--pg-dsn", args.pg_dsn]
    setpriv = shutil.which("setpriv")
    if setpriv:  # if this process dies, the driver gets SIGTERM and cleans up
        argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
    env = dict(os.environ, **extra_env, PYTHONUNBUFFERED="1")
    budget = 600.0 + sizes.tasks / 20 + sizes.w3_deadline  # a 20 tasks/s floor
    driver = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdout=sys.stderr,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        timed_out = False
        try:
            driver.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            print(f"{name}: driver over its {budget:.0f}s budget, stopping it", file=sys.stderr)
            timed_out = True
            stop_driver(driver)  # it writes what it has on the way out
        outcome = read_outcome(name, out, driver.returncode)
        if timed_out:
            outcome.errors.append(f"driver stopped: over its {budget:.0f}s budget")
        return outcome
    finally:
        stop_driver(driver)
        if args.keep:
            print(f"{name}: logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def stop_driver(driver: subprocess.Popen[bytes]) -> None:
    """SIGTERM (its ``finally`` stops its children), then SIGKILL the whole group."""
    if driver.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            driver.wait(timeout=DRIVER_GRACE)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(driver.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        driver.wait(timeout=10)


def read_outcome(name: str, out: Path, returncode: int | None) -> Outcome:
    try:
        outcome = Outcome.from_json(out.read_text())
    except (OSError, ValueError, TypeError):
        outcome = Outcome(system=name, label=name, store="?")
        outcome.errors.append(f"driver ended ({returncode}) without writing an outcome")
    if returncode != 0 and not outcome.errors:
        outcome.errors.append(f"driver exited with {returncode}")
    return outcome


# --- the table -----------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def ratio(value: float | None, best: tuple[str, float] | None) -> str:
    if value is None or best is None:
        return "-"
    return f"{value / best[1]:.2f}× {best[0]}"  # noqa: RUF001


def fastest_peer(outcomes: list[Outcome], field: str) -> tuple[str, float] | None:
    scored = [(o.system, getattr(o, field)) for o in outcomes if o.system in PEERS]
    scored = [(s, v) for s, v in scored if v]
    return max(scored, key=lambda sv: sv[1]) if scored else None


def table(outcomes: list[Outcome]) -> str:
    best_w1 = fastest_peer(outcomes, "w1_tasks_per_s")
    best_bulk = fastest_peer(outcomes, "bulk_per_s")
    header = [
        ("", "system"),
        ("", "store"),
        ("W1 drain", "tasks/s"),
        ("W1", "vs peer"),
        ("W2 start", "p50 / p99 ms"),
        ("W2r result", "p50 ms"),
        ("bulk", "enqueue/s"),
        ("bulk", "vs peer"),
        ("W3 re-run", "after kill s"),
        ("engine CPU", "µs/task"),
        ("worker CPU", "µs/task"),
    ]
    rows: list[list[str]] = []
    footnotes: list[str] = []
    for o in outcomes:
        if o.w3_seconds is not None:
            w3 = fmt(o.w3_seconds, 1)
        elif o.w3_note:
            footnotes.append(o.w3_note)
            w3 = f"n/a [{len(footnotes)}]"
        else:
            w3 = "-"
        w2 = "-" if o.w2_p50_ms is None else f"{o.w2_p50_ms:.1f} / {fmt(o.w2_p99_ms, 1)}"
        rows.append(
            [
                o.label,
                o.store,
                fmt(o.w1_tasks_per_s),
                ratio(o.w1_tasks_per_s, best_w1),
                w2,
                fmt(o.w2r_p50_ms, 1),
                fmt(o.bulk_per_s),
                ratio(o.bulk_per_s, best_bulk),
                w3,
                fmt(o.engine_cpu_us),
                fmt(o.worker_cpu_us),
            ]
        )
    heads = [[h[0] for h in header], [h[1] for h in header]]
    widths = [max(len(row[i]) for row in [*heads, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        text = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        text += [cell.rjust(width) for cell, width in zip(cells[2:], widths[2:], strict=True)]
        return "  ".join(text).rstrip()

    lines = [line(heads[0]), line(heads[1]), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in rows]
    lines += [f"[{i}] {text}" for i, text in enumerate(footnotes, 1)]
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0))
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    return (
        f"{model}, {usable} cores{memory}; Linux {platform.release()}; "
        f"Python {platform.python_version()}"
    )


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(outcomes: list[Outcome], sizes: Sizes, source: str, started: datetime, load: str) -> str:
    lines = [
        f"Hewer comparison benchmark, {started:%Y-%m-%d %H:%M} UTC",
        f"machine: {machine()}",
        f"load average (1/5/15 min) before the run: {load}, after: {load_average()} "
        "(anything else running shares these cores)",
        f"workload: async no-op task, one worker process with {sizes.slots} slots; W1 "
        f"{sizes.tasks:,} tasks queued first ({sizes.bulk_chunk:,} per enqueue call); W2 "
        f"{sizes.w2_rate:.0f}/s for {sizes.w2_seconds:.0f}s; W2r {sizes.w2r_count} round "
        f"trips; W3 kill 1s into a 5s task",
        f"Hewer: {source}",
        "",
        table(outcomes),
        "",
        "How each system ran:",
    ]
    for o in outcomes:
        versions = ", ".join(f"{k} {v}" for k, v in o.versions.items())
        lines.append(f"  {o.label} ({versions}):")
        lines += [
            textwrap.fill(t, 100, initial_indent="    - ", subsequent_indent="      ")
            for t in o.settings
        ]
        if o.client_cpu_us is not None:
            lines.append(
                f"    - the client's own CPU while waiting for the W1 drain (same cores): "
                f"{o.client_cpu_us:,.0f} µs/task"
            )
        lines += [f"    ! error: {text}" for text in o.errors]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    sizes = sizes_for(args)
    preflight(args)
    started = datetime.now(UTC)
    load = load_average()
    sweep_stale_temp_dirs()
    scratch = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-src-"))

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    outcomes: list[Outcome] = []
    interrupted = False
    try:
        extra_env, source = hewer_source(args.hewer_rev, scratch)
        for name in args.systems:
            print(f"=== {name} ===", file=sys.stderr, flush=True)
            began = time.monotonic()
            outcomes.append(run_system(name, args, sizes, extra_env))
            print(f"=== {name}: {time.monotonic() - began:.0f}s ===", file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True  # run_system's finally has stopped the driver by now
        print("interrupted; the systems that finished:", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(report(outcomes, sizes, source, started, load))
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(o) for o in outcomes], indent=2))
    if interrupted:
        sys.exit(130)
    if any(o.errors for o in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    main()
