"""``auth.fallback``: the route's own identity for session methods sent without a caller token."""

from __future__ import annotations

from typing import Any

import aiohttp
import jwt
import pytest

from mcpproxy.config import ConfigError, parse_config
from tests.support.mcp_servers import McpServerProcess
from tests.support.oauth import OAuthServer
from tests.support.proxy import ProxyFactory, SecretRegistry
from tests.support.verify import ACCEPT, INIT


def route(upstream: str, issuer: str, **fallback: Any) -> dict[str, Any]:
    return {
        "name": "tool",
        "path": "/tool/mcp",
        "upstream": upstream,
        "auth": {
            "subject": ["authorization"],
            "upstream": {
                "type": "token_exchange",
                "issuer": issuer,
                "client": {"id": "mcp-proxy", "secret": "proxy-secret"},
                "audience": ["my-external-tool"],
            },
            "fallback": {
                "upstream": {
                    "type": "client_credentials",
                    "issuer": issuer,
                    "client": {"id": "mcp-proxy", "secret": "proxy-secret"},
                    "audience": ["my-external-tool"],
                },
                **fallback,
            },
        },
    }


async def test_tokenless_session_methods_use_the_route_identity_and_calls_are_refused(
    oauth: OAuthServer,
    mcp_json: McpServerProcess,
    proxy_factory: ProxyFactory,
    secrets_registry: SecretRegistry,
) -> None:
    secrets_registry.add("proxy-secret")
    proxy = await proxy_factory({"routes": [route(mcp_json.url, oauth.issuer)]})
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": 1, "b": 2}},
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(proxy.url("/tool/mcp"), json=INIT, headers=ACCEPT) as resp:
            assert resp.status == 200
            session_id = resp.headers["Mcp-Session-Id"]
        headers = {**ACCEPT, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
        async with http.post(proxy.url("/tool/mcp"), json=call, headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
        async with http.delete(proxy.url("/tool/mcp"), headers=headers) as resp:
            assert resp.status == 200
    records = await mcp_json.requests()
    assert [r["method"] for r in records] == ["POST", "DELETE"]  # the tools/call never left
    for record in records:
        token = record["headers"]["authorization"][0].removeprefix("Bearer ")
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["sub"] == "mcp-proxy" and claims["aud"] in ("my-external-tool", ["my-external-tool"])
    grants = (await oauth.stats())["grant_types"]
    assert grants["client_credentials"]["success"] == 1  # cached across the session


BASE = """
routes:
  - name: r
    path: /r
    upstream: http://x/mcp
    auth:
"""
CC = "{type: client_credentials, token_endpoint: http://127.0.0.1:1/token, client: {id: a, secret: b}}"
EXCHANGE = "{type: token_exchange, token_endpoint: http://127.0.0.1:1/token, client: {id: a, secret: b}, audience: [t]}"


@pytest.mark.parametrize(
    ("auth", "path", "words"),
    [
        (
            f"upstream: {{type: static, header: X-Key, secret: k}}\n      fallback: {{upstream: {CC}}}",
            "routes[0].auth.fallback.upstream",
            "needs the caller",
        ),
        (
            f"upstream: {EXCHANGE}\n      fallback: {{upstream: {{type: forward}}}}",
            "routes[0].auth.fallback.upstream",
            "own identity",
        ),
        (
            f"upstream: {EXCHANGE}\n      fallback: {{upstream: {CC}, methods: [initialize, tools/call]}}",
            "routes[0].auth.fallback.methods[1]",
            "tools/call",
        ),
        (
            f"upstream: {EXCHANGE}\n      verify: {{issuer: http://127.0.0.1:1, audience: [p]}}\n      fallback: {{upstream: {CC}}}",
            "routes[0].auth.fallback.upstream",
            "auth.verify",
        ),
    ],
)
def test_fallback_refusals(auth: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + "      " + auth + "\n", {})
    assert info.value.path == path, str(info.value)
    assert words in info.value.message


def test_fallback_defaults() -> None:
    config = parse_config(BASE + f"      upstream: {EXCHANGE}\n      fallback: {{upstream: {CC}}}\n", {})
    fallback = config.routes[0].auth.fallback
    assert fallback is not None
    assert fallback.methods == {"initialize", "notifications/initialized", "tools/list"}
    assert set(config.routes[0].exchange_rules()) == {"r", "r:fallback"}
