"""A byte-exact TCP tap for HTTP/1.1: what a client really puts on the wire.

ASGI servers lower-case header names and hide connection reuse; this does neither. Each client
connection gets its own upstream connection and bytes are relayed unchanged both ways, while the
client-to-server direction is parsed just enough to record every request: connection number,
method, target, the header lines with their original case and order, and the body (by
``Content-Length``; a chunked body stops the parsing of that connection, relaying goes on).
``fault`` can answer a request itself (say a 401 to ``tools/call``) instead of relaying it.

    tap = WireTap("127.0.0.1", upstream_port).start_in_thread()
    ...point the client at tap.base...
    tap.requests()  # [TappedRequest(conn=1, method="POST", target="/mcp", headers=[...]), ...]
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TappedRequest:
    conn: int
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    faulted: int | None = None  # the status the tap answered itself, if it did

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def names(self) -> list[str]:
        return [key for key, _ in self.headers]


class WireTap:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._requests: list[TappedRequest] = []
        self._lock = threading.Lock()
        self._conns = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # fault(request) -> a status to answer instead of relaying (e.g. 401 at tools/call);
        # only safe where the connection's previous response is complete (JSON answers).
        self.fault: Callable[[TappedRequest], int | None] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[TappedRequest]:
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = next(self._conns)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        down = asyncio.create_task(self._pipe(up_reader, writer))
        try:
            await self._requests_from(conn, reader, up_writer, writer)
        finally:
            # HTTP clients don't half-close: the client is gone, so is the upstream connection.
            up_writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(down, 2)
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.write_eof()

    async def _relay(self, data: bytes, up: asyncio.StreamWriter) -> None:
        up.write(data)
        await up.drain()

    async def _requests_from(
        self,
        conn: int,
        reader: asyncio.StreamReader,
        up: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
    ) -> None:
        parsing = True
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            while True:
                if not parsing:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    await self._relay(chunk, up)
                    continue
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        await self._relay(exc.partial, up)
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target = [*lines[0].split(" "), "", ""][:2]
                headers: list[tuple[str, str]] = []
                for line in lines[1:]:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers.append((key, value.strip()))
                request = TappedRequest(conn, method, target, headers)
                with self._lock:
                    self._requests.append(request)
                if (request.header("transfer-encoding") or "").lower() == "chunked":
                    await self._relay(head, up)
                    parsing = False
                    continue
                length = int(request.header("content-length") or 0)
                request.body = await reader.readexactly(length) if length else b""
                status = self.fault(request) if self.fault else None
                if status is not None:
                    request.faulted = status
                    payload = b'{"error":"injected by WireTap"}'
                    client.write(
                        f"HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(payload)}\r\n\r\n".encode()
                        + payload
                    )
                    await client.drain()
                    continue
                await self._relay(head + request.body, up)

    def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> WireTap:
        self._server = await asyncio.start_server(self._track, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._server = None

    def start_in_thread(self, timeout: float = 10.0) -> WireTap:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.close())
            loop.close()

        self._thread = threading.Thread(target=run, name="wiretap", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("wiretap did not start")
        return self

    def stop_thread(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            self._thread = None
            self._loop = None
