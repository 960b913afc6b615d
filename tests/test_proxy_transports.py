"""Every MCP HTTP transport through the proxy, driven by the official SDK clients."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from mcpproxy.web.app import LIVE
from tests.support.mcp_servers import McpServerProcess, call_tool_collect, mcp_connect, tool_json, tool_text
from tests.support.proxy import ProxyFactory, RunningProxy
from tests.test_mcp_servers import assert_resumed_progress

SEED = {"total": 5}


def route(name: str, path: str, upstream: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "path": path, "upstream": upstream, **extra}


async def start(proxy_factory: ProxyFactory, *routes: dict[str, Any]) -> RunningProxy:
    return await proxy_factory({"routes": list(routes)})


@pytest.mark.parametrize("server", ["mcp_json", "mcp_sse", "mcp_stateless"])
async def test_streamable_http_session_through_proxy(
    server: str, request: pytest.FixtureRequest, proxy_factory: ProxyFactory
) -> None:
    upstream: McpServerProcess = request.getfixturevalue(server)
    proxy = await start(proxy_factory, route("orch", "/orchestrator/mcp", upstream.url))
    async with mcp_connect(proxy.url("/orchestrator/mcp")) as conn:
        tools = await conn.session.list_tools()
        assert "get_orchestrator_instances" in {t.name for t in tools.tools}
        result = await conn.session.call_tool("get_orchestrator_instances", {"session_id": "s1"})
        assert tool_json(result)["total"] == SEED["total"]
        outcome = await call_tool_collect(conn.session, "progress", {"count": 5})
        if server == "mcp_sse":  # a JSON answer cannot carry notifications
            assert [e.progress for e in outcome.progress] == [1, 2, 3, 4, 5]
    methods = [r["method"] for r in await upstream.requests()]
    assert methods.count("POST") >= 4
    if server != "mcp_stateless":
        assert "DELETE" in methods  # session termination passed through


async def test_a_long_tool_stream_relayed_by_a_thread(mcp_sse: McpServerProcess, proxy_factory: ProxyFactory) -> None:
    """A tool call whose answer streams 60 notifications: after its first events a thread
    relays the rest (mcpproxy.web.offload); the SDK client gets every one, in order, and the
    session goes on over the same proxy."""
    proxy = await start(proxy_factory, route("o", "/o/mcp", mcp_sse.url))
    async with mcp_connect(proxy.url("/o/mcp")) as conn:
        outcome = await call_tool_collect(conn.session, "progress", {"count": 30, "delay_ms": 3})
        assert outcome.text == "done 30"
        assert [e.progress for e in outcome.progress] == list(range(1, 31))
        result = await conn.session.call_tool("add", {"a": 2, "b": 3})
        assert tool_text(result) == "5"
    assert 'mcpproxy_offloaded_streams_total{route="o"} 1' in proxy.metrics.render()
    assert proxy.app[LIVE].state.handler.runtimes["o"].in_flight == 0


async def test_legacy_sse_transport_endpoint_rewritten(
    mcp_legacy: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await start(proxy_factory, route("legacy", "/legacy", mcp_legacy.base))
    async with mcp_connect(proxy.url("/legacy/sse"), transport="sse") as conn:
        result = await conn.session.call_tool("get_orchestrator_instances", {"session_id": "s"})
        assert tool_json(result)["total"] == 5
    posts = [r for r in await mcp_legacy.requests() if r["method"] == "POST"]
    assert posts and all(r["path"].startswith("/messages") for r in posts)


async def test_sse_events_are_not_buffered(mcp_sse: McpServerProcess, proxy_factory: ProxyFactory) -> None:
    """The gated tool sends one event and then waits for us: if the proxy held the event back
    until the response finished, we would never see it and the call would time out."""
    proxy = await start(proxy_factory, route("orch", "/o/mcp", mcp_sse.url))
    async with mcp_connect(proxy.url("/o/mcp")) as conn:
        seen = asyncio.Event()

        async def release(_: object) -> None:
            seen.set()
            await mcp_sse.release("k1")

        outcome = await call_tool_collect(
            conn.session, "gated", {"key": "k1"}, on_progress=release, timeout=20
        )
        assert seen.is_set()
        assert outcome.text == "released"


@pytest.mark.parametrize("protocol", ["2026-07-28", "auto"])
async def test_stateless_2026_revision_through_proxy(
    protocol: str, mcp_stateless: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await start(proxy_factory, route("s", "/s/mcp", mcp_stateless.url))
    async with mcp_connect(proxy.url("/s/mcp"), protocol=protocol) as conn:  # type: ignore[arg-type]
        assert conn.protocol_version == "2026-07-28"
        result = await conn.session.call_tool("add", {"a": 2, "b": 3})
        assert tool_text(result) == "5"
    posts = [r for r in await mcp_stateless.requests() if r["method"] == "POST"]
    calls = [r for r in posts if r["headers"].get("mcp-method") == ["tools/call"]]
    assert calls and calls[0]["headers"]["mcp-name"] == ["add"]
    assert "mcp-session-id" not in calls[0]["headers"]


async def test_client_disconnect_cancels_upstream(
    mcp_sse: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    """A caller that goes away mid-stream must not leave the upstream request running."""
    proxy = await start(proxy_factory, route("o", "/o/mcp", mcp_sse.url))
    runtime = proxy.app[LIVE].state.handler.runtimes["o"]
    conn_cm = mcp_connect(proxy.url("/o/mcp"))
    conn = await conn_cm.__aenter__()
    call = asyncio.create_task(call_tool_collect(conn.session, "gated", {"key": "never"}, timeout=30))
    for _ in range(200):
        if runtime.in_flight:
            break
        await asyncio.sleep(0.01)
    assert runtime.in_flight >= 1
    call.cancel()
    with contextlib.suppress(BaseException):
        await conn_cm.__aexit__(None, None, None)
    for _ in range(300):
        if runtime.in_flight == 0 and runtime.session.connector is not None:
            break
        await asyncio.sleep(0.01)
    assert runtime.in_flight == 0, "the upstream request outlived its caller"


async def test_sse_resumption_through_proxy(mcp_sse: McpServerProcess, proxy_factory: ProxyFactory) -> None:
    """The server closes the POST's stream after one event; the SDK client resumes with a GET
    carrying Last-Event-ID — through the proxy — and gets the rest."""
    proxy = await start(proxy_factory, route("o", "/o/mcp", mcp_sse.url))
    async with mcp_connect(proxy.url("/o/mcp")) as conn:
        outcome = await call_tool_collect(conn.session, "resumable", {"count": 4})
    assert outcome.text == "resumed 4"
    assert_resumed_progress([e.progress for e in outcome.progress])
    resumed = [r for r in await mcp_sse.requests() if r["method"] == "GET" and "last-event-id" in r["headers"]]
    assert len(resumed) == 1 and resumed[0]["headers"]["mcp-session-id"]
