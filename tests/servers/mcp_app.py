"""A real MCP server for mcpproxy's tests and benchmarks, built with the official ``mcp`` SDK (2.x).

Run::

    python -m tests.servers.mcp_app --port P --mode json|sse|stateless|legacy [options]

It prints ``READY http://127.0.0.1:P`` on stdout once it accepts connections (``--port 0``
picks a free port; the READY line names it).

Modes
  json       Streamable HTTP at --path (default /mcp), stateful (Mcp-Session-Id), POSTs answered
             with application/json.
  sse        Streamable HTTP, stateful, POSTs answered with text/event-stream; GET stream; an
             in-memory event store gives priming events and Last-Event-ID resumption.
  stateless  Streamable HTTP without sessions. Requests carrying ``MCP-Protocol-Version:
             2026-07-28`` are served by the SDK's 2026-07-28 path (Mcp-Method/Mcp-Name checked
             against the body, GET answered 405); requests at handshake versions are served by
             the SDK's stateless legacy path (GET opens an SSE stream that stays open).
  legacy     2024-11-05 HTTP+SSE: GET /sse (first event ``endpoint``) and POST /messages/.

Test-control endpoints (never behind the auth checks): ``GET /__test/health``,
``GET /__test/requests``, ``POST /__test/reset``, ``POST /__test/release/<key>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx2
import jwt
import uvicorn
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types import JSONRPCMessage
from pydantic import AnyHttpUrl
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("tests.servers.mcp_app")

MODES = ("json", "sse", "stateless", "legacy")
MAX_RECORDED_BODY = 64 * 1024
TEST_PREFIX = "/__test/"

ORCHESTRATOR_INSTANCES: dict[str, Any] = {
    "total": 5,
    "data": [
        {"name": "process_payment_refunds", "status": "RUNNING"},
        {"name": "sync_inventory_updates", "status": "READY"},
        {"name": "generate_monthly_reports", "status": "RUNNING"},
        {"name": "backup_customer_data", "status": "FAILED"},
        {"name": "send_welcome_emails", "status": "COMPLETED"},
    ],
}

# Context.log()/info() are deprecated at 2026-07-28 (SEP-2577) but are what handshake-era
# servers use; keep the server's stderr readable.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)


def headers_as_lists(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    """ASGI raw headers as ``{lower-case name: [every value, in order]}``."""
    out: dict[str, list[str]] = {}
    for name, value in raw:
        out.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return out


# --------------------------------------------------------------------------------------------
# Shared test state: request log and gates
# --------------------------------------------------------------------------------------------


@dataclass
class TestState:
    """What the test-control endpoints expose and the tools consult."""

    mode: str
    gate_timeout: float = 30.0
    record: bool = True
    max_records: int = 10_000
    requests: list[dict[str, Any]] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    seq: int = 0

    def gate(self, key: str) -> asyncio.Event:
        event = self.gates.get(key)
        if event is None:
            event = self.gates[key] = asyncio.Event()
        return event

    def reset(self) -> None:
        self.requests.clear()
        for key in [k for k, ev in self.gates.items() if ev.is_set()]:
            del self.gates[key]


# --------------------------------------------------------------------------------------------
# Resumability: an in-memory event store (the SDK ships only the abstract interface)
# --------------------------------------------------------------------------------------------


class InMemoryEventStore(EventStore):
    """Keeps the events of recent streams, in order, for Last-Event-ID replay.

    Replay also delivers events stored *while* it runs, and returns without suspending once it
    has caught up: the SDK registers the live stream right after ``replay_events_after``
    returns, so no event can fall between replay and live tail (with a snapshot-based store
    an event emitted during a replay is lost).
    """

    def __init__(self, max_events: int = 100_000) -> None:
        self._max_events = max_events
        self._counter = 0
        self._total = 0
        self._streams: dict[StreamId, list[tuple[EventId, JSONRPCMessage | None]]] = {}
        self._index: dict[EventId, tuple[StreamId, int]] = {}

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        self._counter += 1
        event_id = str(self._counter)
        events = self._streams.setdefault(stream_id, [])
        self._index[event_id] = (stream_id, len(events))
        events.append((event_id, message))
        self._total += 1
        while self._total > self._max_events and len(self._streams) > 1:
            oldest = next(iter(self._streams))
            dropped = self._streams.pop(oldest)
            self._total -= len(dropped)
            for old_id, _ in dropped:
                del self._index[old_id]
        return event_id

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        where = self._index.get(last_event_id)
        if where is None:
            return None
        stream_id, position = where
        events = self._streams[stream_id]
        position += 1
        while position < len(events):
            event_id, message = events[position]
            position += 1
            if message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


# --------------------------------------------------------------------------------------------
# JWT verification against a JWKS (like the Keycloak-protected Golang tool of seed 000)
# --------------------------------------------------------------------------------------------

ASYMMETRIC_ALGS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class JwksTokenVerifier:
    """An ``mcp`` ``TokenVerifier``: signature by a JWKS key, ``iss``, ``aud`` and ``exp``."""

    def __init__(self, jwks_url: str, issuer: str | None, audience: str) -> None:
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at < 1.0:
                return
            async with httpx2.AsyncClient(timeout=5.0) as client:
                response = await client.get(self.jwks_url)
                response.raise_for_status()
                document = response.json()
            keys: dict[str, jwt.PyJWK] = {}
            for jwk in document.get("keys", []):
                if jwk.get("use", "sig") != "sig":
                    continue
                try:
                    keys[str(jwk.get("kid", ""))] = jwt.PyJWK(jwk)
                except jwt.PyJWTError:
                    continue
            self._keys = keys
            self._fetched_at = time.monotonic()

    async def _key_for(self, kid: str) -> jwt.PyJWK | None:
        if kid not in self._keys:
            await self._refresh()
        if kid in self._keys:
            return self._keys[kid]
        if not kid and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return None

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            header = jwt.get_unverified_header(token)
            alg = str(header.get("alg", ""))
            if alg not in ASYMMETRIC_ALGS:
                raise jwt.InvalidAlgorithmError(f"algorithm {alg!r} not accepted")
            key = await self._key_for(str(header.get("kid", "")))
            if key is None:
                raise jwt.InvalidKeyError(f"no JWKS key for kid {header.get('kid')!r}")
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=5,
                options={"require": ["exp", "aud"]},
            )
        except (jwt.PyJWTError, httpx2.HTTPError, ValueError) as exc:
            log.warning("rejected bearer token: %s: %s", type(exc).__name__, exc)
            return None
        client_id = claims.get("client_id") or claims.get("azp") or "unknown-client"
        scope = claims.get("scope", "")
        scopes = scope.split() if isinstance(scope, str) else [str(s) for s in scope]
        sub = claims.get("sub")
        return AccessToken(
            token=token,
            client_id=str(client_id),
            scopes=scopes,
            expires_at=int(claims["exp"]),
            resource=self.audience,
            subject=str(sub) if sub is not None else None,
            claims=claims,
        )


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------


def _http_scope(ctx: Context) -> dict[str, Any] | None:
    """The ASGI scope of the HTTP request that carried the current message."""
    request = ctx.request_context.request
    scope = getattr(request, "scope", None)
    return scope if isinstance(scope, dict) else None


def build_mcp(state: TestState, auth: AuthSettings | None, verifier: JwksTokenVerifier | None) -> MCPServer:
    mcp = MCPServer(
        "mcpproxy-test-server",
        version="1.0.0",
        instructions="Test server for mcpproxy.",
        auth=auth,
        token_verifier=verifier,
        log_level="WARNING",
    )

    @mcp.tool(
        structured_output=False,
        description="The HTTP headers of the request that carried this call.",
    )
    async def echo_headers(ctx: Context) -> str:
        scope = _http_scope(ctx)
        headers = headers_as_lists(scope.get("headers", [])) if scope else {}
        return json.dumps(headers, sort_keys=True)

    @mcp.tool(
        structured_output=False,
        description="The verified JWT claims of the caller's bearer token (null without JWT).",
    )
    async def whoami(ctx: Context) -> str:
        scope = _http_scope(ctx) or {}
        token = getattr(scope.get("user"), "access_token", None)
        claims = token.claims if isinstance(token, AccessToken) else None
        return json.dumps(claims, sort_keys=True)

    @mcp.tool(
        structured_output=False,
        description="Return the list of orchestrator instances registered in Backstage or RHDH.",
    )
    async def get_orchestrator_instances(session_id: str) -> dict[str, Any]:
        log.info("get_orchestrator_instances for session_id=%r", session_id)
        return ORCHESTRATOR_INSTANCES

    @mcp.tool(
        structured_output=False,
        description="Send `count` progress notifications (and a log message each).",
    )
    async def progress(count: int, ctx: Context, delay_ms: int = 0) -> str:
        for i in range(1, count + 1):
            await ctx.report_progress(i, count, f"step {i}/{count}")
            await ctx.info(f"progress step {i}/{count}")
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
        return f"done {count}"

    @mcp.tool(
        structured_output=False,
        description="Send one notification, then wait for POST /__test/release/<key>.",
    )
    async def gated(key: str, ctx: Context) -> str:
        gate = state.gate(key)
        await ctx.report_progress(0, 1, f"waiting for {key}")
        await ctx.info(f"gate {key} waiting")
        try:
            await asyncio.wait_for(gate.wait(), timeout=state.gate_timeout)
        except TimeoutError:
            raise ToolError(f"gate {key!r} was not released within {state.gate_timeout} s") from None
        return "released"

    @mcp.tool(
        structured_output=False,
        description="Send `count` progress notifications, closing the response stream after the "
        "first so the client must resume with Last-Event-ID (sse mode; elsewhere a no-op close).",
    )
    async def resumable(count: int, ctx: Context, delay_ms: int = 50) -> str:
        await ctx.report_progress(1, count, "before close")
        await ctx.close_sse_stream()
        for i in range(2, count + 1):
            await asyncio.sleep(delay_ms / 1000)
            await ctx.report_progress(i, count, f"step {i}/{count}")
        await asyncio.sleep(delay_ms / 1000)
        return f"resumed {count}"

    @mcp.tool(structured_output=False, description="A text result of exactly `size` bytes.")
    async def big(size: int) -> str:
        return "x" * size

    @mcp.tool(structured_output=False, description="Add two integers.")
    async def add(a: int, b: int) -> int:
        return a + b

    @mcp.tool(structured_output=False, description="Pretend to delete all records of a table.")
    async def delete_records(table: str) -> str:
        return f"deleted 0 records from {table} (test server: nothing happened)"

    @mcp.tool(structured_output=False, description="Pretend to drop a table.")
    async def drop_table(table: str) -> str:
        return f"dropped {table} (test server: nothing happened)"

    return mcp


# --------------------------------------------------------------------------------------------
# ASGI wrapper: test-control endpoints, request recording, required headers
# --------------------------------------------------------------------------------------------


async def _send_json(
    send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class TestHarnessApp:
    """Wraps the SDK's Starlette app."""

    def __init__(self, inner: ASGIApp, state: TestState, required_headers: list[tuple[str, str]]) -> None:
        self.inner = inner
        self.state = state
        self.required_headers = [(name.lower(), value) for name, value in required_headers]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(TEST_PREFIX):
            await self._control(scope, receive, send, path[len(TEST_PREFIX) :])
            return

        record = self._record(scope)
        receive = self._recording_receive(receive, record)
        send = self._recording_send(send, record)

        headers = headers_as_lists(scope["headers"])
        for name, value in self.required_headers:
            if value not in headers.get(name, []):
                await _send_json(
                    send,
                    401,
                    {"error": "unauthorized", "error_description": f"missing or wrong {name}"},
                )
                return
        await self.inner(scope, receive, send)

    def _record(self, scope: Scope) -> dict[str, Any]:
        self.state.seq += 1
        client = scope.get("client")
        record: dict[str, Any] = {
            "seq": self.state.seq,
            "time": time.time(),
            "method": scope["method"],
            "path": scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1"),
            "http_version": scope.get("http_version"),
            "client": f"{client[0]}:{client[1]}" if client else None,
            "headers": headers_as_lists(scope["headers"]),
            "body": "",
            "body_truncated": False,
            "status": None,
        }
        if self.state.record:
            self.state.requests.append(record)
            if len(self.state.requests) > self.state.max_records:
                del self.state.requests[: len(self.state.requests) - self.state.max_records]
        return record

    @staticmethod
    def _recording_receive(receive: Receive, record: dict[str, Any]) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunk: bytes = message.get("body", b"")
                room = MAX_RECORDED_BODY - len(record["body"])
                if chunk and room > 0:
                    record["body"] += chunk[:room].decode("utf-8", "replace")
                if len(chunk) > max(room, 0):
                    record["body_truncated"] = True
            return message

        return wrapped

    @staticmethod
    def _recording_send(send: Send, record: dict[str, Any]) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
            await send(message)

        return wrapped

    async def _control(self, scope: Scope, receive: Receive, send: Send, rest: str) -> None:
        method = scope["method"]
        # Drain the request body, if any.
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        if rest == "health" and method == "GET":
            await _send_json(send, 200, {"ok": True, "mode": self.state.mode, "pid": os.getpid()})
        elif rest == "requests" and method == "GET":
            await _send_json(send, 200, self.state.requests)
        elif rest == "reset" and method == "POST":
            self.state.reset()
            await _send_json(send, 200, {"ok": True})
        elif rest.startswith("release/") and method == "POST":
            key = unquote(rest[len("release/") :])
            self.state.gate(key).set()
            await _send_json(send, 200, {"released": key})
        else:
            await _send_json(send, 404, {"error": "unknown test endpoint"})


# --------------------------------------------------------------------------------------------
# Assembly and main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.servers.mcp_app", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--path", default="/mcp", help="Streamable HTTP mount path")
    p.add_argument("--sse-path", default="/sse", help="legacy mode: the GET event-stream path")
    p.add_argument("--messages-path", default="/messages/", help="legacy mode: the POST path")
    p.add_argument("--json-response", action="store_true", help="stateless mode: answer POSTs with JSON")
    p.add_argument("--retry-ms", type=int, default=100, help="sse mode: SSE retry field of priming events")
    p.add_argument("--no-event-store", action="store_true", help="sse mode: disable resumability")
    p.add_argument("--require-bearer-jwt", action="store_true")
    p.add_argument("--issuer")
    p.add_argument("--jwks-url")
    p.add_argument("--audience")
    p.add_argument("--scope", action="append", default=[], help="JWT mode: required scope (repeatable)")
    p.add_argument(
        "--require-header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="repeatable; else 401",
    )
    p.add_argument(
        "--host-check",
        action="store_true",
        help="keep the SDK's DNS-rebinding protection "
        "(Host must be 127.0.0.1:*, localhost:* or [::1]:*, else 421)",
    )
    p.add_argument("--gate-timeout", type=float, default=30.0)
    p.add_argument(
        "--no-record",
        action="store_true",
        help="don't keep /__test/requests (benchmarks); otherwise the last 10 000 are kept",
    )
    p.add_argument("--log-level", default="warning")
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="shut down when the parent process goes away (no orphans after a crashed test run)",
    )
    args = p.parse_args(argv)
    if args.require_bearer_jwt and not (args.jwks_url and args.audience and args.issuer):
        p.error("--require-bearer-jwt needs --issuer, --jwks-url and --audience")
    for item in args.require_header:
        if "=" not in item:
            p.error(f"--require-header expects NAME=VALUE, got {item!r}")
    return args


def build_app(args: argparse.Namespace, port: int) -> tuple[ASGIApp, TestState]:
    state = TestState(mode=args.mode, gate_timeout=args.gate_timeout, record=not args.no_record)
    base = f"http://{args.host}:{port}"

    auth: AuthSettings | None = None
    verifier: JwksTokenVerifier | None = None
    if args.require_bearer_jwt:
        resource_path = args.sse_path if args.mode == "legacy" else args.path
        auth = AuthSettings(
            issuer_url=AnyHttpUrl(args.issuer),
            resource_server_url=AnyHttpUrl(base + resource_path),
            required_scopes=args.scope or None,
            validate_token_resource=False,  # the verifier checks `aud` itself
        )
        verifier = JwksTokenVerifier(args.jwks_url, args.issuer, args.audience)

    mcp = build_mcp(state, auth, verifier)
    security = None if args.host_check else TransportSecuritySettings(enable_dns_rebinding_protection=False)

    inner: ASGIApp
    if args.mode == "legacy":
        inner = mcp.sse_app(
            sse_path=args.sse_path,
            message_path=args.messages_path,
            transport_security=security,
            host=args.host,
        )
    else:
        sse = args.mode == "sse"
        inner = mcp.streamable_http_app(
            streamable_http_path=args.path,
            json_response=args.mode == "json" or (args.mode == "stateless" and args.json_response),
            stateless_http=args.mode == "stateless",
            event_store=InMemoryEventStore() if sse and not args.no_event_store else None,
            retry_interval=args.retry_ms if sse else None,
            transport_security=security,
            host=args.host,
        )
    required = [tuple(item.split("=", 1)) for item in args.require_header]
    return TestHarnessApp(inner, state, [(n, v) for n, v in required]), state


def _bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the listening
    # socket says it is TCP; without it every kept-alive response waits ~40 ms for delayed ACKs.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


async def _serve(args: argparse.Namespace) -> None:
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    app, _state = build_app(args, port)
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        lifespan="on",
        timeout_graceful_shutdown=1,
        access_log=False,
    )
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.01)
        print(f"READY http://{args.host}:{port}", flush=True)

    async def watch_parent(parent: int) -> None:
        while os.getppid() == parent:
            await asyncio.sleep(0.5)
        log.warning("parent process %d is gone: shutting down", parent)
        server.should_exit = True

    tasks = [asyncio.create_task(announce())]
    if args.exit_with_parent:
        tasks.append(asyncio.create_task(watch_parent(os.getppid())))
    try:
        await server.serve(sockets=[sock])
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
