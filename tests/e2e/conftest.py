"""Fixtures of the end-to-end tests (real OGX / Llama Stack servers; ``pytest -m ogx``).

The MCP server fixtures (``mcp_json``, ``mcp_server_factory``, ...) come from
``tests.support.mcp_servers`` (loaded by tests/conftest.py); the OGX / Llama Stack ones from
``tests.support.ogx``, imported here because only a top-level conftest may use pytest_plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.wiretap import WireTap
from tests.support.mcp_servers import McpServerProcess
from tests.support.oauth import OAuthServer
from tests.support.ogx import (  # noqa: F401  (fixtures)
    PROXY_CLIENT_SECRET,
    ResponseTap,
    exchange_route,
    fake_llm,
    fake_llm_server,
    jwt_tool_server,
    llamastack_server,
    llamastack_server_factory,
    ogx,
    ogx_server,
    ogx_server_factory,
    proxy_config,
    proxy_env,
)
from tests.support.proxy import ProxyProcess, SecretRegistry, start_proxy_process


@pytest.fixture
def wiretap() -> Iterator[Callable[[str, int], WireTap]]:
    """``wiretap(host, port)`` -> a started :class:`WireTap` in front of host:port."""
    taps: list[WireTap] = []

    def start(host: str, port: int) -> WireTap:
        tap = WireTap(host, port).start_in_thread()
        taps.append(tap)
        return tap

    yield start
    for tap in taps:
        tap.stop_thread()


@pytest.fixture
def response_tap() -> Iterator[Callable[[int], ResponseTap]]:
    """``response_tap(port)`` -> a started :class:`ResponseTap` in front of 127.0.0.1:port."""
    taps: list[ResponseTap] = []

    def start(port: int) -> ResponseTap:
        tap = ResponseTap(port).start_in_thread()
        taps.append(tap)
        return tap

    yield start
    for tap in taps:
        tap.stop_thread()


# -- seed 000 through mcpproxy: one `mcpproxy serve` for the session ----------------------------

ROUTE_TOOL = "/tool/mcp"  # caller token from Authorization, exchanged; JSON-answering tool
ROUTE_TOOL_SSE = "/tool-sse/mcp"  # the same, SSE-answering tool (streamed progress)
ROUTE_TOOL_HEADER = "/tool-hdr/mcp"  # caller token from X-User-Token (Llama Stack mcp_headers)


@dataclass
class SeedStack:
    """The test OAuth server, two MCP servers that accept only tokens for ``my-external-tool``
    (JSON and SSE answers) and a real ``mcpproxy serve`` whose routes exchange the caller's
    token for one (RFC 8693). Shared by the session: tests use fresh user tokens, so the
    proxy's token cache never carries one test's exchange into another."""

    oauth: OAuthServer
    tool_json: McpServerProcess
    tool_sse: McpServerProcess
    proxy: ProxyProcess

    def url(self, route: str) -> str:
        return self.proxy.url(route)

    def log_mark(self) -> int:
        """The number of proxy log lines so far (pass it to :meth:`log_since`)."""
        return len(self.proxy.log_lines())

    def log_since(self, mark: int) -> list[dict[str, Any]]:
        return self.proxy.log_lines()[mark:]


@pytest.fixture(scope="session")
def seed_stack_session(
    oauth_server: OAuthServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SeedStack]:
    tool_json = jwt_tool_server("json", oauth_server.issuer, oauth_server.jwks_uri)
    tool_sse = jwt_tool_server("sse", oauth_server.issuer, oauth_server.jwks_uri)
    with tool_json, tool_sse:
        issuer = oauth_server.issuer
        config = proxy_config(
            [
                exchange_route("tool", ROUTE_TOOL, tool_json.url, issuer),
                exchange_route("tool-sse", ROUTE_TOOL_SSE, tool_sse.url, issuer),
                exchange_route(
                    "tool-header",
                    ROUTE_TOOL_HEADER,
                    tool_json.url,
                    issuer,
                    subject=[{"header": "X-User-Token"}],
                ),
            ]
        )
        proxy = start_proxy_process(config, tmp_path_factory.mktemp("seed-proxy"), proxy_env())
        try:
            yield SeedStack(oauth_server, tool_json, tool_sse, proxy)
        finally:
            proxy.stop()


@pytest.fixture
def seed(seed_stack_session: SeedStack, oauth: OAuthServer, secrets_registry: SecretRegistry) -> SeedStack:
    """The session's :class:`SeedStack`, its MCP servers' request logs and the OAuth server's
    counters reset."""
    stack = seed_stack_session
    if stack.proxy.proc.poll() is not None:
        raise RuntimeError(f"mcpproxy exited; log:\n{stack.proxy.log_path.read_text()[-4000:]}")
    stack.tool_json.reset_sync()
    stack.tool_sse.reset_sync()
    secrets_registry.add(PROXY_CLIENT_SECRET)
    return stack
