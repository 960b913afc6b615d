"""The real `mcpproxy serve` process: SIGHUP reloads, SIGTERM drains, workers share a port."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.mcp_servers import McpServerProcess, call_tool_collect, mcp_connect, tool_json
from tests.support.proxy import ProxyProcess


def table(*routes: tuple[str, str, str]) -> str:
    return yaml.safe_dump({"routes": [{"name": n, "path": p, "upstream": u} for n, p, u in routes]})


async def status_of(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return resp.status


async def wait_for(predicate: Callable[[], Any], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate() if asyncio.iscoroutinefunction(predicate) else predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


def log_events(proxy: ProxyProcess) -> list[str]:
    return [str(line.get("event")) for line in proxy.log_lines()]


async def test_sighup_applies_new_table_while_streams_continue(
    mcp_sse: McpServerProcess, mcp_json: McpServerProcess, proxy_process: Callable[..., ProxyProcess]
) -> None:
    proxy = proxy_process(table(("a", "/a/mcp", mcp_sse.url)))
    async with mcp_connect(proxy.url("/a/mcp")) as conn:
        await conn.session.list_tools()  # so the SDK needn't list them again after the call
        started = asyncio.Event()
        call = asyncio.create_task(
            call_tool_collect(
                conn.session, "gated", {"key": "hup"}, on_progress=lambda _: started.set(), timeout=30
            )
        )
        await asyncio.wait_for(started.wait(), 10)
        proxy.config_path.write_text(
            yaml.safe_dump(
                {
                    "server": {"host": "127.0.0.1", "port": proxy.port},
                    "routes": [{"name": "b", "path": "/b/mcp", "upstream": mcp_json.url}],
                }
            )
        )
        proxy.signal(signal.SIGHUP)
        await wait_for(lambda: "reloaded" in log_events(proxy))
        assert await status_of(proxy.url("/a/mcp")) == 404  # new requests see the new table
        async with mcp_connect(proxy.url("/b/mcp")) as conn_b:
            assert (
                tool_json(await conn_b.session.call_tool("get_orchestrator_instances", {"session_id": "x"}))[
                    "total"
                ]
                == 5
            )
        await mcp_sse.release("hup")
        outcome = await call  # the stream that began on the old table finished normally
        assert outcome.text == "released"


async def test_sighup_with_invalid_table_keeps_the_old_one(
    mcp_json: McpServerProcess, proxy_process: Callable[..., ProxyProcess]
) -> None:
    proxy = proxy_process(table(("a", "/a/mcp", mcp_json.url)))
    proxy.config_path.write_text("routes:\n  - name: a\n    path: /a/mcp\n    upstream: not-a-url\n")
    proxy.signal(signal.SIGHUP)
    await wait_for(lambda: "reload_refused" in log_events(proxy))
    [refusal] = [line for line in proxy.log_lines() if line.get("event") == "reload_refused"]
    assert "routes[0].upstream" in refusal["error"]
    async with mcp_connect(proxy.url("/a/mcp")) as conn:
        assert (await conn.session.list_tools()).tools
    assert proxy.proc.poll() is None


async def test_sigterm_drains_in_flight_then_exits_zero(
    mcp_sse: McpServerProcess, proxy_process: Callable[..., ProxyProcess]
) -> None:
    proxy = proxy_process(table(("a", "/a/mcp", mcp_sse.url)) + "server:\n  shutdown_grace_s: 20\n")
    # terminate_on_close=False: the proxy is gone by the time the client would send DELETE.
    async with mcp_connect(proxy.url("/a/mcp"), terminate_on_close=False) as conn:
        await conn.session.list_tools()
        started = asyncio.Event()
        call = asyncio.create_task(
            call_tool_collect(
                conn.session, "gated", {"key": "term"}, on_progress=lambda _: started.set(), timeout=30
            )
        )
        await asyncio.wait_for(started.wait(), 10)
        proxy.signal(signal.SIGTERM)
        await wait_for(lambda: "stopping" in log_events(proxy))
        with pytest.raises(aiohttp.ClientError):  # no longer accepting
            await status_of(proxy.url("/healthz"))
        await asyncio.sleep(0.3)
        assert proxy.proc.poll() is None  # still draining
        await mcp_sse.release("term")
        outcome = await call
        assert outcome.text == "released"
    assert await asyncio.to_thread(proxy.proc.wait, 20) == 0


async def test_sigterm_grace_period_is_bounded(
    mcp_sse: McpServerProcess, proxy_process: Callable[..., ProxyProcess]
) -> None:
    proxy = proxy_process(table(("a", "/a/mcp", mcp_sse.url)) + "server:\n  shutdown_grace_s: 1\n")
    async with mcp_connect(proxy.url("/a/mcp")) as conn:
        started = asyncio.Event()
        call = asyncio.create_task(
            call_tool_collect(
                conn.session, "gated", {"key": "never"}, on_progress=lambda _: started.set(), timeout=30
            )
        )
        await asyncio.wait_for(started.wait(), 10)
        begun = time.monotonic()
        proxy.signal(signal.SIGTERM)
        assert await asyncio.to_thread(proxy.proc.wait, 15) == 0
        assert time.monotonic() - begun < 10
        call.cancel()


async def test_workers_share_the_port(
    mcp_json: McpServerProcess, proxy_process: Callable[..., ProxyProcess]
) -> None:
    proxy = proxy_process(table(("a", "/a/mcp", mcp_json.url)) + "server:\n  workers: 2\n")
    await wait_for(lambda: log_events(proxy).count("listening") == 2)
    pids = {line["pid"] for line in proxy.log_lines() if line.get("event") == "listening"}
    assert len(pids) == 2
    for _ in range(10):
        async with mcp_connect(proxy.url("/a/mcp")) as conn:
            assert (await conn.session.list_tools()).tools
    proxy.signal(signal.SIGTERM)
    assert await asyncio.to_thread(proxy.proc.wait, 20) == 0


async def test_config_file_watch_reloads(
    mcp_json: McpServerProcess, proxy_process: Callable[..., ProxyProcess]
) -> None:
    proxy = proxy_process(table(("a", "/a/mcp", mcp_json.url)) + "server:\n  watch_config_s: 0.2\n")
    proxy.config_path.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "127.0.0.1", "port": proxy.port, "watch_config_s": 0.2},
                "routes": [{"name": "b", "path": "/b/mcp", "upstream": mcp_json.url}],
            }
        )
    )
    await wait_for(lambda: "reloaded" in log_events(proxy))
    assert await status_of(proxy.url("/a/mcp")) == 404
    async with mcp_connect(proxy.url("/b/mcp")) as conn:
        assert (await conn.session.list_tools()).tools
