"""Load generators written in Python: a raw HTTP/1.1 client for latency, MCP clients on aiohttp.

The raw client sends pre-built request bytes on keep-alive connections and times every request
with ``perf_counter_ns``; it costs ~10-20 µs of CPU per request, so it is used where latency, not
the highest rate, is measured (concurrency 1). wrk measures the highest rates (see run.py).

The MCP clients speak Streamable HTTP with aiohttp exactly as a client would: initialize,
notifications/initialized, then tool calls with ``Mcp-Session-Id``; answers in JSON or SSE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

PROTOCOL_VERSION = "2025-11-25"
ACCEPT = "application/json, text/event-stream"


@dataclass
class Sample:
    """What one measured run produced."""

    requests: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    first_error: str | None = None

    def error(self, what: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = what[:300]


def percentile(values: list[int] | list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return float(ordered[k])


# --------------------------------------------------------------------------------------------
# Raw HTTP/1.1 client
# --------------------------------------------------------------------------------------------


def build_request(method: str, path: str, host: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _RawConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.waiter: asyncio.Future[int] | None = None
        self.head = b""
        self.in_body = False
        self.remaining = 0
        self.chunked = False
        self.tail = b""
        self.status = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def send(self, request: bytes) -> asyncio.Future[int]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.head, self.in_body, self.tail = b"", False, b""
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.head[:end].lower()
            self.status = int(head[9:12])
            body = self.head[end + 4 :]
            self.in_body = True
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                self.chunked = False
                self.remaining = int(head[at + 17 : stop if stop >= 0 else len(head)])
            elif b"transfer-encoding: chunked" in head:
                self.chunked = True
            else:
                self.chunked, self.remaining = False, 0
            data = body
        if self.chunked:
            self.tail = (self.tail + data)[-7:]
            if self.tail.endswith(b"0\r\n\r\n"):
                self._done()
        else:
            self.remaining -= len(data)
            if self.remaining <= 0:
                self._done()

    def _done(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.status)


async def raw_load(
    host: str,
    port: int,
    request: bytes,
    *,
    concurrency: int,
    duration_s: float,
    record: bool = True,
) -> Sample:
    """Closed-loop load: ``concurrency`` keep-alive connections, each sending ``request`` in turn."""
    loop = asyncio.get_running_loop()
    sample = Sample()
    deadline = time.monotonic() + duration_s
    latencies = sample.latencies_ns

    async def worker() -> None:
        _, conn = await loop.create_connection(_RawConnection, host, port)
        try:
            while time.monotonic() < deadline:
                t0 = time.perf_counter_ns()
                try:
                    status = await asyncio.wait_for(conn.send(request), 30)
                except (ConnectionError, TimeoutError) as exc:
                    sample.error(f"{type(exc).__name__}: {exc}")
                    conn.transport.close()
                    _, conn = await loop.create_connection(_RawConnection, host, port)
                    continue
                if record:
                    latencies.append(time.perf_counter_ns() - t0)
                sample.requests += 1
                if status != 200:
                    sample.error(f"HTTP {status}")
        finally:
            conn.transport.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    sample.elapsed_s = time.monotonic() - started
    return sample


# --------------------------------------------------------------------------------------------
# MCP over Streamable HTTP, on aiohttp
# --------------------------------------------------------------------------------------------


def rpc(method: str, params: dict[str, Any] | None = None, id_: int | None = 1) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if id_ is not None:
        msg["id"] = id_
    if params is not None:
        msg["params"] = params
    return json.dumps(msg, separators=(",", ":")).encode()


INITIALIZE = rpc(
    "initialize",
    {
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"},
    },
)
INITIALIZED = rpc("notifications/initialized", id_=None)
TOOLS_LIST = rpc("tools/list", {}, 2)


def tool_call(name: str, arguments: dict[str, Any], id_: int = 3, progress: bool = False) -> bytes:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if progress:
        params["_meta"] = {"progressToken": f"p{id_}"}
    return rpc("tools/call", params, id_)


class McpError(Exception):
    pass


class Meter:
    """Called by the clients right before and right after the measured part of a run."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


NO_METER = Meter()


def _headers(auth: str | None, session_id: str | None = None, *, json_body: bool = True) -> dict[str, str]:
    h = {"Accept": ACCEPT}
    if json_body:
        h["Content-Type"] = "application/json"
    if session_id:
        h["Mcp-Session-Id"] = session_id
        h["MCP-Protocol-Version"] = PROTOCOL_VERSION
    if auth:
        h["Authorization"] = auth
    return h


async def _read_rpc_answer(resp: aiohttp.ClientResponse) -> tuple[int, bytes]:
    """Read a POST's answer whole; returns (number of SSE events or 1 for JSON, last payload)."""
    body = await resp.read()
    if resp.content_type == "text/event-stream":
        events = [e for e in body.replace(b"\r\n", b"\n").split(b"\n\n") if b"data:" in e]
        last = events[-1] if events else b""
        return len(events), last
    return 1, body


async def mcp_open(http: aiohttp.ClientSession, url: str, auth: str | None) -> str:
    """initialize + notifications/initialized; returns the session id."""
    async with http.post(url, data=INITIALIZE, headers=_headers(auth)) as resp:
        _, payload = await _read_rpc_answer(resp)
        if resp.status != 200 or b'"result"' not in payload:
            raise McpError(f"initialize: HTTP {resp.status} {payload[:200]!r}")
        sid = resp.headers.get("Mcp-Session-Id")
    if not sid:
        raise McpError("initialize: no Mcp-Session-Id")
    async with http.post(url, data=INITIALIZED, headers=_headers(auth, sid)) as resp:
        await resp.read()
        if resp.status not in (200, 202):
            raise McpError(f"notifications/initialized: HTTP {resp.status}")
    return sid


async def mcp_close(http: aiohttp.ClientSession, url: str, auth: str | None, sid: str) -> None:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.delete(url, headers=_headers(auth, sid, json_body=False)) as resp:
            await resp.read()


async def tool_load(
    url: str,
    auth: str | None,
    body: bytes,
    *,
    concurrency: int,
    duration_s: float,
    meter: Meter = NO_METER,
) -> Sample:
    """Closed loop of tools/call over ``concurrency`` MCP sessions (keep-alive connections)."""
    sample = Sample()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:
        sids = await asyncio.gather(*(mcp_open(http, url, auth) for _ in range(concurrency)))
        deadline = time.monotonic() + duration_s

        async def worker(sid: str) -> None:
            headers = _headers(auth, sid)
            while time.monotonic() < deadline:
                t0 = time.perf_counter_ns()
                try:
                    async with http.post(url, data=body, headers=headers) as resp:
                        _, payload = await _read_rpc_answer(resp)
                        ok = (
                            resp.status == 200 and b'"result"' in payload and b'"isError":true' not in payload
                        )
                except (aiohttp.ClientError, TimeoutError) as exc:
                    sample.error(f"{type(exc).__name__}: {exc}")
                    continue
                sample.latencies_ns.append(time.perf_counter_ns() - t0)
                sample.requests += 1
                if not ok:
                    sample.error(f"HTTP {resp.status} {payload[:200]!r}")

        meter.start()
        started = time.monotonic()
        await asyncio.gather(*(worker(sid) for sid in sids))
        sample.elapsed_s = time.monotonic() - started
        meter.stop()
        await asyncio.gather(*(mcp_close(http, url, auth, sid) for sid in sids))
    return sample


async def stream_calls(
    url: str,
    auth: str | None,
    *,
    calls: int,
    steps: int,
    delay_ms: int,
    meter: Meter = NO_METER,
) -> Sample:
    """``calls`` sequential calls of ``progress(steps)`` on an SSE server, each answered as a
    stream of 2 * steps notifications (progress + log) and the result. Records per call the time to
    the first notification and the events received; requests counts events, not calls."""
    sample = Sample()
    ttfe: list[int] = []
    per_call: list[int] = []
    totals: list[int] = []
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        sid = await mcp_open(http, url, auth)
        headers = _headers(auth, sid)
        meter.start()
        started = time.monotonic()
        for i in range(calls):
            body = tool_call("progress", {"count": steps, "delay_ms": delay_ms}, id_=10 + i, progress=True)
            t0 = time.perf_counter_ns()
            first: int | None = None
            notifications = 0
            result = False
            buf = b""
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    if resp.status != 200 or resp.content_type != "text/event-stream":
                        sample.error(f"HTTP {resp.status} {resp.content_type}")
                        await resp.read()
                        continue
                    async for chunk in resp.content.iter_any():
                        buf = (buf + chunk).replace(b"\r\n", b"\n")
                        while b"\n\n" in buf:
                            event, buf = buf.split(b"\n\n", 1)
                            if b'"method":"notifications/' in event.replace(b": ", b":"):
                                notifications += 1
                                if first is None:
                                    first = time.perf_counter_ns() - t0
                            elif b'"result"' in event:
                                result = True
            except (aiohttp.ClientError, TimeoutError) as exc:
                sample.error(f"{type(exc).__name__}: {exc}")
                continue
            totals.append(time.perf_counter_ns() - t0)
            per_call.append(notifications)
            if first is not None:
                ttfe.append(first)
            sample.requests += notifications + (1 if result else 0)
            if not result or notifications != 2 * steps:
                sample.error(f"call {i}: {notifications} notifications, result={result}")
        sample.elapsed_s = time.monotonic() - started
        meter.stop()
        await mcp_close(http, url, auth, sid)
    sample.latencies_ns = totals
    sample.extra = {"ttfe_ns": ttfe, "notifications": per_call, "calls": len(per_call)}
    return sample


async def ogx_sessions(
    url: str,
    auth: str | None,
    *,
    concurrency: int,
    duration_s: float,
    tool: tuple[str, dict[str, Any]] = ("get_orchestrator_instances", {"session_id": "bench"}),
    on_session: Callable[[], None] | None = None,
    max_sessions: int | None = None,
) -> Sample:
    """OGX's pattern, closed loop: initialize, initialized, GET stream (held open), tools/list,
    tools/call, DELETE — every request on a new TCP connection. ``requests`` counts HTTP requests
    (6 per session); latencies are per session."""
    sample = Sample()
    sessions = 0
    deadline = time.monotonic() + duration_s
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    call_body = tool_call(tool[0], tool[1], id_=3)

    async def hold_get(http: aiohttp.ClientSession, sid: str, opened: asyncio.Event) -> None:
        try:
            async with http.get(url, headers=_headers(auth, sid, json_body=False)) as resp:
                opened.set()
                if resp.status != 200:
                    sample.error(f"GET: HTTP {resp.status}")
                    return
                async for _ in resp.content.iter_any():
                    pass
        except (aiohttp.ClientError, TimeoutError):
            pass
        finally:
            opened.set()

    async def one(http: aiohttp.ClientSession) -> None:
        nonlocal sessions
        sid = await mcp_open(http, url, auth)
        opened = asyncio.Event()
        getter = asyncio.create_task(hold_get(http, sid, opened))
        await opened.wait()
        headers = _headers(auth, sid)
        for body, what in ((TOOLS_LIST, "tools/list"), (call_body, "tools/call")):
            async with http.post(url, data=body, headers=headers) as resp:
                _, payload = await _read_rpc_answer(resp)
                if resp.status != 200 or b'"result"' not in payload or b'"isError":true' in payload:
                    raise McpError(f"{what}: HTTP {resp.status} {payload[:200]!r}")
        async with http.delete(url, headers=_headers(auth, sid, json_body=False)) as resp:
            await resp.read()
            if resp.status not in (200, 202, 204):
                raise McpError(f"DELETE: HTTP {resp.status}")
        try:
            await asyncio.wait_for(getter, 2.0)
        except TimeoutError:
            getter.cancel()
            sample.error("GET stream still open 2 s after DELETE")
        sessions += 1
        if on_session is not None:
            on_session()

    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:
        begun = 0

        async def worker() -> None:
            nonlocal begun
            while time.monotonic() < deadline or (max_sessions is not None and begun < max_sessions):
                if max_sessions is not None and begun >= max_sessions:
                    break
                begun += 1
                t0 = time.perf_counter_ns()
                try:
                    await asyncio.wait_for(one(http), 30)
                except (aiohttp.ClientError, TimeoutError, McpError) as exc:
                    sample.error(f"{type(exc).__name__}: {exc}")
                    continue
                sample.latencies_ns.append(time.perf_counter_ns() - t0)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        sample.elapsed_s = time.monotonic() - started
    sample.requests = sessions * 6
    sample.extra = {"sessions": sessions}
    return sample


async def burst(url: str, auth: str | None, body: bytes, n: int) -> Sample:
    """``n`` concurrent POSTs at once (new connections); statuses and latencies."""
    sample = Sample()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:

        async def one() -> None:
            t0 = time.perf_counter_ns()
            try:
                async with http.post(url, data=body, headers=_headers(auth, "bench-session")) as resp:
                    await resp.read()
                    if resp.status != 200:
                        sample.error(f"HTTP {resp.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                sample.error(f"{type(exc).__name__}: {exc}")
                return
            sample.requests += 1
            sample.latencies_ns.append(time.perf_counter_ns() - t0)

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(n)))
        sample.elapsed_s = time.monotonic() - started
    return sample
