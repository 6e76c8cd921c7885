"""Heartbeat failure handling and listener reconnect decisions, with fake stubs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from hewer.sdk._connection import Connection
from hewer.sdk._heartbeat import Heartbeater
from hewer.sdk._listener import ActionListener


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> datetime:
        return datetime(2025, 1, 1, tzinfo=UTC)

    def monotonic(self) -> float:
        return self.t


class Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"engine says {self._code.name}"


class FakeStub:
    def __init__(self, error: grpc.StatusCode | None = None) -> None:
        self.error = error
        self.calls: list[Any] = []

    def Heartbeat(self, request: Any, **kwargs: Any) -> None:
        self.calls.append(request)
        if self.error is not None:
            raise Failure(self.error)


def heartbeater(draining: bool = False) -> tuple[Heartbeater, list[float]]:
    lost: list[float] = []
    beats = Heartbeater(
        Connection(token="t", address="localhost:1"),
        worker_id=lambda: "w-1",
        interval=timedelta(seconds=4),
        on_stream_lost=lost.append,
        draining=lambda: draining,
        clock=FakeClock(),
    )
    return beats, lost


def test_successful_heartbeat_carries_the_worker_id() -> None:
    beats, lost = heartbeater()
    stub = FakeStub()
    assert beats._beat(stub, "w-1", 1.0, failures=3) == 0
    assert stub.calls[0].worker_id == "w-1"
    assert stub.calls[0].heartbeat_at.seconds > 0
    assert beats.sent == 1
    assert lost == []


def test_stream_gone_signals_the_listener() -> None:
    for code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
        beats, lost = heartbeater()
        beats._beat(FakeStub(code), "w-1", 7.0, failures=0)
        assert lost == [7.0]


def test_draining_ignores_failed_precondition_but_not_not_found() -> None:
    beats, lost = heartbeater(draining=True)
    beats._beat(FakeStub(grpc.StatusCode.FAILED_PRECONDITION), "w-1", 1.0, failures=0)
    assert lost == []
    beats._beat(FakeStub(grpc.StatusCode.NOT_FOUND), "w-1", 2.0, failures=0)
    assert lost == [2.0]


def test_other_failures_are_counted_not_signalled() -> None:
    beats, lost = heartbeater()
    failures = 0
    for _ in range(3):
        failures = beats._beat(FakeStub(grpc.StatusCode.UNAVAILABLE), "w-1", 1.0, failures)
    assert failures == 3
    assert lost == []
    assert beats._beat(FakeStub(), "w-1", 1.0, failures) == 0


class FakeCall:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def test_listener_drops_only_a_stream_older_than_the_failed_heartbeat() -> None:
    clock = FakeClock()

    async def reregister() -> None:
        return None

    listener = ActionListener(
        Connection(token="t", address="localhost:1"),
        worker_id=lambda: "w-1",
        reregister=reregister,
        on_action=lambda action: None,
        on_listening=lambda worker_id, again: None,
        clock=clock,
        settle_seconds=1.0,
    )
    call = FakeCall()
    listener._call = call
    listener._opened_at = 50.0
    # A heartbeat sent just after the stream opened may have raced it: ignore.
    listener.request_reconnect(50.5)
    assert not call.cancelled
    # One sent well after the stream opened means the engine really lost it.
    listener.request_reconnect(51.0)
    assert call.cancelled
    assert listener._interrupted
    # No stream (between attempts): nothing to do.
    listener._call = None
    listener.request_reconnect(99.0)
