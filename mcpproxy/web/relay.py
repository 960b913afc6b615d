"""The fast path: a raw asyncio HTTP/1.1 relay for the common request, aiohttp for the rest.

Every connection starts here. A request in the shape MCP clients send on every tool call — a
``POST`` (or a bodiless ``DELETE``) with a small ``Content-Length`` body, strictly well formed
(:func:`mcpproxy.http1.parse_request_head`) — is judged by the same core as any other request
(:meth:`ProxyHandler.prepare`) and relayed over a pooled upstream connection with no per-chunk
coroutine. Anything else — GET streams, the legacy transport, ``tools/list`` under a policy (its
answer is filtered), large or chunked bodies, operational endpoints, malformed input — is handed,
with every byte read so far, to aiohttp's request handler, which then owns the connection.

Why: aiohttp's server and client machinery cost ~250 µs of CPU per proxied request on the
benchmark machine, nearly all of the proxy's cost (bench/PROFILE.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote

import structlog
from multidict import CIMultiDict

from mcpproxy import prm
from mcpproxy.errors import JSONRPC_INTERNAL_ERROR, ProxyError
from mcpproxy.http1 import (
    END_OF_HEAD,
    Framing,
    RequestHead,
    ResponseHead,
    encode_head,
    parse_request_head,
    safe_value,
)
from mcpproxy.jsonrpc import Body
from mcpproxy.policy import list_requests
from mcpproxy.routing import Match
from mcpproxy.web.proxy import (
    SMALL_BODY,
    Incoming,
    Outcome,
    Prepared,
    ProxyHandler,
    RouteRuntime,
    request_id_of,
    upstream_error,
)
from mcpproxy.web.upstream import UpstreamConnection, UpstreamTimeout

if TYPE_CHECKING:
    from mcpproxy.web.app import Live

log = structlog.get_logger("mcpproxy.relay")

#: Paths the aiohttp application answers itself.
_OPERATIONAL = ("/healthz", "/readyz", "/metrics", prm.WELL_KNOWN)
#: Seconds an idle caller connection is kept open (aiohttp's default keep-alive).
KEEPALIVE_S = 75.0
#: Bytes buffered from a caller while its current request is being answered.
_MAX_PENDING = 1024 * 1024


class Relay:
    """What the caller connections of one listening server share."""

    def __init__(self, live: Live, handover: Callable[[], asyncio.Protocol]) -> None:
        self.live = live
        self.handover = handover
        self.connections: set[CallerConnection] = set()
        self.closing = False

    def close_idle(self) -> None:
        """Stop taking requests: idle connections close now, busy ones after their answer."""
        self.closing = True
        for conn in tuple(self.connections):
            conn.close_when_idle()

    async def shutdown(self, timeout: float | None) -> None:  # noqa: ASYNC109 - aiohttp's grace
        """Wait for answers in progress, up to ``timeout``; then cut what is left."""
        try:
            async with asyncio.timeout(timeout):
                while any(conn.busy for conn in self.connections):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pass
        for conn in tuple(self.connections):
            conn.abort()


class _Job:
    """A request the relay serves: where it goes and what it carries."""

    __slots__ = ("body", "error", "handler", "head", "match", "runtime")

    def __init__(self, head: RequestHead, handler: ProxyHandler, match: Match, runtime: RouteRuntime) -> None:
        self.head = head
        self.handler = handler
        self.match = match
        self.runtime = runtime
        self.body: Body | None = None
        self.error: ProxyError | None = None


class CallerConnection(asyncio.Protocol):
    """A caller's connection, served request by request until handed to aiohttp or closed."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._remote = ""
        self.busy = False
        self._task: asyncio.Task[None] | None = None
        self._exchange: _Exchange | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._close_after = False
        self._paused_reading = False
        self.write_paused = False

    # --- connection events ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, tuple) else ""
        self._relay.connections.add(self)
        self._arm_keepalive()

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.connections.discard(self)
        self._cancel_timer()
        self.transport = None
        if self._exchange is not None:
            self._exchange.caller_gone()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self.busy:
            self._cancel_timer()
            self._next()
            if not self.busy and self.transport is not None:
                self._arm_keepalive()  # a head or body still arriving gets as long as an idle one
        elif len(self._buffer) > _MAX_PENDING and self.transport is not None:
            self.transport.pause_reading()
            self._paused_reading = True

    def pause_writing(self) -> None:
        self.write_paused = True
        if self._exchange is not None:
            self._exchange.caller_backed_up()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._exchange is not None:
            self._exchange.caller_drained()

    def eof_received(self) -> bool | None:
        return None  # half-closed caller: close once answered (the transport does)

    # --- requests ---------------------------------------------------------------------------

    def _next(self) -> None:
        """Serve the buffered request if the relay can, hand the connection over if not.

        The decision is taken as early as the bytes allow: a head that cannot be one the relay
        serves, or a body it would not take, goes to aiohttp at once (which answers a declared
        oversized body with 413 before it arrives), so the relay never buffers more than a
        head and a small body.
        """
        buffer = self._buffer
        state = self._relay.live.current
        if state is None or not state.config.server.fast_path or self._relay.closing:
            self._hand_over()
            return
        server = state.config.server
        end = buffer.find(END_OF_HEAD)
        if end < 0:
            if len(buffer) > server.max_header_bytes or not _may_be_relayed(buffer):
                self._hand_over()
            return
        head_end = end + 4
        head = parse_request_head(bytes(buffer[:head_end])) if head_end <= server.max_header_bytes else None
        if (
            head is None
            or head.content_length > min(SMALL_BODY, server.max_body_bytes)
            or (head.method == "DELETE" and head.content_length)
        ):
            self._hand_over()
            return
        if len(buffer) < head_end + head.content_length:
            return  # the body is still arriving
        job = self._job(head, state.handler, bytes(buffer[head_end : head_end + head.content_length]))
        if job is None:
            self._hand_over()
            return
        del buffer[: head_end + head.content_length]
        self.busy = True
        self._close_after = not head.keep_alive
        self._task = self._loop.create_task(self._serve(job))

    def _job(self, head: RequestHead, handler: ProxyHandler, raw: bytes) -> _Job | None:
        """The request as the relay would serve it, or None when aiohttp must."""
        if head.target.startswith(_OPERATIONAL):
            return None
        try:
            match = handler.table.match(head.target)
        except ProxyError:
            return None
        if match is None:
            return None
        job = _Job(head, handler, match, handler.runtimes[match.route.name])
        if head.content_length:
            try:
                job.body = job.runtime.parse(raw)
            except ProxyError as exc:
                job.error = exc
            if job.body is not None and job.runtime.policy is not None and list_requests(job.body):
                return None  # its answer is filtered: aiohttp's path does that
        return job

    async def _serve(self, job: _Job) -> None:
        started = time.monotonic()
        head, handler, runtime = job.head, job.handler, job.runtime
        request_id = request_id_of(head.headers)
        path = head.target.partition("?")[0]
        incoming = Incoming(
            head.method, unquote(path), head.headers, head.host, self._remote, "http", head.content_length > 0
        )
        outcome = Outcome(route=runtime.settings.name, via="relay")
        keep_alive = False
        try:
            if job.error is not None:
                raise job.error
            handler.describe(incoming, runtime, job.body, outcome)
            prepared = await handler.prepare(incoming, runtime, job.body, request_id, outcome)
            handler.admit(runtime)
            try:
                keep_alive = await self._forward(job, incoming, prepared, request_id, outcome)
            finally:
                runtime.in_flight -= 1
        except ProxyError as exc:
            handler.rejected(exc, outcome)
            self._write_error(exc, job, incoming, request_id)
            keep_alive = True
        except asyncio.CancelledError:
            if outcome.error is None:  # not a stream the upstream cut (the proxy then cut the caller)
                outcome.status, outcome.error = 499, "client_disconnected"
        except Exception as exc:  # a bug must cost one request, never the process
            log.error("internal_error", error=type(exc).__name__)
            outcome.status, outcome.error = 500, "internal_error"
            self._write_error(
                ProxyError(500, "internal proxy error", JSONRPC_INTERNAL_ERROR), job, incoming, request_id
            )
        finally:
            handler.record(incoming, outcome, request_id, started)
        self._answered(keep_alive)

    async def _forward(
        self, job: _Job, incoming: Incoming, prepared: Prepared, request_id: str, outcome: Outcome
    ) -> bool:
        """Send upstream and relay the answer; on a 401 to an exchanged token, retry once with a
        fresh one. Returns whether the caller's connection may serve another request."""
        runtime = job.runtime
        credential, headers = prepared.credential, prepared.headers
        for attempt in (1, 2):
            value = await credential.value(prepared.subject)
            if value is not None and credential.header:
                if not safe_value(value):
                    raise ProxyError(
                        502, "upstream credential unusable", JSONRPC_INTERNAL_ERROR, reason="bad_credential"
                    )
                headers[credential.header] = value
            request = self._upstream_request(job, headers)
            conn = await self._connect(runtime)
            exchange = _Exchange(
                self,
                job,
                incoming,
                conn,
                request_id,
                outcome,
                retry=attempt == 1 and credential.retries_on_401,
            )
            self._exchange = exchange
            try:
                outcome.upstream_s = None
                sent = time.monotonic()
                exchange.sent = sent
                conn.start(request, exchange)
                result = await exchange.done
            except asyncio.CancelledError:
                conn.abort()
                raise
            finally:
                self._exchange = None
            if result is _RETRY:
                log.info("upstream_401_retry", route=runtime.settings.name)
                await credential.invalidate(prepared.subject, value)
                continue
            return result is _KEEP
        raise AssertionError("unreachable")  # pragma: no cover

    def _upstream_request(self, job: _Job, headers: CIMultiDict[str]) -> bytes:
        runtime, head = job.runtime, job.head
        origin = runtime.pool.origin
        start = (
            f"{head.method} {origin.target(job.match.upstream_url)} HTTP/1.1\r\nHost: {origin.host_header}"
        )
        body = job.body.raw if job.body is not None else b""
        if head.method == "POST" or body:
            headers["Content-Length"] = str(len(body))
        try:
            return encode_head(start, headers) + body
        except UnicodeEncodeError:
            raise ProxyError(
                502, "upstream request cannot be encoded", JSONRPC_INTERNAL_ERROR, reason="bad_credential"
            ) from None

    async def _connect(self, runtime: RouteRuntime) -> UpstreamConnection:
        try:
            return await runtime.pool.acquire()
        except TimeoutError as exc:
            raise upstream_error(504, "timeout", "upstream timed out", exc) from None
        except OSError as exc:
            raise upstream_error(502, "connect", "upstream unreachable", exc) from None

    def _write_error(self, exc: ProxyError, job: _Job, incoming: Incoming, request_id: str) -> None:
        response = job.handler.error_response(exc, incoming, job.runtime, request_id, job.body)
        assert isinstance(response.body, bytes)
        headers = CIMultiDict(response.headers)
        headers["Content-Length"] = str(len(response.body))
        self.write_head(response.status, response.reason, headers)
        self.write(response.body)

    def write_head(self, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        self.write(self.encode_head(status, reason, headers))

    def encode_head(self, status: int, reason: str, headers: CIMultiDict[str]) -> bytes:
        headers["Date"] = _http_date()
        if self._close_after:
            headers["Connection"] = "close"
        return encode_head(f"HTTP/1.1 {status} {reason}", headers)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _answered(self, keep_alive: bool) -> None:
        self.busy = False
        self._task = None
        transport = self.transport
        if transport is None:
            return
        if not keep_alive or self._close_after or self._relay.closing:
            transport.close()
            return
        if self._paused_reading:
            self._paused_reading = False
            transport.resume_reading()
        if self._buffer:
            self._next()
        if not self.busy and self.transport is not None:
            self._arm_keepalive()

    def _hand_over(self) -> None:
        """Give the connection, with everything read so far, to aiohttp's request handler."""
        transport = self.transport
        if transport is None:
            return
        self._relay.connections.discard(self)
        self._cancel_timer()
        protocol = self._relay.handover()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._buffer = bytes(self._buffer), bytearray()
        self.transport = None
        if self._paused_reading:
            transport.resume_reading()
        if data:
            protocol.data_received(data)

    # --- keep-alive and shutdown ------------------------------------------------------------

    def _arm_keepalive(self) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(KEEPALIVE_S, self._idle_timeout)

    def _idle_timeout(self) -> None:
        self._timer = None
        if not self.busy and self.transport is not None:
            self.transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close_when_idle(self) -> None:
        if not self.busy and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _may_be_relayed(partial: bytearray) -> bool:
    """Whether an incomplete head could still turn out to be one the relay serves."""
    if partial.count(b"\n") != partial.count(b"\r\n"):
        return False  # a bare LF: aiohttp's parser judges that
    line_end = partial.find(b"\r\n")
    if line_end < 0:
        start = bytes(partial[:7])
        return b"POST ".startswith(start[:5]) or b"DELETE ".startswith(start)
    line = partial[:line_end]
    return line.startswith((b"POST /", b"DELETE /")) and line.endswith(b" HTTP/1.1")


_RETRY = object()
_KEEP = object()
_CLOSE = object()


class _Exchange:
    """One upstream response on its way to the caller (the upstream connection's sink)."""

    __slots__ = (
        "_caller",
        "_chunked_out",
        "_conn",
        "_held",
        "_incoming",
        "_is_sse",
        "_job",
        "_outcome",
        "_request_id",
        "_retry",
        "_started",
        "done",
        "sent",
    )

    def __init__(
        self,
        caller: CallerConnection,
        job: _Job,
        incoming: Incoming,
        conn: UpstreamConnection,
        request_id: str,
        outcome: Outcome,
        *,
        retry: bool,
    ) -> None:
        self._caller = caller
        self._job = job
        self._incoming = incoming
        self._conn = conn
        self._request_id = request_id
        self._outcome = outcome
        self._retry = retry
        self._started = False
        self._chunked_out = False
        self._is_sse = False
        #: A small answer of known length, held until whole: one write, and a 502 (not a cut
        #: connection) when the upstream fails before its end.
        self._held: list[bytes] | None = None
        self.sent = 0.0
        self.done: asyncio.Future[object] = caller._loop.create_future()

    def head(self, head: ResponseHead) -> None:
        outcome, runtime = self._outcome, self._job.runtime
        outcome.upstream_s = time.monotonic() - self.sent
        outcome.upstream_status = outcome.status = head.status
        if head.status == 401 and self._retry:
            self._conn.abort()
            self._resolve(_RETRY)
            return
        route = runtime.settings
        handler = self._job.handler
        headers = handler.answer_headers(head.headers, head.status, self._incoming, runtime, self._request_id)
        handler.metrics.upstream_latency.observe(outcome.upstream_s, route=route.name)
        if head.framing is Framing.LENGTH:
            headers["Content-Length"] = str(head.length)
        elif head.framing is not Framing.NONE:
            headers["Transfer-Encoding"] = "chunked"
            self._chunked_out = head.framing is Framing.CLOSE
        self._is_sse = head.content_type == "text/event-stream"
        if self._is_sse:
            self._job.handler.metrics.open_streams.inc(route=route.name)
        encoded = self._caller.encode_head(head.status, head.reason, headers)
        if head.framing is Framing.LENGTH and head.length <= SMALL_BODY and not self._is_sse:
            self._held = [encoded]
            return
        self._started = True
        self._caller.write(encoded)
        if self._caller.write_paused:
            self._conn.pause()

    def body(self, data: bytes) -> None:
        self._outcome.bytes_out += len(data)
        if self._held is not None:
            self._held.append(data)
            return
        if self._chunked_out:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._caller.write(data)

    def end(self) -> None:
        if self._held is not None:
            self._caller.write(b"".join(self._held))
        elif self._chunked_out:
            self._caller.write(b"0\r\n\r\n")
        self._finish()
        self._job.runtime.pool.release(self._conn)
        self._resolve(_KEEP)

    def fail(self, exc: Exception) -> None:
        if not self._started:
            if isinstance(exc, UpstreamTimeout):
                error = upstream_error(504, "timeout", "upstream timed out", exc)
            else:
                error = upstream_error(502, "protocol", "upstream failed", exc)
            if not self.done.done():
                self.done.set_exception(error)
            return
        # The answer has begun: the only honest signal left is a cut connection.
        self._outcome.error = "upstream_stream_failed"
        self._outcome.detail = type(exc).__name__
        self._job.handler.metrics.upstream_errors.inc(route=self._outcome.route, kind="stream")
        self._finish()
        self._caller.abort()
        self._resolve(_CLOSE)

    def caller_gone(self) -> None:
        self._conn.abort()
        self._finish()

    def caller_backed_up(self) -> None:
        self._conn.pause()

    def caller_drained(self) -> None:
        self._conn.resume()

    def _finish(self) -> None:
        if self._is_sse:
            self._is_sse = False
            self._job.handler.metrics.open_streams.dec(route=self._job.runtime.settings.name)

    def _resolve(self, result: object) -> None:
        if not self.done.done():
            self.done.set_result(result)


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The ``Date`` header value, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]
