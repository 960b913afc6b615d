"""The relay (the fast path, :mod:`mcpproxy.web.relay`) on real sockets: what it serves, what it
hands to aiohttp (mid-connection too), keep-alive both ways, pipelining, every upstream framing,
upstream faults, a caller that goes away mid-stream, and ``server.fast_path: false``.

Callers are raw HTTP/1.1 connections (:class:`Caller`): the point is what happens on *one*
connection, which an HTTP client library hides. Upstreams are the real MCP servers
(``mcp_json``, ``mcp_sse``) or :class:`RawUpstream`, a raw asyncio server that serves requests
keep-alive, counts its connections, records what it received and answers in the framing the
request path's last segment names (no real server answers close-delimited or cuts a body on
demand). Which layer answered is read from the access log line (``"via"``), found by the
``X-Request-Id`` each request carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import threading
import time
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from mcpproxy.web import offload, relay
from mcpproxy.web.app import LIVE, apply_config
from tests.support.mcp_servers import McpServerProcess
from tests.support.net import free_port
from tests.support.oauth import GRANT_TOKEN_EXCHANGE, OAuthServer
from tests.support.proxy import LOG_DIR, ProxyFactory, ProxyProcess, RunningProxy, make_config
from tests.support.verify import sse_messages

pytestmark = pytest.mark.timeout(60)

#: How long any single wait on a socket may take before the test fails instead of hanging.
WAIT = 5.0
_ids = itertools.count(1)


# --------------------------------------------------------------------------------------------
# A raw caller
# --------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes  # decoded (chunks joined)
    wire_body: bytes  # as it came on the wire (chunk framing included)
    chunked: bool

    def json(self) -> Any:
        return json.loads(self.body)


class Caller:
    """One raw HTTP/1.1 connection to the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Caller:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), WAIT)

    async def head(self, timeout: float = WAIT) -> tuple[int, str, CIMultiDict[str]]:
        block = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *lines = block[:-4].decode("latin-1").split("\r\n")
        version, code, reason = [*status_line.split(" ", 2), ""][:3]
        assert version in ("HTTP/1.1", "HTTP/1.0"), status_line
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            name, _, value = line.partition(":")
            headers.add(name, value.strip())
        return int(code), reason, headers

    async def answer(self, timeout: float = WAIT, *, to_head: bool = False) -> Answer:
        """The next complete answer on the connection (an interim 1xx is returned as such);
        ``to_head``: the answer to a HEAD request (no body, whatever the head says)."""
        async with asyncio.timeout(timeout):
            status, reason, headers = await self.head()
            if to_head or status < 200 or status in (204, 304):
                return Answer(status, reason, headers, b"", b"", False)
            if "chunked" in headers.get("Transfer-Encoding", "").lower():
                body, wire = await self._chunked()
                return Answer(status, reason, headers, body, wire, True)
            if "Content-Length" in headers:
                body = await self.reader.readexactly(int(headers["Content-Length"]))
                return Answer(status, reason, headers, body, body, False)
            body = await self.reader.read()
            return Answer(status, reason, headers, body, body, False)

    async def _chunked(self) -> tuple[bytes, bytes]:
        body, wire = bytearray(), bytearray()
        while True:
            line = await self.reader.readuntil(b"\r\n")
            wire += line
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:  # trailer section, up to the blank line
                    trailer = await self.reader.readuntil(b"\r\n")
                    wire += trailer
                    if trailer == b"\r\n":
                        return bytes(body), bytes(wire)
            data = await self.reader.readexactly(size + 2)
            wire += data
            body += data[:-2]

    async def exchange(self, request: bytes, timeout: float = WAIT) -> Answer:
        await self.send(request)
        return await self.answer(timeout, to_head=request.startswith(b"HEAD "))

    async def closed_by_peer(self, timeout: float = WAIT) -> bool:
        """Whether the proxy closes the connection (EOF or reset) within ``timeout``."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        assert data == b"", f"unexpected bytes instead of a close: {data[:200]!r}"
        return True

    async def read_until_closed(self, timeout: float = WAIT) -> bytes:
        """Everything the proxy sends until it closes (or resets) the connection."""
        received = bytearray()
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionError):
                while data := await self.reader.read(65536):
                    received += data
        return bytes(received)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), WAIT)


@contextlib.asynccontextmanager
async def caller(port: int) -> AsyncIterator[Caller]:
    conn = await Caller.open(port)
    try:
        yield conn
    finally:
        await conn.close()


def port_of(proxy: RunningProxy | ProxyProcess) -> int:
    return int(proxy.base.rsplit(":", 1)[1])


def rpc(method: str, params: dict[str, Any] | None = None, id_: int | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if id_ is not None:
        message["id"] = id_
    return message


def new_rid() -> str:
    return f"relay-test-{time.time_ns()}-{next(_ids)}"


def request(
    method: str,
    target: str,
    body: bytes | dict[str, Any] | None = None,
    *,
    rid: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """A well-formed request (the relay's shape when ``method`` is POST with a small body)."""
    payload = json.dumps(body).encode() if isinstance(body, dict) else body
    fields = {"Host": "proxy.test"}
    if payload is not None:
        fields["Content-Type"] = "application/json"
        fields["Content-Length"] = str(len(payload))
    fields["Accept"] = "application/json, text/event-stream"
    if rid is not None:
        fields["X-Request-Id"] = rid
    fields.update(headers or {})
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode() + (payload or b"")


def post(target: str, body: bytes | dict[str, Any], rid: str | None = None, **headers: str) -> bytes:
    return request(
        "POST", target, body, rid=rid, headers={k.replace("_", "-"): v for k, v in headers.items()}
    )


def chunk(data: bytes, ext: bytes = b"") -> bytes:
    return b"%x%b\r\n%b\r\n" % (len(data), ext, data)


# --------------------------------------------------------------------------------------------
# Access log lines (in-process proxies log to the session's file; see tests.support.proxy)
# --------------------------------------------------------------------------------------------


def _request_lines(lines: list[dict[str, Any]], rid: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("event") == "request" and line.get("request_id") == rid]


def _in_process_lines() -> list[dict[str, Any]]:
    path: Path = LOG_DIR / "in-process.log"
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


async def access_line(
    rid: str, source: Callable[[], list[dict[str, Any]]] = _in_process_lines
) -> dict[str, Any]:
    """The one access line of request ``rid`` (the proxy writes it right after the answer)."""
    deadline = time.monotonic() + WAIT
    while True:
        found = _request_lines(source(), rid)
        if found or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert len(found) == 1, f"expected one access line for {rid}, got {found}"
    return found[0]


async def via(rid: str, source: Callable[[], list[dict[str, Any]]] = _in_process_lines) -> str:
    return str((await access_line(rid, source))["via"])


# --------------------------------------------------------------------------------------------
# A raw upstream
# --------------------------------------------------------------------------------------------


#: Larger than every socket and transport buffer between the raw upstream and a caller.
HUGE = 32 * 1024 * 1024
SSE_EVENT = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\n\n'


@dataclass
class Seen:
    """One request the raw upstream received."""

    conn: int
    method: str
    target: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class UpstreamConn:
    number: int
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    closed_at: float = 0.0


class RawUpstream:
    """A keep-alive HTTP/1.1 upstream whose answer is picked by the path's last segment.

    ``json`` (default): 200 with Content-Length, echoing the JSON-RPC id and a sequence number.
    ``chunked``: 200, chunked in three chunks (one with an extension) and a trailer field.
    ``close``: 200 with neither length nor chunking, in two writes, then the connection closes.
    ``nocontent``: 204. ``short``: Content-Length 500, 10 bytes sent, then close.
    ``big_short``: Content-Length 200 KiB (past the relay's hold size), half sent, then close.
    ``silent``: never answers. ``stream``: an SSE answer that streams until the peer goes away.
    ``slow``: ``json`` after 0.5 s. ``early``: a 103 interim answer, then ``json``.
    ``huge``: 200 with a 32 MiB Content-Length body, written as fast as the proxy reads it.
    ``events``: an SSE answer of :data:`LONG_STREAM` events, one chunk each, 5 ms apart, then
    the end (long enough for a thread to take it: mcpproxy.web.offload); ``events_reset``,
    ``events_broken`` and ``events_silent``: its first 8 events, then a reset, a broken chunk,
    or silence.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.conns: list[UpstreamConn] = []
        self.seen: list[Seen] = []
        self.sent: dict[str, bytes] = {}  # behaviour -> the exact body bytes last written
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self._writers:
                writer.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = UpstreamConn(len(self.conns) + 1)
        self.conns.append(conn)
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
                method, target, _ = request_line.split(" ", 2)
                headers: CIMultiDict[str] = CIMultiDict()
                for line in lines:
                    name, _, value = line.partition(":")
                    headers.add(name, value.strip())
                body = await _read_request_body(reader, headers)
                self.seen.append(Seen(conn.number, method, target, headers, body))
                behaviour = target.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
                answer = getattr(self, f"_{behaviour}", self._json)
                if not await answer(reader, writer, body):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            conn.closed_at = time.monotonic()
            conn.closed.set()
            self._writers.discard(writer)
            writer.close()

    # Each answer returns whether the connection stays open for another request.

    async def _json(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        try:
            id_ = json.loads(body).get("id") if body else None
        except ValueError:
            id_ = None
        payload = json.dumps({"jsonrpc": "2.0", "id": id_, "result": {"seq": len(self.seen)}}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (len(payload), b"" if self.seen[-1].method == "HEAD" else payload)
        )
        await writer.drain()
        return True

    async def _chunked(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        wire = chunk(b'{"jsonrpc":"2.0",') + chunk(b'"id":1,', b";note=x") + chunk(b'"result":{}}')
        wire += b"0\r\nX-Checksum: abc\r\n\r\n"
        self.sent["chunked"] = wire
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        for piece in (wire[:7], wire[7:30], wire[30:]):  # boundaries that split chunk lines
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        return True

    async def _close(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        parts = [b'{"jsonrpc":"2.0","id":1,', b'"result":{"framing":"close"}}']
        self.sent["close"] = b"".join(parts)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.02)
        return False

    async def _nocontent(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
    ) -> bool:
        writer.write(b"HTTP/1.1 204 No Content\r\nX-Upstream: yes\r\n\r\n")
        await writer.drain()
        return True

    async def _short(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"jsonrpc"'
        )
        await writer.drain()
        return False

    async def _big_short(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 204800\r\n\r\n")
        writer.write(b"x" * 102400)
        await writer.drain()
        await asyncio.sleep(0.05)
        return False

    async def _refuse_first(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
    ) -> bool:
        """401 to the first request of this behaviour (its token "expired"), 200 after."""
        if sum(1 for seen in self.seen if seen.target.endswith("/refuse_first")) > 1:
            return await self._json(reader, writer, body)
        writer.write(
            b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer error="invalid_token"\r\n'
            b"Content-Length: 0\r\n\r\n"
        )
        await writer.drain()
        return True

    async def _slow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        await asyncio.sleep(0.5)
        return await self._json(reader, writer, body)

    async def _early(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)
        return await self._json(reader, writer, body)

    async def _huge(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % HUGE
        )
        piece = b"z" * (1024 * 1024)
        for _ in range(HUGE // len(piece)):
            writer.write(piece)
            await writer.drain()
        return True

    async def _silent(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        await reader.read()  # until the proxy gives up and closes
        return False

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        gone = asyncio.ensure_future(reader.read(1))  # EOF (or a reset) once the proxy lets go
        self._tasks.add(gone)
        gone.add_done_callback(self._tasks.discard)
        try:
            while not gone.done():
                writer.write(chunk(SSE_EVENT))
                await writer.drain()
                await asyncio.wait({gone}, timeout=0.02)
        finally:
            gone.cancel()
        return False

    async def _events(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        return await self._long_stream(writer, LONG_STREAM, b"0\r\n\r\n")

    async def _events_reset(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
    ) -> bool:
        await self._long_stream(writer, 8, b"")
        writer.transport.abort()
        return False

    async def _events_broken(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
    ) -> bool:
        await self._long_stream(writer, 8, b"zz\r\n" + SSE_EVENT)
        await reader.read()  # until the proxy lets go
        return False

    async def _events_silent(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
    ) -> bool:
        await self._long_stream(writer, 8, b"")
        await reader.read()  # until the proxy gives up (the route's idle timeout) and closes
        return False

    async def _long_stream(self, writer: asyncio.StreamWriter, events: int, tail: bytes) -> bool:
        wire = [chunk(SSE_EVENT.replace(b"{}", b'{"n":%d}' % n)) for n in range(events)]
        self.sent["events"] = b"".join(wire) + tail
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for piece in [*wire, tail]:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.005)
        return True

    async def _legacy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        """The legacy transport's GET stream, chunked: a comment, the endpoint event split over
        chunks and reads, one message event, the end."""
        await self._legacy_stream(writer, LEGACY_ENDPOINT, chunked=True)
        return True

    async def _legacy_close(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
    ) -> bool:
        """The same stream framed by the connection's close."""
        await self._legacy_stream(writer, LEGACY_ENDPOINT, chunked=False)
        return False

    async def _legacy_outside(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
    ) -> bool:
        """An endpoint on another origin: the stream must not reach the caller."""
        await self._legacy_stream(writer, b"http://elsewhere.test/steal?token=upstream-secret", chunked=True)
        return False

    async def _legacy_stream(self, writer: asyncio.StreamWriter, endpoint: bytes, *, chunked: bool) -> None:
        framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Connection: close\r\n"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + framing + b"\r\n")
        data = b": ping\n\nevent: endpoint\ndata: " + endpoint + b"\n\n" + SSE_EVENT
        pieces = [data[:4], data[4:20], data[20:31], data[31:]]  # the endpoint event over three
        wire = b"".join(chunk(p) for p in pieces) + b"0\r\n\r\n" if chunked else data
        for at in range(0, len(wire), 9):  # reads that cut chunk lines and data
            writer.write(wire[at : at + 9])
            await writer.drain()
            await asyncio.sleep(0.002)


#: The events of the raw upstream's ``events`` answer.
LONG_STREAM = 30
#: What the raw upstream's legacy stream names as its endpoint (the route's upstream is /up).
LEGACY_ENDPOINT = b"/up/messages?session_id=s1"


async def _read_request_body(reader: asyncio.StreamReader, headers: CIMultiDict[str]) -> bytes:
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return bytes(body)
            body += (await reader.readexactly(size + 2))[:-2]
    return await reader.readexactly(int(headers.get("Content-Length", "0")))


@pytest.fixture
async def upstream() -> AsyncIterator[RawUpstream]:
    server = await RawUpstream().start()
    yield server
    await server.stop()


def raw_route(upstream: RawUpstream, **extra: Any) -> dict[str, Any]:
    return {
        "name": "raw",
        "path": "/raw",
        "upstream": upstream.base + "/up",
        "timeouts": {"connect": 1, "idle": 1},
        **extra,
    }


async def raw_proxy(proxy_factory: ProxyFactory, upstream: RawUpstream, **server: Any) -> RunningProxy:
    spec: dict[str, Any] = {"routes": [raw_route(upstream)]}
    if server:
        spec["server"] = server
    return await proxy_factory(spec)


async def until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def assert_jsonrpc_error(answer: Answer, status: int, rid: str | None = None, id_: Any = None) -> None:
    assert answer.status == status, (answer.status, answer.body[:300])
    assert answer.headers["Content-Type"].startswith("application/json")
    payload = answer.json()
    assert payload["jsonrpc"] == "2.0"
    assert payload["id"] == id_
    assert isinstance(payload["error"]["code"], int) and payload["error"]["message"]
    if rid is not None:
        assert payload["error"]["data"]["request_id"] == rid
        assert answer.headers["X-Request-Id"] == rid


# --------------------------------------------------------------------------------------------
# 1. Real MCP servers through the relay
# --------------------------------------------------------------------------------------------

INIT_PARAMS = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "relay-test", "version": "1"},
}


def rpc_payloads(answer: Answer) -> list[Any]:
    if answer.headers.get("Content-Type", "").startswith("text/event-stream"):
        return sse_messages(answer.body.decode())
    return [answer.json()]


async def mcp_handshake(conn: Caller, path: str) -> tuple[str, list[str]]:
    """initialize + notifications/initialized on ``conn``; the session id and the request ids."""
    rid_init, rid_note = new_rid(), new_rid()
    init = await conn.exchange(post(path, rpc("initialize", INIT_PARAMS, 1), rid_init))
    assert init.status == 200, init.body[:300]
    [result] = [m for m in rpc_payloads(init) if m.get("id") == 1]
    assert result["result"]["serverInfo"]["name"] == "mcpproxy-test-server"
    session = init.headers["Mcp-Session-Id"]
    note = await conn.exchange(
        post(
            path,
            rpc("notifications/initialized"),
            rid_note,
            Mcp_Session_Id=session,
            MCP_Protocol_Version="2025-11-25",
        )
    )
    assert note.status == 202
    return session, [rid_init, rid_note]


async def test_tools_call_json_answer_through_the_relay(
    mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory({"routes": [{"name": "m", "path": "/m/mcp", "upstream": mcp_json.url}]})
    async with caller(port_of(proxy)) as conn:
        session, rids = await mcp_handshake(conn, "/m/mcp")
        rid = new_rid()
        call = rpc("tools/call", {"name": "add", "arguments": {"a": 2, "b": 40}}, 7)
        answer = await conn.exchange(
            post("/m/mcp", call, rid, Mcp_Session_Id=session, MCP_Protocol_Version="2025-11-25")
        )
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["X-Request-Id"] == rid
    assert answer.headers["Mcp-Session-Id"] == session
    payload = answer.json()
    assert payload["id"] == 7
    assert payload["result"]["content"][0]["text"] == "42"
    for each in [*rids, rid]:
        assert await via(each) == "relay"
    line = await access_line(rid)
    assert (line["route"], line["mcp_method"], line["status"]) == ("m", "tools/call", 200)
    records = await mcp_json.requests("/mcp")
    assert [r["method"] for r in records] == ["POST"] * 3
    assert json.loads(records[2]["body"]) == call  # the body went upstream unchanged
    assert records[2]["headers"]["x-request-id"] == [rid]
    assert records[2]["headers"]["host"] == [mcp_json.host_header]
    # one caller connection, three requests: one pooled upstream connection served them all
    assert len({r["client"] for r in records}) == 1


async def test_tools_call_sse_answer_through_the_relay(
    mcp_sse: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory({"routes": [{"name": "m", "path": "/m/mcp", "upstream": mcp_sse.url}]})
    async with caller(port_of(proxy)) as conn:
        session, _ = await mcp_handshake(conn, "/m/mcp")
        rid = new_rid()
        call = rpc(
            "tools/call", {"name": "progress", "arguments": {"count": 3}, "_meta": {"progressToken": "p1"}}, 9
        )
        answer = await conn.exchange(
            post("/m/mcp", call, rid, Mcp_Session_Id=session, MCP_Protocol_Version="2025-11-25")
        )
        # the connection still serves after a streamed answer
        again = await conn.exchange(
            post(
                "/m/mcp",
                rpc("tools/call", {"name": "add", "arguments": {"a": 1, "b": 1}}, 10),
                new_rid(),
                Mcp_Session_Id=session,
                MCP_Protocol_Version="2025-11-25",
            )
        )
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    assert answer.chunked and "Content-Length" not in answer.headers
    messages = sse_messages(answer.body.decode())
    progress = [m["params"]["progress"] for m in messages if m.get("method") == "notifications/progress"]
    assert progress == [1, 2, 3]
    logs = [m["params"]["data"] for m in messages if m.get("method") == "notifications/message"]
    assert logs == [f"progress step {i}/3" for i in (1, 2, 3)]
    final = messages[-1]
    assert final["id"] == 9 and final["result"]["content"][0]["text"] == "done 3"
    assert await via(rid) == "relay"
    assert again.status == 200
    assert [m["result"]["content"][0]["text"] for m in rpc_payloads(again) if m.get("id") == 10] == ["2"]


async def test_policy_list_goes_to_aiohttp_and_calls_stay_on_the_relay(
    mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    policy = {"default": "allow", "rules": [{"tools": ["drop_table"], "deny": True}]}
    proxy = await proxy_factory(
        {"routes": [{"name": "m", "path": "/m/mcp", "upstream": mcp_json.url, "policy": policy}]}
    )
    headers: dict[str, str] = {"MCP_Protocol_Version": "2025-11-25"}
    async with caller(port_of(proxy)) as conn:
        session, _ = await mcp_handshake(conn, "/m/mcp")
        headers["Mcp_Session_Id"] = session
        rid_list, rid_deny, rid_add = new_rid(), new_rid(), new_rid()
        listed = await conn.exchange(post("/m/mcp", rpc("tools/list", {}, 2), rid_list, **headers))
    async with caller(port_of(proxy)) as conn:  # the first connection now belongs to aiohttp
        denied = await conn.exchange(
            post(
                "/m/mcp",
                rpc("tools/call", {"name": "drop_table", "arguments": {"table": "t"}}, 3),
                rid_deny,
                **headers,
            )
        )
        added = await conn.exchange(
            post(
                "/m/mcp",
                rpc("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}, 4),
                rid_add,
                **headers,
            )
        )
    names = {tool["name"] for tool in listed.json()["result"]["tools"]}
    assert "add" in names and "drop_table" not in names  # filtered
    assert await via(rid_list) == "aiohttp"
    assert denied.status == 403 and denied.json()["id"] == 3
    assert await via(rid_deny) == "relay"
    assert added.status == 200 and added.json()["result"]["content"][0]["text"] == "3"
    assert await via(rid_add) == "relay"
    calls = [
        json.loads(r["body"])["params"]["name"]
        for r in await mcp_json.requests("/mcp")
        if r["body"] and json.loads(r["body"]).get("method") == "tools/call"
    ]
    assert calls == ["add"]  # the denied call never reached the upstream


# --------------------------------------------------------------------------------------------
# 2. Keep-alive on both sides
# --------------------------------------------------------------------------------------------


async def test_keep_alive_one_caller_connection_one_upstream_connection(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rids = [new_rid() for _ in range(5)]
    async with caller(port_of(proxy)) as conn:
        answers = [
            await conn.exchange(post("/raw/json", rpc("ping", {}, i), rid)) for i, rid in enumerate(rids)
        ]
    assert [a.status for a in answers] == [200] * 5
    assert [a.json()["id"] for a in answers] == list(range(5))
    assert [a.json()["result"]["seq"] for a in answers] == [1, 2, 3, 4, 5]
    assert [a.headers["X-Request-Id"] for a in answers] == rids
    assert all(not a.chunked and int(a.headers["Content-Length"]) == len(a.body) for a in answers)
    assert [await via(rid) for rid in rids] == ["relay"] * 5
    assert len(upstream.conns) == 1
    assert [s.conn for s in upstream.seen] == [1] * 5
    assert [(s.method, s.target) for s in upstream.seen] == [("POST", "/up/json")] * 5
    assert [json.loads(s.body)["id"] for s in upstream.seen] == list(range(5))
    assert [s.headers["X-Request-Id"] for s in upstream.seen] == rids
    assert all(s.headers["Host"] == f"127.0.0.1:{upstream.port}" for s in upstream.seen)

    # a second caller connection reuses the pooled upstream connection
    async with caller(port_of(proxy)) as conn:
        again = await conn.exchange(post("/raw/json", rpc("ping", {}, 99)))
    assert again.status == 200 and again.json()["id"] == 99
    assert len(upstream.conns) == 1 and upstream.seen[-1].conn == 1


async def test_bodiless_delete_is_relayed(upstream: RawUpstream, proxy_factory: ProxyFactory) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(
            request("DELETE", "/raw/json", rid=rid, headers={"Mcp-Session-Id": "s1"})
        )
    assert answer.status == 200
    assert await via(rid) == "relay"
    [seen] = upstream.seen
    assert (seen.method, seen.target, seen.body) == ("DELETE", "/up/json", b"")
    assert seen.headers["Mcp-Session-Id"] == "s1"


# --------------------------------------------------------------------------------------------
# 3. Handover to aiohttp
# --------------------------------------------------------------------------------------------


async def test_handover_mid_connection(upstream: RawUpstream, proxy_factory: ProxyFactory) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    first, third = new_rid(), new_rid()
    async with caller(port_of(proxy)) as conn:
        relayed = await conn.exchange(post("/raw/json", rpc("ping", {}, 1), first))
        health = await conn.exchange(request("GET", "/healthz"))
        after = await conn.exchange(post("/raw/json", rpc("ping", {}, 3), third))
    assert relayed.status == 200 and relayed.json()["id"] == 1
    assert health.status == 200 and health.json()["status"] == "ok"
    assert after.status == 200 and after.json()["id"] == 3
    assert await via(first) == "relay"
    assert await via(third) == "aiohttp"  # once handed over, aiohttp owns the connection
    assert [json.loads(s.body)["id"] for s in upstream.seen] == [1, 3]


async def test_handover_mid_connection_in_a_real_process(
    upstream: RawUpstream, proxy_process: Callable[..., ProxyProcess]
) -> None:
    """The same under ``mcpproxy serve`` (uvloop's transports, not asyncio's)."""
    proc = proxy_process(json.dumps({"routes": [raw_route(upstream)]}))
    rids = [new_rid() for _ in range(4)]
    async with caller(proc.port) as conn:
        one = await conn.exchange(post("/raw/json", rpc("ping", {}, 1), rids[0]))
        two = await conn.exchange(post("/raw/json", rpc("ping", {}, 2), rids[1]))
        health = await conn.exchange(request("GET", "/healthz"))
        three = await conn.exchange(post("/raw/json", rpc("ping", {}, 3), rids[2]))
    async with caller(proc.port) as conn:
        four = await conn.exchange(post("/raw/chunked", rpc("ping", {}, 4), rids[3]))
    assert [a.status for a in (one, two, health, three, four)] == [200] * 5
    assert [one.json()["id"], two.json()["id"], three.json()["id"]] == [1, 2, 3]
    assert four.chunked and four.wire_body == upstream.sent["chunked"]
    assert health.json()["status"] == "ok"
    vias = [await via(rid, proc.log_lines) for rid in rids]
    assert vias == ["relay", "relay", "aiohttp", "relay"]
    listening = [line for line in proc.log_lines() if line.get("event") == "listening"]
    assert listening and listening[0]["uvloop"] is True


async def test_get_is_relayed_and_head_handed_over(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid_get, rid_head = new_rid(), new_rid()
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(request("GET", "/raw/json", rid=rid_get))
        head = await conn.exchange(request("HEAD", "/raw/json", rid=rid_head))
    assert answer.status == 200 and answer.json()["result"]["seq"] == 1
    assert head.status == 200 and head.body == b""
    assert (await via(rid_get), await via(rid_head)) == ("relay", "aiohttp")
    assert [(s.method, s.target) for s in upstream.seen] == [("GET", "/up/json"), ("HEAD", "/up/json")]


async def test_handover_chunked_request_body(upstream: RawUpstream, proxy_factory: ProxyFactory) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    body = json.dumps(rpc("ping", {}, 5)).encode()
    head = (
        f"POST /raw/json HTTP/1.1\r\nHost: proxy.test\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\nX-Request-Id: {rid}\r\n\r\n"
    ).encode()
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(head + chunk(body[:10]) + chunk(body[10:]) + b"0\r\n\r\n")
        follow = await conn.exchange(post("/raw/json", rpc("ping", {}, 6)))
    assert answer.status == 200 and answer.json()["id"] == 5
    assert follow.status == 200 and follow.json()["id"] == 6
    assert await via(rid) == "aiohttp"
    assert upstream.seen[0].body == body


async def test_handover_expect_100_continue(upstream: RawUpstream, proxy_factory: ProxyFactory) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    body = json.dumps(rpc("ping", {}, 8)).encode()
    async with caller(port_of(proxy)) as conn:
        await conn.send(post("/raw/json", body, rid, Expect="100-continue")[: -len(body)])
        interim = await conn.answer()
        answer = await conn.exchange(body)
    assert interim.status == 100
    assert answer.status == 200 and answer.json()["id"] == 8
    assert await via(rid) == "aiohttp"
    assert upstream.seen[0].body == body


async def test_handover_body_over_64_kib(upstream: RawUpstream, proxy_factory: ProxyFactory) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    body = json.dumps(
        rpc("tools/call", {"name": "echo", "arguments": {"blob": "y" * (70 * 1024)}}, 11)
    ).encode()
    assert len(body) > 64 * 1024
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(post("/raw/json", body, rid))
    assert answer.status == 200 and answer.json()["id"] == 11
    assert await via(rid) == "aiohttp"
    assert upstream.seen[0].body == body


async def test_handover_unknown_path_and_operational_endpoints(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid, rid_healthz = new_rid(), new_rid()
    async with caller(port_of(proxy)) as conn:
        missing = await conn.exchange(post("/nowhere/mcp", rpc("ping", {}, 12), rid))
    async with caller(port_of(proxy)) as conn:
        ready = await conn.exchange(request("GET", "/readyz"))
    async with caller(port_of(proxy)) as conn:
        metrics = await conn.exchange(request("GET", "/metrics"))
    async with caller(port_of(proxy)) as conn:
        absolute = await conn.exchange(post("http://proxy.test/raw/json", rpc("ping", {}, 14)))
    async with caller(port_of(proxy)) as conn:  # a POST to an operational path: not relayed
        posted = await conn.exchange(post("/healthz", rpc("ping", {}, 13), rid_healthz))
    assert_jsonrpc_error(missing, 404, rid, id_=12)
    line = await access_line(rid)
    assert (line["via"], line["route"], line["status"]) == ("aiohttp", "-", 404)
    assert ready.status == 200 and ready.json() == {"ready": True}
    assert metrics.status == 200 and b"mcpproxy_requests_total" in metrics.body
    assert absolute.status == 400 and absolute.json()["error"]["message"] == "request target must be a path"
    assert_jsonrpc_error(posted, 404, rid_healthz, id_=13)  # the catch-all proxy handler: no route
    assert await via(rid_healthz) == "aiohttp"
    assert upstream.seen == []


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b"POST /raw/json HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            id="conflicting-content-length",
        ),
        pytest.param(
            b"POST /raw/json HTTP/1.1\r\nHost: proxy.test\r\nBad Header: x\r\nContent-Length: 2\r\n\r\n{}",
            id="space-in-field-name",
        ),
        pytest.param(
            b"POST /raw/json HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            id="length-and-chunked",
        ),
        pytest.param(
            b"POST /raw/json HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 2\r\n fold\r\n\r\n{}",
            id="obs-fold",
        ),
        pytest.param(b"POST /raw/json HTTP/1.1 extra\r\nHost: proxy.test\r\n\r\n", id="bad-request-line"),
        pytest.param(
            b"POST /raw/json HTTP/1.1\r\nHost: proxy.test\r\nX-Long: " + b"a" * (20 * 1024) + b"\r\n\r\n",
            id="head-over-max-header-bytes",
        ),
        # Regression (found by this test, fixed): a head with bare-LF line endings never contains CRLFCRLF, so
        # CallerConnection._next (mcpproxy/web/relay.py:174-178) keeps waiting for more bytes
        # (it only hands over once the buffer exceeds max_header_bytes) instead of handing the
        # connection to aiohttp, which answers 400 (checked against aiohttp alone); the caller
        # waits forever (the keep-alive timer is off while a head is incomplete, relay.py:148).
        # Also with server.fast_path: false (see test_fast_path_off_bare_lf_head).
        pytest.param(b"POST /raw/json HTTP/1.1\nHost: proxy.test\nContent-Length: 2\n\n{}", id="bare-lf"),
    ],
)
async def test_handover_malformed_head_answered_by_aiohttp(
    raw: bytes, upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(raw, timeout=3)
        closed = await conn.closed_by_peer()
    assert answer.status in (400, 431), answer
    assert answer.headers["Content-Type"].startswith("application/json")
    payload = answer.json()
    assert payload["error"]["message"] == "malformed HTTP request"
    assert payload["error"]["data"]["request_id"] == answer.headers["X-Request-Id"]
    assert b"fold" not in answer.body and b"Bad" not in answer.body  # nothing quoted back
    assert closed
    assert upstream.seen == []


@pytest.mark.parametrize("value", [b"Bearer sec\x00ret", b"Bearer sec\rret", b"Bearer sec\x01ret"])
async def test_credential_with_a_control_character_is_left_to_aiohttp_and_never_relayed(
    value: bytes, upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    """The relay does not scan credential values for CR, LF and NUL (Incoming.plain_values):
    its head parser hands any head with a control character in a field to aiohttp, which
    refuses it."""
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    raw = (
        b"POST /raw/json HTTP/1.1\r\nHost: proxy.test\r\nX-Request-Id: " + rid.encode()
        + b"\r\nAuthorization: " + value + b"\r\nContent-Type: application/json\r\n"
        + b"Content-Length: 2\r\n\r\n{}"
    )
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(raw, timeout=3)
    assert answer.status == 400, answer
    assert "error" in answer.json()
    assert b"sec" not in answer.body and b"ret" not in answer.body
    assert upstream.seen == []
    async with caller(port_of(proxy)) as conn:  # the relay still serves the next caller
        rid = new_rid()
        assert (await conn.exchange(post("/raw/json", rpc("ping", id_=1), rid))).status == 200
    assert await via(rid) == "relay"


# --------------------------------------------------------------------------------------------
# 4. Pipelining and fragmented input
# --------------------------------------------------------------------------------------------


async def test_pipelined_posts_answered_in_order(upstream: RawUpstream, proxy_factory: ProxyFactory) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rids = [new_rid(), new_rid(), new_rid()]
    async with caller(port_of(proxy)) as conn:
        await conn.send(
            post("/raw/chunked", rpc("ping", {}, 1), rids[0])
            + post("/raw/json", rpc("ping", {}, 2), rids[1])
            + post("/raw/json", rpc("ping", {}, 3), rids[2])
        )
        answers = [await conn.answer() for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 200]
    assert [a.headers["X-Request-Id"] for a in answers] == rids
    assert answers[0].chunked and answers[0].wire_body == upstream.sent["chunked"]
    assert [a.json()["id"] for a in answers[1:]] == [2, 3]
    assert [await via(rid) for rid in rids] == ["relay"] * 3
    assert [json.loads(s.body)["id"] for s in upstream.seen] == [1, 2, 3]


@pytest.mark.parametrize("behaviour", ["legacy", "legacy_close"])
async def test_relayed_get_stream_has_its_legacy_endpoint_rewritten(
    behaviour: str, upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    accept = {"Accept": "text/event-stream"}
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(request("GET", f"/raw/{behaviour}", rid=rid, headers=accept))
    assert answer.status == 200 and answer.chunked  # re-framed, whatever the upstream's framing
    assert answer.headers["Content-Type"] == "text/event-stream"
    assert answer.body == b": ping\n\nevent: endpoint\ndata: /raw/messages?session_id=s1\n\n" + SSE_EVENT
    line = await access_line(rid)
    assert (line["via"], line["status"], line["bytes"]) == ("relay", 200, len(answer.body))


async def test_relayed_get_stream_naming_an_endpoint_elsewhere_is_cut(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    async with caller(port_of(proxy)) as conn:
        await conn.send(request("GET", "/raw/legacy_outside", rid=rid))
        received = await conn.read_until_closed()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")  # the head had gone; then the cut
    assert b"elsewhere" not in received and b"upstream-secret" not in received
    assert not received.endswith(b"0\r\n\r\n")  # not a clean end: the caller sees the failure
    line = await access_line(rid)
    assert (line["via"], line["error"], line["detail"]) == (
        "relay",
        "upstream_stream_failed",
        "EndpointRejected",
    )
    assert "upstream-secret" not in json.dumps(line)
    async with caller(port_of(proxy)) as conn:  # and the proxy serves on
        again = await conn.exchange(post("/raw/json", rpc("ping", {}, 7)))
    assert again.status == 200 and again.json()["id"] == 7


async def test_get_on_a_policy_route_is_handed_over(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    policy = {"default": "allow", "rules": [{"tools": ["drop_table"], "deny": True}]}
    proxy = await proxy_factory({"routes": [raw_route(upstream, policy=policy)]})
    rid = new_rid()
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(request("GET", "/raw/json", rid=rid))
    assert answer.status == 200
    assert await via(rid) == "aiohttp"  # its list results would be filtered: aiohttp's path


async def test_pipelined_post_then_head_hands_over_after_the_answer(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid_post, rid_head = new_rid(), new_rid()
    async with caller(port_of(proxy)) as conn:
        await conn.send(
            post("/raw/json", rpc("ping", {}, 1), rid_post) + request("HEAD", "/raw/json", rid=rid_head)
        )
        first, second = await conn.answer(), await conn.answer(to_head=True)
    assert (first.status, first.headers["X-Request-Id"], first.json()["id"]) == (200, rid_post, 1)
    assert (second.status, second.headers["X-Request-Id"]) == (200, rid_head)
    assert (await via(rid_post), await via(rid_head)) == ("relay", "aiohttp")
    assert [s.method for s in upstream.seen] == ["POST", "HEAD"]


async def test_head_byte_by_byte_and_body_in_pieces(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    body = json.dumps(rpc("ping", {}, 21)).encode()
    raw = post("/raw/json", body, rid)
    head = raw[: -len(body)]
    async with caller(port_of(proxy)) as conn:
        for byte in head:
            await conn.send(bytes([byte]))
            await asyncio.sleep(0.001)
        await conn.send(body[:5])
        await asyncio.sleep(0.02)
        assert upstream.seen == []  # nothing is sent before the body is whole
        await conn.send(body[5:])
        answer = await conn.answer()
    assert answer.status == 200 and answer.json()["id"] == 21
    assert await via(rid) == "relay"
    assert upstream.seen[0].body == body


# --------------------------------------------------------------------------------------------
# 5. Upstream answer framings and faults
# --------------------------------------------------------------------------------------------


async def test_upstream_content_length_answer(upstream: RawUpstream, proxy_factory: ProxyFactory) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(post("/raw/json", rpc("ping", {}, 31)))
    assert answer.status == 200 and not answer.chunked
    assert answer.headers["Content-Length"] == str(len(answer.body))
    assert answer.json() == {"jsonrpc": "2.0", "id": 31, "result": {"seq": 1}}
    assert "Date" in answer.headers


async def test_upstream_chunked_answer_passes_through(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(post("/raw/chunked", rpc("ping", {}, 1), rid))
        follow = await conn.exchange(post("/raw/json", rpc("ping", {}, 2)))
    assert answer.status == 200 and answer.chunked
    assert answer.wire_body == upstream.sent["chunked"]  # extension and trailer untouched
    assert answer.json() == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert await via(rid) == "relay"
    assert follow.status == 200 and follow.json()["id"] == 2
    assert len(upstream.conns) == 1  # the chunked answer's end was found: connection reused


async def test_upstream_close_delimited_answer_is_rechunked(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(post("/raw/close", rpc("ping", {}, 1), rid))
        follow = await conn.exchange(post("/raw/json", rpc("ping", {}, 2)))
    assert answer.status == 200
    assert answer.chunked and "Content-Length" not in answer.headers
    assert answer.body == upstream.sent["close"]
    assert answer.headers.get("Connection", "").lower() != "close"  # the caller keeps its connection
    assert await via(rid) == "relay"
    assert follow.status == 200 and follow.json()["id"] == 2
    assert len(upstream.conns) == 2  # the close-delimited one could not be reused


async def test_upstream_401_to_an_exchanged_token_is_retried_once_with_a_fresh_token(
    upstream: RawUpstream, proxy_factory: ProxyFactory, oauth: OAuthServer
) -> None:
    # The relay drops the refused token from the cache and sends again in a task (the only
    # step of the retry that waits is the new exchange); the caller sees only the 200.
    exchange = {
        "type": "token_exchange",
        "token_endpoint": f"{oauth.issuer}/token",
        "client": {"id": "mcp-proxy", "secret": "proxy-secret", "auth_method": "client_secret_basic"},
        "audience": ["my-external-tool"],
    }
    route = raw_route(upstream, auth={"subject": ["authorization"], "upstream": exchange})
    proxy = await proxy_factory({"routes": [route]})
    user = await oauth.user_token("alice", audience="mcp-proxy")
    rids = [new_rid(), new_rid()]
    async with caller(port_of(proxy)) as conn:
        for n, rid in enumerate(rids, 1):
            call = rpc("tools/call", {"name": "x"}, n)
            answer = await conn.exchange(post("/raw/refuse_first", call, rid, Authorization=f"Bearer {user}"))
            assert answer.status == 200 and answer.json()["id"] == n
    sent = [seen.headers["Authorization"] for seen in upstream.seen]
    assert len(sent) == 3  # refused, retried, then the second request with the cached fresh token
    assert sent[0] != sent[1] and sent[1] == sent[2]
    assert all(user not in value for value in sent)
    for rid in rids:
        line = await access_line(rid)
        assert (line["via"], line["status"]) == ("relay", 200)
    exchanges = [r for r in (await oauth.stats())["requests"] if r["grant_type"] == GRANT_TOKEN_EXCHANGE]
    assert len(exchanges) == 2


async def test_upstream_204(upstream: RawUpstream, proxy_factory: ProxyFactory) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(post("/raw/nocontent", rpc("notifications/x"), rid))
        follow = await conn.exchange(post("/raw/json", rpc("ping", {}, 2)))
    assert answer.status == 204 and answer.body == b""
    assert "Transfer-Encoding" not in answer.headers
    assert answer.headers["X-Request-Id"] == rid
    assert await via(rid) == "relay"
    assert follow.status == 200 and follow.json()["id"] == 2
    assert len(upstream.conns) == 1


async def test_upstream_interim_answer_is_dropped(upstream: RawUpstream, proxy_factory: ProxyFactory) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(post("/raw/early", rpc("ping", {}, 35), rid))
        follow = await conn.exchange(post("/raw/json", rpc("ping", {}, 36)))
    assert answer.status == 200 and answer.json()["id"] == 35
    assert "Link" not in answer.headers
    assert await via(rid) == "relay"
    assert follow.status == 200 and follow.json()["id"] == 36
    assert len(upstream.conns) == 1


async def test_upstream_short_content_length_answer_becomes_502(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(post("/raw/short", rpc("ping", {}, 41), rid))
        follow = await conn.exchange(post("/raw/json", rpc("ping", {}, 42)))
    assert_jsonrpc_error(answer, 502, rid, id_=41)
    line = await access_line(rid)
    assert (line["via"], line["status"], line["error"]) == ("relay", 502, "upstream_protocol")
    assert follow.status == 200 and follow.json()["id"] == 42


async def test_upstream_large_answer_cut_short_cuts_the_caller(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    async with caller(port_of(proxy)) as conn:
        await conn.send(post("/raw/big_short", rpc("ping", {}, 1), rid))
        status, _, headers = await conn.head()
        assert status == 200 and headers["Content-Length"] == "204800"  # past the hold size: streamed
        received = await asyncio.wait_for(conn.reader.read(), WAIT)  # until the proxy cuts
    assert len(received) == 102400  # what the upstream sent, then a cut connection
    async with caller(port_of(proxy)) as conn:
        assert (await conn.exchange(post("/raw/json", rpc("ping", {}, 2)))).status == 200
    assert 'mcpproxy_upstream_errors_total{route="raw",kind="stream"} 1' in proxy.metrics.render()
    line = await access_line(rid)
    assert line["via"] == "relay"
    # Regression (found by this test, fixed): the access line (and mcpproxy_requests_total) says status 499 /
    # "client_disconnected" although the *upstream* failed; aiohttp's path logs 200 /
    # "upstream_stream_failed" for the same fault. _Exchange.fail (mcpproxy/web/relay.py:528-533)
    # sets error "upstream_stream_failed" but aborts the caller *before* resolving `done`; the
    # abort's connection_lost (relay.py:136-143) then cancels the _serve task, whose
    # `except asyncio.CancelledError` (relay.py:253-254) overwrites status and error.
    assert (line["status"], line["error"]) == (200, "upstream_stream_failed")


async def test_upstream_refused_is_502(proxy_factory: ProxyFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}/mcp"
    proxy = await proxy_factory({"routes": [{"name": "dead", "path": "/dead", "upstream": dead}]})
    rid = new_rid()
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(post("/dead", rpc("ping", {}, 51), rid))
        again = await conn.exchange(post("/dead", rpc("ping", {}, 52)))
    assert_jsonrpc_error(answer, 502, rid, id_=51)
    line = await access_line(rid)
    assert (line["via"], line["status"], line["error"]) == ("relay", 502, "upstream_connect")
    assert again.status == 502  # the connection survived the error


async def test_upstream_silent_is_504_after_idle_timeout(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    async with caller(port_of(proxy)) as conn:
        began = time.monotonic()
        answer = await conn.exchange(post("/raw/silent", rpc("ping", {}, 61), rid))
        took = time.monotonic() - began
        follow = await conn.exchange(post("/raw/json", rpc("ping", {}, 62)))
    assert_jsonrpc_error(answer, 504, rid, id_=61)
    assert 0.9 <= took < 3, took  # timeouts.idle is 1 s
    line = await access_line(rid)
    assert (line["via"], line["status"], line["error"]) == ("relay", 504, "upstream_timeout")
    assert follow.status == 200 and follow.json()["id"] == 62
    assert await until(lambda: upstream.conns[0].closed.is_set())  # the silent one was dropped


async def test_slow_caller_gets_the_whole_answer(upstream: RawUpstream, proxy_factory: ProxyFactory) -> None:
    """A caller that stops reading for longer than timeouts.idle (1 s) while a large answer is
    on its way must still get all of it: the upstream is not idle, the caller is slow."""
    # Regression (found by this test, fixed): the relay cuts the answer after ~timeouts.idle (the caller gets ~4.7 MB of
    # 32 MiB, the access line says 499 "client_disconnected", detail UpstreamTimeout); aiohttp's
    # path (fast_path: false) delivers all 32 MiB. While the caller's socket is backed up the
    # relay pauses reading the upstream (_Exchange.caller_backed_up -> UpstreamConnection.pause,
    # mcpproxy/web/upstream.py:194), but UpstreamConnection._check_idle (upstream.py:286-293)
    # still measures silence from _last_read, so backpressure counts as an idle upstream and
    # fails with UpstreamTimeout. aiohttp's client stops its sock_read timer while reading is
    # paused ("sock_read measures the peer"). The same cuts a long SSE stream to a slow caller.
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    got = 0
    async with caller(port_of(proxy)) as conn:
        await conn.send(post("/raw/huge", rpc("ping", {}, 1), rid))
        status, _, headers = await conn.head()
        assert status == 200 and headers["Content-Length"] == str(HUGE)
        await asyncio.sleep(2.5)  # a caller busy elsewhere, past the route's idle timeout
        with contextlib.suppress(ConnectionError):
            while got < HUGE:
                data = await asyncio.wait_for(conn.reader.read(1 << 20), WAIT)
                if not data:
                    break
                got += len(data)
    assert got == HUGE
    line = await access_line(rid)
    assert (line["via"], line["status"], line.get("error")) == ("relay", 200, None)


# --------------------------------------------------------------------------------------------
# 6. The caller goes away mid-stream
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast_path", [True, False], ids=["relay", "aiohttp"])
async def test_caller_gone_mid_stream_closes_the_upstream(
    fast_path: bool, upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream, fast_path=fast_path)
    rid = new_rid()
    conn = await Caller.open(port_of(proxy))
    await conn.send(post("/raw/stream", rpc("tools/call", {"name": "s"}, 71), rid))
    status, _, headers = await conn.head()
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    first = await asyncio.wait_for(conn.reader.readuntil(b"\n\n"), WAIT)
    assert b"notifications/progress" in first
    assert 'mcpproxy_open_streams{route="raw"} 1' in proxy.metrics.render()
    gone_at = time.monotonic()
    conn.writer.transport.abort()
    stream_conn = upstream.conns[0]
    assert await until(stream_conn.closed.is_set, timeout=3), "the proxy kept the upstream stream open"
    assert stream_conn.closed_at - gone_at < 3
    line = await access_line(rid)
    # The caller was sent a 200 and left mid-stream (as MCP clients do once their response is
    # in): the line keeps the 200 and says who ended it. Not an upstream failure.
    # Regression (fixed): both paths logged 499, so the official MCP client's calls over SSE were
    # logged and audited 499 whenever its close beat the stream's end (tests/test_audit.py
    # flaked on it in CI). On aiohttp's path, a write to the gone caller that fails before the
    # handler is cancelled raises ClientConnectionResetError, an aiohttp.ClientError, which
    # _pump took for an upstream failure; it now checks the caller's transport first.
    expected_via = "relay" if fast_path else "aiohttp"
    assert (line["via"], line["status"], line["error"]) == (expected_via, 200, "client_disconnected")
    assert 'kind="stream"' not in proxy.metrics.render()
    runtime = proxy.app[LIVE].state.handler.runtimes["raw"]
    assert runtime.in_flight == 0
    assert 'mcpproxy_open_streams{route="raw"} 0' in proxy.metrics.render()
    async with caller(port_of(proxy)) as other:
        answer = await other.exchange(post("/raw/json", rpc("ping", {}, 72)))
    assert answer.status == 200 and answer.json()["id"] == 72
    assert len(upstream.conns) == 2  # the aborted stream's connection was not pooled


@pytest.mark.parametrize("fast_path", [True, False], ids=["relay", "aiohttp"])
async def test_caller_gone_before_the_answer_is_499(
    fast_path: bool, upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream, fast_path=fast_path)
    rid = new_rid()
    conn = await Caller.open(port_of(proxy))
    await conn.send(post("/raw/silent", rpc("tools/call", {"name": "s"}, 73), rid))
    assert await until(lambda: len(upstream.seen) == 1, timeout=3)
    conn.writer.transport.abort()
    line = await access_line(rid)
    expected_via = "relay" if fast_path else "aiohttp"
    assert (line["via"], line["status"], line["error"]) == (expected_via, 499, "client_disconnected")
    assert 'status="499"' in proxy.metrics.render()
    assert await until(lambda: upstream.conns[0].closed.is_set(), timeout=3)  # not left waiting


# --------------------------------------------------------------------------------------------
# 6b. Long streams relayed by a thread (mcpproxy.web.offload)
# --------------------------------------------------------------------------------------------

OFFLOADED = 'mcpproxy_offloaded_streams_total{route="raw"} 1'


@pytest.mark.parametrize("threads", [16, 0], ids=["thread", "no-threads"])
async def test_a_long_stream_is_relayed_whole_and_both_connections_are_kept(
    threads: int, upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    """A POST's long SSE answer is handed to a thread after its first events, comes out byte for
    byte as the upstream framed it, and both connections serve the next request: the caller's
    (keep-alive) and the upstream's (back in the pool). ``stream_threads: 0``: the same answer
    from the loop."""
    proxy = await raw_proxy(proxy_factory, upstream, stream_threads=threads)
    rid = new_rid()
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(post("/raw/events", rpc("tools/call", {"name": "s"}, 1), rid))
        assert answer.status == 200 and answer.headers["Content-Type"] == "text/event-stream"
        assert answer.wire_body == upstream.sent["events"]
        assert answer.body.count(b"event: message") == LONG_STREAM
        after = await conn.exchange(post("/raw/json", rpc("ping", {}, 2)))
    assert after.status == 200 and after.json()["id"] == 2
    assert upstream.seen[1].conn == upstream.seen[0].conn, "the upstream connection was not reused"
    line = await access_line(rid)
    assert (line["via"], line["status"], line.get("error")) == ("relay", 200, None)
    assert line["bytes"] == len(upstream.sent["events"])
    metrics = proxy.metrics.render()
    assert (OFFLOADED in metrics) == (threads > 0)
    assert 'mcpproxy_open_streams{route="raw"} 0' in metrics
    assert proxy.app[LIVE].state.handler.runtimes["raw"].in_flight == 0


async def test_a_stream_no_thread_can_be_started_for_stays_on_the_loop(
    upstream: RawUpstream, proxy_factory: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process is out of threads (a fault no real part produces on demand, so the thread
    class is replaced by one whose start fails as Python's does then): the stream is relayed
    whole on the loop, and nothing is counted as handed over."""

    class RefusedThread(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr(offload, "threading", types.SimpleNamespace(Thread=RefusedThread))
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(post("/raw/events", rpc("tools/call", {"name": "s"}, 1), rid))
        assert answer.wire_body == upstream.sent["events"]
        assert (await conn.exchange(post("/raw/json", rpc("ping", {}, 2)))).status == 200
    assert (await access_line(rid))["status"] == 200
    assert "mcpproxy_offloaded_streams_total{" not in proxy.metrics.render()
    assert not proxy.app[LIVE].state.handler.runtimes["raw"].in_flight


@pytest.mark.parametrize(
    ("behaviour", "detail"),
    [
        ("events_reset", "ConnectionResetError"),
        ("events_broken", "ProtocolViolation"),
        ("events_silent", "UpstreamTimeout"),
    ],
)
async def test_an_upstream_failing_in_a_threads_hands_cuts_the_caller(
    behaviour: str, detail: str, upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    """Once the answer has begun, a reset, a broken chunk or a silence past the route's idle
    timeout (1 s) can only be told by cutting the caller's connection: as on the loop, with the
    error logged and counted, and nothing of the broken chunk relayed."""
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    began = time.monotonic()
    async with caller(port_of(proxy)) as conn:
        await conn.send(post(f"/raw/{behaviour}", rpc("tools/call", {"name": "s"}, 1), rid))
        status, _, _ = await conn.head()
        received = await conn.read_until_closed()
    assert status == 200
    assert received.count(b"event: message") == 8
    assert b"zz" not in received and not received.endswith(b"0\r\n\r\n")
    if behaviour == "events_silent":
        assert time.monotonic() - began >= 1.0
    line = await access_line(rid)
    assert (line["status"], line["error"], line["detail"]) == (200, "upstream_stream_failed", detail)
    metrics = proxy.metrics.render()
    assert OFFLOADED in metrics
    assert 'mcpproxy_upstream_errors_total{route="raw",kind="stream"} 1' in metrics
    assert 'mcpproxy_open_streams{route="raw"} 0' in metrics
    assert proxy.app[LIVE].state.handler.runtimes["raw"].in_flight == 0


async def test_a_caller_gone_from_a_threads_stream_closes_the_upstream(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    conn = await Caller.open(port_of(proxy))
    await conn.send(post("/raw/stream", rpc("tools/call", {"name": "s"}, 1), rid))
    await conn.head()
    for _ in range(10):  # past the events the loop relays: the thread has it now
        await asyncio.wait_for(conn.reader.readuntil(b"\n\n"), WAIT)
    assert OFFLOADED in proxy.metrics.render()
    conn.writer.transport.abort()
    assert await until(upstream.conns[0].closed.is_set, timeout=3), "the upstream stream outlived its caller"
    line = await access_line(rid)
    assert (line["via"], line["status"], line["error"]) == ("relay", 200, "client_disconnected")
    assert 'kind="stream"' not in proxy.metrics.render()
    assert 'mcpproxy_open_streams{route="raw"} 0' in proxy.metrics.render()
    assert proxy.app[LIVE].state.handler.runtimes["raw"].in_flight == 0


async def test_shutdown_cuts_a_threads_stream_at_the_end_of_the_grace(
    upstream: RawUpstream, proxy_process: Callable[..., ProxyProcess]
) -> None:
    """SIGTERM: a stream that never ends, relayed by a thread, is cut once the grace (1 s) is
    over, and the process exits cleanly, the thread's stream logged."""
    spec = {"routes": [raw_route(upstream)], "server": {"shutdown_grace_s": 1}}
    proc = proxy_process(json.dumps(spec))
    rid = new_rid()
    async with caller(proc.port) as conn:
        await conn.send(post("/raw/stream", rpc("tools/call", {"name": "s"}, 1), rid))
        await conn.head()
        for _ in range(10):
            await asyncio.wait_for(conn.reader.readuntil(b"\n\n"), WAIT)
        async with caller(proc.port) as other:
            metrics = await other.exchange(request("GET", "/metrics"))
        assert OFFLOADED in metrics.body.decode()
        proc.signal(signal.SIGTERM)
        await conn.read_until_closed(timeout=5)
    assert await asyncio.to_thread(proc.proc.wait, 10) == 0
    line = await access_line(rid, proc.log_lines)
    assert line["status"] == 200 and line["error"] == "client_disconnected"
    assert await until(upstream.conns[0].closed.is_set, timeout=3)


# --------------------------------------------------------------------------------------------
# 7. server.fast_path: false
# --------------------------------------------------------------------------------------------


async def test_fast_path_off_serves_through_aiohttp(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream, fast_path=False)
    assert proxy.config.server.fast_path is False
    rids = [new_rid(), new_rid()]
    async with caller(port_of(proxy)) as conn:
        answers = [
            await conn.exchange(post("/raw/json", rpc("ping", {}, i), rid)) for i, rid in enumerate(rids)
        ]
    assert [(a.status, a.json()["id"]) for a in answers] == [(200, 0), (200, 1)]
    assert [await via(rid) for rid in rids] == ["aiohttp", "aiohttp"]
    assert [json.loads(s.body)["id"] for s in upstream.seen] == [0, 1]


async def test_fast_path_off_bare_lf_head(upstream: RawUpstream, proxy_factory: ProxyFactory) -> None:
    # Regression (found by this test, fixed): the same hang as test_handover_malformed_head_answered_by_aiohttp[bare-lf]:
    # with fast_path: false every connection still starts on the relay (mcpproxy/web/protocol.py:66-69), and
    # CallerConnection._next (mcpproxy/web/relay.py:174-178) waits for CRLFCRLF before anything
    # else, so the switch meant to take the relay out of the way does not.
    proxy = await raw_proxy(proxy_factory, upstream, fast_path=False)
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(
            b"POST /raw/json HTTP/1.1\nHost: proxy.test\nContent-Length: 2\n\n{}", timeout=3
        )
    assert answer.status == 400
    assert answer.json()["error"]["message"] == "malformed HTTP request"


async def test_reload_applies_to_the_next_request_on_the_same_connection(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rids = [new_rid(), new_rid(), new_rid()]
    async with caller(port_of(proxy)) as conn:
        one = await conn.exchange(post("/raw/json", rpc("ping", {}, 1), rids[0]))
        await apply_config(
            proxy.app, make_config({"server": {"fast_path": False}, "routes": [raw_route(upstream)]})
        )
        two = await conn.exchange(post("/raw/json", rpc("ping", {}, 2), rids[1]))
    async with caller(port_of(proxy)) as conn:
        await apply_config(proxy.app, make_config({"routes": [raw_route(upstream)]}))
        three = await conn.exchange(post("/raw/json", rpc("ping", {}, 3), rids[2]))
    assert [a.status for a in (one, two, three)] == [200, 200, 200]
    assert [await via(rid) for rid in rids] == ["relay", "aiohttp", "relay"]
    # the first state's pool was closed once that state drained: its upstream connection too
    assert await until(upstream.conns[0].closed.is_set)
    assert upstream.seen[2].conn not in (upstream.seen[0].conn, upstream.seen[1].conn)


async def test_graceful_shutdown_finishes_relayed_answers_and_closes_idle_connections(
    upstream: RawUpstream, proxy_process: Callable[..., ProxyProcess]
) -> None:
    proc = proxy_process(json.dumps({"routes": [raw_route(upstream)]}))
    rid = new_rid()
    async with caller(proc.port) as idle, caller(proc.port) as busy:
        assert (await idle.exchange(post("/raw/json", rpc("ping", {}, 1)))).status == 200
        await busy.send(post("/raw/slow", rpc("ping", {}, 2), rid))
        assert await until(lambda: any(s.target == "/up/slow" for s in upstream.seen))
        proc.signal(signal.SIGTERM)
        assert await idle.closed_by_peer(timeout=3)
        answer = await busy.answer()
        assert await busy.closed_by_peer(timeout=3)
    assert answer.status == 200 and answer.json()["id"] == 2
    assert await asyncio.to_thread(proc.proc.wait, 10) == 0
    assert await via(rid, proc.log_lines) == "relay"


async def test_idle_caller_connections_are_closed_after_keep_alive(
    upstream: RawUpstream, proxy_factory: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "KEEPALIVE_S", 0.3)
    proxy = await raw_proxy(proxy_factory, upstream)
    async with caller(port_of(proxy)) as fresh, caller(port_of(proxy)) as used:
        assert (await used.exchange(post("/raw/json", rpc("ping", {}, 1)))).status == 200
        began = time.monotonic()
        assert await fresh.closed_by_peer(timeout=3)
        assert await used.closed_by_peer(timeout=3)
        assert time.monotonic() - began < 2


async def test_caller_stalled_mid_head_is_closed_after_keep_alive(
    upstream: RawUpstream, proxy_factory: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression (found by this test, fixed): a caller that sends part of a request head and stalls holds the connection
    # forever: data_received (mcpproxy/web/relay.py:147-149) cancels the keep-alive timer and
    # _next (relay.py:174-178) returns waiting for more without re-arming it. aiohttp alone closes
    # such a connection at its keep-alive timeout (its handler is still waiting for a message).
    monkeypatch.setattr(relay, "KEEPALIVE_S", 0.3)
    proxy = await raw_proxy(proxy_factory, upstream)
    async with caller(port_of(proxy)) as stalled:
        await stalled.send(b"POST /raw/json HTTP/1.1\r\nHost: proxy.test\r\n")
        assert await stalled.closed_by_peer(timeout=3)


# --------------------------------------------------------------------------------------------
# 8. Connection: close from the caller
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "status"), [("/raw/json", 200), ("/raw/short", 502), ("/raw/close", 200)])
async def test_connection_close_from_the_caller(
    target: str, status: int, upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    rid = new_rid()
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(post(target, rpc("ping", {}, 81), rid, Connection="close"))
        closed = await conn.closed_by_peer()
    assert answer.status == status
    assert answer.headers["Connection"].lower() == "close"
    assert closed
    assert await via(rid) == "relay"
    assert "Connection" not in upstream.seen[0].headers  # hop-by-hop: not forwarded


async def test_keep_alive_connection_is_not_closed_after_an_answer(
    upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await raw_proxy(proxy_factory, upstream)
    async with caller(port_of(proxy)) as conn:
        answer = await conn.exchange(post("/raw/json", rpc("ping", {}, 1)))
        closed = await conn.closed_by_peer(timeout=0.3)
    assert answer.status == 200 and "Connection" not in answer.headers
    assert not closed


# --------------------------------------------------------------------------------------------
# Limits the relay must not weaken
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "fast-path-off"])
async def test_declared_body_over_max_body_is_refused_before_it_arrives(
    fast_path: bool, upstream: RawUpstream, proxy_factory: ProxyFactory
) -> None:
    # Regression (found by this test, fixed): CallerConnection._next (mcpproxy/web/relay.py:184-185) waits for the whole
    # Content-Length body before judging the request at all (_job, relay.py:203, would hand a
    # body over SMALL_BODY to aiohttp), and data_received (relay.py:145-152) buffers without
    # limit while not busy. So a POST declaring more than server.max_body_bytes gets no 413
    # (aiohttp alone refuses it from the head: checked) and the relay holds every byte the caller
    # sends in memory, up to whatever Content-Length says. server.fast_path: false does not help:
    # every connection still starts on the relay, and _job checks the flag only after the body.
    proxy = await raw_proxy(proxy_factory, upstream, max_body_bytes=100_000, fast_path=fast_path)
    rid = new_rid()
    async with caller(port_of(proxy)) as conn:
        head = post("/raw/json", b"", rid).replace(b"Content-Length: 0", b"Content-Length: 5000000")
        await conn.send(head + b"[" * 1024)
        answer = await conn.answer(timeout=3)
    assert_jsonrpc_error(answer, 413, rid)
    assert upstream.seen == []
