"""Faults of the upstream: the right status, no hung request, others unaffected, recovery.

The broken upstream is :class:`tests.support.faulty.FaultyUpstream` (a raw asyncio server:
no real MCP server answers with garbage or resets a stream on demand); recovery uses a real one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from mcpproxy.web.app import LIVE
from tests.support.faulty import FaultyUpstream
from tests.support.mcp_servers import McpServerProcess, mcp_connect
from tests.support.proxy import ProxyFactory, RunningProxy

INIT = {"jsonrpc": "2.0", "id": 3, "method": "initialize", "params": {}}
ACCEPT = {"Accept": "application/json, text/event-stream"}


@pytest.fixture
async def faulty() -> AsyncIterator[FaultyUpstream]:
    upstream = await FaultyUpstream().start()
    yield upstream
    await upstream.stop()


async def start(
    proxy_factory: ProxyFactory, faulty: FaultyUpstream, ok_url: str, idle: float = 1.0
) -> RunningProxy:
    return await proxy_factory(
        {
            "routes": [
                {
                    "name": "bad",
                    "path": "/bad",
                    "upstream": faulty.base + "/mcp",
                    "timeouts": {"connect": 1, "idle": idle},
                },
                {"name": "good", "path": "/good/mcp", "upstream": ok_url},
            ]
        }
    )


async def post(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, json=INIT, headers=ACCEPT) as resp:
        return resp.status, await resp.json(content_type=None)


@pytest.mark.parametrize(
    ("fault", "status"), [("garbage", 502), ("close", 502), ("short_body", 502), ("stall_headers", 504)]
)
async def test_upstream_fault_statuses(
    fault: str, status: int, faulty: FaultyUpstream, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await start(proxy_factory, faulty, mcp_json.url)
    began = time.monotonic()
    got, payload = await post(proxy.url(f"/bad/{fault}"))
    assert got == status
    assert payload["jsonrpc"] == "2.0" and payload["id"] == 3 and payload["error"]["data"]["request_id"]
    assert time.monotonic() - began < 5  # bounded by the route's timeouts
    assert (await post(proxy.url("/good/mcp")))[0] == 200


async def test_reset_mid_stream_cuts_the_client_not_the_proxy(
    faulty: FaultyUpstream, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await start(proxy_factory, faulty, mcp_json.url)
    received = b""
    async with (
        aiohttp.ClientSession() as http,
        http.post(proxy.url("/bad/reset"), json=INIT, headers=ACCEPT) as resp,
    ):
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                received += chunk
    assert b"notifications/progress" in received  # what arrived before the reset was relayed
    assert (await post(proxy.url("/good/mcp")))[0] == 200
    assert proxy.app[LIVE].state.handler.runtimes["bad"].in_flight == 0
    assert 'mcpproxy_open_streams{route="bad"} 0' in proxy.metrics.render()


async def test_stall_mid_sse_ends_after_idle_timeout_while_others_flow(
    faulty: FaultyUpstream, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await start(proxy_factory, faulty, mcp_json.url, idle=1.0)

    async def stalled() -> float:
        began = time.monotonic()
        async with (
            aiohttp.ClientSession() as http,
            http.post(proxy.url("/bad/stall_sse"), json=INIT, headers=ACCEPT) as resp,
        ):
            first = await resp.content.readuntil(b"\n\n")
            assert b"progress" in first
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.content.read()
        return time.monotonic() - began

    stalls = [asyncio.create_task(stalled()) for _ in range(5)]
    for _ in range(20):  # the other route keeps answering while five streams hang
        assert (await post(proxy.url("/good/mcp")))[0] == 200
    durations = await asyncio.gather(*stalls)
    assert all(0.9 <= d < 5 for d in durations), durations
    assert proxy.app[LIVE].state.handler.runtimes["bad"].in_flight == 0


async def test_upstream_down_then_back_recovers_without_restart(
    mcp_server_factory: Any, proxy_factory: ProxyFactory
) -> None:
    server: McpServerProcess = mcp_server_factory("json", fresh=True)
    proxy = await proxy_factory({"routes": [{"name": "r", "path": "/r/mcp", "upstream": server.url}]})
    async with mcp_connect(proxy.url("/r/mcp")) as conn:
        assert (await conn.session.list_tools()).tools
    server.stop()
    assert (await post(proxy.url("/r/mcp")))[0] == 502
    server.start()
    async with mcp_connect(proxy.url("/r/mcp")) as conn:
        assert (await conn.session.list_tools()).tools


async def test_route_connection_limit_answers_503(
    faulty: FaultyUpstream, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(
        {
            "routes": [
                {
                    "name": "bad",
                    "path": "/bad",
                    "upstream": faulty.base + "/mcp",
                    "max_connections": 2,
                    "timeouts": {"idle": 3},
                }
            ]
        }
    )
    hanging = [asyncio.create_task(post(proxy.url("/bad/stall_headers"))) for _ in range(2)]
    runtime = proxy.app[LIVE].state.handler.runtimes["bad"]
    for _ in range(100):
        if runtime.in_flight == 2:
            break
        await asyncio.sleep(0.02)
    async with aiohttp.ClientSession() as http, http.post(proxy.url("/bad/ok"), json=INIT) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"]["message"]
    assert [s for s, _ in await asyncio.gather(*hanging)] == [504, 504]
