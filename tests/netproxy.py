"""A TCP proxy between the engine and its database, to cut the network in tests.

``block()`` makes the link a black hole, as a dropped route or a firewall rule would: open
connections stop moving bytes (nothing is closed, nothing errors; the bytes wait), and new
connections are accepted but go nowhere. ``unblock()`` lets everything flow again,
connections opened meanwhile included. It runs on a thread of its own, so the test and the
engine under test keep their loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

CHUNK = 65536


class Proxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="netproxy")
        self._open = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def start(self) -> Proxy:
        self._thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        self._open.set()
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def block(self) -> None:
        self._loop.call_soon_threadsafe(self._open.clear)

    def unblock(self) -> None:
        self._loop.call_soon_threadsafe(self._open.set)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        self._open.set()

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._open.wait()
            try:
                up_reader, up_writer = await asyncio.open_connection(*self._upstream)
            except OSError:
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(
                    self._pump(reader, up_writer), self._pump(up_reader, writer)
                )
            finally:
                self._writers.discard(up_writer)
                up_writer.close()
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                # Held here while blocked: the bytes neither arrive nor fail.
                await self._open.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.write_eof()


@contextlib.contextmanager
def proxy(host: str, port: int) -> Iterator[Proxy]:
    running = Proxy(host, port).start()
    try:
        yield running
    finally:
        running.stop()
