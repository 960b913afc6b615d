"""The floor for a Python proxy on this machine: a uvloop byte pump, measured beside the others.

Run::

    python -m bench.pump --to UPSTREAM_PORT [--to UPSTREAM_PORT ...]

listens on one free port per ``--to`` and prints ``READY <listen>:<upstream> ...`` once all are
listening. Every caller connection gets its own upstream connection, and bytes are copied both
ways as they arrive: no parsing, no headers, no logging. It is not a proxy anyone should run. It
is what any Python proxy on uvloop pays at least per request and per streamed event (the
wake-ups, the system calls, the interpreter's round trip), so the benchmark can show which of
issue 7's targets are within reach of the language on the machine at hand.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
from typing import cast

from bench.canned import until_stopped


class _Upstream(asyncio.Protocol):
    def __init__(self, caller: asyncio.Transport) -> None:
        self.caller = caller

    def data_received(self, data: bytes) -> None:
        self.caller.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.caller.close()


class _Caller(asyncio.Protocol):
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(
                lambda: _Upstream(self.transport), "127.0.0.1", self.upstream_port
            )
        except OSError:
            self.transport.close()
            return
        self.upstream = upstream
        for data in self.early:
            self.upstream.write(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def main(upstream_ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for port in upstream_ports:
        server = await loop.create_server(functools.partial(_Caller, port), "127.0.0.1", 0, backlog=4096)
        servers.append(server)
    pairs = [f"{s.sockets[0].getsockname()[1]}:{p}" for s, p in zip(servers, upstream_ports, strict=True)]
    print("READY " + " ".join(pairs), flush=True)
    await until_stopped()
    for server in servers:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.pump")
    parser.add_argument("--to", type=int, action="append", required=True, help="an upstream port")
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    asyncio.run(main(args.to))
