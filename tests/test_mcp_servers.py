"""The test MCP servers (tests/servers/mcp_app.py) against the official SDK clients, no proxy.

These tests pin down the wire behaviour of ``mcp`` 2.3 that mcpproxy sits in the middle of.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any, Final

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.servers.mcp_app import ORCHESTRATOR_INSTANCES
from tests.support.mcp_servers import (
    LocalJwtIssuer,
    McpServerFactory,
    McpServerProcess,
    ProgressEvent,
    call_tool_collect,
    mcp_connect,
    rpc_method,
    tool_json,
    tool_text,
)

HANDSHAKE = "2025-11-25"
MODERN: Final = "2026-07-28"
ACCEPT_BOTH = "application/json, text/event-stream"
TOOLS = {
    "echo_headers",
    "whoami",
    "get_orchestrator_instances",
    "progress",
    "gated",
    "resumable",
    "big",
    "add",
    "delete_records",
    "drop_table",
}


@pytest.fixture(params=["json", "sse", "stateless", "legacy"])
def any_server(request: pytest.FixtureRequest) -> McpServerProcess:
    server: McpServerProcess = request.getfixturevalue(f"mcp_{request.param}")
    return server


@pytest.fixture(params=["sse", "stateless", "legacy"])
def streaming_server(request: pytest.FixtureRequest) -> McpServerProcess:
    """Servers whose POST answers can carry notifications before the result."""
    server: McpServerProcess = request.getfixturevalue(f"mcp_{request.param}")
    return server


def initialize_body(request_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": HANDSHAKE,
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }


def modern_call(name: str, arguments: dict[str, Any], request_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {
            "name": name,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }


def modern_headers(name: str) -> dict[str, str]:
    return {
        "accept": ACCEPT_BOTH,
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": name,
    }


# --------------------------------------------------------------------------------------------
# Basics: every mode initializes, lists and calls through the SDK clients
# --------------------------------------------------------------------------------------------


async def test_initialize_list_call(any_server: McpServerProcess) -> None:
    async with mcp_connect(any_server.url, transport=any_server.transport) as conn:
        assert conn.protocol_version == HANDSHAKE
        listed = await conn.session.list_tools()
        assert {tool.name for tool in listed.tools} == TOOLS
        assert tool_text(await conn.session.call_tool("add", {"a": 2, "b": 40})) == "42"
        seed = await conn.session.call_tool("get_orchestrator_instances", {"session_id": "s1"})
        assert tool_json(seed) == ORCHESTRATOR_INSTANCES
        assert tool_json(await conn.session.call_tool("whoami")) is None
        deleted = await conn.session.call_tool("delete_records", {"table": "users"})
        assert "users" in tool_text(deleted)
        assert not deleted.is_error


async def test_health(any_server: McpServerProcess) -> None:
    health = await any_server.health()
    assert health["ok"] is True
    assert health["mode"] == any_server.mode


@pytest.mark.parametrize("mode", ["json", "sse", "stateless"])
async def test_sdk_client_auto_mode_speaks_2026_to_every_streamable_server(
    mode: str, request: pytest.FixtureRequest
) -> None:
    """The SDK ``Client`` default (mode="auto") probes server/discover and adopts 2026-07-28,
    even on a stateful server: the SDK routes by MCP-Protocol-Version header, so no session."""
    server: McpServerProcess = request.getfixturevalue(f"mcp_{mode}")
    async with mcp_connect(server.url, protocol="auto") as conn:
        assert conn.protocol_version == MODERN
        await conn.session.list_tools()
        assert tool_text(await conn.session.call_tool("add", {"a": 1, "b": 2})) == "3"
    records = await server.requests()
    assert [rpc_method(r) for r in records] == ["server/discover", "tools/list", "tools/call"]
    for record in records:
        assert record["method"] == "POST"
        assert record["headers"]["mcp-protocol-version"] == [MODERN]
        assert "mcp-session-id" not in record["headers"]
    assert records[0]["headers"]["mcp-method"] == ["server/discover"]
    assert "mcp-name" not in records[0]["headers"]
    assert records[2]["headers"]["mcp-method"] == ["tools/call"]
    assert records[2]["headers"]["mcp-name"] == ["add"]


async def test_handshake_wire_json(mcp_json: McpServerProcess) -> None:
    """What an initialize-handshake SDK client (like OGX's) sends, request by request."""
    async with mcp_connect(mcp_json.url, headers={"X-Trace": "t1"}) as conn:
        await conn.session.call_tool("add", {"a": 1, "b": 1})
    await asyncio.sleep(0.2)  # the GET stream's record is complete once it is cut
    records = await mcp_json.requests()
    seen = [(r["method"], rpc_method(r), r["status"]) for r in records]
    assert seen[:2] == [("POST", "initialize", 200), ("POST", "notifications/initialized", 202)]
    assert ("GET", None, 200) in seen
    assert ("POST", "tools/call", 200) in seen
    assert seen[-1] == ("DELETE", None, 200)
    init, *rest = records
    assert init["headers"]["accept"] == [ACCEPT_BOTH]
    assert init["headers"]["content-type"] == ["application/json"]
    assert "mcp-protocol-version" not in init["headers"]
    assert "mcp-session-id" not in init["headers"]
    session_ids = {tuple(r["headers"]["mcp-session-id"]) for r in rest}
    assert len(session_ids) == 1
    for record in rest:
        assert record["headers"]["mcp-protocol-version"] == [HANDSHAKE]
        assert record["headers"]["x-trace"] == ["t1"]
        assert "mcp-method" not in record["headers"]
        assert "last-event-id" not in record["headers"]


# --------------------------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------------------------


async def test_echo_headers_sees_custom_header(any_server: McpServerProcess) -> None:
    async with mcp_connect(
        any_server.url, transport=any_server.transport, headers={"X-Custom-Header": "v1"}
    ) as conn:
        headers = tool_json(await conn.session.call_tool("echo_headers"))
    assert headers["x-custom-header"] == ["v1"]
    assert headers["host"] == [any_server.host_header]
    assert all(name == name.lower() for name in headers)


async def test_echo_headers_keeps_duplicates(mcp_stateless: McpServerProcess) -> None:
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            mcp_stateless.url,
            json=modern_call("echo_headers", {}),
            headers=[*modern_headers("echo_headers").items(), ("x-dup", "a"), ("x-dup", "b")],
        )
    assert response.status_code == 200
    result = response.json()["result"]
    headers = json.loads(result["content"][0]["text"])
    assert headers["x-dup"] == ["a", "b"]
    recorded = (await mcp_stateless.requests())[-1]
    assert recorded["headers"]["x-dup"] == ["a", "b"]


async def test_requests_are_recorded_and_reset(mcp_json: McpServerProcess) -> None:
    async with mcp_connect(mcp_json.url, headers={"X-Api-Key": "k1"}) as conn:
        await conn.session.call_tool("add", {"a": 1, "b": 1})
    records = await mcp_json.requests()
    init = records[0]
    assert init["method"] == "POST"
    assert init["path"] == "/mcp"
    assert init["query"] == ""
    assert init["status"] == 200
    assert json.loads(init["body"])["method"] == "initialize"
    assert init["headers"]["x-api-key"] == ["k1"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", init["client"])
    assert (await mcp_json.requests(path="/nowhere")) == []
    await mcp_json.reset()
    assert await mcp_json.requests() == []


async def test_big_body_is_truncated_in_the_record(mcp_stateless: McpServerProcess) -> None:
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            mcp_stateless.url,
            json=modern_call("delete_records", {"table": "t" * 100_000}),
            headers=modern_headers("delete_records"),
        )
    assert response.status_code == 200
    record = (await mcp_stateless.requests())[-1]
    assert record["body_truncated"] is True
    assert len(record["body"]) == 64 * 1024


# --------------------------------------------------------------------------------------------
# Streaming: progress, gate, resumption
# --------------------------------------------------------------------------------------------


async def test_progress_notifications_arrive(streaming_server: McpServerProcess) -> None:
    async with mcp_connect(streaming_server.url, transport=streaming_server.transport) as conn:
        outcome = await call_tool_collect(conn.session, "progress", {"count": 3, "delay_ms": 10})
        assert outcome.text == "done 3"
        assert [(e.progress, e.total) for e in outcome.progress] == [(1, 3), (2, 3), (3, 3)]
        assert [e.message for e in outcome.progress] == ["step 1/3", "step 2/3", "step 3/3"]
        assert [log.data for log in conn.logs] == [f"progress step {i}/3" for i in (1, 2, 3)]


async def test_progress_notifications_arrive_at_2026(mcp_stateless: McpServerProcess) -> None:
    async with mcp_connect(mcp_stateless.url, protocol=MODERN) as conn:
        outcome = await call_tool_collect(conn.session, "progress", {"count": 2})
        assert len(outcome.progress) == 2
        assert len(conn.logs) == 2  # requested with _meta logLevel=debug


async def test_json_mode_drops_request_scoped_notifications(mcp_json: McpServerProcess) -> None:
    """A JSON answer has no room for notifications: mcp 2.x drops them (no GET-stream detour)."""
    async with mcp_connect(mcp_json.url) as conn:
        outcome = await call_tool_collect(conn.session, "progress", {"count": 3})
        assert outcome.text == "done 3"
        assert outcome.progress == []
        assert conn.logs == []


async def test_gated_first_event_arrives_before_release(
    streaming_server: McpServerProcess,
) -> None:
    key = f"gate-{uuid.uuid4().hex}"
    first = asyncio.Event()

    def seen(_event: ProgressEvent) -> None:
        first.set()

    async with mcp_connect(streaming_server.url, transport=streaming_server.transport) as conn:
        call = asyncio.create_task(call_tool_collect(conn.session, "gated", {"key": key}, on_progress=seen))
        await asyncio.wait_for(first.wait(), 10)
        await asyncio.sleep(0.1)
        assert not call.done()
        assert len(conn.logs) == 1
        await streaming_server.release(key)
        outcome = await asyncio.wait_for(call, 10)
    assert outcome.text == "released"
    assert len(outcome.progress) == 1


async def test_gated_in_json_mode(mcp_json: McpServerProcess) -> None:
    key = f"gate-{uuid.uuid4().hex}"
    async with mcp_connect(mcp_json.url) as conn:
        call = asyncio.create_task(call_tool_collect(conn.session, "gated", {"key": key}))
        await asyncio.sleep(0.3)
        assert not call.done()
        await mcp_json.release(key)
        assert (await asyncio.wait_for(call, 10)).text == "released"


async def test_gate_released_before_the_call_stays_open(mcp_sse: McpServerProcess) -> None:
    key = f"gate-{uuid.uuid4().hex}"
    await mcp_sse.release(key)
    async with mcp_connect(mcp_sse.url) as conn:
        assert (await call_tool_collect(conn.session, "gated", {"key": key})).text == "released"


async def test_gate_timeout_is_a_tool_error(mcp_server_factory: McpServerFactory) -> None:
    server = mcp_server_factory("sse", gate_timeout=0.3)
    async with mcp_connect(server.url) as conn:
        result = await conn.session.call_tool("gated", {"key": "never"})
    assert result.is_error
    assert "not released" in tool_text(result)


def assert_resumed_progress(progress: list[float]) -> None:
    """Events from before the cut and after the resumption arrive, in order, none twice.

    Under CPU load the SDK server can drop an event emitted while the client is reconnecting
    (its replay and its live-stream registration are not atomic), so a middle event may be
    missing; the first (before the cut) and the last (after the resumption) never are.
    """
    assert progress[0] == 1 and progress[-1] == 4, progress
    assert progress == sorted(set(progress)), progress


async def test_sse_resumption_with_last_event_id(mcp_sse: McpServerProcess) -> None:
    async with mcp_connect(mcp_sse.url) as conn:
        await mcp_sse.reset()
        outcome = await call_tool_collect(conn.session, "resumable", {"count": 4})
    assert outcome.text == "resumed 4"
    assert_resumed_progress([e.progress for e in outcome.progress])
    records = await mcp_sse.requests()
    resumed = [r for r in records if r["method"] == "GET" and "last-event-id" in r["headers"]]
    assert len(resumed) == 1
    assert resumed[0]["headers"]["mcp-session-id"]
    assert resumed[0]["headers"]["mcp-protocol-version"] == [HANDSHAKE]


async def test_sse_wire_has_priming_event_with_retry(mcp_sse: McpServerProcess) -> None:
    async with (
        httpx2.AsyncClient() as client,
        client.stream(
            "POST", mcp_sse.url, json=initialize_body(), headers={"accept": ACCEPT_BOTH}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["mcp-session-id"]
        raw = b""
        async for chunk in response.aiter_bytes():
            raw += chunk
            if b'"result"' in raw and raw.endswith(b"\r\n\r\n"):
                break
    events = raw.decode().split("\r\n\r\n")
    assert re.fullmatch(r"id: \d+\r\ndata: \r\nretry: 100", events[0])
    assert re.match(r"id: \d+\r\nevent: message\r\ndata: \{", events[1])


async def test_big_result(any_server: McpServerProcess) -> None:
    async with mcp_connect(any_server.url, transport=any_server.transport) as conn:
        result = await conn.session.call_tool("big", {"size": 500_000})
    assert len(tool_text(result)) == 500_000


# --------------------------------------------------------------------------------------------
# Stateless mode and the 2026-07-28 revision
# --------------------------------------------------------------------------------------------


async def test_stateless_has_no_session_and_no_get(mcp_stateless: McpServerProcess) -> None:
    async with mcp_connect(mcp_stateless.url) as conn:
        assert conn.protocol_version == HANDSHAKE
        await conn.session.call_tool("add", {"a": 1, "b": 1})
    records = await mcp_stateless.requests()
    assert all(r["method"] == "POST" for r in records)
    assert all("mcp-session-id" not in r["headers"] for r in records)


async def test_stateless_get_at_handshake_version_opens_a_stream(
    mcp_stateless: McpServerProcess,
) -> None:
    async with (
        httpx2.AsyncClient() as client,
        client.stream("GET", mcp_stateless.url, headers={"accept": "text/event-stream"}) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")


async def test_get_and_delete_at_2026_are_405(mcp_stateless: McpServerProcess) -> None:
    headers = {"accept": ACCEPT_BOTH, "mcp-protocol-version": MODERN}
    async with httpx2.AsyncClient() as client:
        get = await client.get(mcp_stateless.url, headers=headers)
        delete = await client.delete(mcp_stateless.url, headers=headers)
    for response in (get, delete):
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"


async def test_2026_header_must_match_body(mcp_stateless: McpServerProcess) -> None:
    async with httpx2.AsyncClient() as client:
        good = await client.post(
            mcp_stateless.url, json=modern_call("add", {"a": 1, "b": 2}), headers=modern_headers("add")
        )
        wrong_name = await client.post(
            mcp_stateless.url, json=modern_call("add", {"a": 1, "b": 2}), headers=modern_headers("big")
        )
        no_method = {k: v for k, v in modern_headers("add").items() if k != "mcp-method"}
        missing = await client.post(
            mcp_stateless.url, json=modern_call("add", {"a": 1, "b": 2}), headers=no_method
        )
    assert good.status_code == 200
    assert good.json()["result"]["content"][0]["text"] == "3"
    assert "mcp-session-id" not in good.headers
    for response in (wrong_name, missing):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == -32020  # HEADER_MISMATCH in mcp 2.3


async def test_2026_client_sends_method_and_name_headers(mcp_stateless: McpServerProcess) -> None:
    async with mcp_connect(mcp_stateless.url, protocol=MODERN) as conn:
        await conn.session.list_tools()
        await conn.session.call_tool("add", {"a": 1, "b": 1})
    records = await mcp_stateless.requests()
    assert [rpc_method(r) for r in records] == ["tools/list", "tools/call"]
    assert records[0]["headers"]["mcp-method"] == ["tools/list"]
    assert records[1]["headers"]["mcp-name"] == ["add"]
    body = json.loads(records[1]["body"])
    assert body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] == MODERN


# --------------------------------------------------------------------------------------------
# Legacy HTTP+SSE
# --------------------------------------------------------------------------------------------


async def test_legacy_endpoint_event_is_relative(mcp_legacy: McpServerProcess) -> None:
    async with (
        httpx2.AsyncClient() as client,
        client.stream("GET", mcp_legacy.url, headers={"accept": "text/event-stream"}) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = b""
        async for chunk in resp.aiter_bytes():
            raw += chunk
            if raw.endswith(b"\r\n\r\n"):
                break
    assert re.fullmatch(rb"event: endpoint\r\ndata: /messages/\?session_id=[0-9a-f]{32}\r\n\r\n", raw)


async def test_legacy_posts_go_to_the_endpoint(mcp_legacy: McpServerProcess) -> None:
    async with mcp_connect(mcp_legacy.url, transport="sse") as conn:
        await conn.session.call_tool("add", {"a": 1, "b": 1})
    records = await mcp_legacy.requests()
    assert records[0]["method"] == "GET"
    assert records[0]["path"] == "/sse"
    posts = [r for r in records if r["method"] == "POST"]
    assert {r["path"] for r in posts} == {"/messages/"}
    assert all(re.fullmatch(r"session_id=[0-9a-f]{32}", r["query"]) for r in posts)
    assert all(r["status"] == 202 for r in posts)
    assert [rpc_method(r) for r in posts][:2] == ["initialize", "notifications/initialized"]


# --------------------------------------------------------------------------------------------
# Host check, required headers, restart
# --------------------------------------------------------------------------------------------


async def test_host_check_off_by_default(mcp_json: McpServerProcess) -> None:
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            mcp_json.url,
            json=initialize_body(),
            headers={"accept": ACCEPT_BOTH, "host": "proxy.example:8443"},
        )
    assert response.status_code == 200


async def test_host_check_on(mcp_server_factory: McpServerFactory) -> None:
    server = mcp_server_factory("json", host_check=True)
    statuses = {}
    async with httpx2.AsyncClient() as client:
        for host in ("proxy.example:8443", "127.0.0.1", server.host_header, "localhost:1"):
            response = await client.post(
                server.url, json=initialize_body(), headers={"accept": ACCEPT_BOTH, "host": host}
            )
            statuses[host] = response.status_code
        foreign_origin = await client.post(
            server.url,
            json=initialize_body(),
            headers={"accept": ACCEPT_BOTH, "origin": "http://proxy.example"},
        )
    assert statuses == {
        "proxy.example:8443": 421,
        "127.0.0.1": 421,  # the allow-list is "127.0.0.1:*": a port is required
        server.host_header: 200,
        "localhost:1": 200,
    }
    assert foreign_origin.status_code == 403


async def test_required_header(mcp_server_factory: McpServerFactory) -> None:
    server = mcp_server_factory("sse", require_headers={"X-Api-Key": "k1"})
    async with httpx2.AsyncClient() as client:
        for headers in ({}, {"x-api-key": "wrong"}):
            response = await client.post(
                server.url, json=initialize_body(), headers={"accept": ACCEPT_BOTH, **headers}
            )
            assert response.status_code == 401
    async with mcp_connect(server.url, headers={"X-Api-Key": "k1"}) as conn:
        headers = tool_json(await conn.session.call_tool("echo_headers"))
    assert headers["x-api-key"] == ["k1"]
    assert [r["status"] for r in (await server.requests())[:2]] == [401, 401]


async def test_restart_on_the_same_port(mcp_server_factory: McpServerFactory) -> None:
    server = mcp_server_factory("json", fresh=True)
    port, pid = server.port, server.pid
    async with mcp_connect(server.url, terminate_on_close=False) as conn:
        await conn.session.call_tool("add", {"a": 1, "b": 1})
        session_id = (await server.requests())[-1]["headers"]["mcp-session-id"][0]
    server.restart()
    assert server.port == port
    assert server.pid != pid
    async with httpx2.AsyncClient() as client:
        stale = await client.post(
            server.url,
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            headers={
                "accept": ACCEPT_BOTH,
                "mcp-session-id": session_id,
                "mcp-protocol-version": HANDSHAKE,
            },
        )
    assert stale.status_code == 404
    async with mcp_connect(server.url) as conn:
        assert tool_text(await conn.session.call_tool("add", {"a": 2, "b": 2})) == "4"
    server.stop()


# --------------------------------------------------------------------------------------------
# JWT-protected servers (local RSA key + JWKS; the OAuth server is not needed here)
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=["json", "sse", "stateless", "legacy"])
def jwt_server(
    request: pytest.FixtureRequest,
    mcp_server_factory: McpServerFactory,
    local_jwt_issuer: LocalJwtIssuer,
) -> McpServerProcess:
    return mcp_server_factory(
        request.param,
        require_bearer_jwt=True,
        issuer=local_jwt_issuer.issuer,
        jwks_url=local_jwt_issuer.jwks_url,
        audience="tool-a",
    )


async def test_jwt_valid_token_and_whoami(
    jwt_server: McpServerProcess, local_jwt_issuer: LocalJwtIssuer
) -> None:
    token = local_jwt_issuer.token(
        sub="alice", aud=["tool-a"], tenant="t1", act={"sub": "mcpproxy"}, scope="tools.read"
    )
    async with mcp_connect(
        jwt_server.url, transport=jwt_server.transport, headers={"Authorization": f"Bearer {token}"}
    ) as conn:
        claims = tool_json(await conn.session.call_tool("whoami"))
    assert claims["sub"] == "alice"
    assert claims["aud"] == ["tool-a"]
    assert claims["tenant"] == "t1"
    assert claims["act"] == {"sub": "mcpproxy"}
    assert claims["scope"] == "tools.read"
    assert claims["client_id"] == "test-client"
    assert claims["iss"] == local_jwt_issuer.issuer
    assert isinstance(claims["exp"], int)


async def test_jwt_sdk_client_without_token_fails(
    jwt_server: McpServerProcess,
) -> None:
    expected: type[Exception] = httpx2.HTTPStatusError if jwt_server.mode == "legacy" else MCPError
    with pytest.raises(expected) as info:
        async with mcp_connect(jwt_server.url, transport=jwt_server.transport):
            pass
    if isinstance(info.value, MCPError):
        assert info.value.code == -32603
    records = await jwt_server.requests()
    assert [r["status"] for r in records] == [401]


@pytest.mark.parametrize(
    "case", ["missing", "wrong_audience", "expired", "unknown_key", "double_bearer", "garbage"]
)
async def test_jwt_rejections(
    case: str, jwt_server: McpServerProcess, local_jwt_issuer: LocalJwtIssuer
) -> None:
    tokens = {
        "missing": None,
        "wrong_audience": local_jwt_issuer.token(aud="tool-b"),
        "expired": local_jwt_issuer.token(lifetime=-60),
        "unknown_key": local_jwt_issuer.foreign_token(),
        "double_bearer": "Bearer " + local_jwt_issuer.token(),
        "garbage": "not-a-jwt",
    }
    headers = {"accept": ACCEPT_BOTH}
    if tokens[case] is not None:
        headers["authorization"] = f"Bearer {tokens[case]}"
    async with httpx2.AsyncClient() as client:
        if jwt_server.mode == "legacy":
            response = await client.get(jwt_server.url, headers=headers)
        else:
            response = await client.post(jwt_server.url, json=initialize_body(), headers=headers)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge
    path = "/sse" if jwt_server.mode == "legacy" else "/mcp"
    prm = f"{jwt_server.base}/.well-known/oauth-protected-resource{path}"
    assert f'resource_metadata="{prm}"' in challenge
    assert response.json()["error"] == "invalid_token"


async def test_jwt_protected_resource_metadata(
    mcp_server_factory: McpServerFactory, local_jwt_issuer: LocalJwtIssuer
) -> None:
    server = mcp_server_factory(
        "json",
        require_bearer_jwt=True,
        issuer=local_jwt_issuer.issuer,
        jwks_url=local_jwt_issuer.jwks_url,
        audience="tool-a",
    )
    async with httpx2.AsyncClient() as client:
        response = await client.get(f"{server.base}/.well-known/oauth-protected-resource/mcp")
    assert response.status_code == 200
    metadata = response.json()
    assert metadata["resource"] == server.url
    # mcp 2.3's metadata model writes a path-less issuer with a trailing slash.
    assert metadata["authorization_servers"] == [local_jwt_issuer.issuer + "/"]


async def test_jwt_session_is_bound_to_its_principal(
    mcp_server_factory: McpServerFactory, local_jwt_issuer: LocalJwtIssuer
) -> None:
    """A new token for the same (client_id, iss, sub) may continue a session; another
    principal's token gets 404, as if the session did not exist."""
    server = mcp_server_factory(
        "json",
        require_bearer_jwt=True,
        issuer=local_jwt_issuer.issuer,
        jwks_url=local_jwt_issuer.jwks_url,
        audience="tool-a",
    )

    async def list_tools(client: httpx2.AsyncClient, session_id: str, token: str) -> int:
        response = await client.post(
            server.url,
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            headers={
                "accept": ACCEPT_BOTH,
                "authorization": f"Bearer {token}",
                "mcp-session-id": session_id,
                "mcp-protocol-version": HANDSHAKE,
            },
        )
        return response.status_code

    async with httpx2.AsyncClient() as client:
        opened = await client.post(
            server.url,
            json=initialize_body(),
            headers={"accept": ACCEPT_BOTH, "authorization": f"Bearer {local_jwt_issuer.token()}"},
        )
        session_id = opened.headers["mcp-session-id"]
        refreshed = local_jwt_issuer.token(lifetime=600)
        assert await list_tools(client, session_id, refreshed) == 200
        assert await list_tools(client, session_id, local_jwt_issuer.token(sub="bob")) == 404
        other_client = local_jwt_issuer.token(client_id="other")
        assert await list_tools(client, session_id, other_client) == 404
