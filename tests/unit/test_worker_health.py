"""WorkerHealth's verdicts, on a hand-driven clock (the HTTP side: tests/integration)."""

from __future__ import annotations

import asyncio

from hewer.sdk._health import PROBE_SECONDS, WorkerHealth, WorkerProbes


class Fake:
    def __init__(self) -> None:
        self.now = 100.0
        self.listening = False
        self.sent = 0
        self.last_ok: bool | None = None
        self.draining = False
        self.used: dict[str, int] = {}

    def health(self) -> WorkerHealth:
        probes = WorkerProbes(
            listening=lambda: self.listening,
            heartbeats=lambda: (self.sent, self.last_ok),
            draining=lambda: self.draining,
            used_slots=lambda: self.used,
        )
        return WorkerHealth(
            {"default": 4}, probes, loop_threshold=5, starting_limit=10, monotonic=lambda: self.now
        )


def tick(h: WorkerHealth) -> None:
    """One probe tick, as the loop task would make it."""

    async def once() -> None:
        task = asyncio.create_task(h.watch_loop())
        await asyncio.sleep(0)
        task.cancel()

    asyncio.run(once())


def test_starting_then_healthy_then_each_failure() -> None:
    f = Fake()
    h = f.health()
    assert h.status()[0] == "STARTING"
    f.now += 10.5
    status, reason = h.status()
    assert status == "UNHEALTHY" and reason is not None and "not connected" in reason
    tick(h)
    f.listening, f.sent, f.last_ok = True, 1, True
    assert h.status() == ("HEALTHY", None)
    assert h.health_body() == (
        200,
        {"status": "HEALTHY", "slots": {"default": {"used": 0, "limit": 4}}},
    )
    f.last_ok = False
    assert h.status() == ("UNHEALTHY", "the last heartbeat failed")
    f.last_ok, f.listening = True, False
    assert h.status() == ("UNHEALTHY", "no action stream to the engine")
    f.listening = True
    f.now += PROBE_SECONDS + 5.5  # no tick meanwhile: the loop is stuck
    status, reason = h.status()
    assert status == "UNHEALTHY" and reason is not None and "event loop" in reason
    assert h.loop_lag() > 5
    tick(h)
    assert h.status()[0] == "HEALTHY"
    f.used = {"default": 3}
    f.draining = True
    code, body = h.health_body()
    assert code == 503
    assert body == {
        "status": "UNHEALTHY",
        "slots": {"default": {"used": 3, "limit": 4}},
        "reason": "the worker is shutting down",
    }
