"""Protected Resource Metadata (RFC 9728) and MCP authorization discovery through the proxy.

The decisive test gives the official SDK client nothing but the proxy's URL and a client
registration: it gets a 401, follows ``resource_metadata`` to the proxy's metadata, finds the
authorization server there, obtains a token for the proxy (RFC 8707 ``resource``) and calls a tool.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.auth.utils import (
    build_protected_resource_metadata_discovery_urls,
    extract_resource_metadata_from_www_auth,
    extract_scope_from_www_auth,
    handle_protected_resource_response,
)
from mcp.shared.auth import OAuthToken, ProtectedResourceMetadata

from mcpproxy.prm import metadata_url, parse_challenges, rewrite_challenge
from tests.support.mcp_servers import McpServerProcess, mcp_connect, tool_json, tool_text
from tests.support.net import free_port
from tests.support.oauth import OAuthServer
from tests.support.proxy import ProxyFactory, SecretRegistry
from tests.support.verify import INIT, get, post, proxy_at, verify_block

WK = "/.well-known/oauth-protected-resource"


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: Any = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> Any:
        return self.client

    async def set_client_info(self, client_info: Any) -> None:
        self.client = client_info


def spec(upstream: str, oauth: OAuthServer, audience: list[str], **route: Any) -> dict[str, Any]:
    return {
        "routes": [
            {
                "name": "tools",
                "path": "/tools/mcp",
                "upstream": upstream,
                "auth": {"verify": verify_block(oauth, audience=audience)},
                **route,
            },
            {"name": "open", "path": "/open/mcp", "upstream": upstream},
            {
                "name": "fwd",
                "path": "/fwd/mcp",
                "upstream": upstream,
                "auth": {"upstream": {"type": "forward"}},
            },
        ]
    }


async def test_metadata_document(
    oauth: OAuthServer, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(spec(mcp_json.url, oauth, ["mcpproxy"]))
    status, headers, doc = await get(proxy.url(WK + "/tools/mcp"))
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert doc == {
        "resource": proxy.url("/tools/mcp"),
        "authorization_servers": [oauth.issuer],
        "scopes_supported": ["mcp"],
        "bearer_methods_supported": ["header"],
        "resource_name": "tools",
    }
    ProtectedResourceMetadata.model_validate(doc)  # what the SDK accepts
    assert (await get(proxy.url(WK + "/tools/mcp/")))[2] == doc
    # routes without verify describe themselves, without an authorization server
    status, _, doc = await get(proxy.url(WK + "/open/mcp"))
    assert status == 200 and doc["resource"] == proxy.url("/open/mcp") and "authorization_servers" not in doc
    for missing in (WK, WK + "/nope/mcp", WK + "/tools"):
        assert (await get(proxy.url(missing)))[0] == 404
    assert await mcp_json.requests() == []


async def test_metadata_with_public_url_and_policy_scopes(
    oauth: OAuthServer, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    policy = {"rules": [{"tools": ["drop_*"], "require_scopes": ["admin"]}]}
    proxy = await proxy_factory(
        spec(mcp_json.url, oauth, ["mcpproxy"], public_url="https://gw.example/team/tools", policy=policy)
    )
    for path in ("/tools/mcp", "/team/tools"):  # the route path and the public path both answer
        status, _, doc = await get(proxy.url(WK + path))
        assert status == 200
        assert doc["resource"] == "https://gw.example/team/tools"
        assert doc["scopes_supported"] == ["mcp", "admin"]


async def test_every_401_points_at_the_metadata(
    oauth: OAuthServer, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(spec(mcp_json.url, oauth, ["mcpproxy"]))
    status, headers, _ = await post(proxy.url("/tools/mcp"), INIT)
    assert status == 401
    assert headers["WWW-Authenticate"] == (
        f'Bearer realm="mcpproxy", scope="mcp", resource_metadata="{proxy.url(WK + "/tools/mcp")}"'
    )
    status, headers, _ = await post(proxy.url("/fwd/mcp"), INIT)  # fail-closed forward route
    assert status == 401
    assert headers["WWW-Authenticate"] == (
        'Bearer realm="mcpproxy", error="invalid_request", '
        'error_description="this route requires a caller credential", '
        f'resource_metadata="{proxy.url(WK + "/fwd/mcp")}"'
    )


async def test_sdk_discovery_helpers_against_the_proxy(
    oauth: OAuthServer, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    """The SDK's own discovery steps, one by one, starting from the proxy URL alone."""
    proxy = await proxy_factory(spec(mcp_json.url, oauth, ["mcpproxy"]))
    server_url = proxy.url("/tools/mcp")
    async with httpx2.AsyncClient() as http:
        challenge = await http.post(server_url, json=INIT, headers={"Accept": "application/json"})
        assert challenge.status_code == 401
        www = extract_resource_metadata_from_www_auth(challenge)
        assert www == proxy.url(WK + "/tools/mcp")
        assert extract_scope_from_www_auth(challenge) == "mcp"
        urls = build_protected_resource_metadata_discovery_urls(www, server_url)
        prm = await handle_protected_resource_response(await http.get(urls[0]))
        assert prm is not None
        assert [str(a).rstrip("/") for a in prm.authorization_servers] == [oauth.issuer]
        assert str(prm.resource) == server_url
        # the path-based fallback (no challenge at all) finds the same document
        fallback = build_protected_resource_metadata_discovery_urls(None, server_url)[0]
        assert (await handle_protected_resource_response(await http.get(fallback))) == prm


async def test_sdk_client_finds_the_authorization_server_from_the_proxy_url(
    oauth: OAuthServer, mcp_json: McpServerProcess, secrets_registry: SecretRegistry
) -> None:
    """Full flow: 401 → PRM → AS metadata → client_credentials token for the proxy → tool call."""
    port = free_port()
    server_url = f"http://127.0.0.1:{port}/tools/mcp"
    secrets_registry.add("my-external-tool-secret")
    async with proxy_at(spec(mcp_json.url, oauth, [server_url]), port) as proxy:
        storage = MemoryStorage()
        provider = ClientCredentialsOAuthProvider(
            server_url=server_url,
            storage=storage,
            client_id="my-external-tool",
            client_secret="my-external-tool-secret",
            issuer=oauth.issuer,
        )
        async with (
            httpx2.AsyncClient(auth=provider, timeout=30) as http,
            mcp_connect(proxy.url("/tools/mcp"), http_client=http) as conn,
        ):
            result = await conn.session.call_tool("add", {"a": 2, "b": 40})
            assert tool_text(result) == "42"
            orchestrators = await conn.session.call_tool("get_orchestrator_instances", {"session_id": "x"})
            assert tool_json(orchestrators)["total"] == 5
        assert storage.tokens is not None
        secrets_registry.add(storage.tokens.access_token)
    stats = await oauth.stats()
    [grant] = [r for r in stats["requests"] if r["grant_type"] == "client_credentials"]
    assert grant["client_id"] == "my-external-tool"
    assert grant["resource"] == [server_url]  # RFC 8707: a token for the proxy's resource
    assert grant["scope"] == "mcp"  # from the challenge's scope
    assert all("authorization" not in r["headers"] for r in await mcp_json.requests())


# --- challenge rewriting (core) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        (
            [
                'Bearer error="invalid_token", error_description="Authentication required", '
                'resource_metadata="http://10.0.0.5:8000/.well-known/oauth-protected-resource/mcp"'
            ],
            'Bearer realm="mcpproxy", error="invalid_token", error_description="Authentication required", '
            'resource_metadata="M"',
        ),
        (
            ['Basic realm="upstream"', 'Bearer realm="tool", scope="read write", error=insufficient_scope'],
            'Bearer realm="mcpproxy", error="insufficient_scope", scope="read write", resource_metadata="M"',
        ),
        (
            ['Basic realm="x", Bearer error="invalid_token"'],
            'Bearer realm="mcpproxy", error="invalid_token", resource_metadata="M"',
        ),
        ([], 'Bearer realm="mcpproxy", resource_metadata="M"'),
        (
            ['Bearer error_description="say \\"hi\\"", error="invalid_token"'],
            'Bearer realm="mcpproxy", error="invalid_token", error_description="say \\"hi\\"", resource_metadata="M"',
        ),
    ],
)
def test_rewrite_challenge(upstream: list[str], expected: str) -> None:
    assert rewrite_challenge(upstream, "M") == expected


def test_parse_challenges() -> None:
    assert parse_challenges(
        'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"'
    ) == [
        ("Newauth", {"realm": "apps", "type": "1", "title": 'Login to "apps"'}),
        ("Basic", {"realm": "simple"}),
    ]
    assert parse_challenges("Bearer") == [("Bearer", {})]
    assert parse_challenges('"junk", =x, Bearer scope=a') == [("Bearer", {"scope": "a"})]


def test_metadata_url_inserts_the_well_known_suffix() -> None:
    assert (
        metadata_url("https://gw.example/a/mcp")
        == "https://gw.example/.well-known/oauth-protected-resource/a/mcp"
    )
    assert metadata_url("https://gw.example/") == "https://gw.example/.well-known/oauth-protected-resource"
    assert metadata_url("http://h:8080/x/") == "http://h:8080/.well-known/oauth-protected-resource/x/"
