"""The fast path: a raw asyncio HTTP/1.1 relay for the common request, aiohttp for the rest.

Every connection starts here. A request in the shape MCP clients send on every tool call — a
``POST`` with a small ``Content-Length`` body, or a bodiless ``GET`` (the server's stream) or
``DELETE``, strictly well formed (:func:`mcpproxy.http1.parse_request_head`) — is judged by the
same core as any other request (:meth:`ProxyHandler.prepare`) and relayed over a pooled upstream
connection with no per-chunk coroutine. A GET stream's first event goes through the legacy
transport's endpoint rewriting (:mod:`mcpproxy.sse`) on its way. Anything else — ``tools/list``
or a GET stream under a policy (list results are filtered), large or chunked bodies, operational
endpoints, malformed input — is handed, with every byte read so far, to aiohttp's request
handler, which then owns the connection.

Why: aiohttp's server and client machinery cost ~250 µs of CPU per proxied request on the
benchmark machine, nearly all of the proxy's cost (bench/PROFILE.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from typing import TYPE_CHECKING, Final, cast
from urllib.parse import unquote

import structlog
from multidict import CIMultiDict

from mcpproxy import prm
from mcpproxy.errors import JSONRPC_INTERNAL_ERROR, ProxyError
from mcpproxy.headers import CONTENT_LENGTH, field_lines, upstream_request_lines
from mcpproxy.http1 import (
    RELAYED_METHODS,
    Framing,
    RequestHead,
    ResponseHead,
    encode_head,
    find_head_end,
    parse_request_head,
)
from mcpproxy.jsonrpc import Body
from mcpproxy.logs import PerSecond
from mcpproxy.policy import list_requests
from mcpproxy.routing import Match
from mcpproxy.sse import EndpointRejected, EndpointRewriter
from mcpproxy.upstream_auth import PENDING
from mcpproxy.web.offload import AFTER_EVENTS, CALLER_GONE, CANCELLED, Handoff, Offload, plain_socket
from mcpproxy.web.proxy import (
    SMALL_BODY,
    Incoming,
    Outcome,
    Prepared,
    ProxyHandler,
    RouteRuntime,
    endpoint_rewriter,
    request_id_of,
    upstream_error,
)
from mcpproxy.web.upstream import ResponseSink, UpstreamConnection, UpstreamTimeout
from mcpproxy.web.watchdog import Watchdog
from mcpproxy.web.writes import Outlet, WriteBatch

if TYPE_CHECKING:
    from mcpproxy.web.app import Live, ProxyState

log = structlog.get_logger("mcpproxy.relay")
#: The clocks, as compiled module finals (``time.monotonic`` looked the function up on the
#: module at every call: a fifth of the cost of reading the clock).
_monotonic: Final = time.monotonic
_now: Final = time.time

#: Paths the aiohttp application answers itself.
_OPERATIONAL: Final = ("/healthz", "/readyz", "/metrics", prm.WELL_KNOWN)
#: The common answer's status line, made once rather than formatted on every answer.
_OK: Final = "HTTP/1.1 200 OK"
#: Seconds an idle caller connection is kept open (aiohttp's default keep-alive).
KEEPALIVE_S = 75.0
#: Bytes buffered from a caller while its current request is being answered.
_MAX_PENDING = 1024 * 1024
#: Seconds a shutdown waits for the streams in threads, once cancelled, to be back.
_SETTLE_S = 5.0


class _Served:
    """What the relay reads of the state serving requests, on every request: looked up once a
    state. (The state and its config are interpreted objects; compiled code looks each of their
    attributes up by name, nine a request.)"""

    __slots__ = ("handler", "max_body", "max_header_bytes", "state", "stream_threads")

    def __init__(self, state: ProxyState | None) -> None:
        self.state = state
        #: None: nothing the relay serves (no state yet, or ``server.fast_path: false``).
        self.handler: ProxyHandler | None = None
        self.max_header_bytes = self.max_body = self.stream_threads = 0
        if state is not None:
            server = state.config.server
            self.handler = state.handler if server.fast_path else None
            self.max_header_bytes = server.max_header_bytes
            self.max_body = min(SMALL_BODY, server.max_body_bytes)
            self.stream_threads = server.stream_threads


class Relay:
    """What the caller connections of one listening server share."""

    def __init__(self, live: Live, handover: Callable[[], asyncio.Protocol]) -> None:
        self.live = live
        self._served = _Served(None)
        self.handover = handover
        self.connections: set[CallerConnection] = set()
        self.closing = False
        #: The loop (asyncio.get_running_loop makes a getpid system call on Python 3.11).
        self.loop = asyncio.get_running_loop()
        #: The writes of every connection, caller and upstream, sent at the end of each loop iteration.
        self.writes = WriteBatch(self.loop)
        #: The streams now relayed by threads (mcpproxy.web.offload).
        self.offload = Offload()

    def served(self) -> _Served:
        """What the state now serving requests says about serving one (a reload makes a new one)."""
        state = self.live.current
        if state is not self._served.state:
            self._served = _Served(state)
        return self._served

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
        await self.offload.settle(_SETTLE_S)


class _Request:
    """A request the relay serves, from its head to its access line."""

    __slots__ = (
        "admitted",
        "attempt",
        "body",
        "error",
        "finished",
        "handler",
        "head",
        "incoming",
        "match",
        "outcome",
        "prepared",
        "request_id",
        "runtime",
        "sent_value",
        "started",
    )

    def __init__(
        self, head: RequestHead, handler: ProxyHandler, match: Match, runtime: RouteRuntime, remote: str
    ) -> None:
        self.started = _monotonic()
        self.head = head
        self.handler = handler
        self.match = match
        self.runtime = runtime
        self.body: Body | None = None
        self.error: ProxyError | None = None
        self.request_id = request_id_of(head.headers)
        self.incoming = Incoming(
            head.method,
            _path(head.target),
            head.headers,
            head.host,
            remote,
            "http",
            head.content_length > 0,
            plain_values=True,
        )
        self.outcome = Outcome(route=runtime.name, via="relay")
        self.prepared: Prepared | None = None
        self.admitted = False
        self.attempt = 1
        self.sent_value: str | None = None
        self.finished = False


def _path(target: str) -> str:
    """The request target's path, percent-decoded (``unquote``, a Python function, only when
    there is something to decode: a call into it on every request cost more than the check)."""
    path = target.partition("?")[0]
    return unquote(path) if "%" in path else path


class CallerConnection(asyncio.Protocol):
    """A caller's connection, served request by request until handed to aiohttp or closed."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._loop = relay.loop
        #: The loop's clock, looked up once (see Outlet).
        self._clock: Callable[[], float] = self._loop.time
        self.transport: asyncio.Transport | None = None
        #: The transport's write, for streamed events (set and cleared with ``transport``).
        self._outlet: Outlet | None = None
        #: What was read and not yet served: the bytes of one read as they came while nothing
        #: else is pending (most requests arrive in one read: served from them, not copied),
        #: a bytearray once reads add up.
        self._buffer: bytes | bytearray = b""
        self._remote = ""
        self.busy = False
        self._request: _Request | None = None
        self._task: asyncio.Task[None] | None = None
        self._exchange: _Exchange | None = None
        self._watchdog = Watchdog(self._loop, self._keepalive)
        self._idle_since = self._clock()
        self._close_after = False
        self._paused_reading = False
        self.write_paused = False
        #: The stream a thread relays to this connection now (mcpproxy.web.offload): the loop
        #: neither reads nor writes the socket meanwhile.
        self._handoff: Handoff | None = None

    # --- connection events ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        self._outlet = Outlet(self.transport)
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, tuple) else ""
        self._relay.connections.add(self)
        self._watchdog.within(KEEPALIVE_S)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handoff is not None:
            self._handoff.cancel()
        self._relay.connections.discard(self)
        self._watchdog.cancel()
        self.transport = None
        self._outlet = None
        if self._task is not None:
            self._task.cancel()
        if self._exchange is not None:
            self._exchange.caller_gone()
        if self._request is not None:
            self._gone(self._request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if not buffer:
            self._buffer = data
        elif isinstance(buffer, bytearray):
            buffer += data
        else:  # an earlier read's bytes: from now on reads add up in a bytearray
            grown = bytearray(buffer)
            grown += data
            self._buffer = grown
        if not self.busy:
            self._next()
            if not self.busy:
                self._idle_since = self._clock()  # a head or body still arriving: as long as idle
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
        served = self._relay.served()
        if served.handler is None or self._relay.closing:
            self._hand_over()
            return
        head_end = find_head_end(buffer)
        if head_end < 0:
            if len(buffer) > served.max_header_bytes or not _may_be_relayed(buffer):
                self._hand_over()
            return
        head = parse_request_head(bytes(buffer[:head_end])) if head_end <= served.max_header_bytes else None
        if (
            head is None
            or head.content_length > served.max_body
            or (head.method != "POST" and head.content_length)
        ):
            self._hand_over()
            return
        if len(buffer) < head_end + head.content_length:
            return  # the body is still arriving
        request = self._admissible(
            head, served.handler, bytes(buffer[head_end : head_end + head.content_length])
        )
        if request is None:
            self._hand_over()
            return
        self._consumed(head_end + head.content_length)
        self.busy = True
        self._close_after = not head.keep_alive
        self._begin(request)

    def _consumed(self, size: int) -> None:
        """Drop the first ``size`` bytes read (a request now being served)."""
        buffer = self._buffer
        if isinstance(buffer, bytearray):
            del buffer[:size]  # in place: pipelined requests behind it are not copied again
        elif size < len(buffer):
            self._buffer = bytearray(buffer[size:])
        else:
            self._buffer = b""

    def _admissible(self, head: RequestHead, handler: ProxyHandler, raw: bytes) -> _Request | None:
        """The request as the relay would serve it, or None when aiohttp must."""
        if head.target.startswith(_OPERATIONAL):
            return None
        try:
            match = handler.table.match(head.target)
        except ProxyError:
            return None
        if match is None:
            return None
        runtime = handler.runtimes[match.name]
        if head.method == "GET" and runtime.policy is not None:
            return None  # list results on the stream are filtered: aiohttp's path does that
        request = _Request(head, handler, match, runtime, self._remote)
        if head.content_length:
            try:
                request.body = request.runtime.parse(raw)
            except ProxyError as exc:
                request.error = exc
            body, policy = request.body, request.runtime.policy
            if body is not None and policy is not None and list_requests(body):
                return None  # its answer is filtered: aiohttp's path does that
        return request

    # Serving a request is a chain of steps run in callbacks. A step that has to wait (a token
    # not yet in the cache, a key not yet fetched, no idle upstream connection) continues in a
    # task; the common request needs none, which saves creating and scheduling one per request.

    def _begin(self, request: _Request) -> None:
        self._request = request
        handler, runtime, outcome = request.handler, request.runtime, request.outcome
        try:
            if request.error is not None:
                raise request.error
            handler.describe(request.incoming, runtime, request.body, outcome)
            subject = handler.subject_of(request.incoming, runtime, request.body, outcome)
            if runtime.verifier is not None:
                outcome.identity = runtime.verifier.cached(subject)
                if outcome.identity is None:
                    self._wait(request, lambda: self._verify_then_judge(request))
                    return
            self._judge(request)
        except Exception as exc:
            self.refuse(request, exc)

    async def _verify_then_judge(self, request: _Request) -> None:
        assert request.runtime.verifier is not None
        request.outcome.identity = await request.runtime.verifier.verify(request.outcome.subject)
        self._judge(request)

    def _judge(self, request: _Request) -> None:
        handler = request.handler
        request.prepared = handler.judge(
            request.incoming,
            request.runtime,
            request.body,
            request.request_id,
            request.outcome,
            no_lists=True,  # (_admissible handed any request with one to aiohttp)
        )
        handler.admit(request.runtime)
        request.admitted = True
        self._attempt(request)

    def _attempt(self, request: _Request) -> None:
        """Send the request upstream (again, after a 401 to an exchanged token)."""
        prepared = request.prepared
        assert prepared is not None
        value = prepared.credential.value_now(prepared.subject)
        if value is PENDING:
            self._wait(request, lambda: self._credential_then_send(request))
            return
        self._send(request, value)

    async def _credential_then_send(self, request: _Request) -> None:
        prepared = request.prepared
        assert prepared is not None
        self._send(request, await prepared.credential.value(prepared.subject))

    def _send(self, request: _Request, value: str | None) -> None:
        data = self._upstream_request(request, value)
        conn = request.runtime.pool.take()
        if conn is None:
            self._wait(request, lambda: self._connect_then_start(request, data))
            return
        self._start(request, conn, data)

    async def _connect_then_start(self, request: _Request, data: bytes) -> None:
        try:
            conn = await request.runtime.pool.connect()
        except TimeoutError as exc:
            raise upstream_error(504, "timeout", "upstream timed out", exc) from None
        except OSError as exc:
            raise upstream_error(502, "connect", "upstream unreachable", exc) from None
        self._start(request, conn, data)

    def _start(self, request: _Request, conn: UpstreamConnection, data: bytes) -> None:
        prepared = request.prepared
        assert prepared is not None
        retry = request.attempt == 1 and prepared.credential.retries_on_401
        self._exchange = exchange = _Exchange(self, request, conn, retry=retry)
        request.outcome.upstream_s = None
        exchange.sent = _monotonic()
        conn.start(data, exchange, self._relay.writes)

    def _wait(self, request: _Request, step: Callable[[], Coroutine[None, None, None]]) -> None:
        """Run a step that has to wait; the chain goes on from it. (The step's coroutine is made
        in the task, so a task cancelled before it starts leaves no coroutine never awaited.)"""
        self._task = self._loop.create_task(self._waiting(request, step))

    async def _waiting(self, request: _Request, step: Callable[[], Coroutine[None, None, None]]) -> None:
        try:
            await step()
        except asyncio.CancelledError:
            self._gone(request)
        except Exception as exc:
            self.refuse(request, exc)

    def _upstream_request(self, request: _Request, value: str | None) -> bytes:
        prepared = request.prepared
        assert prepared is not None
        credential, head, runtime = prepared.credential, request.head, request.runtime
        incoming = request.incoming
        request.sent_value = value
        lines = upstream_request_lines(
            head.names,
            head.lines,
            incoming.headers,
            runtime.allowed,
            client_ip=incoming.remote,
            scheme=incoming.scheme,
            host=incoming.host,
            request_id=request.request_id,
            replaced=credential.header,
        )
        if value is not None and credential.header:
            line = credential.header_line(value)
            if line is None:
                raise ProxyError(
                    502, "upstream credential unusable", JSONRPC_INTERNAL_ERROR, reason="bad_credential"
                )
            lines.append(line)
        start = runtime.pool.origin.start(head.method, request.match.upstream_url)
        body = request.body.raw if request.body is not None else b""
        if head.method == "POST" or body:
            lines.append("Content-Length: " + str(len(body)))
        try:
            return encode_head(start, lines, body)
        except UnicodeEncodeError:
            raise ProxyError(
                502, "upstream request cannot be encoded", JSONRPC_INTERNAL_ERROR, reason="bad_credential"
            ) from None

    # --- how a request ends -----------------------------------------------------------------

    def retry(self, request: _Request) -> None:
        """The upstream refused an exchanged token: drop it, and send once more with a fresh one."""
        self._exchange = None
        log.info("upstream_401_retry", route=request.runtime.settings.name)
        self._wait(request, lambda: self._invalidate_then_retry(request))

    async def _invalidate_then_retry(self, request: _Request) -> None:
        prepared = request.prepared
        assert prepared is not None
        await prepared.credential.invalidate(prepared.subject, request.sent_value)
        request.attempt = 2
        self._attempt(request)

    def complete(self, request: _Request, keep_alive: bool) -> None:
        """The request is answered (or abandoned): count it, log it, serve the next one."""
        if request.finished:
            return
        request.finished = True
        self._request = self._exchange = self._task = None
        if request.admitted:
            request.runtime.in_flight -= 1
        request.handler.record(
            request.incoming, request.outcome, request.request_id, request.started, self._loop
        )
        self._answered(keep_alive)

    def refuse(self, request: _Request, exc: Exception) -> None:
        """A request that will not be (or could not be) relayed gets the proxy's own answer."""
        if request.finished:
            return
        if isinstance(exc, ProxyError):
            request.handler.rejected(exc, request.outcome)
            self._write_error(exc, request)
            self.complete(request, True)
            return
        # a bug must cost one request, never the process
        log.error("internal_error", error=type(exc).__name__)
        request.outcome.status, request.outcome.error = 500, "internal_error"
        self._write_error(ProxyError(500, "internal proxy error", JSONRPC_INTERNAL_ERROR), request)
        self.complete(request, False)

    def _gone(self, request: _Request) -> None:
        """The caller went away before its answer was done."""
        if not request.finished:
            request.outcome.caller_left()
        self.complete(request, False)

    def _write_error(self, exc: ProxyError, request: _Request) -> None:
        response = request.handler.error_response(
            exc, request.incoming, request.runtime, request.request_id, request.body
        )
        assert isinstance(response.body, bytes)
        headers = CIMultiDict(response.headers)
        headers[CONTENT_LENGTH] = str(len(response.body))
        lines = field_lines(headers.items())
        self.write(self.answer_head(response.status, response.reason, lines))
        self.write(response.body)

    def answer_head(self, status: int, reason: str, lines: list[str]) -> bytes:
        """An answer's head from its field lines, with the connection's own fields added."""
        lines.append(_date_line())
        if self._close_after:
            lines.append("Connection: close")
        start = _OK if status == 200 and reason == "OK" else f"HTTP/1.1 {status} {reason}"
        return encode_head(start, lines, b"")

    def write(self, data: bytes) -> None:
        if self._outlet is not None:
            self._relay.writes.write(self._outlet, data)

    def write_now(self, data: bytes) -> None:
        if self._outlet is not None:
            self._relay.writes.write_now(self._outlet, data)

    def _close(self) -> None:
        """Close the connection once what was written to it is sent."""
        if self.transport is not None:
            self._relay.writes.flush()
            self.transport.close()

    def _answered(self, keep_alive: bool) -> None:
        self.busy = False
        transport = self.transport
        if transport is None:
            return
        if not keep_alive or self._close_after or self._relay.closing:
            self._close()
            return
        if self._paused_reading:
            self._paused_reading = False
            transport.resume_reading()
        if self._buffer:
            self._next()
        if not self.busy:
            self._idle_since = self._clock()

    def _hand_over(self) -> None:
        """Give the connection, with everything read so far, to aiohttp's request handler."""
        transport = self.transport
        if transport is None:
            return
        self._relay.connections.discard(self)
        self._watchdog.cancel()
        self._relay.writes.flush()  # the answers before this request go first
        protocol = self._relay.handover()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._buffer = bytes(self._buffer), b""
        self.transport = None
        self._outlet = None
        if self._paused_reading:
            transport.resume_reading()
        if data:
            protocol.data_received(data)

    # --- keep-alive and shutdown ------------------------------------------------------------

    def _keepalive(self) -> float | None:
        """The watchdog's check: close a connection idle for ``KEEPALIVE_S``."""
        if self.transport is None:
            return None
        if self.busy:
            return KEEPALIVE_S
        left = self._idle_since + KEEPALIVE_S - self._clock()
        if left > 0:
            return left
        self._close()
        return None

    def close_when_idle(self) -> None:
        if not self.busy:
            self._close()

    def abort(self) -> None:
        if self._handoff is not None:
            self._handoff.cancel()  # the thread owns the socket: aborted once it is back
        elif self.transport is not None:
            self.transport.abort()

    # --- a stream relayed by a thread (mcpproxy.web.offload) --------------------------------

    def ready_for_thread(self) -> bool:
        """Whether a thread may take the stream now: one is free and everything written to this
        connection so far is sent."""
        transport = self.transport
        return not (
            transport is None
            or self.write_paused
            or len(self._relay.offload.running) >= self._relay.served().stream_threads
            or not self._relay.writes.empty
            or transport.get_write_buffer_size()
        )

    def hand_off(
        self, upstream: int, downstream: int, idle_s: float, returned: Callable[[Handoff], None]
    ) -> bool:
        """Stop reading this connection's socket and give the stream to a thread; False (and
        reading again) if no thread could be started."""
        if self.transport is not None:
            self.transport.pause_reading()
        self._handoff = self._relay.offload.start(upstream, downstream, idle_s, returned)
        if self._handoff is None:
            self.taken_back()
            return False
        return True

    def taken_back(self) -> None:
        """The thread is done: the loop owns the socket again."""
        self._handoff = None
        if self.transport is not None and not self._paused_reading:
            self.transport.resume_reading()


_METHODS_SP: Final = tuple(method + b" " for method in RELAYED_METHODS)


def _may_be_relayed(partial: bytes | bytearray) -> bool:
    """Whether an incomplete head could still turn out to be one the relay serves."""
    if partial.count(b"\n") != partial.count(b"\r\n"):
        return False  # a bare LF: aiohttp's parser judges that
    line_end = partial.find(b"\r\n")
    if line_end < 0:
        start = bytes(partial[:7])
        return any(method.startswith(start[: len(method)]) for method in _METHODS_SP)
    line = partial[:line_end]
    return line.startswith(_METHODS_SP) and line.endswith(b" HTTP/1.1")


class _Exchange(ResponseSink):
    """One upstream response on its way to the caller (the upstream connection's sink)."""

    __slots__ = (
        "_caller",
        "_chunked_out",
        "_conn",
        "_events",
        "_held",
        "_is_sse",
        "_request",
        "_retry",
        "_rewriter",
        "sent",
    )

    def __init__(
        self, caller: CallerConnection, request: _Request, conn: UpstreamConnection, *, retry: bool
    ) -> None:
        self._caller = caller
        self._request = request
        self._conn = conn
        self._retry = retry
        self._chunked_out = False
        self._is_sse = False
        #: A small answer of known length, held until whole: one write, and a 502 (not a cut
        #: connection) when the upstream fails before its end.
        self._held: list[bytes] | None = None
        #: A GET stream's first event on its way through the legacy endpoint's rewriting.
        self._rewriter: EndpointRewriter | None = None
        #: The events of a POST's stream relayed so far, until a thread takes it; -1 for any
        #: other answer (mcpproxy.web.offload).
        self._events = -1
        self.sent = 0.0

    def head(self, head: ResponseHead) -> None:
        request = self._request
        outcome, runtime, handler = request.outcome, request.runtime, request.handler
        outcome.upstream_s = _monotonic() - self.sent
        outcome.upstream_status = outcome.status = head.status
        if head.status == 401 and self._retry:
            self._conn.abort()
            self._caller.retry(request)
            return
        lines = handler.answer_lines(head, request.incoming, runtime, request.request_id)
        handler.metrics.upstream_latency.observe_at(runtime.latency_key, outcome.upstream_s)
        self._is_sse = head.content_type == "text/event-stream"
        if self._is_sse and request.head.method == "GET" and head.framing is not Framing.NONE:
            # its data is rewritten until the first event is through, so it goes out re-framed
            self._rewriter = endpoint_rewriter(runtime.settings)
            self._conn.decode_chunks()
            lines.append("Transfer-Encoding: chunked")
            self._chunked_out = True
        elif head.framing is Framing.LENGTH:
            lines.append("Content-Length: " + str(head.length))
        elif head.framing is not Framing.NONE:
            lines.append("Transfer-Encoding: chunked")
            self._chunked_out = head.framing is Framing.CLOSE
            if self._is_sse and head.framing is Framing.CHUNKED:
                self._events = 0
        if self._is_sse:
            handler.metrics.open_streams.inc(route=runtime.name)
        encoded = self._caller.answer_head(head.status, head.reason, lines)
        if head.framing is Framing.LENGTH and head.length <= SMALL_BODY and not self._is_sse:
            self._held = [encoded]
            return
        outcome.head_sent = True
        self._caller.write(encoded)
        if self._caller.write_paused:
            self._conn.pause()

    def body(self, data: bytes) -> None:
        if self._rewriter is not None:
            data = self._rewritten(data, self._rewriter)
            if not data:
                return
        self._request.outcome.bytes_out += len(data)
        if self._held is not None:
            self._held.append(data)
            return
        if self._chunked_out:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if self._is_sse:  # an event: nothing else is waiting to go with it (mcpproxy.web.writes)
            self._caller.write_now(data)
            if self._events >= 0:
                self._events += 1
                if self._events >= AFTER_EVENTS:
                    self._hand_off()
        else:
            self._caller.write(data)

    def _rewritten(self, data: bytes, rewriter: EndpointRewriter) -> bytes:
        """``data`` once through the endpoint's rewriting (a stream that names an endpoint
        outside the route is cut, as on aiohttp's path)."""
        try:
            data = rewriter.feed(data)
        except EndpointRejected as exc:
            self._conn.abort()
            self.fail(exc)
            return b""
        if rewriter.done:
            self._rewriter = None
        return data

    def _hand_off(self) -> None:
        """Give the rest of the stream to a thread, if one is free and both sockets are ready."""
        caller, conn = self._caller, self._conn
        if not (caller.ready_for_thread() and conn.at_chunk_boundary()):
            return  # tried again after the next event
        # One attempt gets this far: a stream over TLS, or one no thread could be started for,
        # stays on the loop (and is not looked at again on every event).
        self._events = -1
        assert caller.transport is not None and conn.transport is not None
        downstream, upstream = plain_socket(caller.transport), plain_socket(conn.transport)
        if downstream is None or upstream is None:
            return
        conn.pause()
        request = self._request
        if caller.hand_off(upstream, downstream, request.runtime.pool.idle_timeout, self._returned):
            request.handler.metrics.offloaded_streams.inc(route=request.runtime.name)
        else:
            conn.resume()

    def _returned(self, handoff: Handoff) -> None:
        """The thread is done with the stream (mcpproxy.web.offload)."""
        self._request.outcome.bytes_out += handoff.relayed + len(handoff.tail)
        self._caller.taken_back()
        if handoff.tail:
            self._caller.write_now(handoff.tail)
        if handoff.error is None and handoff.outcome in (CALLER_GONE, CANCELLED):
            self._conn.abort()
            self._caller.abort()  # its connection_lost ends the request, as any caller gone
        else:
            self._conn.taken_back(handoff)

    def end(self) -> None:
        if self._held is not None:
            self._caller.write(b"".join(self._held))
        elif self._chunked_out:
            self._caller.write(b"0\r\n\r\n")
        self._finish()
        self._request.runtime.pool.release(self._conn)
        self._caller.complete(self._request, True)

    def fail(self, exc: Exception) -> None:
        request = self._request
        if not request.outcome.head_sent:
            if isinstance(exc, UpstreamTimeout):
                error = upstream_error(504, "timeout", "upstream timed out", exc)
            else:
                error = upstream_error(502, "protocol", "upstream failed", exc)
            self._caller.refuse(request, error)
            return
        # The answer has begun: the only honest signal left is a cut connection.
        outcome = request.outcome
        outcome.error = "upstream_stream_failed"
        outcome.detail = type(exc).__name__
        request.handler.metrics.upstream_errors.inc(route=outcome.route, kind="stream")
        self._finish()
        self._caller.abort()
        self._caller.complete(request, False)

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
            self._request.handler.metrics.open_streams.dec(route=self._request.runtime.name)


def _date_field(second: int) -> str:
    return "Date: " + formatdate(second, usegmt=True)


_DATE: Final = PerSecond(_date_field)


def _date_line() -> str:
    """``Date: <now>``, formatted once a second."""
    return _DATE.at(int(_now()))
