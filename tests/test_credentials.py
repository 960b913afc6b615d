"""Per-request credentials: sources, upstream rules, fail-closed, and the smuggling catalogue.

Every test checks what really reached the MCP server (its request recorder), not what the proxy
meant to send.
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.support.mcp_servers import McpServerProcess, mcp_connect, tool_json
from tests.support.proxy import ProxyFactory, RunningProxy, SecretRegistry
from tests.support.verify import INIT

USER = "user-token-AAAA1111"
OTHER = "user-token-BBBB2222"
OPERATOR_KEY = "operator-key-CCCC3333"
CALLER_KEY = "caller-key-DDDD4444"
ALL_CALLER = (USER, OTHER, CALLER_KEY)



def routes(upstream: str) -> dict[str, Any]:
    return {
        "routes": [
            {
                "name": "fwd",
                "path": "/fwd/mcp",
                "upstream": upstream,
                "auth": {
                    "subject": [
                        "authorization",
                        {"header": "X-User-Token"},
                        "provider_data",
                        {"mcp_meta": "api_key"},
                    ],
                    "upstream": {"type": "forward", "header": "Authorization", "format": "Bearer {token}"},
                },
            },
            {
                "name": "static",
                "path": "/static/mcp",
                "upstream": upstream,
                "auth": {
                    "upstream": {
                        "type": "static",
                        "header": "X-Api-Key",
                        "secret": "${env.TEST_OPERATOR_KEY}",
                    }
                },
            },
            {
                "name": "tokenkey",
                "path": "/tokenkey/mcp",
                "upstream": upstream,
                "auth": {
                    "subject": [{"header": "X-Auth", "prefix": "Token "}, "mcp_headers"],
                    "upstream": {"type": "forward", "header": "PRIVATE-TOKEN"},
                },
            },
        ]
    }


@pytest.fixture
async def proxy(
    mcp_json: McpServerProcess, proxy_factory: ProxyFactory, secrets_registry: SecretRegistry
) -> RunningProxy:
    secrets_registry.add(USER, OTHER, OPERATOR_KEY, CALLER_KEY)
    return await proxy_factory(routes(mcp_json.url), env={"TEST_OPERATOR_KEY": OPERATOR_KEY})


async def send(
    proxy: RunningProxy, path: str, headers: list[tuple[str, str]], body: dict[str, Any] | None = None
) -> tuple[int, CIMultiDict[str], dict[str, Any]]:
    """A POST written byte for byte (client libraries merge repeated or differently-cased headers)."""
    port = int(proxy.base.rsplit(":", 1)[1])
    payload = json.dumps(body or INIT).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Accept: application/json, text/event-stream",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
    return await asyncio.to_thread(_exchange, port, request)


def _exchange(port: int, request: bytes) -> tuple[int, CIMultiDict[str], dict[str, Any]]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
        return response.status, CIMultiDict(response.getheaders()), json.loads(data)


def provider_data(url: str, headers: dict[str, str]) -> str:
    return json.dumps({"mcp_headers": {url: headers}})


def received_credentials(record: dict[str, Any]) -> str:
    """Every header value and the body the upstream saw, as one string to search for tokens."""
    return json.dumps(record["headers"]) + record.get("body", "")


# --- sources ----------------------------------------------------------------------------------


async def test_forward_from_authorization(proxy: RunningProxy, mcp_json: McpServerProcess) -> None:
    status, _, _ = await send(proxy, "/fwd/mcp", [("Authorization", f"Bearer {USER}")])
    assert status == 200
    [record] = await mcp_json.requests()
    assert record["headers"]["authorization"] == [f"Bearer {USER}"]


async def test_doubled_bearer_prefix_from_ogx(proxy: RunningProxy, mcp_json: McpServerProcess) -> None:
    status, _, _ = await send(proxy, "/fwd/mcp", [("Authorization", f"Bearer Bearer {USER}")])
    assert status == 200
    [record] = await mcp_json.requests()
    assert record["headers"]["authorization"] == [f"Bearer {USER}"]


@pytest.mark.parametrize(
    "header", ["X-LlamaStack-Provider-Data", "X-OGX-Provider-Data", "x-ogx-provider-data"]
)
async def test_provider_data_for_this_route(
    header: str, proxy: RunningProxy, mcp_json: McpServerProcess
) -> None:
    host = proxy.base.split("//")[1]
    data = provider_data(f"https://{host}/fwd/mcp?x=1", {"authorization": f"Bearer {USER}"})
    status, _, _ = await send(proxy, "/fwd/mcp", [(header, data)])
    assert status == 200
    [record] = await mcp_json.requests()
    assert record["headers"]["authorization"] == [f"Bearer {USER}"]
    assert (
        "x-llamastack-provider-data" not in record["headers"]
        and "x-ogx-provider-data" not in record["headers"]
    )


async def test_provider_data_for_another_endpoint_is_not_used(
    proxy: RunningProxy, mcp_json: McpServerProcess
) -> None:
    host = proxy.base.split("//")[1]
    for key in (f"http://{host}/other/mcp", "http://other-host:1/fwd/mcp", f"http://{host}/fwd"):
        status, _, _ = await send(
            proxy,
            "/fwd/mcp",
            [("X-LlamaStack-Provider-Data", provider_data(key, {"Authorization": f"Bearer {USER}"}))],
        )
        assert status == 401, key
    assert await mcp_json.requests() == []


async def test_public_url_selects_provider_data_key(
    mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    spec = routes(mcp_json.url)
    spec["routes"][0]["public_url"] = "http://mcpproxy.tools.svc:8081/fwd/mcp"
    proxy = await proxy_factory(spec, env={"TEST_OPERATOR_KEY": OPERATOR_KEY})
    data = provider_data("http://mcpproxy.tools.svc:8081/fwd/mcp", {"Authorization": f"Bearer {USER}"})
    status, _, _ = await send(proxy, "/fwd/mcp", [("X-LlamaStack-Provider-Data", data)])
    assert status == 200


async def test_lightspeed_mcp_headers_and_header_prefix(
    proxy: RunningProxy, mcp_json: McpServerProcess
) -> None:
    status, _, _ = await send(
        proxy,
        "/tokenkey/mcp",
        [("MCP-HEADERS", json.dumps({"tokenkey": {"Authorization": f"Bearer {USER}"}}))],
    )
    assert status == 200
    status, _, _ = await send(proxy, "/tokenkey/mcp", [("X-Auth", f"Token {OTHER}")])
    assert status == 200
    first, second = await mcp_json.requests()
    assert first["headers"]["private-token"] == [USER]
    assert second["headers"]["private-token"] == [OTHER]
    assert "x-auth" not in second["headers"] and "mcp-headers" not in first["headers"]


async def test_mcp_meta_credential_is_used_and_removed(
    proxy: RunningProxy, mcp_json: McpServerProcess
) -> None:
    body = copy.deepcopy(INIT)
    body["params"]["_meta"] = {"api_key": USER, "progressToken": 7}
    status, _, _ = await send(proxy, "/fwd/mcp", [], body)
    assert status == 200
    [record] = await mcp_json.requests()
    assert record["headers"]["authorization"] == [f"Bearer {USER}"]
    forwarded = json.loads(record["body"])
    assert forwarded["params"]["_meta"] == {"progressToken": 7}


async def test_static_key_replaces_whatever_the_caller_sent(
    proxy: RunningProxy, mcp_json: McpServerProcess
) -> None:
    status, _, _ = await send(
        proxy,
        "/static/mcp",
        [
            ("X-Api-Key", CALLER_KEY),
            ("Authorization", f"Bearer {USER}"),
            ("x-mcp-static-authorization", USER),
        ],
    )
    assert status == 200
    [record] = await mcp_json.requests()
    assert record["headers"]["x-api-key"] == [OPERATOR_KEY]
    assert not any(token in received_credentials(record) for token in ALL_CALLER)


async def test_sdk_client_sees_injected_credentials(proxy: RunningProxy) -> None:
    """The upstream tool echoes the headers of the request that carried the call."""
    async with mcp_connect(
        proxy.url("/fwd/mcp"), headers={"Authorization": f"Bearer {USER}", "Cookie": f"s={OTHER}"}
    ) as conn:
        seen = tool_json(await conn.session.call_tool("echo_headers", {}))
    assert seen["authorization"] == [f"Bearer {USER}"]
    assert "cookie" not in seen
    async with mcp_connect(proxy.url("/static/mcp"), headers={"X-Api-Key": CALLER_KEY}) as conn:
        seen = tool_json(await conn.session.call_tool("echo_headers", {}))
    assert seen["x-api-key"] == [OPERATOR_KEY]


# --- fail closed ------------------------------------------------------------------------------


async def test_missing_credential_is_401_and_nothing_sent(
    proxy: RunningProxy, mcp_json: McpServerProcess
) -> None:
    status, headers, payload = await send(proxy, "/fwd/mcp", [])
    assert status == 401
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="mcpproxy"') and 'error="invalid_request"' in challenge
    assert payload["jsonrpc"] == "2.0" and payload["id"] == 1 and payload["error"]["message"]
    assert await mcp_json.requests() == []


async def test_missing_credential_on_get_and_delete(proxy: RunningProxy, mcp_json: McpServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        for method in ("GET", "DELETE"):
            async with http.request(method, proxy.url("/fwd/mcp")) as resp:
                assert resp.status == 401
                assert "WWW-Authenticate" in resp.headers
    assert await mcp_json.requests() == []


# --- the smuggling catalogue ------------------------------------------------------------------


@dataclass
class Case:
    name: str
    path: str
    headers: list[tuple[str, str]]
    status: int
    expect: dict[str, list[str]] = field(default_factory=dict)  # headers the upstream must see exactly
    body: dict[str, Any] | None = None


def _pd(path: str, headers: dict[str, str]) -> str:
    return provider_data(f"http://HOST{path}", headers)


def _meta_body(key: str) -> dict[str, Any]:
    body = copy.deepcopy(INIT)
    body["params"]["_meta"] = {"api_key": key}
    return body


CATALOGUE = [
    Case(
        "bearer",
        "/fwd/mcp",
        [("Authorization", f"Bearer {USER}")],
        200,
        {"authorization": [f"Bearer {USER}"]},
    ),
    Case(
        "bearer-bearer",
        "/fwd/mcp",
        [("Authorization", f"Bearer Bearer {USER}")],
        200,
        {"authorization": [f"Bearer {USER}"]},
    ),
    Case(
        "lowercase-name",
        "/fwd/mcp",
        [("authorization", f"bearer {USER}")],
        200,
        {"authorization": [f"Bearer {USER}"]},
    ),
    Case(
        "uppercase-name",
        "/fwd/mcp",
        [("AUTHORIZATION", f"BEARER {USER}")],
        200,
        {"authorization": [f"Bearer {USER}"]},
    ),
    Case(
        "two-authorization-same",
        "/fwd/mcp",
        [("Authorization", f"Bearer {USER}"), ("Authorization", f"Bearer {USER}")],
        400,
    ),
    Case(
        "two-authorization-differ",
        "/fwd/mcp",
        [("Authorization", f"Bearer {USER}"), ("authorization", f"Bearer {OTHER}")],
        400,
    ),
    Case("basic-scheme", "/fwd/mcp", [("Authorization", "Basic dXNlcjpwYXNz")], 400),
    Case("empty-bearer", "/fwd/mcp", [("Authorization", "Bearer ")], 400),
    Case("token-with-space", "/fwd/mcp", [("Authorization", f"Bearer {USER} {OTHER}")], 400),
    Case(
        "header-vs-authorization-differ",
        "/fwd/mcp",
        [("Authorization", f"Bearer {USER}"), ("X-User-Token", OTHER)],
        400,
    ),
    Case(
        "header-vs-authorization-same",
        "/fwd/mcp",
        [("Authorization", f"Bearer {USER}"), ("X-User-Token", USER)],
        200,
        {"authorization": [f"Bearer {USER}"]},
    ),
    Case(
        "provider-data-vs-header-differ",
        "/fwd/mcp",
        [
            ("Authorization", f"Bearer {USER}"),
            ("X-LlamaStack-Provider-Data", _pd("/fwd/mcp", {"Authorization": f"Bearer {OTHER}"})),
        ],
        400,
    ),
    Case(
        "provider-data-both-names-differ",
        "/fwd/mcp",
        [
            ("X-LlamaStack-Provider-Data", _pd("/fwd/mcp", {"Authorization": f"Bearer {USER}"})),
            ("X-OGX-Provider-Data", _pd("/fwd/mcp", {"Authorization": f"Bearer {OTHER}"})),
        ],
        400,
    ),
    Case(
        "provider-data-malformed",
        "/fwd/mcp",
        [("Authorization", f"Bearer {USER}"), ("X-LlamaStack-Provider-Data", '{"mcp_headers": ')],
        400,
    ),
    Case("provider-data-not-object", "/fwd/mcp", [("X-LlamaStack-Provider-Data", '["Bearer x"]')], 400),
    Case(
        "provider-data-duplicate-key-case",
        "/fwd/mcp",
        [
            (
                "X-LlamaStack-Provider-Data",
                _pd("/fwd/mcp", {"Authorization": f"Bearer {USER}", "authorization": f"Bearer {OTHER}"}),
            )
        ],
        400,
    ),
    Case(
        "meta-vs-header-differ",
        "/fwd/mcp",
        [("Authorization", f"Bearer {USER}")],
        400,
        body=_meta_body(OTHER),
    ),
    Case(
        "meta-and-header-same",
        "/fwd/mcp",
        [("Authorization", f"Bearer {USER}")],
        200,
        {"authorization": [f"Bearer {USER}"]},
        body=_meta_body(USER),
    ),
    Case(
        "cookie-token-stripped",
        "/fwd/mcp",
        [("Authorization", f"Bearer {USER}"), ("Cookie", f"token={OTHER}")],
        200,
        {"authorization": [f"Bearer {USER}"]},
    ),
    Case(
        "proxy-authorization-stripped",
        "/fwd/mcp",
        [("Authorization", f"Bearer {USER}"), ("Proxy-Authorization", f"Bearer {OTHER}")],
        200,
        {"authorization": [f"Bearer {USER}"]},
    ),
    Case(
        "x-forwarded-authorization-stripped",
        "/fwd/mcp",
        [("Authorization", f"Bearer {USER}"), ("X-Forwarded-Authorization", f"Bearer {OTHER}")],
        200,
        {"authorization": [f"Bearer {USER}"]},
    ),
    Case("over-long-credential", "/fwd/mcp", [("Authorization", "Bearer " + "a" * 9000)], 400),
    Case("no-credential", "/fwd/mcp", [("Cookie", f"token={USER}")], 401),
    Case(
        "static-caller-api-key",
        "/static/mcp",
        [("X-Api-Key", CALLER_KEY)],
        200,
        {"x-api-key": [OPERATOR_KEY]},
    ),
    Case(
        "static-caller-api-key-lowercase",
        "/static/mcp",
        [("x-api-key", CALLER_KEY)],
        200,
        {"x-api-key": [OPERATOR_KEY]},
    ),
    Case(
        "static-duplicate-api-key",
        "/static/mcp",
        [("X-Api-Key", CALLER_KEY), ("X-API-KEY", OPERATOR_KEY)],
        400,
    ),
    Case(
        "static-connection-names-api-key",
        "/static/mcp",
        [("Connection", "X-Api-Key"), ("X-Api-Key", CALLER_KEY)],
        200,
        {"x-api-key": [OPERATOR_KEY]},
    ),
    Case(
        "static-authorization-not-forwarded",
        "/static/mcp",
        [("Authorization", f"Bearer {USER}")],
        200,
        {"x-api-key": [OPERATOR_KEY]},
    ),
    Case(
        "static-mcp-headers-ignored",
        "/static/mcp",
        [("MCP-HEADERS", json.dumps({"static": {"X-Api-Key": CALLER_KEY}}))],
        200,
        {"x-api-key": [OPERATOR_KEY]},
    ),
    Case(
        "static-provider-data-ignored",
        "/static/mcp",
        [("X-LlamaStack-Provider-Data", _pd("/static/mcp", {"X-Api-Key": CALLER_KEY}))],
        200,
        {"x-api-key": [OPERATOR_KEY]},
    ),
    Case(
        "static-litellm-style-override",
        "/static/mcp",
        [("x-mcp-static-authorization", f"Bearer {USER}"), ("x-mcp-static-x-api-key", CALLER_KEY)],
        200,
        {"x-api-key": [OPERATOR_KEY]},
    ),
    Case("tokenkey-wrong-prefix", "/tokenkey/mcp", [("X-Auth", f"Bearer {USER}")], 400),
    Case(
        "tokenkey-caller-private-token",
        "/tokenkey/mcp",
        [("X-Auth", f"Token {USER}"), ("PRIVATE-TOKEN", OTHER)],
        200,
        {"private-token": [USER]},
    ),
    Case(
        "tokenkey-mcp-headers-differs",
        "/tokenkey/mcp",
        [
            ("X-Auth", f"Token {USER}"),
            ("MCP-HEADERS", json.dumps({"tokenkey": {"Authorization": f"Bearer {OTHER}"}})),
        ],
        400,
    ),
]


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.name for c in CATALOGUE])
async def test_smuggling_catalogue(case: Case, proxy: RunningProxy, mcp_json: McpServerProcess) -> None:
    host = proxy.base.split("//")[1]
    headers = [(n, v.replace("http://HOST", f"http://{host}")) for n, v in case.headers]
    status, response_headers, payload = await send(proxy, case.path, headers, case.body)
    assert status == case.status, payload
    records = await mcp_json.requests()
    if status != 200:
        assert records == [], "a refused request must not reach the upstream"
        assert payload["jsonrpc"] == "2.0" and "error" in payload
        if status == 401:
            assert response_headers["WWW-Authenticate"].startswith("Bearer ")
        return
    [record] = records
    for name, values in case.expect.items():
        assert record["headers"].get(name) == values, name
    expected_values = {v for values in case.expect.values() for v in values}
    seen = received_credentials(record)
    for token in ALL_CALLER:
        if not any(token in v for v in expected_values):
            assert token not in seen, f"caller credential {token[:10]}… reached the upstream"


async def test_catalogue_is_large_enough() -> None:
    assert len(CATALOGUE) >= 25


async def test_credentials_absent_from_errors_and_logs(proxy: RunningProxy) -> None:
    from tests.support.proxy import LOG_DIR

    for headers in (
        [("Authorization", f"Bearer {USER}"), ("X-User-Token", OTHER)],
        [("Authorization", f"Basic {USER}")],
        [("X-LlamaStack-Provider-Data", '{"mcp_headers": {"' + USER)],
    ):
        status, response_headers, payload = await send(proxy, "/fwd/mcp", headers)
        assert status == 400
        text = json.dumps(payload) + json.dumps(dict(response_headers))
        assert USER not in text and OTHER not in text
    log_text = Path(LOG_DIR / "in-process.log").read_text()
    assert USER not in log_text and OTHER not in log_text
