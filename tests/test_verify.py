"""Inbound JWT verification through the proxy, against the real OAuth server and real MCP servers.

Every refusal asserts the status, the exact ``WWW-Authenticate`` challenge and that nothing
reached the upstream.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mcpproxy.inbound import verify as v
from tests.support.mcp_servers import McpServerFactory, McpServerProcess, mcp_connect, tool_json
from tests.support.net import free_port
from tests.support.oauth import OAuthServer
from tests.support.proxy import ProxyFactory, RunningProxy, SecretRegistry
from tests.support.verify import (
    INIT,
    Forger,
    bearer,
    post,
    proxy_at,
    verify_block,
)

PATH = "/v/mcp"


def route(upstream: str, oauth: OAuthServer, **verify: Any) -> dict[str, Any]:
    return {
        "name": "v",
        "path": PATH,
        "upstream": upstream,
        "auth": {"verify": verify_block(oauth, **verify)},
    }


def metadata(proxy: RunningProxy, path: str = PATH) -> str:
    return proxy.url("/.well-known/oauth-protected-resource" + path)


def invalid(proxy: RunningProxy, description: str) -> str:
    return (
        f'Bearer realm="mcpproxy", error="invalid_token", error_description="{description}", '
        f'resource_metadata="{metadata(proxy)}"'
    )


TokenMaker = Callable[[OAuthServer, Forger], Awaitable[str]]


async def _user(oauth: OAuthServer, _: Forger, **kw: Any) -> str:
    return await oauth.user_token("alice", **{"audience": "mcpproxy", "scope": "mcp", **kw})


async def _expired(oauth: OAuthServer, f: Forger) -> str:
    return await _user(oauth, f, expires_in=-60)


async def _wrong_audience(oauth: OAuthServer, f: Forger) -> str:
    return await _user(oauth, f, audience="some-other-api")


async def _tampered(oauth: OAuthServer, f: Forger) -> str:
    return f.tampered(await _user(oauth, f), sub="bob", scope="mcp admin")


async def _foreign_key_real_kid(oauth: OAuthServer, f: Forger) -> str:
    return f.token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))


async def _unknown_kid(oauth: OAuthServer, f: Forger) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return f.token(key=key, kid=f"attacker-{uuid.uuid4().hex[:6]}")


REFUSALS: dict[str, tuple[TokenMaker, str]] = {
    "expired": (_expired, v.EXPIRED),
    "not_yet_valid": (lambda o, f: _done(f.token(nbf=int(time.time()) + 600)), v.NOT_YET_VALID),
    "issued_in_future": (lambda o, f: _done(f.token(iat=int(time.time()) + 600)), v.NOT_YET_VALID),
    "wrong_issuer": (lambda o, f: _done(f.token(iss="http://127.0.0.1:1/realms/other")), v.ISSUER),
    "wrong_audience": (_wrong_audience, v.AUDIENCE),
    "alg_none": (lambda o, f: _done(f.alg_none()), v.ALGORITHM),
    "hs256_with_rsa_public_key": (lambda o, f: _done(f.hs256_with_public_key()), v.ALGORITHM),
    "unknown_kid": (_unknown_kid, v.UNKNOWN_KEY),
    "foreign_key_with_real_kid": (_foreign_key_real_kid, v.SIGNATURE),
    "tampered_payload": (_tampered, v.SIGNATURE),
    "no_exp": (lambda o, f: _done(f.token(exp=None)), "the access token lacks the 'exp' claim"),
    "no_aud": (lambda o, f: _done(f.token(aud=None)), "the access token lacks the 'aud' claim"),
    "malformed": (lambda o, f: _done("not-a.jwt"), v.MALFORMED),
    "ps256_not_in_allowlist": (lambda o, f: _done(f.token(alg="PS256")), v.ALGORITHM),
}


async def _done(value: str) -> str:
    return value


@pytest.fixture
def forger(oauth: OAuthServer) -> Forger:
    return Forger(oauth)


async def test_valid_token_passes_and_is_not_forwarded(
    oauth: OAuthServer,
    forger: Forger,
    mcp_json: McpServerProcess,
    proxy_factory: ProxyFactory,
    secrets_registry: SecretRegistry,
) -> None:
    proxy = await proxy_factory({"routes": [route(mcp_json.url, oauth)]})
    token = await _user(oauth, forger)
    secrets_registry.add(token)
    status, headers, body = await post(proxy.url(PATH), INIT, bearer(token))
    assert status == 200, body
    assert "WWW-Authenticate" not in headers
    [record] = await mcp_json.requests()
    assert "authorization" not in record["headers"]
    assert token not in str(record)


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_refused_tokens(
    case: str,
    oauth: OAuthServer,
    forger: Forger,
    mcp_json: McpServerProcess,
    proxy_factory: ProxyFactory,
    secrets_registry: SecretRegistry,
) -> None:
    make, description = REFUSALS[case]
    proxy = await proxy_factory({"routes": [route(mcp_json.url, oauth)]})
    token = await make(oauth, forger)
    secrets_registry.add(token)
    status, headers, body = await post(proxy.url(PATH), INIT, bearer(token))
    assert status == 401, body
    assert headers["WWW-Authenticate"] == invalid(proxy, description)
    assert body["id"] == 1 and body["error"]["message"] == description
    assert token not in str(body)
    assert await mcp_json.requests() == []


async def test_missing_scope_is_403_insufficient_scope(
    oauth: OAuthServer, forger: Forger, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory({"routes": [route(mcp_json.url, oauth, required_scopes=["mcp", "tools"])]})
    token = await _user(oauth, forger, scope="mcp openid")
    status, headers, body = await post(proxy.url(PATH), INIT, bearer(token))
    assert status == 403, body
    assert headers["WWW-Authenticate"] == (
        f'Bearer realm="mcpproxy", error="insufficient_scope", error_description="{v.SCOPE}", '
        f'scope="mcp tools", resource_metadata="{metadata(proxy)}"'
    )
    assert await mcp_json.requests() == []
    # scp (Entra/Okta style, a list) counts as well
    ok = forger.token(scope=None, scp=["mcp", "tools"])
    assert (await post(proxy.url(PATH), INIT, bearer(ok)))[0] == 200


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
async def test_missing_token_challenge_on_every_method(
    method: str, oauth: OAuthServer, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    """OGX retries a 401 POST as a legacy GET: both must be 401 with the same pointer."""
    import aiohttp

    proxy = await proxy_factory({"routes": [route(mcp_json.url, oauth)]})
    async with aiohttp.ClientSession() as http:
        kwargs: dict[str, Any] = {"json": INIT} if method == "POST" else {}
        async with http.request(method, proxy.url(PATH), **kwargs) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == (
                f'Bearer realm="mcpproxy", scope="mcp", resource_metadata="{metadata(proxy)}"'
            )
            body = await resp.json()
            assert body["error"]["message"] == v.MISSING_TOKEN
    assert await mcp_json.requests() == []


async def test_sdk_client_with_a_valid_token(
    oauth: OAuthServer, forger: Forger, mcp_sse: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory({"routes": [route(mcp_sse.url, oauth)]})
    token = await _user(oauth, forger)
    async with mcp_connect(proxy.url(PATH), headers=bearer(token)) as conn:
        result = await conn.session.call_tool("get_orchestrator_instances", {"session_id": "s"})
        assert tool_json(result)["total"] == 5
    assert all("authorization" not in r["headers"] for r in await mcp_sse.requests())


async def test_jwks_discovered_once_and_cached(
    oauth: OAuthServer, forger: Forger, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory({"routes": [route(mcp_json.url, oauth)]})
    tokens = [await _user(oauth, forger) for _ in range(5)]
    results = await asyncio.gather(*(post(proxy.url(PATH), INIT, bearer(t)) for t in tokens))
    assert [r[0] for r in results] == [200] * 5
    endpoints = (await oauth.stats())["endpoints"]
    assert endpoints.get("/jwks") == 1
    assert endpoints.get("/.well-known/oauth-authorization-server") == 1  # RFC 8414 first


async def test_unknown_kid_flood_cannot_hammer_the_idp(
    oauth: OAuthServer, forger: Forger, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory({"routes": [route(mcp_json.url, oauth, jwks_refresh_min_s=30)]})
    assert (await post(proxy.url(PATH), INIT, bearer(await _user(oauth, forger))))[0] == 200
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    flood = [forger.token(key=key, kid=f"random-{uuid.uuid4().hex}") for _ in range(60)]
    results = await asyncio.gather(*(post(proxy.url(PATH), INIT, bearer(t)) for t in flood))
    assert {r[0] for r in results} == {401}
    assert {r[1]["WWW-Authenticate"] for r in results} == {invalid(proxy, v.UNKNOWN_KEY)}
    assert (await oauth.stats())["endpoints"]["/jwks"] == 1  # the first fetch, and no other


async def test_unknown_kid_refetch_is_rate_limited_not_disabled(
    oauth: OAuthServer, forger: Forger, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory({"routes": [route(mcp_json.url, oauth, jwks_refresh_min_s=0.5)]})
    assert (await post(proxy.url(PATH), INIT, bearer(await _user(oauth, forger))))[0] == 200
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for _ in range(3):
        await asyncio.sleep(0.6)
        flood = [forger.token(key=key, kid=f"random-{uuid.uuid4().hex}") for _ in range(20)]
        results = await asyncio.gather(*(post(proxy.url(PATH), INIT, bearer(t)) for t in flood))
        assert {r[0] for r in results} == {401}
    # one fetch at start, then at most one per interval however many unknown kids arrived
    assert 2 <= (await oauth.stats())["endpoints"]["/jwks"] <= 4


async def test_key_rotation_without_restart(
    oauth: OAuthServer, forger: Forger, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory({"routes": [route(mcp_json.url, oauth, jwks_refresh_min_s=0.3)]})
    before = await _user(oauth, forger)
    assert (await post(proxy.url(PATH), INIT, bearer(before)))[0] == 200
    new_kid = await oauth.rotate_keys()
    await asyncio.sleep(0.35)
    after = await _user(oauth, forger)
    import jwt

    assert jwt.get_unverified_header(after)["kid"] == new_kid
    status, _, body = await post(proxy.url(PATH), INIT, bearer(after))
    assert status == 200, body
    assert (await post(proxy.url(PATH), INIT, bearer(before)))[0] == 200  # old key still published
    assert (await oauth.stats())["endpoints"]["/jwks"] == 2


async def test_idp_unreachable_is_503_not_401(
    mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    issuer = f"http://127.0.0.1:{free_port()}"
    spec = {
        "routes": [
            {
                "name": "v",
                "path": PATH,
                "upstream": mcp_json.url,
                "auth": {"verify": {"issuer": issuer, "audience": ["mcpproxy"], "timeout_s": 2}},
            }
        ]
    }
    proxy = await proxy_factory(spec)
    status, headers, body = await post(proxy.url(PATH), INIT, bearer("a.b.c"))
    assert status == 401  # malformed: refused before any key is needed
    token = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJ4In0.c2ln"
    status, headers, body = await post(proxy.url(PATH), INIT, bearer(token))
    assert status == 503 and headers["Retry-After"] == "5"
    assert body["error"]["message"] == v.UNAVAILABLE
    assert await mcp_json.requests() == []


async def test_verified_token_is_the_exchange_subject(
    oauth: OAuthServer,
    forger: Forger,
    mcp_server_factory: McpServerFactory,
    proxy_factory: ProxyFactory,
    secrets_registry: SecretRegistry,
) -> None:
    tool = mcp_server_factory(
        "json", require_bearer_jwt=True, issuer=oauth.issuer, jwks_url=oauth.jwks_uri, audience="tool-a"
    )
    spec = {
        "routes": [
            {
                "name": "v",
                "path": PATH,
                "upstream": tool.url,
                "auth": {
                    "verify": verify_block(oauth),
                    "upstream": {
                        "type": "token_exchange",
                        "issuer": oauth.issuer,
                        "client": {"id": "mcp-proxy", "secret": "proxy-secret"},
                        "audience": ["tool-a"],
                    },
                },
            }
        ]
    }
    proxy = await proxy_factory(spec)
    token = await _user(oauth, forger)
    secrets_registry.add(token)
    async with mcp_connect(proxy.url(PATH), headers=bearer(token)) as conn:
        claims = tool_json(await conn.session.call_tool("whoami", {}))
    assert claims["sub"] == "alice" and claims["aud"] == "tool-a" and claims["tenant"] == "acme"
    # an unverifiable token never reaches the token endpoint
    before = (await oauth.stats())["total"]
    status, _, _ = await post(proxy.url(PATH), INIT, bearer(forger.alg_none()))
    assert status == 401 and (await oauth.stats())["total"] == before


async def test_upstream_401_challenge_points_at_the_proxy(
    oauth: OAuthServer,
    forger: Forger,
    mcp_server_factory: McpServerFactory,
    proxy_factory: ProxyFactory,
) -> None:
    tool = mcp_server_factory(
        "json", require_bearer_jwt=True, issuer=oauth.issuer, jwks_url=oauth.jwks_uri, audience="tool-a"
    )
    proxy = await proxy_factory({"routes": [route(tool.url, oauth)]})  # verifies, sends tool nothing
    status, headers, _ = await post(proxy.url(PATH), INIT, bearer(await _user(oauth, forger)))
    assert status == 401
    upstream_challenge = (await tool.requests())[0]
    assert upstream_challenge["status"] == 401
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="mcpproxy", error="invalid_token"')
    assert challenge.endswith(f'resource_metadata="{metadata(proxy)}"')
    assert str(tool.port) not in challenge


async def test_public_url_names_the_metadata(
    oauth: OAuthServer, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    spec = {"routes": [{**route(mcp_json.url, oauth), "public_url": "https://mcp.example.com/tools/v"}]}
    proxy = await proxy_factory(spec)
    _, headers, _ = await post(proxy.url(PATH), INIT)
    assert headers["WWW-Authenticate"].endswith(
        'resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/tools/v"'
    )


async def test_verified_claims_reach_the_access_log(
    oauth: OAuthServer, forger: Forger, mcp_json: McpServerProcess
) -> None:
    import json as _json

    from tests.support.proxy import LOG_DIR

    port = free_port()
    async with proxy_at({"routes": [route(mcp_json.url, oauth)]}, port) as proxy:
        token = await _user(oauth, forger)
        _, headers, _ = await post(proxy.url(PATH), INIT, bearer(token))
    lines = [
        _json.loads(line)
        for line in (LOG_DIR / "in-process.log").read_text().splitlines()
        if line.startswith("{")
    ]
    [entry] = [e for e in lines if e.get("request_id") == headers["X-Request-Id"]]
    assert entry["sub"] == "alice" and entry["status"] == 200
    assert token not in _json.dumps(entry)


async def test_routes_without_verify_are_untouched(
    mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    from mcpproxy.web.app import LIVE

    proxy = await proxy_factory({"routes": [{"name": "p", "path": "/p/mcp", "upstream": mcp_json.url}]})
    runtime = proxy.app[LIVE].state.handler.runtimes["p"]
    assert runtime.verifier is None and runtime.policy is None and not runtime.needs_body
    inbound = proxy.app[LIVE].state.inbound
    assert inbound is not None and inbound.auth is None  # no JWKS client either
    status, headers, _ = await post(proxy.url("/p/mcp"), INIT, bearer("whatever-token-123"))
    assert status == 200 and "WWW-Authenticate" not in headers
