"""Raw-HTTP rules of the proxy: header hygiene, limits, error bodies, path escapes, ops endpoints."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
import pytest

from tests.support.mcp_servers import McpServerProcess
from tests.support.net import free_port
from tests.support.proxy import ProxyFactory, RunningProxy
from tests.support.verify import ACCEPT, INIT, post


async def start(proxy_factory: ProxyFactory, upstream: str, **extra: Any) -> RunningProxy:
    route = {"name": "orch", "path": "/orchestrator/mcp", "upstream": upstream, **extra}
    return await proxy_factory({"routes": [route]})




def raw_exchange(port: int, request: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except TimeoutError:
            pass
        return b"".join(chunks)


def assert_jsonrpc_error(payload: Any, request_id: Any = None) -> None:
    assert payload["jsonrpc"] == "2.0"
    assert payload["id"] == request_id
    assert isinstance(payload["error"]["code"], int)
    assert payload["error"]["message"]
    assert payload["error"]["data"]["request_id"]


# --- header hygiene ---------------------------------------------------------------------------


async def test_request_header_hygiene(mcp_json: McpServerProcess, proxy_factory: ProxyFactory) -> None:
    proxy = await start(proxy_factory, mcp_json.url, forward_headers=["x-tenant"])
    status, _, _ = await post(
        proxy.url("/orchestrator/mcp"),
        INIT,
        {
            "Authorization": "Bearer caller-token-123456",
            "Proxy-Authorization": "Basic cHJveHk6cHc=",
            "Cookie": "session=cookie-value-123456",
            "X-Api-Key": "caller-key-123456",
            "X-Tenant": "acme",
            "X-Other": "not-allowlisted",
            "Connection": "keep-alive, X-Tenant",
            "Keep-Alive": "timeout=5",
            "X-Forwarded-For": "10.9.8.7",
            "MCP-Protocol-Version": "2025-11-25",
            "Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    )
    assert status == 200
    [record] = await mcp_json.requests()
    sent = record["headers"]
    for gone in ("authorization", "proxy-authorization", "cookie", "x-api-key", "x-other", "keep-alive"):
        assert gone not in sent, gone
    assert "x-tenant" not in sent  # allowlisted, but named in Connection: hop-by-hop for this request
    assert sent["host"] == [mcp_json.host_header]
    assert sent["x-forwarded-for"] == ["10.9.8.7, 127.0.0.1"]
    assert sent["x-forwarded-proto"] == ["http"]
    assert sent["x-forwarded-host"][0].startswith("127.0.0.1:")
    assert sent["mcp-protocol-version"] == ["2025-11-25"]
    assert sent["traceparent"]
    assert sent["x-request-id"][0]


async def test_forward_headers_allowlist_passes(
    mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await start(proxy_factory, mcp_json.url, forward_headers=["x-request-id", "x-tenant"])
    await post(proxy.url("/orchestrator/mcp"), INIT, {"X-Tenant": "acme", "X-Request-Id": "req-42"})
    [record] = await mcp_json.requests()
    assert record["headers"]["x-tenant"] == ["acme"]
    assert record["headers"]["x-request-id"] == ["req-42"]


async def test_session_headers_pass_both_ways(mcp_sse: McpServerProcess, proxy_factory: ProxyFactory) -> None:
    proxy = await start(proxy_factory, mcp_sse.url)
    async with aiohttp.ClientSession() as http:
        async with http.post(proxy.url("/orchestrator/mcp"), json=INIT, headers=ACCEPT) as resp:
            assert resp.status == 200
            session_id = resp.headers["Mcp-Session-Id"]
            assert resp.content_type == "text/event-stream"
            await resp.read()
        headers = {**ACCEPT, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        async with http.post(proxy.url("/orchestrator/mcp"), json=note, headers=headers) as resp:
            assert resp.status == 202
        async with http.delete(proxy.url("/orchestrator/mcp"), headers=headers) as resp:
            assert resp.status in (200, 204)
    records = await mcp_sse.requests()
    assert [r["method"] for r in records] == ["POST", "POST", "DELETE"]
    assert records[2]["headers"]["mcp-session-id"] == [session_id]


async def test_last_event_id_passes(mcp_sse: McpServerProcess, proxy_factory: ProxyFactory) -> None:
    proxy = await start(proxy_factory, mcp_sse.url)
    async with aiohttp.ClientSession() as http:
        async with http.post(proxy.url("/orchestrator/mcp"), json=INIT, headers=ACCEPT) as resp:
            session_id = resp.headers["Mcp-Session-Id"]
            await resp.read()
        headers = {
            "Accept": "text/event-stream",
            "Mcp-Session-Id": session_id,
            "MCP-Protocol-Version": "2025-11-25",
            "Last-Event-ID": "evt-does-not-exist",
        }
        async with http.get(
            proxy.url("/orchestrator/mcp"), headers=headers, timeout=aiohttp.ClientTimeout(total=5)
        ):
            pass
    gets = [r for r in await mcp_sse.requests() if r["method"] == "GET"]
    assert gets[0]["headers"]["last-event-id"] == ["evt-does-not-exist"]


async def test_set_cookie_not_relayed_by_default(proxy_factory: ProxyFactory) -> None:
    upstream, port = await _cookie_upstream()
    try:
        proxy = await start(proxy_factory, f"http://127.0.0.1:{port}/mcp")
        relay = await proxy_factory(
            {
                "routes": [
                    {
                        "name": "c",
                        "path": "/c/mcp",
                        "upstream": f"http://127.0.0.1:{port}/mcp",
                        "relay_set_cookie": True,
                    }
                ]
            }
        )
        async with aiohttp.ClientSession() as http:
            async with http.post(proxy.url("/orchestrator/mcp"), json=INIT) as resp:
                assert "Set-Cookie" not in resp.headers
                assert resp.headers["X-Upstream"] == "yes"
                assert "X-Hop" not in resp.headers  # named in the upstream's Connection header
            async with http.post(relay.url("/c/mcp"), json=INIT) as resp:
                assert resp.headers["Set-Cookie"].startswith("sid=")
    finally:
        await upstream.cleanup()


async def _cookie_upstream() -> tuple[aiohttp.web.AppRunner, int]:
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {"jsonrpc": "2.0", "id": 1, "result": {}},
            headers={
                "Set-Cookie": "sid=abc; HttpOnly",
                "X-Upstream": "yes",
                "Connection": "X-Hop",
                "X-Hop": "1",
            },
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


# --- errors -----------------------------------------------------------------------------------


async def test_unknown_route_is_404_jsonrpc(mcp_json: McpServerProcess, proxy_factory: ProxyFactory) -> None:
    proxy = await start(proxy_factory, mcp_json.url)
    status, headers, payload = await post(proxy.url("/nope/mcp"), {**INIT, "id": 9})
    assert status == 404
    assert_jsonrpc_error(payload, 9)
    assert headers["X-Request-Id"] == payload["error"]["data"]["request_id"]


async def test_upstream_refused_is_502(proxy_factory: ProxyFactory) -> None:
    proxy = await start(proxy_factory, f"http://127.0.0.1:{free_port()}/mcp")
    status, _, payload = await post(proxy.url("/orchestrator/mcp"), {**INIT, "id": "a"})
    assert status == 502
    assert_jsonrpc_error(payload, "a")


async def test_upstream_stall_before_headers_is_504(proxy_factory: ProxyFactory) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers
    try:
        port = listener.getsockname()[1]
        proxy = await start(
            proxy_factory, f"http://127.0.0.1:{port}/mcp", timeouts={"connect": 1, "idle": 0.5}
        )
        status, _, payload = await post(proxy.url("/orchestrator/mcp"), INIT)
        assert status == 504
        assert_jsonrpc_error(payload, 1)
    finally:
        listener.close()


async def test_body_too_large_is_413(mcp_json: McpServerProcess, proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(
        {
            "server": {"max_body_bytes": 2048},
            "routes": [{"name": "o", "path": "/o/mcp", "upstream": mcp_json.url}],
        }
    )
    big = {**INIT, "params": {**INIT["params"], "pad": "x" * 4096}}  # type: ignore[dict-item]
    status, _, payload = await post(proxy.url("/o/mcp"), big)
    assert status == 413
    assert_jsonrpc_error(payload, 1)
    async with aiohttp.ClientSession() as http:  # chunked, no Content-Length: counted while streaming

        async def chunks() -> Any:
            for _ in range(8):
                yield b"x" * 1024

        async with http.post(proxy.url("/o/mcp"), data=chunks(), headers=ACCEPT) as resp:
            assert resp.status == 413
    assert await mcp_json.requests() == []


@pytest.mark.parametrize(
    "target",
    [
        "/orchestrator/mcp/../../admin",
        "/orchestrator/mcp/%2e%2e/admin",
        "/orchestrator/mcp/%2E%2e/admin",
        "/orchestrator/mcp/.%2e/admin",
        "/orchestrator/mcp//admin",
        "/orchestrator/mcp/%2fadmin",
        "/orchestrator/mcp/%5cadmin",
        "/orchestrator/mcp/a\\..\\admin",
        "/orchestrator/mcp/./x",
    ],
)
async def test_path_escape_attempts_refused(
    target: str, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await start(proxy_factory, mcp_json.url)
    port = int(proxy.base.rsplit(":", 1)[1])
    reply = await asyncio.to_thread(
        raw_exchange, port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert reply.startswith(b"HTTP/1.1 400"), reply[:100]
    assert b'"jsonrpc":"2.0"' in reply
    assert await mcp_json.requests() == []


async def test_absolute_form_target_refused(mcp_json: McpServerProcess, proxy_factory: ProxyFactory) -> None:
    proxy = await start(proxy_factory, mcp_json.url)
    port = int(proxy.base.rsplit(":", 1)[1])
    for target in (f"{mcp_json.base}/mcp", "http://evil.example/orchestrator/mcp"):
        reply = await asyncio.to_thread(
            raw_exchange, port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        assert reply.split(b" ")[1] in (b"400", b"404"), reply[:100]
    assert await mcp_json.requests() == []


async def test_oversized_header_gets_json_error_without_echo(
    mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await start(proxy_factory, mcp_json.url)
    port = int(proxy.base.rsplit(":", 1)[1])
    token = "secret-" + "z" * 40000
    request = f"POST /orchestrator/mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    reply = await asyncio.to_thread(raw_exchange, port, request)
    assert reply.split(b" ")[1] == b"400"
    assert b"application/json" in reply
    assert b"zzzz" not in reply and b"secret-" not in reply


async def test_request_smuggling_shapes_refused(
    mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await start(proxy_factory, mcp_json.url)
    port = int(proxy.base.rsplit(":", 1)[1])
    attempts = [
        b"POST /orchestrator/mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /orchestrator/mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST /orchestrator/mcp HTTP/1.1\r\nHost: x\r\nX-A: b\r\n folded\r\nContent-Length: 0\r\n\r\n",
        b"POST /orchestrator/mcp HTTP/1.1\r\nHost: x\r\nX-A: b\rc\r\nContent-Length: 0\r\n\r\n",
        b"POST /orchestrator/mcp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ]
    for attempt in attempts:
        reply = await asyncio.to_thread(raw_exchange, port, attempt)
        assert reply.split(b" ")[1] == b"400", (attempt, reply[:80])
        assert b'"jsonrpc":"2.0"' in reply
    assert await mcp_json.requests() == []


# --- operational endpoints and logs -----------------------------------------------------------


async def test_health_ready_metrics(mcp_json: McpServerProcess, proxy_factory: ProxyFactory) -> None:
    proxy = await start(proxy_factory, mcp_json.url)
    await post(proxy.url("/orchestrator/mcp"), INIT)
    async with aiohttp.ClientSession() as http:
        async with http.get(proxy.url("/healthz")) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        async with http.get(proxy.url("/readyz")) as resp:
            assert resp.status == 200 and (await resp.json())["ready"] is True
        async with http.get(proxy.url("/metrics")) as resp:
            text = await resp.text()
    assert (
        'mcpproxy_requests_total{route="orch",http_method="POST",mcp_method="initialize",status="200"} 1'
        in text
    )
    assert 'mcpproxy_upstream_latency_seconds_count{route="orch"} 1' in text
    assert "mcpproxy_open_streams" in text


async def test_access_log_line(
    mcp_json: McpServerProcess, proxy_factory: ProxyFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.proxy import LOG_DIR

    proxy = await start(proxy_factory, mcp_json.url)
    _, headers, _ = await post(proxy.url("/orchestrator/mcp"), INIT)
    lines = [
        json.loads(line)
        for line in (LOG_DIR / "in-process.log").read_text().splitlines()
        if line.startswith("{")
    ]
    [entry] = [e for e in lines if e.get("request_id") == headers["X-Request-Id"]]
    assert entry["event"] == "request"
    assert entry["route"] == "orch" and entry["method"] == "POST" and entry["mcp_method"] == "initialize"
    assert entry["status"] == 200 and entry["bytes"] > 0 and entry["duration_ms"] > 0
