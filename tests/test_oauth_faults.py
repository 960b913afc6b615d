"""OAuth server faults seen through the proxy: the right status and JSON-RPC body, bounded
waits, other routes unaffected, and recovery without a restart."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from tests.support.mcp_servers import McpServerProcess
from tests.support.oauth import OAuthServer
from tests.support.proxy import ProxyFactory, RunningProxy, SecretRegistry

INIT = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
async def proxy(
    oauth: OAuthServer,
    mcp_json: McpServerProcess,
    proxy_factory: ProxyFactory,
    secrets_registry: SecretRegistry,
) -> RunningProxy:
    secrets_registry.add("proxy-secret")
    exchange = {
        "type": "token_exchange",
        "token_endpoint": oauth.token_endpoint,
        "client": {"id": "mcp-proxy", "secret": "proxy-secret"},
        "audience": ["my-external-tool"],
        "timeout_s": 1,
    }
    return await proxy_factory(
        {
            "routes": [
                {"name": "x", "path": "/x/mcp", "upstream": mcp_json.url, "auth": {"upstream": exchange}},
                {"name": "plain", "path": "/plain/mcp", "upstream": mcp_json.url},
            ]
        }
    )


async def call(
    proxy: RunningProxy, path: str, token: str | None
) -> tuple[int, aiohttp.typedefs.LooseHeaders, Any]:
    headers = dict(ACCEPT)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(proxy.url(path), json=INIT, headers=headers) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


def assert_rpc_error(payload: Any) -> None:
    assert payload["jsonrpc"] == "2.0" and payload["id"] == 7 and payload["error"]["message"]


@pytest.mark.parametrize("fault", ["500", "invalid_json", "slow"])
async def test_oauth_server_failure_is_503_with_retry_after(
    fault: str, oauth: OAuthServer, proxy: RunningProxy, secrets_registry: SecretRegistry
) -> None:
    alice = await oauth.user_token("alice")
    secrets_registry.add(alice)
    await oauth.set_mode(fail=fault, delay_ms=3000)
    began = time.monotonic()
    status, headers, payload = await call(proxy, "/x/mcp", alice)
    assert status == 503
    assert int(headers["Retry-After"]) >= 1
    assert_rpc_error(payload)
    assert time.monotonic() - began < 3  # bounded by the route's timeout_s, not the server's delay
    assert (await call(proxy, "/plain/mcp", None))[0] == 200  # other routes unaffected
    await oauth.set_mode(fail=None)
    assert (await call(proxy, "/x/mcp", alice))[0] == 200  # recovered, nothing restarted


async def test_token_without_expires_in_still_works(
    oauth: OAuthServer, proxy: RunningProxy, secrets_registry: SecretRegistry
) -> None:
    alice = await oauth.user_token("alice")
    secrets_registry.add(alice)
    await oauth.set_mode(fail="no_expires_in")
    assert (await call(proxy, "/x/mcp", alice))[0] == 200


async def test_refused_caller_token_is_401_with_challenge(
    oauth: OAuthServer, proxy: RunningProxy, mcp_json: McpServerProcess
) -> None:
    expired = await oauth.user_token("alice", expires_in=-10)
    status, headers, payload = await call(proxy, "/x/mcp", expired)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer ")
    assert_rpc_error(payload)
    assert expired not in str(payload) and expired not in str(headers)
    assert await mcp_json.requests() == []


async def test_oauth_server_down_and_back(
    oauth: OAuthServer, proxy: RunningProxy, secrets_registry: SecretRegistry
) -> None:
    alice = await oauth.user_token("alice")
    bob = await oauth.user_token("bob")
    secrets_registry.add(alice, bob)
    assert (await call(proxy, "/x/mcp", alice))[0] == 200  # alice's exchanged token is now cached
    await oauth.stop()
    try:
        status, headers, payload = await call(proxy, "/x/mcp", bob)
        assert status == 503 and "Retry-After" in headers
        assert_rpc_error(payload)
        assert (await call(proxy, "/x/mcp", alice))[0] == 200  # cached tokens keep working
    finally:
        await oauth.start()
    assert (await call(proxy, "/x/mcp", bob))[0] == 200
