"""The rest of a chunked answer, relayed from one socket to another by a blocking loop run in a
thread of its own (:mod:`mcpproxy.web.offload`).

``mcpproxy/_pump.c`` is the same loop in C, run without the interpreter's lock; this twin runs
where the C is not built (pure Python), and is the reference the C is tested against
(tests/test_pump.py). Both take the body up at a chunk boundary and check its framing with the
rules of :class:`mcpproxy.http1.ChunkScanner`.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import time
from typing import Final

from mcpproxy.http1 import ChunkScanner, ProtocolViolation

#: How the relay stopped: the read that holds the body's end is in (left for the loop to
#: write); the upstream closed before it; the caller closed (or half-closed) its side or a write
#: to it failed; nothing came from the upstream for ``idle_ms``; ``cancel`` became readable; the
#: body's chunked framing is broken.
ENDED: Final = 0
UPSTREAM_CLOSED: Final = 1
CALLER_GONE: Final = 2
TIMEOUT: Final = 3
CANCELLED: Final = 4
MALFORMED: Final = 5

_READ_SIZE: Final = 65536
_GONE: Final = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL


class _Caller:
    """The caller's socket, written to as far as it takes bytes now."""

    __slots__ = ("fd", "relayed")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.relayed = 0

    def send_some(self, pending: memoryview) -> memoryview | None:
        """What is left of ``pending`` once the socket takes what it can; None: the caller is gone."""
        while pending:
            try:
                sent = os.write(self.fd, pending)  # a socket: os.write is send() without flags
            except (BlockingIOError, InterruptedError):
                return pending
            except OSError:
                return None
            pending = pending[sent:]
            self.relayed += sent
        return pending


def relay(upstream: int, caller: int, cancel: int, idle_ms: int) -> tuple[int, int, bytes, bytes]:
    """Relay until the body ends or something stops it: (outcome, bytes written, tail, leftover).

    Once ENDED, ``tail`` is the body's last bytes, not written: the read that holds its end is
    left for the event loop to write, which then reads the caller's connection again before
    the caller, answered in full, can send its next request. ``leftover`` is what was read past
    the body's end. A negative ``idle_ms`` sets no limit; the limit counts only while the
    caller keeps up.
    """
    scanner = ChunkScanner()
    out = _Caller(caller)
    pending = memoryview(b"")
    deadline = None if idle_ms < 0 else time.monotonic() + idle_ms / 1000
    poller = select.poll()
    poller.register(cancel, select.POLLIN)
    while True:
        poller.register(caller, select.POLLRDHUP | (select.POLLOUT if pending else 0))
        if pending:
            _forget(poller, upstream)
        else:
            poller.register(upstream, select.POLLIN)
        timeout = None
        if not pending and deadline is not None:
            timeout = max(0, math.ceil((deadline - time.monotonic()) * 1000))  # never wakes before it
        try:
            ready = dict(poller.poll(timeout))
        except InterruptedError:
            continue
        if not ready:
            return TIMEOUT, out.relayed, b"", b""
        if cancel in ready:
            return CANCELLED, out.relayed, b"", b""
        if ready.get(caller, 0) & _GONE:
            return CALLER_GONE, out.relayed, b"", b""
        if pending:
            rest = out.send_some(pending)
            if rest is None:
                return CALLER_GONE, out.relayed, b"", b""
            pending = rest
            if not pending and deadline is not None:
                deadline = time.monotonic() + idle_ms / 1000
        elif upstream in ready:
            try:
                data = os.read(upstream, _READ_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                return UPSTREAM_CLOSED, out.relayed, b"", b""
            try:
                used = scanner.feed(data)
            except ProtocolViolation:
                return MALFORMED, out.relayed, b"", b""
            if scanner.done:  # the end's read: left for the loop to write (see the C's docstring)
                return ENDED, out.relayed, data[:used], data[used:]
            if deadline is not None:
                deadline = time.monotonic() + idle_ms / 1000
            rest = out.send_some(memoryview(data)[:used])
            if rest is None:
                return CALLER_GONE, out.relayed, b"", b""
            pending = rest


def _forget(poller: select.poll, fd: int) -> None:
    with contextlib.suppress(KeyError):  # not registered
        poller.unregister(fd)
