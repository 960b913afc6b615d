"""The relay's per-iteration write batch (mcpproxy.web.writes) on real loopback sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcpproxy.web.writes import LARGE_WRITE, MAX_QUEUED, Outlet, WriteBatch


class Reader:
    """A loopback server that keeps what each connection sent, until it closed."""

    def __init__(self) -> None:
        self.closed: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until EOF
        self.closed.append(data)
        writer.close()


@asynccontextmanager
async def connections(n: int) -> AsyncIterator[tuple[Reader, list[asyncio.Transport]]]:
    reader = Reader()
    server = await asyncio.start_server(reader.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    transports = []
    for _ in range(n):
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        transports.append(transport)
    try:
        yield reader, transports
    finally:
        for transport in transports:
            transport.close()
        server.close()
        await server.wait_closed()


class Recording(asyncio.Transport):
    """A transport that keeps what is written to it (for what a socket cannot show)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False


async def until(predicate: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_writes_wait_for_the_end_of_the_iteration_and_keep_their_order() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    async with connections(2) as (reader, (a, b)):
        for i in range(3):
            batch.write(Outlet(a), b"a%d" % i)
            batch.write(Outlet(b), b"b%d" % i)
        await asyncio.sleep(0)  # the loop runs the flush it scheduled itself
        a.close()
        b.close()
        await until(lambda: len(reader.closed) == 2)
        assert sorted(reader.closed) == [b"a0a1a2", b"b0b1b2"]


async def test_flush_before_close_loses_nothing() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    async with connections(1) as (reader, (a,)):
        batch.write(Outlet(a), b"the answer")
        batch.flush()
        a.close()
        await until(lambda: reader.closed)
        assert reader.closed == [b"the answer"]


async def test_a_transport_closed_meanwhile_gets_nothing_and_the_others_still_do() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    async with connections(2) as (reader, (gone, alive)):
        batch.write(Outlet(gone), b"lost")
        batch.write(Outlet(alive), b"kept")
        gone.abort()  # the peer went away before the end of the iteration
        batch.flush()
        alive.close()
        await until(lambda: len(reader.closed) == 2)
        assert sorted(reader.closed) == [b"", b"kept"]


async def test_nothing_is_written_before_the_iteration_ends() -> None:
    loop = asyncio.get_running_loop()
    batch = WriteBatch(loop)
    transport = Recording()  # a real socket cannot show that nothing was sent yet
    written = transport.written
    batch.write(Outlet(transport), b"1")
    batch.write(Outlet(transport), b"2")
    assert written == []  # queued, not sent
    await asyncio.sleep(0)
    assert written == [b"1", b"2"]


async def test_a_large_write_goes_out_at_once_after_what_was_queued() -> None:
    """Held back, a big answer's chunks would also hold back the transport's flow control."""
    loop = asyncio.get_running_loop()
    batch = WriteBatch(loop)
    transport = Recording()
    written = transport.written
    batch.write(Outlet(transport), b"head")
    large = b"x" * LARGE_WRITE
    batch.write(Outlet(transport), large)
    assert written == [b"head", large]  # at once, and in order
    small = b"y" * 1000
    fit = MAX_QUEUED // len(small)
    for _ in range(fit):
        batch.write(Outlet(transport), small)
    assert len(written) == 2  # all of these fit in the batch: they wait
    batch.write(Outlet(transport), small)
    assert len(written) == 2 + fit + 1  # one more would pass the bound: all go out now
    assert b"".join(written) == b"head" + large + small * (fit + 1)


async def test_a_streamed_event_goes_out_at_once_after_what_was_queued() -> None:
    loop = asyncio.get_running_loop()
    batch = WriteBatch(loop)
    head, other = Recording(), Recording()
    batch.write(Outlet(head), b"HTTP/1.1 200 OK\r\n\r\n")  # the answer's head, queued this iteration
    batch.write(Outlet(other), b"another answer")
    batch.write_now(Outlet(head), b"data: 1\n\n")
    assert head.written == [b"HTTP/1.1 200 OK\r\n\r\n", b"data: 1\n\n"]  # at once, head first
    assert other.written == [b"another answer"]  # the queue went out before it, whole
    batch.write_now(Outlet(head), b"data: 2\n\n")
    assert head.written[-1] == b"data: 2\n\n"
    await asyncio.sleep(0)  # the flush scheduled for the queue finds nothing left
    assert len(head.written) == 3 and len(other.written) == 1


async def test_a_streamed_event_to_a_closed_transport_is_dropped() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    async with connections(2) as (reader, (gone, alive)):
        gone.abort()  # the caller went away
        batch.write_now(Outlet(gone), b"data: lost\n\n")
        batch.write_now(Outlet(alive), b"data: kept\n\n")
        alive.close()
        await until(lambda: len(reader.closed) == 2)
        assert sorted(reader.closed) == [b"", b"data: kept\n\n"]
