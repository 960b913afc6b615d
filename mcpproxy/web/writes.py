"""The relay's socket writes of one event-loop iteration, sent together at its end.

A write on loopback delivers the bytes to the reading socket inside the writer's system call,
and wakes the reader if it sleeps. Under load the proxy is the slowest of the three processes
(caller, proxy, upstream), so the other two have gone back to sleep between any two of its
writes, and every write paid for a cross-CPU wake-up: about half of the proxy's kernel time
(bench/PROFILE.md). Written back to back at the end of the iteration, the first write of a
batch wakes the reader and the rest find it awake.

Per transport, the order of writes is kept. Whoever closes or hands over a transport flushes
first (:meth:`WriteBatch.flush`), so nothing written before a close is lost; a transport that
closed on its own meanwhile (the peer went away) gets nothing more.

Only small writes wait. A large one (a chunk of a big answer) goes out at once, after what is
queued: held back, it would also hold back the transport's flow control, and libuv, reading on
while no write pushes back, took in whole 1 MB answers per connection before the first byte
left (peak RSS 54 → 104 MiB with 64 such answers). For the same reason the batch as a whole
is bounded. A streamed event goes out at once too (:meth:`WriteBatch.write_now`): it arrives
alone, while the process was asleep, so there is nothing to send it with, and queueing it cost
a callback per event (streamed events 60 → 52 µs of CPU each, bench/PROFILE.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

#: A write this large goes out at once (after what is queued).
LARGE_WRITE: Final = 64 * 1024
#: Bytes queued at most; past this the batch is sent at once.
MAX_QUEUED: Final = 256 * 1024


class Outlet:
    """A transport's ``write`` and ``is_closing``, looked up once, when the connection is made.

    Compiled (:mod:`mcpproxy.native`), a method call on a transport, a Python object to the
    compiler, looks the method up by name each time; every event of a stream would pay for two.
    """

    __slots__ = ("is_closing", "write")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.write: Callable[[bytes], object] = transport.write
        self.is_closing: Callable[[], bool] = transport.is_closing

    def send(self, data: bytes) -> None:
        """Write ``data`` unless the transport is closing (the peer went away, or it was closed
        after what was written before): nothing more goes to it then."""
        if not self.is_closing():
            self.write(data)


class WriteBatch:
    """Small writes queued during one event-loop iteration, flushed by a callback at its end."""

    __slots__ = ("_call_soon", "_flush", "_pending", "_queued")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # bound once, as in Outlet: these run for every request
        self._call_soon: Callable[[Callable[[], None]], object] = loop.call_soon
        self._flush: Callable[[], None] = self.flush
        self._pending: list[tuple[Outlet, bytes]] = []
        self._queued = 0

    def write(self, outlet: Outlet, data: bytes) -> None:
        size = len(data)
        if size >= LARGE_WRITE or self._queued + size > MAX_QUEUED:
            self.flush()
            outlet.send(data)  # its flow control (pause_writing) applies at once
            return
        if not self._pending:
            self._call_soon(self._flush)
        self._pending.append((outlet, data))
        self._queued += size

    def write_now(self, outlet: Outlet, data: bytes) -> None:
        """Send ``data`` at once, after what is queued (so the order of writes is kept)."""
        if self._pending:
            self.flush()
        outlet.send(data)

    @property
    def empty(self) -> bool:
        """Whether nothing is queued."""
        return not self._pending

    def flush(self) -> None:
        """Send everything queued so far (also called before a transport is closed)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._queued = 0
        for outlet, data in pending:
            outlet.send(data)
