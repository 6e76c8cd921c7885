"""The HTTP port against hostile clients, over raw sockets: slow clients are cut off at the
request deadline while others are served, oversized or overlong headers are answered 431,
and idle connections do not pile up (reliability reference B5, B6)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from hewer.engine.api.server import MAX_HEADER_BYTES, MAX_HEADER_LINES
from hewer.testing import EngineThread
from tests.helpers import wait_for

DEADLINE = 1.0  # the engine's http_request_timeout here (10 s by default)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineThread]:
    work: Path = tmp_path_factory.mktemp("http")
    with EngineThread(work, http_request_timeout=DEADLINE) as running:
        yield running


def _address(engine: EngineThread) -> tuple[str, int]:
    parts = urlsplit(engine.api_url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def _connect(engine: EngineThread) -> socket.socket:
    sock = socket.create_connection(_address(engine), timeout=5)
    return sock


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed the connection (reading what it sent before)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _answer(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def test_slow_and_idle_clients_are_cut_off_while_others_are_served(engine: EngineThread) -> None:
    idle = [_connect(engine) for _ in range(20)]
    partial = [_connect(engine) for _ in range(20)]
    for sock in partial:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    trickle = _connect(engine)
    trickle.sendall(b"GET /health HTTP/1.1\r\n")
    began = time.monotonic()
    try:
        # Served meanwhile.
        with httpx.Client(base_url=engine.api_url, trust_env=False, timeout=5) as client:
            assert client.get("/health").status_code == 200

        def all_closed() -> bool:
            # A trickling client keeps sending; the deadline counts from its first byte.
            trickle.sendall(b"X-A: b\r\n")
            return all(_closed(s) for s in [*idle, *partial])

        wait_for(all_closed, timeout=DEADLINE + 4, what="slow clients cut off")
        took = time.monotonic() - began
        assert DEADLINE * 0.8 <= took <= DEADLINE + 3, took

        def trickle_cut() -> bool:
            try:
                trickle.sendall(b"X-A: b\r\n")
            except OSError:
                return True
            return _closed(trickle)

        wait_for(trickle_cut, timeout=DEADLINE + 4, what="the trickling client cut off")
    finally:
        for sock in [*idle, *partial, trickle]:
            sock.close()


def test_a_request_cut_off_mid_head_is_told_why(engine: EngineThread) -> None:
    sock = _connect(engine)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        answer = _answer(sock)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
    finally:
        sock.close()


@pytest.mark.parametrize(
    "headers",
    [
        b"X-Big: " + b"a" * (64 * 1024) + b"\r\n",
        b"".join(b"X-%d: v\r\n" % i for i in range(1000)),
    ],
    ids=["64KiB-header", "1000-header-lines"],
)
def test_oversized_headers_are_answered_431(engine: EngineThread, headers: bytes) -> None:
    sock = _connect(engine)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        answer = _answer(sock)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert str(MAX_HEADER_BYTES).encode() in answer
    finally:
        sock.close()


def test_headers_within_the_limits_are_served(engine: EngineThread) -> None:
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADER_LINES - 5))
    sock = _connect(engine)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + lines + b"\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 200 ")
    finally:
        sock.close()


def test_a_keep_alive_connection_serves_several_requests(engine: EngineThread) -> None:
    with httpx.Client(base_url=engine.api_url, trust_env=False, timeout=5) as client:
        for _ in range(3):
            assert client.get("/health").status_code == 200
            time.sleep(DEADLINE / 2)  # idle between requests, within the keep-alive window
        assert client.get("/health").status_code == 200


def test_bare_lf_heads_on_one_connection_are_each_their_own_request(
    engine: EngineThread,
) -> None:
    # h11 ends a head at a bare-LF blank line too: each request starts a fresh count.
    sock = _connect(engine)
    try:
        lines = b"".join(b"X-%d: v\n" % i for i in range(60))
        for _ in range(5):  # 300 header lines over the connection, 60 per request
            sock.sendall(b"GET /health HTTP/1.1\nHost: x\n" + lines + b"\n")
            sock.settimeout(5)
            answer = b""
            while not answer.endswith(b"}"):  # the head, then the JSON body
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
    finally:
        sock.close()


def test_a_slow_answer_is_no_slow_request(engine: EngineThread) -> None:
    """The deadline covers the client sending its request, not the engine answering it
    (also with "Connection: close", after which h11 says MUST_CLOSE, not DONE)."""
    import asyncio

    switch = engine.engine._api_switch
    local = switch.local
    assert local is not None

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/slow":
            await asyncio.sleep(DEADLINE * 2)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"done"})
            return
        await local(scope, receive, send)

    switch.local = slow
    try:
        sock = _connect(engine)
        try:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = _answer(sock)
            assert answer.startswith(b"HTTP/1.1 200 ") and b"done" in answer, answer
        finally:
            sock.close()
    finally:
        switch.local = local
