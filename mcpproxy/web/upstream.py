"""Upstream HTTP/1.1 connections for the relay: a keep-alive pool per route, and a protocol that
parses each response head and hands the body on, framing unchanged, as it arrives.

No coroutine runs per chunk: bytes go from ``data_received`` straight to the response's
:class:`ResponseSink` (the caller's connection), and reading pauses while the caller's socket
is backed up, so a slow caller holds at most a transport buffer of a large answer in memory.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Final, cast
from urllib.parse import urlsplit

from mcpproxy.http1 import (
    MAX_RESPONSE_HEAD,
    ChunkDecoder,
    ChunkScanner,
    Framing,
    ProtocolViolation,
    ResponseHead,
    find_head_end,
    parse_response_head,
)
from mcpproxy.web.offload import ENDED, MALFORMED, TIMEOUT, Handoff
from mcpproxy.web.watchdog import Watchdog
from mcpproxy.web.writes import Outlet, WriteBatch

#: Idle upstream connections kept per route, and for how long.
MAX_IDLE: Final = 64
KEEPALIVE_S: Final = 30.0


class UpstreamTimeout(Exception):
    """The upstream was silent for longer than the route's idle timeout."""


class ResponseSink:
    """Where an upstream response goes, as it arrives.

    A base class rather than a ``Protocol``: compiled (:mod:`mcpproxy.native`), a call through a
    base class is a direct one, where a call through a protocol looks the method up by name,
    once for every chunk of a stream."""

    def head(self, head: ResponseHead) -> None:
        raise NotImplementedError

    def body(self, data: bytes) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError

    def fail(self, exc: Exception) -> None:
        raise NotImplementedError


class Origin:
    """Where a route's upstream listens, and how its requests name it."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.host_header = parts.netloc.rpartition("@")[2]
        self.prefix = f"{parts.scheme}://{parts.netloc}"
        #: The last start made (see start): the method and URL it was made for, and the text.
        self._last: tuple[str, str, str] = ("", "", "")

    def target(self, url: str) -> str:
        """The origin-form request target of ``url`` (which lies on this origin)."""
        return url[len(self.prefix) :] or "/"

    def start(self, method: str, url: str) -> str:
        """A request's start line and Host field, for ``url`` (on this origin). The last one made
        is kept: a route's requests go to one URL (its match is shared, so the same object),
        mostly with one method, and formatting it took more than looking."""
        last_method, last_url, text = self._last
        if method is last_method and url is last_url:
            return text
        text = f"{method} {self.target(url)} HTTP/1.1\r\nHost: {self.host_header}"
        self._last = (method, url, text)
        return text


_TLS: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


class UpstreamPool:
    """Keep-alive connections to one route's upstream (most recently used first)."""

    def __init__(self, origin: Origin, *, connect_timeout: float, idle_timeout: float) -> None:
        self.origin = origin
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._idle: list[UpstreamConnection] = []
        self._closed = False

    def take(self) -> UpstreamConnection | None:
        """An idle connection, if there is one."""
        while self._idle:
            conn = self._idle.pop()
            conn.leave_pool()
            if conn.usable:
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection (raises OSError / TimeoutError / ssl.SSLError)."""
        loop = asyncio.get_running_loop()
        origin = self.origin
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await loop.create_connection(
                lambda: UpstreamConnection(self),
                origin.host,
                origin.port,
                ssl=_tls_context() if origin.tls else None,
                server_hostname=origin.host if origin.tls else None,
            )
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if self._closed or not conn.usable or len(self._idle) >= MAX_IDLE:
            conn.close()
            return
        self._idle.append(conn)
        conn.enter_pool()

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class UpstreamConnection(asyncio.Protocol):
    """One upstream connection: one request at a time, its response relayed to a sink."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        loop = asyncio.get_running_loop()
        #: The loop's clock, looked up once: it is read for every chunk received.
        self._clock: Callable[[], float] = loop.time
        self.transport: asyncio.Transport | None = None
        #: The transport's write (set and cleared with ``transport``; see writes.Outlet).
        self._outlet: Outlet | None = None
        self._sink: ResponseSink | None = None
        self._buffer = b""
        self._framing: Framing | None = None  # None: waiting for the response head
        self._remaining = 0
        #: A ChunkDecoder when the sink takes a chunked body's data rather than the body as framed.
        self._scanner: ChunkScanner | None = None
        self._keep_alive = False
        self._last_read = 0.0
        self._watchdog = Watchdog(loop, self._due)
        self._pooled_at: float | None = None
        self._paused = False

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self._outlet is not None and not self._outlet.is_closing() and self._sink is None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        self._outlet = Outlet(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._watchdog.cancel()
        self._pool.forget(self)
        sink, self._sink = self._sink, None
        self.transport = None
        self._outlet = None
        if sink is None:
            return
        if self._framing is Framing.CLOSE:
            sink.end()
        else:
            sink.fail(ConnectionResetError("upstream closed the connection"))

    def close(self) -> None:
        self._sink = None
        self._watchdog.cancel()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection mid-exchange (the caller went away or gave up)."""
        self._sink = None
        self._watchdog.cancel()
        if self.transport is not None:
            self.transport.abort()

    def enter_pool(self) -> None:
        self._pooled_at = self._clock()
        self._watchdog.within(KEEPALIVE_S)

    def leave_pool(self) -> None:
        self._pooled_at = None

    # --- one exchange -----------------------------------------------------------------------

    def start(self, request: bytes, sink: ResponseSink, writes: WriteBatch) -> None:
        """Send ``request`` (head and body, through ``writes``) and relay its response to ``sink``."""
        outlet = self._outlet
        assert outlet is not None
        self._sink = sink
        self._buffer = b""
        self._framing = None
        self._last_read = self._clock()
        self._watchdog.within(self._pool.idle_timeout)
        self.resume()
        writes.write(outlet, request)

    def pause(self) -> None:
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and self._paused:
            self._paused = False
            self._last_read = self._clock()
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self._last_read = self._clock()
        if self._sink is None:
            # Bytes outside any exchange: the connection is not in a state to be reused.
            if self.transport is not None:
                self.transport.close()
            return
        try:
            if self._framing is None:
                self._head_data(data)
            else:
                self._body_data(data)
        except ProtocolViolation as exc:
            self._failed(exc)

    def _head_data(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        end = find_head_end(buffer)
        if end < 0:
            if len(buffer) > MAX_RESPONSE_HEAD:
                raise ProtocolViolation("response head too large")
            self._buffer = buffer
            return
        self._buffer = b""
        head = parse_response_head(buffer[:end])
        rest = buffer[end:]
        if head.status < 200:  # an interim answer (103 Early Hints...): the real one follows
            if head.status == 101:
                raise ProtocolViolation("unexpected protocol switch")
            if rest:
                self._head_data(rest)
            return
        self._framing = head.framing
        self._remaining = head.length
        self._keep_alive = head.keep_alive
        self._scanner = ChunkScanner() if head.framing is Framing.CHUNKED else None
        sink = self._sink
        assert sink is not None
        sink.head(head)
        if head.framing is Framing.NONE or (head.framing is Framing.LENGTH and head.length == 0):
            self._finish(reusable=not rest)
        elif rest and self._sink is not None:
            self._body_data(rest)

    def _body_data(self, data: bytes) -> None:
        sink = self._sink
        assert sink is not None
        framing = self._framing
        if framing is Framing.LENGTH:
            if len(data) < self._remaining:
                self._remaining -= len(data)
                sink.body(data)
                return
            extra = len(data) > self._remaining
            sink.body(data[: self._remaining] if extra else data)
            self._remaining = 0
            self._finish(reusable=not extra)
        elif framing is Framing.CHUNKED:
            scanner = self._scanner
            assert scanner is not None
            if isinstance(scanner, ChunkDecoder):
                used, chunk_data = scanner.decode(data)
                if chunk_data:
                    sink.body(chunk_data)
            else:
                used = scanner.feed(data)
                sink.body(data if used == len(data) else data[:used])
            if scanner.done:
                self._finish(reusable=used == len(data))
        else:
            sink.body(data)

    def decode_chunks(self) -> None:
        """From the sink's ``head``: hand it a chunked body's data, not the body as framed."""
        if self._framing is Framing.CHUNKED:
            self._scanner = ChunkDecoder()

    def _finish(self, *, reusable: bool) -> None:
        sink, self._sink = self._sink, None
        if not (reusable and self._keep_alive) and self.transport is not None:
            self.transport.close()
        if sink is not None:
            sink.end()

    def _failed(self, exc: Exception) -> None:
        sink = self._sink
        self.abort()
        if sink is not None:
            sink.fail(exc)

    # --- a stream relayed by a thread (mcpproxy.web.offload) --------------------------------

    def at_chunk_boundary(self) -> bool:
        """Whether a thread may take the body now: a chunked body relayed as it is framed, at a
        chunk boundary."""
        scanner = self._scanner
        return self.transport is not None and type(scanner) is ChunkScanner and scanner.at_boundary

    def taken_back(self, handoff: Handoff) -> None:
        """The thread is done with the body: end or fail the exchange as these reads would have.
        (A caller gone, or the thread cancelled, is the caller's side: the exchange ends it.)"""
        self.resume()
        if handoff.error is not None:
            self._failed(handoff.error)
        elif handoff.outcome == ENDED:
            self._finish(reusable=not handoff.leftover)
        elif handoff.outcome == TIMEOUT:
            self._failed(UpstreamTimeout())
        elif handoff.outcome == MALFORMED:
            self._failed(ProtocolViolation("malformed chunked body"))
        else:
            self._failed(ConnectionResetError("upstream closed the connection"))

    # --- timeouts ---------------------------------------------------------------------------

    def _due(self) -> float | None:
        """The watchdog's check: an idle pooled connection closes after ``KEEPALIVE_S``; an
        upstream silent for the route's idle timeout fails its exchange, unless the caller is
        the one not reading."""
        if self.transport is None:
            return None
        now = self._clock()
        idle = self._pool.idle_timeout
        if self._pooled_at is not None:
            left = self._pooled_at + KEEPALIVE_S - now
            if left > 0:
                return left
            self.close()
            return None
        if self._sink is None or self._paused:
            return idle
        left = self._last_read + idle - now
        if left > 0:
            return left
        self._failed(UpstreamTimeout())
        return None
