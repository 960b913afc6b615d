"""The e2e harness itself, without mcpproxy: OGX 1.5 and Llama Stack 0.6.1 against MCP servers
directly. These tests also pin down the wire behaviour recorded in tests/e2e/WIRE.md."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.wiretap import WireTap
from tests.support.fake_llm import FINAL_PREFIX, FakeLLM, directive
from tests.support.mcp_servers import McpServerProcess, rpc_method
from tests.support.ogx import (
    LlamaStackServer,
    OgxServer,
    OgxServerFactory,
    mcp_tool,
    tool_result_text,
)

pytestmark = pytest.mark.ogx

# One MCP session per Responses request: what OGX sends for a tool call (Streamable HTTP).
OGX_SESSION = [
    ("POST", "initialize"),
    ("POST", "notifications/initialized"),
    ("GET", None),
    ("POST", "tools/list"),
    ("POST", "tools/call"),
    ("DELETE", None),
]


def sequence(records: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(r["method"], rpc_method(r)) for r in records]


def header(record: dict[str, Any], name: str) -> list[str]:
    values: list[str] = record["headers"].get(name.lower(), [])
    return values


def echoed(call: dict[str, Any]) -> dict[str, list[str]]:
    """The headers ``echo_headers`` saw, from an ``mcp_call`` output item."""
    result: dict[str, list[str]] = json.loads(call["output"])
    return result


# -- OGX: POST /v1/responses with an MCP tool --------------------------------------------------


def test_ogx_authorization_reaches_mcp_server(ogx: OgxServer, mcp_json: McpServerProcess) -> None:
    tool = mcp_tool(mcp_json.url, authorization="tok", headers={"X-Extra": "v1"})
    resp = ogx.create_response(directive("echo_headers"), [tool])

    assert resp.status == 200, resp
    [call] = resp.mcp_calls
    assert call["name"] == "echo_headers" and call["error"] is None
    seen = echoed(call)
    assert seen["authorization"] == ["Bearer tok"]
    assert seen["x-extra"] == ["v1"]
    # The tool's answer went back through the model to the caller.
    assert resp.output_text.startswith(FINAL_PREFIX)
    assert "Bearer tok" in resp.output_text

    records = mcp_json.requests_sync()
    assert sequence(records) == OGX_SESSION
    for i, record in enumerate(records):
        assert header(record, "authorization") == ["Bearer tok"], record
        assert header(record, "x-extra") == ["v1"]
        assert header(record, "accept") == ["application/json, text/event-stream"]
        if i > 0:  # after initialize
            assert header(record, "mcp-protocol-version") == ["2025-11-25"]
            assert len(header(record, "mcp-session-id")) == 1
        assert not header(record, "mcp-method")
    assert header(records[0], "user-agent")[0].startswith("python-httpx2/")


def test_ogx_streaming_response(ogx: OgxServer, mcp_sse: McpServerProcess) -> None:
    tool = mcp_tool(mcp_sse.url, authorization="tok2")
    resp = ogx.create_response(directive("whoami"), [tool], stream=True)

    assert resp.status == 200, resp
    types = [e.get("type") for e in resp.events]
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    assert "response.mcp_call.completed" in types
    [call] = resp.mcp_calls
    assert call["name"] == "whoami" and call["error"] is None
    assert resp.output_text.startswith(FINAL_PREFIX)
    records = mcp_sse.requests_sync()
    assert sequence(records) == OGX_SESSION
    assert all(header(r, "authorization") == ["Bearer tok2"] for r in records)


def test_ogx_adds_bearer_prefix_unconditionally(ogx: OgxServer, mcp_json: McpServerProcess) -> None:
    resp = ogx.create_response(
        directive("echo_headers"), [mcp_tool(mcp_json.url, authorization="Bearer tok")]
    )
    assert resp.status == 200, resp
    assert echoed(resp.mcp_calls[0])["authorization"] == ["Bearer Bearer tok"]


def test_ogx_refuses_authorization_in_headers(ogx: OgxServer, mcp_json: McpServerProcess) -> None:
    tool = mcp_tool(mcp_json.url, headers={"authorization": "Bearer x"})
    resp = ogx.create_response(directive("echo_headers"), [tool])
    assert resp.status == 400, resp
    assert "must be passed via the 'authorization' parameter" in resp.http.text
    assert mcp_json.requests_sync() == []


def test_ogx_401_at_connect(ogx: OgxServer, mcp_server_factory: Callable[..., McpServerProcess]) -> None:
    protected = mcp_server_factory("json", require_headers={"Authorization": "Bearer good"})
    tool = mcp_tool(protected.url, authorization="bad")

    resp = ogx.create_response(directive("echo_headers"), [tool])
    assert resp.status == 401, resp
    assert "www-authenticate" not in {k.lower() for k in resp.http.headers}
    # Streamable HTTP POST, then the legacy-SSE GET on the same URL; both carried the token.
    records = protected.requests_sync()
    assert [(r["method"], r["status"]) for r in records] == [("POST", 401), ("GET", 401)]
    assert header(records[1], "accept") == ["text/event-stream"]  # the legacy SSE client
    assert all(header(r, "authorization") == ["Bearer bad"] for r in records)

    # Streamed, the same failure is HTTP 200 with an anonymous error event.
    protected.reset_sync()
    resp = ogx.create_response(directive("echo_headers"), [tool], stream=True)
    assert resp.status == 200
    errors = [e for e in resp.events if e.get("type") == "error"]
    assert errors and errors[0]["code"] == "server_error", resp.events

    ok = ogx.create_response(directive("echo_headers"), [mcp_tool(protected.url, authorization="good")])
    assert ok.status == 200 and ok.mcp_calls[0]["error"] is None, ok


def test_ogx_falls_back_to_legacy_sse(ogx: OgxServer, mcp_legacy: McpServerProcess) -> None:
    tool = mcp_tool(mcp_legacy.url, authorization="tok")
    resp = ogx.create_response(directive("echo_headers"), [tool])
    assert resp.status == 200, resp
    assert echoed(resp.mcp_calls[0])["authorization"] == ["Bearer tok"]
    records = mcp_legacy.requests_sync()
    methods = [(r["method"], r["path"], rpc_method(r)) for r in records]
    post_sse = [("POST", mcp_legacy.sse_path, None)]  # absent once OGX cached "SSE" for the URL
    rest = [
        ("GET", mcp_legacy.sse_path, None),
        ("POST", mcp_legacy.messages_path, "initialize"),
        ("POST", mcp_legacy.messages_path, "notifications/initialized"),
        ("POST", mcp_legacy.messages_path, "tools/list"),
        ("POST", mcp_legacy.messages_path, "tools/call"),
    ]
    assert methods in (post_sse + rest, rest), methods
    assert all(header(r, "authorization") == ["Bearer tok"] for r in records)


def test_ogx_wire_header_case_and_connections(
    ogx: OgxServer, mcp_json: McpServerProcess, wiretap: Callable[[str, int], WireTap]
) -> None:
    tap = wiretap("127.0.0.1", mcp_json.port)
    tool = mcp_tool(
        f"{tap.base}{mcp_json.path}",
        authorization="tok",
        headers={"X-Mixed-Case": "a", "x-lower": "b"},
    )
    resp = ogx.create_response(directive("echo_headers"), [tool])
    assert resp.status == 200, resp
    reqs = tap.requests()
    assert [r.method for r in reqs] == [m for m, _ in OGX_SESSION]
    init = reqs[0]
    # Names keep the case each layer wrote: httpx2's own, the caller's, the SDK's lower-case.
    assert init.names == [
        "Host",
        "Accept-Encoding",
        "Connection",
        "User-Agent",
        "X-Mixed-Case",
        "x-lower",
        "Authorization",
        "accept",
        "content-type",
        "Content-Length",
    ]
    assert "mcp-session-id" in reqs[1].names and "mcp-protocol-version" in reqs[1].names
    # JSON answers: the POSTs share connections, the GET stream has its own.
    conns = [r.conn for r in reqs]
    assert conns[2] not in (conns[0], conns[3]), conns
    assert len(set(conns)) <= 3, conns


def test_ogx_401_mid_session_is_a_tool_error(
    ogx: OgxServer, mcp_json: McpServerProcess, wiretap: Callable[[str, int], WireTap]
) -> None:
    """A token that stops working at tools/call (say, expired): HTTP 200, the model sees an error."""
    tap = wiretap("127.0.0.1", mcp_json.port)
    tap.fault = lambda r: 401 if b'"tools/call"' in r.body else None
    resp = ogx.create_response(
        directive("echo_headers"), [mcp_tool(tap.base + mcp_json.path, authorization="tok")]
    )
    assert resp.status == 200, resp
    [call] = resp.mcp_calls
    assert call["error"] == "Server returned an error response", call  # the 401 isn't named
    assert [r.faulted for r in tap.requests()].count(401) == 1  # no retry
    assert resp.output_text.startswith(FINAL_PREFIX)  # the model got the error as the tool result


def test_ogx_connector_id_first_session_has_no_token(
    ogx_server_factory: OgxServerFactory,
    fake_llm: FakeLLM,
    mcp_json: McpServerProcess,
    mcp_server_factory: Callable[..., McpServerProcess],
) -> None:
    protected = mcp_server_factory("json", require_headers={"Authorization": "Bearer good"})
    server = ogx_server_factory(
        connectors=[
            {"connector_id": "echo", "url": mcp_json.url},
            {"connector_id": "protected", "url": protected.url},
        ]
    )
    mcp_json.reset_sync()
    tool = mcp_tool(connector_id="echo", authorization="tok")
    resp = server.create_response(directive("echo_headers"), [tool])
    assert resp.status == 200, resp
    assert echoed(resp.mcp_calls[0])["authorization"] == ["Bearer tok"]
    records = mcp_json.requests_sync()
    seq = sequence(records)
    # A whole session (server info) without the token, then the tool session with it.
    first = [("POST", "initialize"), ("POST", "notifications/initialized"), ("GET", None)]
    assert seq[:3] == first, seq
    delete = seq.index(("DELETE", None))
    assert all(not header(r, "authorization") for r in records[: delete + 1]), seq
    assert seq[delete + 1 :] == OGX_SESSION, seq
    assert all(header(r, "authorization") == ["Bearer tok"] for r in records[delete + 1 :])

    # So a server that wants a token can't be reached by connector_id, token or not: the
    # tokenless first session gets the 401 and the request fails with it.
    protected.reset_sync()
    refused = server.create_response(
        directive("echo_headers"), [mcp_tool(connector_id="protected", authorization="good")]
    )
    assert refused.status == 401, refused
    records = protected.requests_sync()
    assert [(r["method"], r["status"]) for r in records] == [("POST", 401), ("GET", 401)]
    assert all(not header(r, "authorization") for r in records)


# -- Llama Stack 0.6.1: /v1/tool-runtime/invoke ------------------------------------------------

# mcp 1.x's ClientSession lists the tools *after* a call, to validate its structured output.
LS_INVOKE_SESSION = [
    ("POST", "initialize"),
    ("POST", "notifications/initialized"),
    ("GET", None),
    ("POST", "tools/call"),
    ("POST", "tools/list"),
    ("DELETE", None),
]


@pytest.fixture
def ls_echo(llamastack_server: LlamaStackServer, mcp_json: McpServerProcess) -> LlamaStackServer:
    """The session server with a fresh toolgroup on mcp_json whose tools are indexed."""
    tid = llamastack_server.register_toolgroup(mcp_json.url)
    listed = llamastack_server.list_tools(tid)
    assert listed.status == 200, listed
    assert "echo_headers" in {t["name"] for t in listed.json()["data"]}
    mcp_json.reset_sync()
    return llamastack_server


def test_llamastack_invoke_authorization(ls_echo: LlamaStackServer, mcp_json: McpServerProcess) -> None:
    result = ls_echo.invoke("echo_headers", authorization="tok")
    assert result.status == 200, result
    assert result.json()["error_message"] is None
    assert json.loads(tool_result_text(result))["authorization"] == ["Bearer tok"]
    records = mcp_json.requests_sync()
    assert sequence(records) == LS_INVOKE_SESSION
    assert all(header(r, "authorization") == ["Bearer tok"] for r in records)
    assert header(records[0], "user-agent")[0].startswith("python-httpx/")

    doubled = ls_echo.invoke("echo_headers", authorization="Bearer tok")
    assert json.loads(tool_result_text(doubled))["authorization"] == ["Bearer Bearer tok"]


def test_llamastack_tool_list_is_cached_per_group(
    llamastack_server: LlamaStackServer, mcp_json: McpServerProcess
) -> None:
    tid = llamastack_server.register_toolgroup(mcp_json.url)
    mcp_json.reset_sync()
    assert llamastack_server.list_tools(tid, authorization="a").status == 200
    records = mcp_json.requests_sync()
    assert sequence(records) == [
        ("POST", "initialize"),
        ("POST", "notifications/initialized"),
        ("GET", None),
        ("POST", "tools/list"),
        ("DELETE", None),
    ]
    assert all(header(r, "authorization") == ["Bearer a"] for r in records)
    mcp_json.reset_sync()
    # Another token, or the runtime route: no MCP traffic at all.
    assert llamastack_server.list_tools(tid, authorization="b").status == 200
    assert llamastack_server.list_runtime_tools(tid).status == 200
    assert mcp_json.requests_sync() == []


@pytest.mark.parametrize(
    ("key", "matches"),
    [
        ("{url}", True),
        ("https://{hostport}{path}", True),  # the scheme is ignored
        ("{url}?x=1", True),  # so is the query
        ("{url}/", False),  # a trailing slash is significant
        ("http://{hostport}/", False),  # no prefix match
    ],
)
def test_llamastack_provider_data_mcp_headers(
    ls_echo: LlamaStackServer, mcp_json: McpServerProcess, key: str, matches: bool
) -> None:
    uri = key.format(url=mcp_json.url, hostport=mcp_json.host_header, path=mcp_json.path)
    headers = LlamaStackServer.provider_data_headers({uri: {"X-Api-Key": "k1"}})
    result = ls_echo.invoke("echo_headers", headers=headers)
    assert result.status == 200, result
    seen = json.loads(tool_result_text(result))
    assert seen.get("x-api-key") == (["k1"] if matches else None)
    assert "authorization" not in seen
    records = mcp_json.requests_sync()
    assert all(header(r, "x-api-key") == (["k1"] if matches else []) for r in records)


def test_llamastack_provider_data_rules(ls_echo: LlamaStackServer, mcp_json: McpServerProcess) -> None:
    # Authorization inside mcp_headers is refused before any MCP traffic.
    refused = ls_echo.invoke(
        "echo_headers",
        headers=LlamaStackServer.provider_data_headers({mcp_json.url: {"Authorization": "Bearer x"}}),
    )
    assert refused.status == 400, refused
    assert "Authorization cannot be provided via mcp_headers" in refused.text
    assert mcp_json.requests_sync() == []

    # 0.6.1 only knows X-LlamaStack-Provider-Data; the newer X-OGX-Provider-Data is ignored.
    ogx_name = LlamaStackServer.provider_data_headers(
        {mcp_json.url: {"X-Api-Key": "k1"}}, header="X-OGX-Provider-Data"
    )
    result = ls_echo.invoke("echo_headers", headers=ogx_name)
    assert result.status == 200, result
    assert "x-api-key" not in json.loads(tool_result_text(result))

    # Both channels at once: the authorization parameter and a provider-data header.
    both = ls_echo.invoke(
        "echo_headers",
        authorization="tok",
        headers=LlamaStackServer.provider_data_headers({mcp_json.url: {"X-Api-Key": "k1"}}),
    )
    seen = json.loads(tool_result_text(both))
    assert seen["authorization"] == ["Bearer tok"] and seen["x-api-key"] == ["k1"]


def test_llamastack_401(
    llamastack_server: LlamaStackServer, mcp_server_factory: Callable[..., McpServerProcess]
) -> None:
    protected = mcp_server_factory("json", require_headers={"Authorization": "Bearer good"})
    tid = llamastack_server.register_toolgroup(protected.url)
    # Indexing without a token is refused with the MCP server's 401.
    assert llamastack_server.list_tools(tid).status == 401
    assert llamastack_server.list_tools(tid, authorization="good").status == 200
    protected.reset_sync()

    bad = llamastack_server.invoke("echo_headers", authorization="bad")
    assert bad.status == 401, bad
    # Unlike OGX 1.5, no legacy-SSE retry: the 401 of the first POST ends it.
    assert [(r["method"], r["status"]) for r in protected.requests_sync()] == [("POST", 401)]
    good = llamastack_server.invoke("echo_headers", authorization="good")
    assert good.status == 200 and good.json()["error_message"] is None, good


def test_llamastack_toolgroup_in_config(
    llamastack_server_factory: Callable[..., LlamaStackServer], mcp_json: McpServerProcess
) -> None:
    server = llamastack_server_factory(toolgroups={"mcp::echo": mcp_json.url})
    groups = server.list_tools("mcp::echo", authorization="tok")
    assert groups.status == 200, groups
    result = server.invoke("echo_headers", authorization="tok")
    assert json.loads(tool_result_text(result))["authorization"] == ["Bearer tok"]
