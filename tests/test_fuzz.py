"""Property-based hostile input (hypothesis): over 10,000 generated requests against the real proxy.

Properties, for every request: the proxy answers (no crash, no hang), never with a 500 of its
own, every error it generates is a JSON-RPC body, and no credential value the request carried
comes back in the response. The session's log scan (``leak_guard``) covers the logs.
The upstream is the canned-answer server of ``tests.support.faulty`` so that ten thousand
requests fit in CI's time; what is fuzzed is the proxy's own parsing.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpproxy.config import parse_config
from mcpproxy.web.app import build_app
from mcpproxy.web.protocol import ProxyRunner, runner_kwargs
from tests.support.faulty import FaultyUpstream
from tests.support.net import free_port
from tests.support.proxy import SECRETS

SECRET = "fuzz-secret-ZZZZ9999"


def fuzz_settings(examples: int) -> settings:
    return settings(SETTINGS_BASE, max_examples=examples)


SETTINGS_BASE = settings(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class ThreadedProxy:
    """The proxy and a canned upstream on their own event loop in a background thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.upstream = await FaultyUpstream().start()
        text = f"""
server: {{max_body_bytes: 65536, max_credential_bytes: 2048}}
routes:
  - name: f
    path: /f/mcp
    upstream: {self.upstream.base}/mcp
    timeouts: {{connect: 2, idle: 5}}
    auth:
      subject: [authorization, {{header: X-User-Token}}, provider_data, mcp_headers, {{mcp_meta: api_key}}]
      upstream: {{type: forward, header: X-Forwarded-Token}}
  - name: s
    path: /s/mcp
    upstream: {self.upstream.base}/mcp
    auth:
      upstream: {{type: static, header: X-Api-Key, secret: operator-key-fuzz-0000}}
"""
        self.runner = ProxyRunner(build_app(parse_config(text, {})), **runner_kwargs())
        await self.runner.setup()
        from aiohttp import web

        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def start(self) -> ThreadedProxy:
        self.thread.start()
        assert self.ready.wait(15)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            await self.runner.cleanup()
            await self.upstream.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def fuzz_proxy() -> Iterator[ThreadedProxy]:
    SECRETS.add(SECRET, "operator-key-fuzz-0000")
    proxy = ThreadedProxy().start()
    yield proxy
    proxy.stop()


def check(status: int, headers: dict[str, str], body: bytes, carried: list[str]) -> None:
    assert status != 500, body[:300]
    assert status < 600
    if status >= 400 and headers.get("x-upstream") is None:
        payload = json.loads(body)
        assert payload["jsonrpc"] == "2.0" and "error" in payload
    text = body.decode("utf-8", "replace") + json.dumps(headers)
    for value in carried:
        if len(value) >= 8:
            assert value not in text, "a credential came back in the response"
    assert "operator-key-fuzz-0000" not in text


def send(port: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        carried = [v for _, v in headers] + ([body.decode("utf-8", "replace")] if body else [])
        check(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, [SECRET, *_tokens(carried)])
    finally:
        conn.close()


def _tokens(values: list[str]) -> list[str]:
    return [v for v in values if SECRET in v]


# --- strategies -------------------------------------------------------------------------------

header_names = st.sampled_from(
    [
        "Authorization",
        "authorization",
        "X-User-Token",
        "X-LlamaStack-Provider-Data",
        "X-OGX-Provider-Data",
        "MCP-HEADERS",
        "Cookie",
        "Proxy-Authorization",
        "X-Api-Key",
        "Connection",
        "Mcp-Session-Id",
        "MCP-Protocol-Version",
        "Last-Event-ID",
        "Accept",
        "Content-Type",
        "X-Request-Id",
        "X-Forwarded-For",
        "Mcp-Method",
        "Mcp-Name",
        "Upgrade",
        "TE",
        "Keep-Alive",
    ]
) | st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,30}\Z")
header_values = st.one_of(
    st.just(f"Bearer {SECRET}"),
    st.just(f"Bearer Bearer {SECRET}"),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=3000),
    st.builds(
        lambda s: f"Bearer {s}", st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=200)
    ),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
rpc_ids = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.text(max_size=40),
    st.none(),
    st.floats(allow_nan=False),
    st.booleans(),
)
rpc_messages = st.fixed_dictionaries(
    {
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
        "method": st.sampled_from(["initialize", "tools/call", "tools/list", ""]) | st.text(max_size=20),
    },
    optional={
        "id": rpc_ids,
        "params": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {
                    "name": st.text(max_size=20),
                    "_meta": st.one_of(
                        json_values,
                        st.fixed_dictionaries({"api_key": st.one_of(st.just(SECRET), json_values)}),
                    ),
                }
            ),
        ),
    },
)


@given(
    headers=st.lists(st.tuples(header_names, header_values), max_size=8),
    route=st.sampled_from(["/f/mcp", "/s/mcp", "/nope"]),
)
@fuzz_settings(3000)
def test_fuzz_headers(fuzz_proxy: ThreadedProxy, headers: list[tuple[str, str]], route: str) -> None:
    send(
        fuzz_proxy.port,
        "POST",
        route,
        [("Accept", "application/json, text/event-stream"), *headers],
        b'{"jsonrpc":"2.0","id":1,"method":"initialize"}',
    )


@given(
    data=json_values,
    target=st.sampled_from(["http://HOST/f/mcp", "HOST/f/mcp", "https://HOST/f/mcp/", "x"]),
    raw=st.booleans(),
)
@fuzz_settings(2000)
def test_fuzz_provider_data(fuzz_proxy: ThreadedProxy, data: Any, target: str, raw: bool) -> None:
    host = f"127.0.0.1:{fuzz_proxy.port}"
    if raw:
        value = json.dumps(data)
    else:
        value = json.dumps(
            {"mcp_headers": {target.replace("HOST", host): {"Authorization": f"Bearer {SECRET}", "x": data}}}
        )
    for header in ("X-LlamaStack-Provider-Data", "MCP-HEADERS"):
        send(
            fuzz_proxy.port,
            "POST",
            "/f/mcp",
            [(header, value)],
            b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
        )


@given(
    message=rpc_messages,
    batch=st.integers(min_value=0, max_value=4),
    nest=st.integers(min_value=0, max_value=3000),
)
@fuzz_settings(2500)
def test_fuzz_jsonrpc_bodies(
    fuzz_proxy: ThreadedProxy, message: dict[str, Any], batch: int, nest: int
) -> None:
    if nest > 2500:
        body = ("[" * nest + "]" * nest).encode()
    elif nest > 2000:
        body = b'{"jsonrpc":"2.0","id":1,"method":"x\xff\xfe","params":{"_meta":{"api_key":"\xc3\x28"}}}'
    else:
        body = json.dumps([message] * batch if batch else message).encode()
    send(
        fuzz_proxy.port,
        "POST",
        "/f/mcp",
        [("Authorization", f"Bearer {SECRET}"), ("Content-Type", "application/json")],
        body,
    )


def _jwt(header: dict[str, Any], payload: Any, signature: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"


@given(
    alg=st.sampled_from(["none", "HS256", "RS256", "ES256", "", "RS1"]),
    payload=json_values,
    signature=st.binary(max_size=64),
)
@fuzz_settings(1500)
def test_fuzz_jwts(fuzz_proxy: ThreadedProxy, alg: str, payload: Any, signature: bytes) -> None:
    token = _jwt({"alg": alg, "typ": "JWT", "kid": "k"}, payload, signature)
    send(
        fuzz_proxy.port,
        "POST",
        "/f/mcp",
        [("Authorization", f"Bearer {token}")],
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
    )


request_targets = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80).map(lambda s: "/f/mcp/" + s),
    st.sampled_from(
        ["/f/mcp/%2e%2e/x", "//f/mcp", "/f/mcp/..%2f", "*", "http://evil/f/mcp", "/f/mcp?%00", "/f/mcp#x"]
    ),
)


@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "OPTIONS", "PATCH", "HEAD", "G\x01T", "TRACE"]),
    target=request_targets,
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/9.9", "XYZ"]),
)
@fuzz_settings(1200)
def test_fuzz_request_lines(fuzz_proxy: ThreadedProxy, method: str, target: str, version: str) -> None:
    request = f"{method} {target} {version}\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", fuzz_proxy.port), timeout=10) as sock:
        sock.sendall(request.encode("latin-1"))
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    if not reply:
        return  # the parser may close on a hopeless request line; the proxy must stay up
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert status != 500
    assert SECRET.encode() not in reply
    if status >= 400 and method != "HEAD":
        assert json.loads(body)["jsonrpc"] == "2.0"
    send(fuzz_proxy.port, "GET", "/healthz", [], None)  # still alive and answering
