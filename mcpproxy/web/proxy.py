"""The request handler: match a route, settle the credential, stream the exchange both ways.

Everything a request is judged by (route, header policy, credential sources, upstream rule) is
decided by framework-free core modules; this module only moves bytes and maps failures to
statuses. Streams are relayed chunk by chunk as they arrive — no response is held back waiting
for more data.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from mcpproxy import logs, prm
from mcpproxy.audit import AuditLog
from mcpproxy.audit import record as audit_record
from mcpproxy.config.model import RouteSettings, SubjectSource
from mcpproxy.credentials import (
    RequestView,
    Subject,
    check_credential_headers,
    credential_header_names,
    resolve_subject,
    strip_meta_credentials,
)
from mcpproxy.errors import JSONRPC_INTERNAL_ERROR, PolicyDenied, ProxyError, missing_credential
from mcpproxy.headers import (
    MCP_METHOD,
    REQUEST_ID,
    Headers,
    downstream_response_headers,
    downstream_response_lines,
    field_lines,
    route_allowlist,
    upstream_request_headers,
)
from mcpproxy.http1 import ResponseHead
from mcpproxy.inbound import Identity, TokenVerifier
from mcpproxy.jsonrpc import Body, parse_body
from mcpproxy.metrics import Registry
from mcpproxy.oauth.errors import scrub
from mcpproxy.policy import (
    Call,
    Policy,
    calls_in,
    check_routing_headers,
    enforce,
    list_requests,
    parse_strict,
)
from mcpproxy.requestid import new_request_id
from mcpproxy.routing import Match, RouteTable, rewrite_endpoint
from mcpproxy.sse import EndpointRejected, EndpointRewriter
from mcpproxy.upstream_auth import UpstreamCredential
from mcpproxy.web.filtering import ListFilter, SseListFilter
from mcpproxy.web.responses import batch_error_response, error_response
from mcpproxy.web.upstream import Origin, UpstreamPool

log = structlog.get_logger("mcpproxy.proxy")
#: The clock, as a compiled module final (see mcpproxy.web.relay).
_monotonic: Final = time.monotonic

_REQUEST_ID_OK: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Bodies up to this size are read whole (one read, one write); larger ones are streamed.
SMALL_BODY: Final = 64 * 1024
_CHUNK = 64 * 1024
#: A JSON list answer is read whole to be filtered; past this size it is refused (fail closed).
MAX_FILTERED_BODY = 32 * 1024 * 1024


@dataclass
class RouteRuntime:
    """A route's live parts: its upstream connection pool, its credential rule, its counters."""

    settings: RouteSettings
    credential: UpstreamCredential
    session: aiohttp.ClientSession
    #: The relay's keep-alive connections to the upstream (:mod:`mcpproxy.web.relay`).
    pool: UpstreamPool
    allowed: frozenset[str]
    credential_names: tuple[str, ...]
    in_flight: int = 0
    verifier: TokenVerifier | None = None
    policy: Policy | None = None
    #: The route's tools/call messages are collected (for policy or the audit trail).
    records_calls: bool = False
    #: POST bodies are read whole and parsed, whatever their size (a feature needs them).
    needs_body: bool = False
    #: Where the route's protected resource metadata is, when its public URL is configured.
    metadata_url: str | None = None
    #: The route's own identity for session methods sent without a caller credential.
    fallback: UpstreamCredential | None = None
    #: Host callers name the route by (from ``public_url``); None: the request's Host header.
    public_host: str | None = None
    #: A subject source reads ``params._meta``, so POST bodies must parse as JSON-RPC.
    reads_meta: bool = False
    #: Settings read on every request (``auth.subject``, ``path``, ``name``, ``max_connections``,
    #: ``relay_set_cookie``; ``latency_key``: the name as a metrics label key): here one native
    #: attribute each, where compiled code looks a config dataclass's attributes up by name.
    subject_sources: tuple[SubjectSource, ...] = ()
    path: str = ""
    name: str = ""
    latency_key: tuple[str, ...] = ()
    max_connections: int = 0
    relay_set_cookie: bool = False

    @classmethod
    def create(
        cls,
        route: RouteSettings,
        credential: UpstreamCredential,
        strip: tuple[str, ...],
        *,
        verifier: TokenVerifier | None = None,
        audit: bool = False,
        fallback: UpstreamCredential | None = None,
    ) -> RouteRuntime:
        connector = aiohttp.TCPConnector(
            limit=route.max_connections, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=60
        )
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=route.timeouts.connect, sock_read=route.timeouts.idle
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return cls(
            settings=route,
            credential=credential,
            session=session,
            pool=UpstreamPool(
                Origin(route.upstream),
                connect_timeout=route.timeouts.connect,
                idle_timeout=route.timeouts.idle,
            ),
            allowed=route_allowlist(route.forward_headers, (*strip, *route.auth.strip_headers)),
            credential_names=credential_header_names(route.auth, strip),
            verifier=verifier,
            policy=Policy(route.policy) if route.policy is not None else None,
            records_calls=route.policy is not None or audit,
            needs_body=route.auth.reads_body or route.policy is not None or audit or fallback is not None,
            metadata_url=prm.metadata_url(route.public_url) if route.public_url else None,
            fallback=fallback,
            public_host=urlsplit(route.public_url).netloc if route.public_url else None,
            reads_meta=route.auth.reads_body,
            subject_sources=route.auth.subject,
            path=route.path,
            name=route.name,
            latency_key=(route.name,),
            max_connections=route.max_connections,
            relay_set_cookie=route.relay_set_cookie,
        )

    def parse(self, raw: bytes) -> Body:
        """A POST body read whole: strictly JSON-RPC where a policy or ``_meta`` needs it."""
        if self.policy is not None:
            return parse_strict(raw)
        return parse_body(raw, strict=self.reads_meta)

    async def close(self) -> None:
        self.pool.close()
        await self.session.close()


class Incoming:
    """What judging a request reads of it, whichever server layer parsed it."""

    __slots__ = ("has_body", "headers", "host", "method", "path", "plain_values", "remote", "scheme")

    def __init__(
        self,
        method: str,
        path: str,
        headers: Headers,
        host: str,
        remote: str,
        scheme: str,
        has_body: bool,
        plain_values: bool = False,
    ) -> None:
        self.method = method
        self.path = path  # decoded, for logs
        self.headers = headers
        self.host = host  # the Host header (or the listening address)
        self.remote = remote  # the peer's address
        self.scheme = scheme
        self.has_body = has_body
        #: Every field value is known to hold only HTAB, SP and visible ASCII (the relay's head
        #: parser refuses anything else), so no credential value need be scanned for CR, LF, NUL.
        self.plain_values = plain_values


class Prepared:
    """A request judged fit to forward: its credential rule."""

    __slots__ = ("credential", "list_filter", "subject")

    def __init__(
        self, credential: UpstreamCredential, subject: Subject | None, list_filter: ListFilter | None
    ) -> None:
        self.credential = credential
        self.subject = subject
        self.list_filter = list_filter


class Outcome:
    """What the access log line and the metrics say about one request."""

    __slots__ = (
        "bytes_out",
        "calls",
        "detail",
        "error",
        "fallback",
        "head_sent",
        "identity",
        "mcp_method",
        "route",
        "status",
        "subject",
        "upstream_s",
        "upstream_status",
        "via",
    )

    def __init__(self, route: str = "-", via: str = "aiohttp") -> None:
        self.route = route
        self.mcp_method = "-"
        self.status = 0
        self.bytes_out = 0
        self.subject: Subject | None = None
        self.error: str | None = None
        self.detail: str | None = None
        self.upstream_s: float | None = None
        self.upstream_status: int | None = None
        self.identity: Identity | None = None
        self.calls: list[Call] | None = None
        self.fallback = False
        #: Which server layer answered: "relay" (mcpproxy.web.relay) or "aiohttp".
        self.via = via
        #: The answer's status line has gone to the caller.
        self.head_sent = False

    def caller_left(self) -> None:
        """The caller went away before its answer was done. As in nginx, the status stays the
        one the caller was sent; 499 says the caller left before any status went out. (MCP
        clients close a POST's event stream as soon as its JSON-RPC response is in, often before
        the stream's end arrives: that call was answered, and is logged and audited as such.)"""
        if self.error is None:
            self.error = "client_disconnected"
            if not self.head_sent:
                self.status = 499


class ProxyHandler:
    def __init__(
        self,
        table: RouteTable,
        runtimes: dict[str, RouteRuntime],
        metrics: Registry,
        *,
        max_body_bytes: int,
        max_credential_bytes: int,
        access_log: bool = True,
        audit: AuditLog | None = None,
    ) -> None:
        self.table = table
        self.runtimes = runtimes
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.max_credential = max_credential_bytes
        self.access_log = access_log
        self.audit = audit
        #: Request path under /.well-known/oauth-protected-resource → the route it describes.
        self.metadata_routes = {
            path: runtime for runtime in runtimes.values() for path in prm.metadata_paths(runtime.settings)
        }

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        started = _monotonic()
        request_id = request_id_of(request.headers)
        incoming = Incoming(
            request.method,
            request.path,
            request.headers,
            request.host,
            request.remote or "",
            request.scheme,
            request.body_exists,
        )
        outcome = Outcome()
        body: Body | None = None
        runtime: RouteRuntime | None = None
        try:
            match = self.table.match(request.raw_path)
            if match is None:
                raise ProxyError(404, "no route for this path", reason="no_route")
            outcome.route = match.route.name
            runtime = self.runtimes[match.route.name]
            body = await self._read_body(request, runtime)
            self.describe(incoming, runtime, body, outcome)
            response = await self._forward(request, incoming, runtime, match, body, request_id, outcome)
            outcome.status = response.status
            return response
        except ProxyError as exc:
            self.rejected(exc, outcome)
            return self.error_response(exc, incoming, runtime, request_id, body or await _peek_body(request))
        except asyncio.CancelledError:
            outcome.caller_left()
            raise
        finally:
            self.record(incoming, outcome, request_id, started)

    def describe(
        self, incoming: Incoming, runtime: RouteRuntime, body: Body | None, outcome: Outcome
    ) -> None:
        """What the log and metrics call the request: its MCP method, and the calls it carries."""
        if body is not None:
            outcome.mcp_method = body.method
            if runtime.records_calls:
                outcome.calls = calls_in(body)
        elif MCP_METHOD in incoming.headers:
            outcome.mcp_method = incoming.headers[MCP_METHOD][:64]

    def error_response(
        self,
        exc: ProxyError,
        incoming: Incoming,
        runtime: RouteRuntime | None,
        request_id: str,
        body: Body | None,
    ) -> web.Response:
        """The proxy's answer to a refused request (one JSON-RPC error per request of a batch
        refused whole), its challenge pointing at the route's metadata."""
        metadata = self.metadata_url(incoming, runtime) if runtime and exc.www_authenticate else None
        if isinstance(exc, PolicyDenied) and exc.batch_ids:
            return batch_error_response(exc, request_id, exc.batch_ids, metadata)
        return error_response(exc, request_id, body.first_id if body else None, metadata)

    def rejected(self, exc: ProxyError, outcome: Outcome) -> None:
        outcome.status, outcome.error, outcome.detail = exc.status, exc.reason, exc.detail
        self.metrics.rejections.inc(route=outcome.route, reason=exc.reason)

    # --- request side -----------------------------------------------------------------------

    async def _read_body(self, request: web.Request, runtime: RouteRuntime) -> Body | None:
        """Read small or feature-needed POST bodies whole; leave others to be streamed."""
        if request.method != "POST" or not request.body_exists:
            if request.body_exists and runtime.policy is not None:
                # MCP messages travel in POSTs only; a body the policy cannot judge is not relayed
                raise ProxyError(
                    405,
                    "only POST may carry a body on this route",
                    reason="method_not_allowed",
                    extra_headers={"Allow": "GET, POST, DELETE"},
                )
            return None
        length = request.content_length
        if length is not None and length > self.max_body:
            raise _too_large(self.max_body)
        if not runtime.needs_body and (length is None or length > SMALL_BODY):
            return None
        return runtime.parse(await _read_limited(request, self.max_body))

    async def prepare(
        self,
        incoming: Incoming,
        runtime: RouteRuntime,
        body: Body | None,
        request_id: str,
        outcome: Outcome,
    ) -> Prepared:
        """Judge the request (credentials, verification, policy) and build what goes upstream.

        Raises :class:`ProxyError` for a request that must not be forwarded.
        """
        subject = self.subject_of(incoming, runtime, body, outcome)
        if runtime.verifier is not None:
            outcome.identity = await runtime.verifier.verify(subject)
        return self.judge(incoming, runtime, body, request_id, outcome)

    def subject_of(
        self, incoming: Incoming, runtime: RouteRuntime, body: Body | None, outcome: Outcome
    ) -> Subject | None:
        """The caller's credential, after refusing smuggled, duplicate or conflicting ones (the
        first step of :meth:`prepare`; the relay runs the steps itself, waiting only if it must)."""
        check_credential_headers(
            incoming.headers, runtime.credential_names, self.max_credential, incoming.plain_values
        )
        subject = None
        sources = runtime.subject_sources
        if sources:
            view = RequestView(
                incoming.headers,
                runtime.public_host or incoming.host,
                runtime.path,
                body,
                self.max_credential,
            )
            subject = resolve_subject(sources, view)
            if body is not None and runtime.reads_meta and strip_meta_credentials(body, sources):
                body.raw = body.serialize()
        outcome.subject = subject
        return subject

    def judge(
        self,
        incoming: Incoming,
        runtime: RouteRuntime,
        body: Body | None,
        request_id: str,
        outcome: Outcome,
        no_lists: bool = False,
    ) -> Prepared:
        """The last step of :meth:`prepare`, once the subject and identity are known: policy and
        the credential rule. (Each server layer builds the upstream headers its own way.)
        ``no_lists``: the body is known to hold no list request, whose answer policy filters."""
        subject, identity = outcome.subject, outcome.identity
        list_filter = None
        if runtime.policy is not None:
            if body is not None:
                check_routing_headers(body, incoming.headers)
                enforce(runtime.policy, outcome.calls or (), identity, body)
                lists = None if no_lists else list_requests(body)
                if lists:
                    list_filter = ListFilter.for_request(runtime.policy, identity, lists)
            elif incoming.method == "GET":
                list_filter = ListFilter.for_stream(runtime.policy, identity)
        credential = runtime.credential
        if credential.needs_subject and subject is None:
            credential = _fallback_for(runtime, incoming.method, body)
            outcome.fallback = True
        return Prepared(credential, subject, list_filter)

    def admit(self, runtime: RouteRuntime) -> None:
        """Count the request against its route's concurrency limit (release: ``in_flight -= 1``)."""
        if runtime.in_flight >= runtime.max_connections:
            self.metrics.upstream_errors.inc(route=runtime.name, kind="limit")
            raise ProxyError(
                503, "too many concurrent requests for this route", reason="route_busy", retry_after=1
            )
        runtime.in_flight += 1

    async def _forward(
        self,
        request: web.Request,
        incoming: Incoming,
        runtime: RouteRuntime,
        match: Match,
        body: Body | None,
        request_id: str,
        outcome: Outcome,
    ) -> web.StreamResponse:
        prepared = await self.prepare(incoming, runtime, body, request_id, outcome)
        self.admit(runtime)
        try:
            headers = upstream_request_headers(
                incoming.headers,
                runtime.allowed,
                client_ip=incoming.remote,
                scheme=incoming.scheme,
                host=incoming.host,
                request_id=request_id,
            )
            upstream = await self._send(request, runtime, prepared, headers, match, body, outcome)
            return await self._relay(
                request, incoming, runtime, match, upstream, request_id, outcome, prepared.list_filter
            )
        finally:
            runtime.in_flight -= 1

    async def _send(
        self,
        request: web.Request,
        runtime: RouteRuntime,
        prepared: Prepared,
        headers: CIMultiDict[str],
        match: Match,
        body: Body | None,
        outcome: Outcome,
    ) -> aiohttp.ClientResponse:
        """Send upstream; on a 401 to an exchanged token, drop it and retry once with a fresh one."""
        credential, subject = prepared.credential, prepared.subject
        replayable = body is not None or not request.body_exists
        for attempt in (1, 2):
            value = await credential.value(subject)
            if value is not None and credential.header:
                headers[credential.header] = value
            streamed = StreamedBody(request, self.max_body) if body is None and request.body_exists else None
            data: Any = body.raw if body is not None else streamed
            sent = _monotonic()
            try:
                upstream = await _request(runtime, request.method, match.upstream_url, headers, data)
            except ProxyError:
                if streamed is not None and streamed.overflowed:
                    raise _too_large(self.max_body) from None
                raise
            outcome.upstream_s = _monotonic() - sent
            if upstream.status == 401 and credential.retries_on_401 and replayable and attempt == 1:
                upstream.release()
                log.info("upstream_401_retry", route=runtime.settings.name)
                await credential.invalidate(subject, value)
                continue
            return upstream
        raise AssertionError("unreachable")  # pragma: no cover

    # --- response side ----------------------------------------------------------------------

    async def _relay(
        self,
        request: web.Request,
        incoming: Incoming,
        runtime: RouteRuntime,
        match: Match,
        upstream: aiohttp.ClientResponse,
        request_id: str,
        outcome: Outcome,
        list_filter: ListFilter | None = None,
    ) -> web.StreamResponse:
        route = runtime.settings
        try:
            outcome.upstream_status = upstream.status
            headers = self.answer_headers(upstream.headers, upstream.status, incoming, runtime, request_id)
            self.metrics.upstream_latency.observe(outcome.upstream_s or 0.0, route=route.name)
            is_sse = upstream.content_type == "text/event-stream"
            length = upstream.content_length
            if upstream.status != 200:
                list_filter = None
            if list_filter is not None and not is_sse and upstream.content_type == "application/json":
                payload = list_filter.rewrite_payload(await _read_filterable(upstream))
                outcome.bytes_out = len(payload)
                return web.Response(
                    status=upstream.status, reason=upstream.reason, body=payload, headers=headers
                )
            if not is_sse and length is not None and length <= SMALL_BODY:
                payload = await _read_whole(runtime, upstream)
                outcome.bytes_out = len(payload)
                return web.Response(
                    status=upstream.status, reason=upstream.reason, body=payload, headers=headers
                )
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
            if not is_sse and length is not None:
                response.content_length = length
            await response.prepare(request)
            outcome.status, outcome.head_sent = upstream.status, True
            rewriter = _Stages.of(
                endpoint_rewriter(route) if is_sse and request.method == "GET" else None,
                list_filter.sse() if is_sse and list_filter is not None else None,
            )
            if is_sse:
                self.metrics.open_streams.inc(route=route.name)
            try:
                await self._pump(request, upstream, response, rewriter, outcome)
            finally:
                if is_sse:
                    self.metrics.open_streams.dec(route=route.name)
            return response
        finally:
            upstream.release()

    async def _pump(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        rewriter: _Stages | None,
        outcome: Outcome,
    ) -> None:
        try:
            async for chunk in upstream.content.iter_any():
                if rewriter is not None:
                    chunk = rewriter.feed(chunk)
                    if rewriter.done:
                        rewriter = None
                if chunk:
                    outcome.bytes_out += len(chunk)
                    await response.write(chunk)
            if rewriter is not None and (tail := rewriter.flush()):
                outcome.bytes_out += len(tail)
                await response.write(tail)
            await response.write_eof()
        except (TimeoutError, aiohttp.ClientError, EndpointRejected) as exc:
            if request.transport is None or request.transport.is_closing():
                # a write to a caller that went away (aiohttp raises ClientConnectionResetError,
                # a ClientError): the caller's doing, not the upstream's
                outcome.caller_left()
                return
            # Headers are gone already: the only honest signal left is a cut connection.
            outcome.error = "upstream_stream_failed"
            outcome.detail = type(exc).__name__
            self.metrics.upstream_errors.inc(route=outcome.route, kind="stream")
            if request.transport is not None:
                request.transport.close()

    # --- authorization discovery -----------------------------------------------------------

    def metadata_url(self, incoming: Incoming, runtime: RouteRuntime) -> str | None:
        """Where the route's protected resource metadata is, as the caller addresses the proxy."""
        if runtime.metadata_url is not None:
            return runtime.metadata_url
        host = prm.safe_host(incoming.host)
        if host is None:
            return None
        return prm.metadata_url(prm.resource_url(runtime.settings, incoming.scheme, host))

    def answer_headers(
        self, upstream: Headers, status: int, incoming: Incoming, runtime: RouteRuntime, request_id: str
    ) -> CIMultiDict[str]:
        """The upstream answer's headers as relayed to the caller."""
        headers = downstream_response_headers(upstream, relay_set_cookie=runtime.settings.relay_set_cookie)
        headers[REQUEST_ID] = request_id
        if status == 401 or (status == 403 and "WWW-Authenticate" in headers):
            self._point_challenge(headers, incoming, runtime)
        return headers

    def answer_lines(
        self, head: ResponseHead, incoming: Incoming, runtime: RouteRuntime, request_id: str
    ) -> list[str]:
        """:meth:`answer_headers` as field lines, for the relay: the upstream's lines that stay
        pass on as they came, except where a challenge is rewritten or ``Connection`` names
        more fields to drop (then through the multidict)."""
        lines = None
        if head.status not in (401, 403):
            cookies = runtime.relay_set_cookie
            lines = downstream_response_lines(head.names, head.lines, relay_set_cookie=cookies)
        if lines is None:
            headers = self.answer_headers(head.headers, head.status, incoming, runtime, request_id)
            return field_lines(headers.items())
        lines.append("X-Request-Id: " + request_id)
        return lines

    def _point_challenge(self, headers: CIMultiDict[str], incoming: Incoming, runtime: RouteRuntime) -> None:
        """An upstream's 401/403 challenge, pointed at the proxy's metadata for the route."""
        values = headers.getall("WWW-Authenticate", [])
        headers.popall("WWW-Authenticate", None)
        headers["WWW-Authenticate"] = prm.rewrite_challenge(values, self.metadata_url(incoming, runtime))

    # --- logs and metrics -------------------------------------------------------------------

    def record(
        self,
        incoming: Incoming,
        outcome: Outcome,
        request_id: str,
        started: float,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """Count the request and write its access line (``loop``: the running loop, if at hand)."""
        self.metrics.requests.add((outcome.route, incoming.method, outcome.mcp_method, str(outcome.status)))
        if self.audit is not None and outcome.calls:
            self._audit(self.audit, outcome, request_id, _monotonic() - started)
        if not self.access_log:
            return
        subject, identity = outcome.subject, outcome.identity
        logs.access(
            logs.AccessEntry(
                outcome.route,
                incoming.method,
                incoming.path[:256],
                outcome.mcp_method,
                outcome.status,
                outcome.bytes_out,
                (_monotonic() - started) * 1000,
                request_id,
                outcome.via,
                None if outcome.upstream_s is None else outcome.upstream_s * 1000,
                subject.source if subject is not None else "fallback" if outcome.fallback else None,
                subject.token.fingerprint() if subject is not None else None,
                identity.sub if identity is not None else None,
                outcome.error,
                outcome.detail,
            ),
            loop,
        )

    def _audit(self, audit: AuditLog, outcome: Outcome, request_id: str, duration_s: float) -> None:
        """One audit line per tools/call of the request, whatever became of it."""
        identity = outcome.identity
        fingerprint = outcome.subject.token.fingerprint() if outcome.subject is not None else None
        entries = []
        for call in outcome.calls or ():
            if call.method != "tools/call":
                continue
            if call.decision is not None and not call.decision.allowed:
                decision, reason = "deny", call.decision.reason
            elif outcome.upstream_status is not None:
                decision, reason = "allow", None
            elif outcome.status in (401, 403):
                decision, reason = "deny", outcome.error
            else:
                decision, reason = "error", outcome.error
            entries.append(
                audit_record(
                    started=time.time() - duration_s,
                    route=outcome.route,
                    request_id=request_id,
                    call=call,
                    sub=identity.sub if identity else None,
                    client_id=identity.client_id if identity else None,
                    subject_fingerprint=fingerprint,
                    decision=decision,
                    reason=reason,
                    status=outcome.status,
                    upstream_status=outcome.upstream_status,
                    duration_ms=duration_s * 1000,
                    include_arguments=audit.include_arguments,
                )
            )
        if entries:
            audit.write(entries)


async def _request(
    runtime: RouteRuntime, method: str, url: str, headers: CIMultiDict[str], data: Any
) -> aiohttp.ClientResponse:
    try:
        return await runtime.session.request(
            method, url, headers=headers, data=data, allow_redirects=False, compress=None
        )
    except aiohttp.ClientConnectorError as exc:
        raise upstream_error(502, "connect", "upstream unreachable", exc) from None
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise upstream_error(504, "timeout", "upstream timed out", exc) from None
    except aiohttp.ClientError as exc:
        raise upstream_error(502, "protocol", "upstream failed", exc) from None


def _fallback_for(runtime: RouteRuntime, http_method: str, body: Body | None) -> UpstreamCredential:
    """The route's own identity when the request only opens, streams, lists or ends a session
    (``auth.fallback``); otherwise the caller's missing credential is a 401."""
    fallback = runtime.fallback
    if fallback is None or runtime.settings.auth.fallback is None:
        raise missing_credential()
    methods = runtime.settings.auth.fallback.methods
    if body is None:
        if http_method in ("GET", "DELETE"):
            return fallback
        raise missing_credential()
    if body.messages and all(m.get("method") in methods for m in body.messages):
        return fallback
    raise missing_credential()


async def _read_whole(runtime: RouteRuntime, upstream: aiohttp.ClientResponse) -> bytes:
    """A small response read whole; a failure here is still the upstream's, not the proxy's."""
    try:
        return await upstream.read()
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise upstream_error(504, "timeout", "upstream timed out", exc) from None
    except aiohttp.ClientError as exc:
        raise upstream_error(502, "protocol", "upstream failed mid-response", exc) from None


def upstream_error(status: int, kind: str, message: str, exc: BaseException) -> ProxyError:
    return ProxyError(
        status,
        message,
        JSONRPC_INTERNAL_ERROR,
        detail=f"{type(exc).__name__}: {scrub(str(exc))}",
        reason=f"upstream_{kind}",
    )


class _BodyTooLarge(Exception):
    pass


class StreamedBody:
    """A request body relayed chunk by chunk, cut off (and remembered as such) past ``limit``.

    An async iterator rather than an async generator, which mypyc cannot compile."""

    def __init__(self, request: web.Request, limit: int) -> None:
        self._request = request
        self._limit = limit
        self._size = 0
        self.overflowed = False

    def __aiter__(self) -> StreamedBody:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._request.content.read(_CHUNK)
        if not chunk:
            raise StopAsyncIteration
        self._size += len(chunk)
        if self._size > self._limit:
            self.overflowed = True
            raise _BodyTooLarge()
        return chunk


async def _read_limited(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _peek_body(request: web.Request) -> Body | None:
    """The unread body of a small POST, so an error can answer with the request's JSON-RPC id."""
    length = request.content_length
    if request.method != "POST" or length is None or length > SMALL_BODY or request.content.at_eof():
        return None
    try:
        return parse_body(await request.content.read(length), strict=False)
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None


async def _read_filterable(upstream: aiohttp.ClientResponse) -> bytes:
    """A JSON list answer, whole, so it can be filtered; one that cannot be is refused, not relayed."""
    if upstream.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise ProxyError(
            502, "upstream answer cannot be filtered", JSONRPC_INTERNAL_ERROR, reason="unfilterable"
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in upstream.content.iter_any():
            size += len(chunk)
            if size > MAX_FILTERED_BODY:
                raise ProxyError(
                    502, "upstream answer too large to filter", JSONRPC_INTERNAL_ERROR, reason="unfilterable"
                )
            chunks.append(chunk)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise ProxyError(
            502,
            "upstream failed",
            JSONRPC_INTERNAL_ERROR,
            detail=type(exc).__name__,
            reason="upstream_protocol",
        ) from None
    return b"".join(chunks)


class _Stages:
    """What an SSE answer passes through: the legacy endpoint rewriter, then the list filter."""

    def __init__(self, stages: list[EndpointRewriter | SseListFilter]) -> None:
        self._stages = stages

    @classmethod
    def of(cls, *stages: EndpointRewriter | SseListFilter | None) -> _Stages | None:
        present = [s for s in stages if s is not None and not s.done]
        return cls(present) if present else None

    @property
    def done(self) -> bool:
        return not self._stages

    def feed(self, chunk: bytes) -> bytes:
        for stage in self._stages:
            chunk = stage.feed(chunk)
        self._stages = [s for s in self._stages if not s.done]
        return chunk

    def flush(self) -> bytes:
        tail = b""
        for stage in self._stages:
            if isinstance(stage, SseListFilter):
                tail = stage.flush() if not tail else stage.feed(tail) + stage.flush()
            elif tail:
                tail = stage.feed(tail)
        return tail


def _too_large(limit: int) -> ProxyError:
    return ProxyError(413, f"request body too large (limit {limit} bytes)", reason="body_too_large")


def endpoint_rewriter(route: RouteSettings) -> EndpointRewriter:
    """What a GET stream passes through: the legacy transport names its endpoint in the first
    event, which must point at the route, not around the proxy."""
    prefix = route.path.rstrip("/")
    return EndpointRewriter(lambda endpoint: rewrite_endpoint(endpoint, route.upstream, prefix))


def request_id_of(headers: Headers) -> str:
    given = headers.get(REQUEST_ID)
    if given and _REQUEST_ID_OK.match(given):
        return given
    return new_request_id()
