"""Per-tool policy through the proxy with real MCP servers: allowed, denied, filtered lists (JSON,
SSE, the legacy GET stream), the 2026-07-28 header/body agreement, batches, smuggling attempts.

Users of the test OAuth server: alice (tenant acme), bob (globex), carol (acme). The policy is the
issue's: ``delete_*``/``drop_table`` need scope ``admin``, every tool needs ``tenant: acme``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from mcpproxy.errors import JSONRPC_HEADER_MISMATCH
from tests.support.mcp_servers import McpServerProcess, mcp_connect, rpc_messages, tool_text
from tests.support.oauth import OAuthServer
from tests.support.proxy import ProxyFactory, RunningProxy, SecretRegistry
from tests.support.verify import INIT, bearer, post, sse_messages, verify_block

PATH = "/p/mcp"
POLICY: dict[str, Any] = {
    "default": "allow",
    "rules": [
        {"tools": ["delete_*", "drop_table"], "require_scopes": ["admin"]},
        {"tools": ["*"], "require_claims": {"tenant": "acme"}},
    ],
}
ALL_TOOLS = {"add", "big", "delete_records", "drop_table", "echo_headers", "gated"}
ADMIN_ONLY = {"delete_records", "drop_table"}


def call(name: str, args: dict[str, Any] | None = None, id_: Any = 7) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": id_,
        "method": "tools/call",
        "params": {"name": name, "arguments": args or {}},
    }


async def start(
    proxy_factory: ProxyFactory,
    upstream: str,
    oauth: OAuthServer,
    policy: dict[str, Any] = POLICY,
    **route: Any,
) -> RunningProxy:
    spec = {
        "routes": [
            {
                "name": "p",
                "path": PATH,
                "upstream": upstream,
                "auth": {"verify": verify_block(oauth)},
                "policy": policy,
                **route,
            }
        ]
    }
    return await proxy_factory(spec)


async def token(
    oauth: OAuthServer, user: str, scope: str = "mcp", registry: SecretRegistry | None = None
) -> str:
    value = await oauth.user_token(user, audience="mcpproxy", scope=scope)
    if registry is not None:
        registry.add(value)
    return value


def tool_calls(records: list[dict[str, Any]]) -> list[str]:
    names = []
    for record in records:
        for message in rpc_messages(record):
            if message.get("method") == "tools/call":
                names.append(message["params"]["name"])
    return names


@pytest.mark.parametrize("server", ["mcp_json", "mcp_sse", "mcp_stateless"])
async def test_list_filtered_and_calls_decided(
    server: str,
    request: pytest.FixtureRequest,
    oauth: OAuthServer,
    proxy_factory: ProxyFactory,
    secrets_registry: SecretRegistry,
) -> None:
    upstream: McpServerProcess = request.getfixturevalue(server)
    proxy = await start(proxy_factory, upstream.url, oauth)
    carol = await token(oauth, "carol", registry=secrets_registry)
    async with mcp_connect(proxy.url(PATH), headers=bearer(carol)) as conn:
        names = {t.name for t in (await conn.session.list_tools()).tools}
        assert ADMIN_ONLY.isdisjoint(names) and {"add", "echo_headers"} <= names
        assert tool_text(await conn.session.call_tool("add", {"a": 1, "b": 2})) == "3"
        with pytest.raises(MCPError) as info:
            await conn.session.call_tool("drop_table", {"table": "users"})
        assert info.value.error.message == (
            "tools/call 'drop_table' is not permitted on this route (it requires scope admin)"
        )
    assert tool_calls(await upstream.requests()) == ["add"]

    alice = await token(oauth, "alice", "mcp admin", secrets_registry)
    async with mcp_connect(proxy.url(PATH), headers=bearer(alice)) as conn:
        names = {t.name for t in (await conn.session.list_tools()).tools}
        assert names >= ALL_TOOLS
        assert "dropped" in tool_text(await conn.session.call_tool("drop_table", {"table": "users"}))


async def test_denied_call_is_403_jsonrpc_error_and_never_sent(
    oauth: OAuthServer, mcp_stateless: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await start(proxy_factory, mcp_stateless.url, oauth)
    carol = await token(oauth, "carol")
    status, headers, body = await post(
        proxy.url(PATH), call("drop_table", {"table": "t"}, id_="req-9"), bearer(carol)
    )
    assert status == 403
    assert body["jsonrpc"] == "2.0" and body["id"] == "req-9"
    assert (
        body["error"]["message"]
        == "tools/call 'drop_table' is not permitted on this route (it requires scope admin)"
    )
    # a scope can fix it: the MCP step-up challenge says which
    assert headers["WWW-Authenticate"] == (
        'Bearer realm="mcpproxy", error="insufficient_scope", '
        f'error_description="{body["error"]["message"]}", scope="admin", '
        f'resource_metadata="{proxy.url("/.well-known/oauth-protected-resource" + PATH)}"'
    )
    bob = await token(oauth, "bob", "mcp admin")  # wrong tenant: no scope can fix that, so no challenge
    status, headers, body = await post(proxy.url(PATH), call("add", {"a": 1, "b": 1}), bearer(bob))
    assert status == 403 and "WWW-Authenticate" not in headers
    assert body["error"]["message"] == "tools/call 'add' is not permitted on this route"
    assert await mcp_stateless.requests() == []


async def test_bob_sees_no_tools(
    oauth: OAuthServer, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await start(proxy_factory, mcp_json.url, oauth)
    async with mcp_connect(proxy.url(PATH), headers=bearer(await token(oauth, "bob", "mcp admin"))) as conn:
        assert (await conn.session.list_tools()).tools == []


async def test_sse_list_answer_rewritten_other_events_untouched(
    oauth: OAuthServer, mcp_sse: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    """Raw SSE: the tools/list event is rewritten (its event id kept), nothing else changes."""
    proxy = await start(proxy_factory, mcp_sse.url, oauth)
    auth = bearer(await token(oauth, "carol"))
    status, headers, _ = await post(proxy.url(PATH), INIT, auth)
    assert status == 200
    session = {**auth, "Mcp-Session-Id": headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}
    await post(proxy.url(PATH), {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    import aiohttp

    async with aiohttp.ClientSession() as http:
        listing = {"jsonrpc": "2.0", "id": 42, "method": "tools/list", "params": {}}
        async with http.post(
            proxy.url(PATH),
            json=listing,
            headers={**session, "Accept": "application/json, text/event-stream"},
        ) as resp:
            assert resp.content_type == "text/event-stream"
            text = await resp.text()
    events = [e for e in text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    [answer] = [m for m in sse_messages(text) if m.get("id") == 42]
    names = {t["name"] for t in answer["result"]["tools"]}
    assert ADMIN_ONLY.isdisjoint(names) and "add" in names
    answer_event = next(e for e in events if '"id":42' in e.replace(" ", ""))
    assert any(line.startswith("id:") for line in answer_event.split("\n"))  # resumption id kept
    # the upstream's answer had them all
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            mcp_sse.url,
            json=listing,
            headers={
                "Mcp-Session-Id": session["Mcp-Session-Id"],
                "MCP-Protocol-Version": "2025-11-25",
                "Accept": "application/json, text/event-stream",
            },
        ) as resp,
    ):
        direct = [m for m in sse_messages(await resp.text()) if m.get("id") == 42]
    assert {t["name"] for t in direct[0]["result"]["tools"]} >= ALL_TOOLS


async def test_legacy_transport_list_filtered_on_the_get_stream(
    oauth: OAuthServer, mcp_legacy: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    """Legacy HTTP+SSE answers on the GET stream, where the request's id is unknown to the proxy.

    (A refused POST of that transport is an HTTP 403 the SDK only logs: the call times out.)
    """
    proxy = await start(proxy_factory, mcp_legacy.base, oauth)
    async with mcp_connect(
        proxy.url(PATH + "/sse"), transport="sse", headers=bearer(await token(oauth, "carol")), read_timeout=2
    ) as conn:
        names = {t.name for t in (await conn.session.list_tools()).tools}
        assert ADMIN_ONLY.isdisjoint(names) and "add" in names
        assert tool_text(await conn.session.call_tool("add", {"a": 2, "b": 2})) == "4"
        with pytest.raises(MCPError):
            await conn.session.call_tool("delete_records", {"table": "t"})
    assert tool_calls(await mcp_legacy.requests()) == ["add"]


async def test_2026_revision_through_policy(
    oauth: OAuthServer, mcp_stateless: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await start(proxy_factory, mcp_stateless.url, oauth)
    async with mcp_connect(
        proxy.url(PATH), protocol="2026-07-28", headers=bearer(await token(oauth, "carol"))
    ) as conn:
        names = {t.name for t in (await conn.session.list_tools()).tools}
        assert ADMIN_ONLY.isdisjoint(names)
        assert tool_text(await conn.session.call_tool("add", {"a": 5, "b": 5})) == "10"
        with pytest.raises(MCPError):
            await conn.session.call_tool("drop_table", {"table": "t"})
    assert tool_calls(await mcp_stateless.requests()) == ["add"]


MODERN = {"MCP-Protocol-Version": "2026-07-28"}


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Mcp-Method": "tools/call", "Mcp-Name": "add"}, call("drop_table")),  # the classic slip
        ({"Mcp-Method": "tools/list"}, call("add")),
        ({"Mcp-Method": "tools/call"}, call("add")),  # name header missing
        ({"Mcp-Name": "add"}, call("add")),  # method header missing
        (
            {"Mcp-Method": "tools/list", "Mcp-Name": "add"},
            {"jsonrpc": "2.0", "id": 7, "method": "tools/list"},
        ),
        ({"Mcp-Method": "tools/call", "Mcp-Name": "=?base64?YWRk?="}, call("drop_table")),  # "add", encoded
        ({"Mcp-Method": "tools/call", "Mcp-Name": "=?base64?not base64?="}, call("add")),
        ({"Mcp-Method": "tools/call", "Mcp-Name": "add"}, [call("add"), call("add", id_=8)]),
    ],
)
async def test_routing_headers_must_agree_with_the_body(
    headers: dict[str, str],
    body: Any,
    oauth: OAuthServer,
    mcp_stateless: McpServerProcess,
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await start(proxy_factory, mcp_stateless.url, oauth)
    alice = await token(oauth, "alice", "mcp admin")  # may call everything: only the mismatch refuses
    status, _, reply = await post(proxy.url(PATH), body, {**bearer(alice), **MODERN, **headers})
    assert status == 400, reply
    assert reply["error"]["code"] == JSONRPC_HEADER_MISMATCH
    assert await mcp_stateless.requests() == []


async def test_encoded_mcp_name_that_agrees_passes(
    oauth: OAuthServer, mcp_stateless: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await start(proxy_factory, mcp_stateless.url, oauth)
    alice = await token(oauth, "alice", "mcp admin")
    headers = {**bearer(alice), **MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "=?base64?YWRk?="}
    await post(proxy.url(PATH), call("add", {"a": 1, "b": 1}), headers)
    assert tool_calls(await mcp_stateless.requests()) == ["add"]  # reached the upstream


async def test_batch_with_one_denied_element_is_refused_whole(
    oauth: OAuthServer, mcp_stateless: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    proxy = await start(proxy_factory, mcp_stateless.url, oauth)
    carol = await token(oauth, "carol")
    batch = [
        call("add", {"a": 1, "b": 2}, id_=1),
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}},
        call("drop_table", {"table": "t"}, id_=2),
        call("delete_records", {"table": "t"}, id_="three"),
    ]
    status, _, reply = await post(proxy.url(PATH), batch, bearer(carol))
    assert status == 403
    assert [r["id"] for r in reply] == [1, 2, "three"]
    message = reply[0]["error"]["message"]
    assert message.startswith("batch refused: tools/call 'drop_table' is not permitted")
    assert "1 more element(s) refused" in message
    assert await mcp_stateless.requests() == []
    # every element allowed: the batch goes through as sent
    ok = [call("add", {"a": 1, "b": 2}, id_=1), call("echo_headers", id_=2)]
    await post(proxy.url(PATH), ok, bearer(carol))
    assert tool_calls(await mcp_stateless.requests()) == ["add", "echo_headers"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","name":"drop_table"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list","params":{"name":"drop_table"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["drop_table"]}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call"}',
        b"not json at all",
        b"[]",
    ],
)
async def test_bodies_that_could_be_read_two_ways_are_refused(
    raw: bytes, oauth: OAuthServer, mcp_stateless: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    import aiohttp

    proxy = await start(proxy_factory, mcp_stateless.url, oauth)
    carol = await token(oauth, "carol")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            proxy.url(PATH),
            data=raw,
            headers={**bearer(carol), "Content-Type": "application/json", "Accept": "application/json"},
        ) as resp,
    ):
        assert resp.status == 400
        body = json.loads(await resp.text())
        assert body["error"]["code"] in (-32700, -32600, -32602)
    assert await mcp_stateless.requests() == []


async def test_resources_and_prompts_by_name(
    oauth: OAuthServer, mcp_stateless: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    policy = {
        "default": "deny",
        "rules": [
            {"resources": ["file:///public/*"]},
            {"prompts": ["summar[iy]*"]},
            {"tools": ["add"]},
        ],
    }
    proxy = await start(proxy_factory, mcp_stateless.url, oauth, policy=policy)
    carol = bearer(await token(oauth, "carol"))

    def read(uri: str) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": 3, "method": "resources/read", "params": {"uri": uri}}

    def prompt(name: str) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": 4, "method": "prompts/get", "params": {"name": name}}

    for denied in (read("file:///etc/passwd"), prompt("exfiltrate"), call("echo_headers")):
        status, _, body = await post(proxy.url(PATH), denied, carol)
        assert status == 403, denied
        assert "is not permitted on this route" in body["error"]["message"]
    assert await mcp_stateless.requests() == []
    for allowed in (read("file:///public/readme"), prompt("summarize"), call("add", {"a": 1, "b": 1})):
        status, _, _ = await post(proxy.url(PATH), allowed, carol)
        assert status != 403
    assert len(await mcp_stateless.requests()) == 3


async def test_default_deny_allowlist_filters_json_lists(
    oauth: OAuthServer, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    policy = {"default": "deny", "rules": [{"tools": ["add", "echo_*"]}]}
    proxy = await start(proxy_factory, mcp_json.url, oauth, policy=policy)
    async with mcp_connect(proxy.url(PATH), headers=bearer(await token(oauth, "bob"))) as conn:
        assert {t.name for t in (await conn.session.list_tools()).tools} == {"add", "echo_headers"}
        with pytest.raises(MCPError):
            await conn.session.call_tool("get_orchestrator_instances", {"session_id": "s"})


async def test_policy_without_verify_deny_rules(
    mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    spec = {
        "routes": [
            {
                "name": "p",
                "path": PATH,
                "upstream": mcp_json.url,
                "policy": {"rules": [{"tools": ["drop_table", "delete_*"], "deny": True}]},
            }
        ]
    }
    proxy = await proxy_factory(spec)
    async with mcp_connect(proxy.url(PATH)) as conn:
        names = {t.name for t in (await conn.session.list_tools()).tools}
        assert ADMIN_ONLY.isdisjoint(names) and "add" in names
        with pytest.raises(MCPError):
            await conn.session.call_tool("drop_table", {"table": "t"})
    assert "drop_table" not in tool_calls(await mcp_json.requests())


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_bodies_only_in_posts(
    method: str, oauth: OAuthServer, mcp_stateless: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    import aiohttp

    proxy = await start(proxy_factory, mcp_stateless.url, oauth)
    alice = await token(oauth, "alice", "mcp admin")
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, proxy.url(PATH), json=call("drop_table", {"table": "t"}), headers=bearer(alice)
        ) as resp,
    ):
        assert resp.status == 405 and resp.headers["Allow"] == "GET, POST, DELETE"
    assert await mcp_stateless.requests() == []


async def test_streams_stay_unbuffered_on_policy_routes(
    oauth: OAuthServer, mcp_sse: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    """The gated tool sends a progress event, then waits until we saw it through the proxy."""
    import asyncio

    from tests.support.mcp_servers import call_tool_collect

    proxy = await start(proxy_factory, mcp_sse.url, oauth)
    async with mcp_connect(proxy.url(PATH), headers=bearer(await token(oauth, "carol"))) as conn:
        await conn.session.list_tools()  # a filtered answer first: the filter must not linger
        seen = asyncio.Event()

        async def release(_: object) -> None:
            seen.set()
            await mcp_sse.release("policy-gate")

        outcome = await call_tool_collect(
            conn.session, "gated", {"key": "policy-gate"}, on_progress=release, timeout=20
        )
        assert seen.is_set() and outcome.text == "released"
