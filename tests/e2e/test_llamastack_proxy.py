"""Seed 000 through the older tool-runtime API (``llama-stack`` 0.6.1), for deployments that have
not moved to OGX: a toolgroup whose ``mcp_endpoint`` uri is an mcpproxy route, invoked with the
``authorization`` parameter or with the caller's token in ``X-LlamaStack-Provider-Data``
``mcp_headers`` (keyed by the route URL; ``Authorization`` itself is refused there by Llama Stack,
so deployments use another header name — ``X-User-Token`` here).

Llama Stack caches a group's tool list for the life of the process and routes a tool name to the
group that indexed it last, so each test registers its own group and lists it before invoking.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import ROUTE_TOOL, ROUTE_TOOL_HEADER, SeedStack
from tests.support.oauth import GRANT_TOKEN_EXCHANGE
from tests.support.ogx import (
    SEED_AUDIENCE,
    HttpResult,
    LlamaStackServer,
    assert_mcp_session,
    audience_of,
    bearer_claims,
    tool_result_text,
)
from tests.support.proxy import SECRETS, SecretRegistry

pytestmark = pytest.mark.ogx

# mcp 1.x lists the tools after a call, to validate its structured output (tests/e2e/WIRE.md).
LS_INVOKE_SESSION = [
    ("POST", "initialize"),
    ("POST", "notifications/initialized"),
    ("GET", None),
    ("POST", "tools/call"),
    ("POST", "tools/list"),
    ("DELETE", None),
]
LS_LIST_SESSION = [
    ("POST", "initialize"),
    ("POST", "notifications/initialized"),
    ("GET", None),
    ("POST", "tools/list"),
    ("DELETE", None),
]


def whoami(result: HttpResult) -> dict[str, Any]:
    """The claims the tool verified, from an ``invoke`` answer."""
    assert result.status == 200, result
    assert result.json()["error_message"] is None, result.text
    claims: dict[str, Any] = json.loads(tool_result_text(result))
    return claims


def upstream_tokens(records: list[dict[str, Any]], user: str, caller_token: str) -> set[str]:
    """Every request carried one token for ``my-external-tool`` about ``user`` (never the
    caller's own token); returns the distinct values."""
    values = set()
    for record in records:
        [value] = record["headers"].get("authorization", [None])
        assert value is not None and caller_token not in value, record["method"]
        claims = bearer_claims(value)
        assert claims.get("sub") == user and audience_of(claims) == [SEED_AUDIENCE], claims
        values.add(value)
        SECRETS.add(value.split(" ", 1)[-1])  # for the session-end log scan
    return values


async def exchanges(seed: SeedStack) -> int:
    counts: dict[str, int] = (await seed.oauth.stats())["grant_types"].get(GRANT_TOKEN_EXCHANGE, {})
    return counts.get("success", 0) + counts.get("error", 0)


async def test_invoke_with_authorization_through_exchange_route(
    llamastack_server: LlamaStackServer, seed: SeedStack, secrets_registry: SecretRegistry
) -> None:
    ls = llamastack_server
    alice, bob = await seed.oauth.user_token("alice"), await seed.oauth.user_token("bob")
    secrets_registry.add(alice, bob)
    tid = ls.register_toolgroup(seed.url(ROUTE_TOOL))

    # Without a token, indexing is refused by the proxy (Llama Stack passes the 401 on) and
    # nothing reaches the tool.
    assert ls.list_tools(tid).status == 401
    assert seed.tool_json.requests_sync() == []

    # Indexing the group goes through the proxy too, on alice's exchanged token.
    listed = ls.list_tools(tid, authorization=alice)
    assert listed.status == 200, listed
    assert "whoami" in {t["name"] for t in listed.json()["data"]}
    records = seed.tool_json.requests_sync()
    assert_mcp_session(records, LS_LIST_SESSION)
    [listing_token] = upstream_tokens(records, "alice", alice)
    seed.tool_json.reset_sync()

    claims = whoami(ls.invoke("whoami", authorization=alice))
    assert claims["sub"] == "alice" and audience_of(claims) == [SEED_AUDIENCE], claims
    records = seed.tool_json.requests_sync()
    assert_mcp_session(records, LS_INVOKE_SESSION)
    assert upstream_tokens(records, "alice", alice) == {listing_token}  # from the proxy's cache
    assert await exchanges(seed) == 1

    # Another user on the same group: their own identity, their own exchange.
    seed.tool_json.reset_sync()
    claims = whoami(ls.invoke("whoami", authorization=bob))
    assert claims["sub"] == "bob" and audience_of(claims) == [SEED_AUDIENCE], claims
    upstream_tokens(seed.tool_json.requests_sync(), "bob", bob)
    assert await exchanges(seed) == 2

    # "Bearer <token>" in the parameter arrives as "Bearer Bearer <token>": still alice.
    seed.tool_json.reset_sync()
    claims = whoami(ls.invoke("whoami", authorization=f"Bearer {alice}"))
    assert claims["sub"] == "alice"
    assert upstream_tokens(seed.tool_json.requests_sync(), "alice", alice) == {listing_token}

    # No token at invoke: 401 to the caller, nothing sent on.
    seed.tool_json.reset_sync()
    refused = ls.invoke("whoami")
    assert refused.status == 401, refused
    assert seed.tool_json.requests_sync() == []


async def test_provider_data_mcp_headers_through_header_route(
    llamastack_server: LlamaStackServer, seed: SeedStack, secrets_registry: SecretRegistry
) -> None:
    ls = llamastack_server
    alice = await seed.oauth.user_token("alice")
    secrets_registry.add(alice)
    route_url = seed.url(ROUTE_TOOL_HEADER)
    tid = ls.register_toolgroup(route_url)
    # mcp_headers are keyed by the endpoint URI: the proxy route's URL.
    headers = LlamaStackServer.provider_data_headers({route_url: {"X-User-Token": alice}})

    listed = ls.list_tools(tid, headers=headers)
    assert listed.status == 200, listed
    seed.tool_json.reset_sync()

    claims = whoami(ls.invoke("whoami", headers=headers))
    assert claims["sub"] == "alice" and audience_of(claims) == [SEED_AUDIENCE], claims
    records = seed.tool_json.requests_sync()
    assert_mcp_session(records, LS_INVOKE_SESSION)
    upstream_tokens(records, "alice", alice)
    # The header that carried the caller's token was consumed, not passed on.
    assert all("x-user-token" not in r["headers"] for r in records)
    assert await exchanges(seed) == 1

    # Provider data keyed by another URI doesn't apply: no token, refused by the proxy.
    seed.tool_json.reset_sync()
    elsewhere = LlamaStackServer.provider_data_headers({seed.url(ROUTE_TOOL): {"X-User-Token": alice}})
    refused = ls.invoke("whoami", headers=elsewhere)
    assert refused.status == 401, refused
    assert seed.tool_json.requests_sync() == []
