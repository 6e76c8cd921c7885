"""Quickstart, end to end on SQLite: start an engine and a worker, run tasks, stop both.

    python examples/quickstart/run.py

Everything lives in a fresh state folder (``.quickstart/`` here) and the engine takes a
free port, so nothing on this machine gets in the way.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATE = HERE / ".quickstart"


def wait_for_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            sys.exit(f"engine exited with {proc.returncode}")
        if time.monotonic() > deadline:
            sys.exit(f"engine did not start within {timeout}s")
        time.sleep(0.05)


def main() -> None:
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir()
    env = dict(os.environ, HEWER_STATE_DIR=str(STATE / "state"), HEWER_PORT="0", HEWER_API_PORT="0")
    env["HEWER_DATABASE"] = str(STATE / "hewer.db")
    hewer = [sys.executable, "-m", "hewer"]

    print("starting engine ...")
    engine = subprocess.Popen([*hewer, "engine"], env=env, cwd=HERE)
    wait_for_file(STATE / "state" / "token", engine)
    print("starting worker ...")
    worker = subprocess.Popen([*hewer, "worker", "start", "app:worker"], env=env, cwd=HERE)
    try:
        os.environ.update(env)
        sys.path.insert(0, str(HERE))
        import app  # the client reads the local engine's token from HEWER_STATE_DIR

        from hewer import NotFound

        # Workflows exist once the worker has registered them; until then NOT_FOUND.
        deadline = time.monotonic() + 30
        while True:
            try:
                print("greet:", app.greet.run(app.Greeting(name="world")))
                break
            except NotFound:
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise
                time.sleep(0.1)
        print("shout:", asyncio.run(app.shout.aio_run(app.Greeting(name="world"))))
        print("order:", json.dumps(app.orders.run(app.Order(item="hammer", quantity=3))))
        many = app.greet.run_many([app.Greeting(name=f"user{i}") for i in range(5)])
        print("greet x5:", [m["message"] for m in many])
        cli = subprocess.run(
            [*hewer, "run", "greet", "--input", '{"name": "CLI"}'],
            env=env,
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        )
        print("hewer run greet:", cli.stdout.strip())
    finally:
        for proc in (worker, engine):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    print(f"worker exited {worker.returncode}, engine exited {engine.returncode}")
    if worker.returncode or engine.returncode:
        sys.exit(1)
    print("quickstart finished")


if __name__ == "__main__":
    main()
