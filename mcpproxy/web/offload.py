"""Long streamed answers relayed off the event loop, by a thread each (``server.stream_threads``).

A POST answered by an SSE stream still going after a few events (:data:`AFTER_EVENTS`) is, at a
chunk boundary, handed to a thread of its own, which relays the rest of the body from the
upstream socket to the caller's in C without the interpreter's lock (:mod:`mcpproxy._pump`),
and hands both connections back when it ends. The relay (:mod:`mcpproxy.web.relay`) stops
reading both sockets first, and nothing on the loop touches them until the thread is done.

Why: on the loop, each streamed event cost the interpreter's and uvloop's machinery on top of
the kernel's wake-up, read and write; in the thread it costs a ``poll``, a ``recv`` and a
``send``, as in nginx (bench/PROFILE.md).

What stays on the loop: GET streams (they live for a session and carry few events; they would
hold a thread each for hours), a stream's first events (most answers end there), TLS on either
side (the bytes on the socket are not the body), and any stream while ``stream_threads`` threads
are busy. The loop's relay keeps every rule the thread keeps: the route's idle timeout while
the caller keeps up, the upstream's framing checked, the caller's going away noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from typing import Final

import structlog

from mcpproxy import _pump

log = structlog.get_logger("mcpproxy.offload")

#: Events a POST's stream relays on the loop before it is handed to a thread.
AFTER_EVENTS: Final = 4

ENDED: Final = _pump.ENDED
CALLER_GONE: Final = _pump.CALLER_GONE
TIMEOUT: Final = _pump.TIMEOUT
CANCELLED: Final = _pump.CANCELLED
MALFORMED: Final = _pump.MALFORMED


class Handoff:
    """One stream in a thread: its outcome once done (``_pump.relay``'s, or the error it raised)."""

    __slots__ = ("_cancel", "done", "error", "leftover", "outcome", "relayed", "tail")

    def __init__(self) -> None:
        self._cancel = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.done = asyncio.get_running_loop().create_future()
        self.outcome = CANCELLED
        self.relayed = 0
        #: The body's last bytes, once ENDED: the loop writes them (mcpproxy/_pump.c says why).
        self.tail = b""
        self.leftover = b""
        self.error: Exception | None = None

    def cancel(self) -> None:
        """Stop the thread soon (shutdown, or the caller's connection aborted by the proxy)."""
        if self._cancel >= 0:
            os.eventfd_write(self._cancel, 1)

    def run(self, upstream: int, caller: int, idle_ms: int) -> None:
        """The thread's work (no event-loop call here but the last, which hands the result back)."""
        try:
            self.outcome, self.relayed, self.tail, self.leftover = _pump.relay(
                upstream, caller, self._cancel, idle_ms
            )
        except Exception as exc:  # poll itself failed: the loop fails the exchange
            self.error = exc
        loop = self.done.get_loop()
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is exiting
            loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        self.close()
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        if self._cancel >= 0:
            os.close(self._cancel)
            self._cancel = -1


class Offload:
    """The streams of one listening server now in threads."""

    def __init__(self) -> None:
        self.running: set[Handoff] = set()

    def start(
        self, upstream: int, caller: int, idle_s: float, returned: Callable[[Handoff], None]
    ) -> Handoff | None:
        """Relay the rest of a body from ``upstream`` to ``caller`` (sockets the loop no longer
        reads) in a new thread; ``returned`` runs on the loop once it is done. None when the
        process cannot have another thread or descriptor now: the stream stays on the loop."""
        try:
            handoff = Handoff()
        except OSError as exc:
            log.warning("stream_thread_refused", error=type(exc).__name__)
            return None

        def back(_: asyncio.Future[None]) -> None:
            self.running.discard(handoff)
            returned(handoff)

        idle_ms = min(int(idle_s * 1000), 2**31 - 1)
        thread = threading.Thread(
            target=handoff.run, args=(upstream, caller, idle_ms), name="mcpproxy-stream", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": a limit of the process
            log.warning("stream_thread_refused", error=type(exc).__name__)
            handoff.close()
            return None
        self.running.add(handoff)
        handoff.done.add_done_callback(back)
        return handoff

    async def settle(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound, not a deadline API
        """Cancel every stream still in a thread and wait (up to ``timeout``) for them to be back."""
        waiting = [handoff.done for handoff in self.running]
        for handoff in tuple(self.running):
            handoff.cancel()
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)


def plain_socket(transport: asyncio.BaseTransport) -> int | None:
    """The file descriptor of a transport's socket, or None when what is on that socket is not
    what the transport carries (TLS)."""
    if transport.get_extra_info("ssl_object") is not None:
        return None
    sock = transport.get_extra_info("socket")
    return None if sock is None else int(sock.fileno())
