"""Seed 000 through the real OGX 1.5: ``POST /v1/responses`` with an MCP tool whose
``server_url`` is an mcpproxy route. The caller's user token (audience ``llama-stack``) goes in
the tool's ``authorization``; mcpproxy exchanges it (RFC 8693) at the test OAuth server for a
token aimed at ``my-external-tool``, the only audience the MCP server accepts; the server's
``whoami`` returns the claims it verified, and they come back to the caller through the model.

Every assertion is on what really crossed a wire: the Responses answer, the MCP server's own
request log, the OAuth server's counters, the proxy's log lines (and, for streaming, the bytes
OGX received from the proxy). One ``mcpproxy serve`` serves the module (``seed`` fixture); each
test uses fresh user tokens, so no exchange is cached across tests. The ``connector_id`` test
stays last: it needs an OGX and a proxy of its own.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import ROUTE_TOOL, ROUTE_TOOL_SSE, SeedStack
from tests.support.fake_llm import FINAL_PREFIX, directive
from tests.support.mcp_servers import McpServerProcess, rpc_messages, rpc_method
from tests.support.oauth import GRANT_TOKEN_EXCHANGE, OAuthServer
from tests.support.ogx import (
    PROXY_CLIENT_ID,
    PROXY_CLIENT_SECRET,
    REPO_ROOT,
    SEED_AUDIENCE,
    OgxResponse,
    OgxServer,
    OgxServerFactory,
    ResponseTap,
    assert_mcp_session,
    audience_of,
    bearer_claims,
    exchange_route,
    mcp_sequence,
    mcp_tool,
    proxy_config,
    proxy_env,
    sse_messages,
)
from tests.support.proxy import SECRETS, ProxyProcess, SecretRegistry

pytestmark = pytest.mark.ogx

# What OGX sends for one Responses request with one tool call (tests/e2e/WIRE.md).
OGX_SESSION = [
    ("POST", "initialize"),
    ("POST", "notifications/initialized"),
    ("GET", None),
    ("POST", "tools/list"),
    ("POST", "tools/call"),
    ("DELETE", None),
]


def authorizations(records: list[dict[str, Any]]) -> list[str]:
    """The single Authorization value of each request (fails on none or several)."""
    values = []
    for record in records:
        [value] = record["headers"].get("authorization", [None])
        assert value is not None, f"no Authorization on {record['method']} {record['path']}"
        values.append(value)
    return values


def sub_of(record: dict[str, Any]) -> str | None:
    """The ``sub`` of the bearer token a recorded request carried."""
    [value] = authorizations([record])
    return bearer_claims(value).get("sub")


def final_claims(resp: OgxResponse) -> dict[str, Any]:
    """The claims ``whoami`` returned, as they reached the caller in the model's final answer."""
    assert resp.output_text.startswith(FINAL_PREFIX), resp
    claims: dict[str, Any] = json.loads(resp.output_text[len(FINAL_PREFIX) :])
    return claims


def exchanges(stats: dict[str, Any]) -> int:
    counts: dict[str, int] = stats["grant_types"].get(GRANT_TOKEN_EXCHANGE, {})
    return counts.get("success", 0) + counts.get("error", 0)


async def user_token(oauth: OAuthServer, secrets: SecretRegistry, name: str) -> str:
    token = await oauth.user_token(name)
    secrets.add(token)
    return token


async def respond(ogx: OgxServer, prompt: str, tools: list[dict[str, Any]], **kw: Any) -> OgxResponse:
    """``ogx.create_response`` off the event loop (it blocks)."""
    return await asyncio.to_thread(ogx.create_response, prompt, tools, **kw)


def assert_exchanged_for(records: list[dict[str, Any]], user: str, caller_token: str) -> set[str]:
    """Every request carried a token for ``my-external-tool`` about ``user``, never the caller's
    own token; returns the distinct upstream tokens (registered for the log scan)."""
    values = authorizations(records)
    SECRETS.add(*(v.split(" ", 1)[-1] for v in values))
    for value in values:
        assert caller_token not in value, "the caller's token reached the MCP server"
        claims = bearer_claims(value)
        assert claims.get("sub") == user, claims
        assert audience_of(claims) == [SEED_AUDIENCE], claims
    return set(values)


# -- the seed story, two users at once ---------------------------------------------------------


async def test_two_users_reach_the_tool_as_themselves(
    ogx: OgxServer, seed: SeedStack, secrets_registry: SecretRegistry
) -> None:
    alice = await user_token(seed.oauth, secrets_registry, "alice")
    bob = await user_token(seed.oauth, secrets_registry, "bob")
    assert audience_of(await seed.oauth.decode(alice)) == ["llama-stack"]  # not the tool's audience

    async def ask(token: str) -> OgxResponse:
        tool = mcp_tool(seed.url(ROUTE_TOOL), authorization=token)
        return await respond(ogx, directive("whoami"), [tool])

    resp_alice, resp_bob = await asyncio.gather(ask(alice), ask(bob))

    for resp, user in ((resp_alice, "alice"), (resp_bob, "bob")):
        assert resp.status == 200, resp
        [call] = resp.mcp_calls
        assert call["name"] == "whoami" and call["error"] is None, call
        claims = final_claims(resp)  # what the tool verified, as it reached the caller
        assert claims["sub"] == user, claims
        assert audience_of(claims) == [SEED_AUDIENCE], claims
        assert claims["iss"] == seed.oauth.issuer

    # The MCP server saw two whole sessions, each under its own user's exchanged token only.
    records = seed.tool_json.requests_sync()
    assert sorted(mcp_sequence(records), key=str) == sorted(OGX_SESSION * 2, key=str)
    assert all(r["status"] in (200, 202) for r in records), [(r["method"], r["status"]) for r in records]
    for user, token in (("alice", alice), ("bob", bob)):
        mine = [r for r in records if sub_of(r) == user]
        assert_mcp_session(mine, OGX_SESSION)
        assert len(assert_exchanged_for(mine, user, token)) == 1
    sessions: dict[str, set[str | None]] = {}
    for record in records:
        for session in record["headers"].get("mcp-session-id", []):
            sessions.setdefault(session, set()).add(sub_of(record))
    assert sorted(sessions.values(), key=sorted) == [{"alice"}, {"bob"}]
    assert exchanges(await seed.oauth.stats()) == 2  # one per user


# -- "Bearer x" in the authorization field -----------------------------------------------------


async def test_bearer_prefixed_authorization_still_works(
    ogx: OgxServer, seed: SeedStack, secrets_registry: SecretRegistry
) -> None:
    alice = await user_token(seed.oauth, secrets_registry, "alice")
    # OGX prefixes unconditionally: the proxy receives "Bearer Bearer <token>".
    resp = await respond(
        ogx, directive("whoami"), [mcp_tool(seed.url(ROUTE_TOOL), authorization=f"Bearer {alice}")]
    )
    assert resp.status == 200, resp
    assert resp.mcp_calls[0]["error"] is None, resp.mcp_calls
    claims = final_claims(resp)
    assert claims["sub"] == "alice" and audience_of(claims) == [SEED_AUDIENCE]
    records = seed.tool_json.requests_sync()
    assert_mcp_session(records, OGX_SESSION)
    assert len(assert_exchanged_for(records, "alice", alice)) == 1


# -- no authorization: 401, logged, nothing sent on --------------------------------------------


async def test_missing_authorization_is_401_logged_and_nothing_sent(ogx: OgxServer, seed: SeedStack) -> None:
    mark = seed.log_mark()
    resp = await respond(ogx, directive("whoami"), [mcp_tool(seed.url(ROUTE_TOOL))])

    assert resp.status == 401, resp
    assert "401" in resp.http.text
    assert seed.tool_json.requests_sync() == []  # the upstream received nothing
    assert exchanges(await seed.oauth.stats()) == 0

    # OGX tried Streamable HTTP (POST), then the legacy SSE GET: the proxy refused both, and
    # its access log says why.
    lines: list[dict[str, Any]] = []
    for _ in range(50):  # the access line is written once the response is out
        lines = [line for line in seed.log_since(mark) if line.get("route") == "tool"]
        if len(lines) >= 2:
            break
        await asyncio.sleep(0.1)
    refused = [(line["method"], line["status"], line.get("error")) for line in lines]
    assert refused == [("POST", 401, "missing_credential"), ("GET", 401, "missing_credential")], lines
    assert lines[0]["mcp_method"] == "initialize"
    assert all("credential_source" not in line for line in lines)


# -- streaming: the tool's notifications relayed as they happen --------------------------------


async def test_streamed_response_relays_tool_progress(
    ogx: OgxServer,
    seed: SeedStack,
    secrets_registry: SecretRegistry,
    response_tap: Callable[[int], ResponseTap],
) -> None:
    alice = await user_token(seed.oauth, secrets_registry, "alice")
    tap = response_tap(seed.proxy.port)  # OGX -> tap -> mcpproxy -> SSE-answering tool
    steps, delay_ms = 3, 200
    tool = mcp_tool(tap.base + ROUTE_TOOL_SSE, authorization=alice)
    resp = await respond(
        ogx, directive("progress", {"count": steps, "delay_ms": delay_ms}), [tool], stream=True
    )

    # The caller's stream: the MCP call and its result.
    assert resp.status == 200, resp
    types = [e.get("type") for e in resp.events]
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    for expected in (
        "response.mcp_list_tools.completed",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
    ):
        assert expected in types, types
    assert types.index("response.mcp_call.in_progress") < types.index("response.mcp_call.completed")
    done = [e["item"] for e in resp.events if e.get("type") == "response.output_item.done"]
    [call] = [item for item in done if item.get("type") == "mcp_call"]
    assert call["name"] == "progress" and call["error"] is None
    assert call["output"] == f"done {steps}"
    assert resp.output_text == FINAL_PREFIX + f"done {steps}"

    # The MCP server's side: the call arrived under alice's exchanged token, and answered.
    records = seed.tool_sse.requests_sync()
    assert_mcp_session(records, OGX_SESSION)
    assert len(assert_exchanged_for(records, "alice", alice)) == 1
    [call_record] = [r for r in records if rpc_method(r) == "tools/call"]
    params = rpc_messages(call_record)[0]["params"]
    assert params["arguments"] == {"count": steps, "delay_ms": delay_ms}
    # OGX asks for no progress (no progressToken), so the tool's report_progress() sends nothing;
    # what it streams are its log notifications, one per step.
    assert "progressToken" not in (params.get("_meta") or {}), params
    assert call_record["status"] == 200

    # What the proxy relayed to OGX for that call: an event stream with each of the tool's
    # notifications, then the result — written as they happened, not buffered to the end.
    conn = tap.connection_with(b'"tools/call"')
    [(status, headers, body)] = [r for r in conn.responses() if b"progress step" in r[2]]
    assert status == 200 and headers["content-type"].startswith("text/event-stream"), headers
    messages = [m for m in sse_messages(body) if isinstance(m, dict)]
    logs = [m["params"]["data"] for m in messages if m.get("method") == "notifications/message"]
    assert logs == [f"progress step {i}/{steps}" for i in range(1, steps + 1)], messages
    assert "result" in messages[-1] and messages[-1]["result"]["content"][0]["text"] == f"done {steps}"
    first, offset = conn.arrival(b"progress step 1/")
    last, offset = conn.arrival(f"progress step {steps}/".encode(), offset)
    result, _ = conn.arrival(f"done {steps}".encode(), offset)
    assert last - first >= (steps - 1) * delay_ms / 1000 * 0.8, (first, last)
    assert result >= last


# -- one exchange per user token, reused -------------------------------------------------------


async def test_one_exchange_per_user_token_and_reused(
    ogx: OgxServer, seed: SeedStack, secrets_registry: SecretRegistry
) -> None:
    alice = await user_token(seed.oauth, secrets_registry, "alice")
    assert exchanges(await seed.oauth.stats()) == 0
    tool = mcp_tool(seed.url(ROUTE_TOOL), authorization=alice)

    first = await respond(ogx, directive("whoami"), [tool])
    assert first.status == 200 and final_claims(first)["sub"] == "alice", first
    records = seed.tool_json.requests_sync()
    assert_mcp_session(records, OGX_SESSION)  # six HTTP requests ...
    stats = await seed.oauth.stats()
    assert exchanges(stats) == 1  # ... one exchange
    [exchange] = [r for r in stats["requests"] if r["grant_type"] == GRANT_TOKEN_EXCHANGE]
    assert exchange["client_id"] == PROXY_CLIENT_ID and exchange["audience"] == [SEED_AUDIENCE]
    [upstream_token] = assert_exchanged_for(records, "alice", alice)

    seed.tool_json.reset_sync()
    second = await respond(ogx, directive("whoami"), [tool])
    assert second.status == 200 and final_claims(second)["sub"] == "alice", second
    records = seed.tool_json.requests_sync()
    assert_mcp_session(records, OGX_SESSION)
    assert assert_exchanged_for(records, "alice", alice) == {upstream_token}  # the cached token
    assert exchanges(await seed.oauth.stats()) == 1


# -- the documented command: scripts/demo_ogx.py -----------------------------------------------


def test_demo_ogx_script_tells_the_seed_story() -> None:
    """``.venv/bin/python scripts/demo_ogx.py`` (README) runs end to end and shows the story."""
    script = REPO_ROOT / "scripts" / "demo_ogx.py"
    done = subprocess.run(
        [sys.executable, str(script)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert re.search(r"sub / aud\s+alice / llama-stack", out), out
    assert re.search(r"POST /v1/responses\s+HTTP 401", out), out  # straight to the tool: refused
    assert re.search(r"HTTP status\s+200", out), out  # through mcpproxy
    assert re.search(r"\bsub\s+alice\n", out) and re.search(rf"\baud\s+{SEED_AUDIENCE}\n", out), out
    assert re.search(rf"POST tools/call\s+200\s+Bearer <sub=alice aud={SEED_AUDIENCE}>", out), out
    assert re.search(r"RFC 8693 exchanges\s+1 ", out), out
    assert re.search(r"alice's own token upstream\s+never", out), out


# -- connector_id: OGX's tokenless first session, on the route's own identity ------------------
# Keep this the last test of the module: it needs an OGX of its own (connectors are config-time).


FALLBACK_METHODS = ["initialize", "notifications/initialized", "tools/list"]


def fallback_route(upstream: str, issuer: str) -> dict[str, Any]:
    """The exchange route, plus: chosen MCP methods may use the route's client_credentials
    identity when the caller sent no token (issue 6; the option is being added to the proxy)."""
    return exchange_route(
        "tool",
        ROUTE_TOOL,
        upstream,
        issuer,
        fallback={
            "methods": FALLBACK_METHODS,
            "upstream": {
                "type": "client_credentials",
                "issuer": issuer,
                "client": {
                    "id": PROXY_CLIENT_ID,
                    "secret": "${env.PROXY_CLIENT_SECRET}",
                    "auth_method": "client_secret_basic",
                },
                "audience": [SEED_AUDIENCE],
            },
        },
    )


async def test_connector_id_first_session_uses_the_route_identity(
    oauth: OAuthServer,
    ogx_server_factory: OgxServerFactory,
    mcp_server_factory: Callable[..., McpServerProcess],
    proxy_process: Callable[..., ProxyProcess],
    secrets_registry: SecretRegistry,
) -> None:
    secrets_registry.add(PROXY_CLIENT_SECRET)
    tool = mcp_server_factory(
        "json", require_bearer_jwt=True, issuer=oauth.issuer, jwks_url=oauth.jwks_uri, audience=SEED_AUDIENCE
    )
    proxy = proxy_process(proxy_config([fallback_route(tool.url, oauth.issuer)]), proxy_env())
    server = await asyncio.to_thread(
        ogx_server_factory, connectors=[{"connector_id": "tool", "url": proxy.url(ROUTE_TOOL)}]
    )
    alice = await user_token(oauth, secrets_registry, "alice")
    tool.reset_sync()

    resp = await respond(server, directive("whoami"), [mcp_tool(connector_id="tool", authorization=alice)])

    assert resp.status == 200, resp
    assert resp.mcp_calls[0]["error"] is None, resp.mcp_calls
    claims = final_claims(resp)
    assert claims["sub"] == "alice" and audience_of(claims) == [SEED_AUDIENCE]

    records = tool.requests_sync()
    seq = mcp_sequence(records)
    # OGX's server-info session (no token from the caller) went through on the proxy's own
    # client_credentials identity, then the tool session on alice's exchanged token.
    inits = [i for i, step in enumerate(seq) if step == ("POST", "initialize")]
    assert len(inits) == 2, seq
    info, session = records[: inits[1]], records[inits[1] :]
    assert mcp_sequence(info)[:2] == [("POST", "initialize"), ("POST", "notifications/initialized")], seq
    assert_mcp_session(session, OGX_SESSION)
    for record in info:
        if record["method"] == "POST":
            claims = bearer_claims(authorizations([record])[0])
            assert claims.get("sub") == PROXY_CLIENT_ID and audience_of(claims) == [SEED_AUDIENCE], claims
    assert_exchanged_for(session, "alice", alice)
    grants = (await oauth.stats())["grant_types"]
    assert grants["client_credentials"]["success"] == 1
    assert exchanges(await oauth.stats()) == 1

    # The route's identity opens sessions and lists tools, never calls one: without a caller
    # token the info session and the listing still work, the call itself is refused.
    tool.reset_sync()
    tokenless = await respond(server, directive("whoami"), [mcp_tool(connector_id="tool")])
    assert tokenless.status == 200, tokenless
    [call] = tokenless.mcp_calls
    assert call["error"], call  # a tool error the model sees (OGX turns a mid-session 401 into one)
    assert ("POST", "tools/call") not in mcp_sequence(tool.requests_sync())
