"""Running a hatchet-sdk app of this folder as a worker or a client process (the apps are
never imported here: hatchet-sdk's protobuf names would clash with ours)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hewer.testing import EngineThread
from tests.compat.test_hatchet_sdk import hatchet_env
from tests.helpers import wait_for


@contextmanager
def hatchet_worker(
    engine: EngineThread,
    tmp_path: Path,
    app: Path,
    name: str,
    *args: str,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``python APP worker [ARGS]`` until the worker ``name`` is ACTIVE; killed after.
    ``env``: the environment (default: ``hatchet_env(engine)``)."""
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(app), "worker", *args],
            env=env if env is not None else hatchet_env(engine),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def registered() -> bool:
        workers = engine.call(engine.engine.store.workers_list())
        return proc.poll() is not None or any(
            w.name == name and w.status == "active" for w in workers
        )

    try:
        wait_for(registered, timeout=60, what=f"hatchet worker {name} registered")
        assert proc.poll() is None, log_path.read_text()
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def run_client(
    engine: EngineThread,
    tmp_path: Path,
    app: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> Any:
    """``python APP client`` (or ``python APP ARGS...``); the JSON of its last line of
    output. ``env``: the environment (default: ``hatchet_env(engine)``)."""
    result = subprocess.run(
        [sys.executable, str(app), *(args or ("client",))],
        env=env if env is not None else hatchet_env(engine),
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    return json.loads(result.stdout.decode().strip().splitlines()[-1])
