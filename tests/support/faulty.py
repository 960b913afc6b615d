"""A deliberately broken HTTP upstream, for faults no real MCP server produces on demand.

Real MCP servers cannot be told to answer with garbage, reset a stream half-way or go silent
mid-event; this raw asyncio server can. Each connection's behaviour is picked by the request
path's last segment (``/mcp/garbage``, ``/mcp/reset``…), so one server covers every fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from tests.support.net import free_port

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
EVENT = (
    b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}\n\n'
)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class FaultyUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.server: asyncio.base_events.Server | None = None
        self.connections = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultyUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            behaviour = path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
            await getattr(self, f"_{behaviour}", self._ok)(writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _ok(self, writer: asyncio.StreamWriter) -> None:
        body = b'{"jsonrpc":"2.0","id":1,"result":{}}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()

    async def _garbage(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x16\x03\x01 this is not HTTP at all\r\n\r\n")
        await writer.drain()

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """Closes the connection without answering."""

    async def _reset(self, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(EVENT))
        await writer.drain()
        await asyncio.sleep(0.1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close

    async def _stall_sse(self, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(EVENT))
        await writer.drain()
        await asyncio.sleep(60)

    async def _stall_headers(self, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)

    async def _short_body(self, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"jsonrpc"'
        )
        await writer.drain()
