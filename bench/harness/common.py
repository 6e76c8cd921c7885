"""What every system driver shares: the result record, child processes, polls, CPU, stats.

Imports only the standard library (and psutil, when it measures CPU), so the drivers of
systems whose client libraries cannot share a process (hatchet-sdk's protobuf names clash
with Hewer's) can all use it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from bench.harness.marks import read_marks

__all__ = ["read_marks"]  # re-exported for the drivers

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# W3 kills the worker this long into its slow task (which sleeps 5 s in every app).
KILL_AFTER_SECONDS = 1.0


@dataclasses.dataclass
class Sizes:
    """How much each workload does (``--quick`` shrinks them)."""

    tasks: int = 20_000
    bulk_chunk: int = 1_000
    slots: int = 8
    w2_rate: float = 50.0
    w2_seconds: float = 10.0
    w2r_count: int = 200
    w3_deadline: float = 90.0
    workloads: tuple[str, ...] = ("w1", "w2", "w2r", "w3")


@dataclasses.dataclass
class Outcome:
    """One system's numbers; ``None`` where a workload was not run or failed."""

    system: str
    label: str
    store: str
    w1_tasks_per_s: float | None = None
    w1_seconds: float | None = None
    bulk_per_s: float | None = None
    w2_p50_ms: float | None = None
    w2_p99_ms: float | None = None
    w2_count: int = 0
    w2r_p50_ms: float | None = None
    w2r_p99_ms: float | None = None
    w3_seconds: float | None = None
    w3_note: str = ""
    engine_cpu_us: float | None = None
    worker_cpu_us: float | None = None
    client_cpu_us: float | None = None
    settings: list[str] = dataclasses.field(default_factory=list)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    errors: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Outcome:
        return cls(**json.loads(text))


def log(message: str) -> None:
    """Progress for the person running the benchmark (stderr; stdout is the table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of a non-empty list."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def version_of(*packages: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for name in packages:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


# --- polls ---------------------------------------------------------------------------------


class Timeout(Exception):
    """A poll's condition did not hold before its deadline."""


def wait_until(
    check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.01
) -> T:
    """Poll ``check`` until it returns something other than None/False; raise on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


async def await_until(
    check: Callable[[], Awaitable[T | None]], within: float, what: str, interval: float = 0.01
) -> T:
    """Async ``wait_until``: poll the coroutine ``check`` until it yields a value."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


# --- child processes -----------------------------------------------------------------------

_SETPRIV = shutil.which("setpriv")


class Child:
    """A service process in a process group of its own, its output in a log file.

    Started through ``setpriv --pdeathsig KILL`` where available, so a driver that dies
    without running its ``finally`` still takes its children with it.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("ab")
        prefix = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []
        self.started = time.perf_counter()
        self.popen = subprocess.Popen(
            [*prefix, *argv],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with {self.popen.returncode}; log tail:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its live descendants."""
        import psutil  # bench env only; compare.py imports this module before checking

        try:
            proc = psutil.Process(self.pid)
            total = 0.0
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = p.cpu_times()
                    total += times.user + times.system
            return total
        except psutil.NoSuchProcess:
            return 0.0

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group at once and reap the leader."""
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._log.close()

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the group, wait up to ``grace`` for the leader, then SIGKILL the group."""
        if self.alive():
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        self.kill()


class Children:
    """Every process a driver started; ``close`` (also on exit) stops them newest first."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self._all: list[Child] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = Child(name, argv, env, self.logdir)
        self._all.append(child)
        return child

    def close(self) -> None:
        for child in reversed(self._all):
            child.stop()
        self._all.clear()

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exit_on_sigterm() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so the drivers' ``finally`` blocks run."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


# --- driver entry points -------------------------------------------------------------------


def driver_args(description: str) -> argparse.Namespace:
    """Arguments every driver takes from ``compare.py``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, required=True, help="where to write the outcome")
    parser.add_argument("--workdir", type=Path, required=True, help="temp dir for logs/state")
    parser.add_argument("--sizes", required=True, help="Sizes as JSON")
    parser.add_argument("--variant", default="", help="system variant (e.g. hatchet worker)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    return parser.parse_args()


def sizes_from(args: argparse.Namespace) -> Sizes:
    raw = json.loads(args.sizes)
    if "workloads" in raw:
        raw["workloads"] = tuple(raw["workloads"])
    return Sizes(**raw)


@contextlib.contextmanager
def recording(outcome: Outcome, out: Path) -> Iterator[Outcome]:
    """Write ``outcome`` to ``out`` however the driver ends (errors go into it)."""
    try:
        yield outcome
    except BaseException as exc:
        outcome.errors.append(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        out.write_text(outcome.to_json())


def own_cpu_seconds() -> float:
    """User + system CPU of this process (the driver, i.e. the client) so far."""
    times = os.times()
    return times.user + times.system


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def with_database(dsn: str, name: str) -> str:
    """``dsn`` naming database ``name`` instead."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def with_scratch_database(admin_dsn: str, prefix: str, go: Any) -> None:
    """Create ``<prefix>_<pid>``, run ``go(dsn, admin connection)``, drop the database
    whatever happens."""
    import asyncpg  # bench-only: the PostgreSQL rows need it, the others do not

    name = f"{prefix}_{os.getpid()}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            await go(with_database(admin_dsn, name), admin)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
