"""A minimal, fast HTTP/1.1 upstream for the benchmark: fixed JSON-RPC answers, keep-alive.

Run::

    python -m bench.canned --port 0 [--big-bytes 1048576]

prints ``READY http://127.0.0.1:P`` once listening. Any request to a path starting with ``/big``
is answered with a JSON-RPC result of ``--big-bytes`` bytes of text; any other request with a
small ``tools/call`` result (about 400 bytes). Request bodies are read (Content-Length or chunked)
and ignored. By default (``--flavor raw``) it is an asyncio ``Protocol`` on uvloop with no
framework, so that a proxy in front of it, not the upstream, is what a measurement sees;
``--flavor aiohttp`` serves the same bytes from a minimal aiohttp application, the kind of
"trivial upstream" the targets of issue 7 were calibrated on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
from typing import Any

SMALL_RESULT = {
    "jsonrpc": "2.0",
    "id": 1,
    "result": {
        "content": [
            {
                "type": "text",
                "text": json.dumps(
                    {
                        "total": 2,
                        "data": [
                            {"name": "process_payment_refunds", "status": "RUNNING"},
                            {"name": "sync_inventory_updates", "status": "READY"},
                        ],
                    }
                ),
            }
        ],
        "isError": False,
    },
}


def _response(body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def big_body(size: int) -> bytes:
    prefix = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"'
    suffix = b'"}],"isError":false}}'
    return prefix + b"x" * max(size - len(prefix) - len(suffix), 0) + suffix


class CannedProtocol(asyncio.Protocol):
    small: bytes = b""
    big: bytes = b""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        transport = self.transport
        assert transport is not None
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            start = end + 4
            total = start
            if b"transfer-encoding: chunked" in head:
                last = buf.find(b"\r\n0\r\n\r\n", start - 2)
                if last < 0:
                    break
                total = last + 7
            else:
                at = head.find(b"\r\ncontent-length:")
                if at >= 0:
                    stop = head.find(b"\r\n", at + 2)
                    total = start + int(head[at + 17 : stop if stop >= 0 else len(head)])
            if len(buf) < total:
                break
            line_end = head.find(b"\r\n")
            request_line = head[: line_end if line_end >= 0 else len(head)]
            path = request_line.split(b" ", 2)[1] if request_line.count(b" ") >= 2 else b"/"
            transport.write(self.big if path.startswith(b"/big") else self.small)
            buf = buf[total:]
            if b"\r\nconnection: close" in head:
                transport.close()
                buf = b""
                break
        self.buf = buf


async def _aiohttp_server(sock: socket.socket, small: bytes, big: bytes) -> Any:
    """The same answers from a minimal aiohttp application (a typical "trivial upstream")."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        body = big if request.path.startswith("/big") else small
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    return runner


async def until_stopped() -> None:
    """Until SIGTERM or SIGINT, or until the benchmark that started this process has gone."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            if os.getppid() != parent:  # the benchmark went away: don't linger
                return


async def main(port: int, big_bytes: int, flavor: str) -> None:
    small = json.dumps(SMALL_RESULT, separators=(",", ":")).encode()
    large = big_body(big_bytes)
    CannedProtocol.small = _response(small)
    CannedProtocol.big = _response(large)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    if flavor == "aiohttp":
        server = await _aiohttp_server(sock, small, large)
    else:
        server = await loop.create_server(CannedProtocol, sock=sock, backlog=4096)
    print(f"READY http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await until_stopped()
    if flavor == "aiohttp":
        await server.cleanup()
    else:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.canned")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--big-bytes", type=int, default=1024 * 1024)
    parser.add_argument("--flavor", choices=("raw", "aiohttp"), default="raw")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(main(args.port, args.big_bytes, args.flavor))
