"""mcpproxy end to end on one machine: the seed stories, with real servers and the real proxy.

Starts the test OAuth server (oidc-provider), four MCP servers built with the `mcp` SDK and
`mcpproxy serve -c config/demo.yaml`, then makes tool calls through the proxy with the official
MCP client and prints what each MCP server actually received.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import jwt  # noqa: E402

from tests.support.mcp_servers import McpServerProcess, mcp_connect, tool_json, tool_text  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.oauth import OAuthServer  # noqa: E402
from tests.support.proxy import start_proxy_process  # noqa: E402

WEATHER_KEY = "wk-" + os.urandom(8).hex()


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m")


def show(label: str, value: Any) -> None:
    print(f"   {label:<28} {value}")


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


async def main() -> int:
    oauth = OAuthServer()
    await oauth.start()
    servers = {
        "orchestrator": McpServerProcess("json"),
        "weather": McpServerProcess("json", require_headers={"X-Api-Key": WEATHER_KEY}),
        "gitlab": McpServerProcess("json"),
        "tool": McpServerProcess(
            "sse",
            require_bearer_jwt=True,
            issuer=oauth.issuer,
            jwks_url=oauth.jwks_uri,
            audience="my-external-tool",
        ),
    }
    for server in servers.values():
        server.start()
    port = free_port()
    env = {
        "MCPPROXY_PORT": str(port),
        "ORCHESTRATOR_PORT": str(servers["orchestrator"].port),
        "WEATHER_PORT": str(servers["weather"].port),
        "GITLAB_PORT": str(servers["gitlab"].port),
        "TOOL_PORT": str(servers["tool"].port),
        "WEATHER_API_KEY": WEATHER_KEY,
        "OAUTH_ISSUER": oauth.issuer,
        "PROXY_CLIENT_SECRET": "proxy-secret",
    }
    workdir = ROOT / ".cache" / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    proxy = start_proxy_process((ROOT / "config" / "demo.yaml").read_text(), workdir, env, port)
    try:
        print(
            f"mcpproxy on {proxy.base} (config/demo.yaml); OAuth server {oauth.issuer}; log {proxy.log_path}"
        )
        await run_stories(proxy.base, oauth, servers)
    finally:
        proxy.stop()
        for server in servers.values():
            server.stop()
        await oauth.stop()
    print("\nAll calls went through mcpproxy. Tests: ./scripts/test.sh")
    return 0


async def run_stories(base: str, oauth: OAuthServer, servers: dict[str, McpServerProcess]) -> None:
    step("1. Pass-through: get_orchestrator_instances (seed 002) via /orchestrator/mcp")
    async with mcp_connect(f"{base}/orchestrator/mcp") as conn:
        data = tool_json(await conn.session.call_tool("get_orchestrator_instances", {"session_id": "demo"}))
    show("workflows", ", ".join(f"{d['name']}={d['status']}" for d in data["data"]))

    step("2. Static key: the weather server needs X-Api-Key; the caller sends its own, which is dropped")
    async with mcp_connect(f"{base}/weather/mcp", headers={"X-Api-Key": "callers-own-key"}) as conn:
        seen = tool_json(await conn.session.call_tool("echo_headers", {}))
    show(
        "X-Api-Key upstream got",
        "the operator key" if seen["x-api-key"] == [WEATHER_KEY] else seen["x-api-key"],
    )

    alice = await oauth.user_token("alice")
    step("3. Forward: alice's token mapped onto the server's own PRIVATE-TOKEN header")
    async with mcp_connect(f"{base}/gitlab/mcp", headers={"Authorization": f"Bearer {alice}"}) as conn:
        seen = tool_json(await conn.session.call_tool("echo_headers", {}))
    show("PRIVATE-TOKEN is alice's", seen.get("private-token") == [alice])
    show("Authorization upstream", seen.get("authorization", "(none: stripped)"))

    step("4. Token exchange (seed 000): the tool accepts only tokens issued for my-external-tool")
    show("alice's token aud", claims(alice)["aud"])
    try:
        async with mcp_connect(servers["tool"].url, headers={"Authorization": f"Bearer {alice}"}) as conn:
            await conn.session.list_tools()
        show("direct to the tool", "accepted (unexpected)")
    except Exception as exc:  # the SDK raises on the 401
        show("direct to the tool", f"refused ({type(exc).__name__})")
    async with mcp_connect(f"{base}/tool/mcp", headers={"Authorization": f"Bearer Bearer {alice}"}) as conn:
        who = json.loads(tool_text(await conn.session.call_tool("whoami", {})))
    show("through mcpproxy: sub", who.get("sub"))
    show("through mcpproxy: aud", who.get("aud"))
    grants = (await oauth.stats())["grant_types"]
    exchange = grants.get("urn:ietf:params:oauth:grant-type:token-exchange", {})
    show("RFC 8693 exchanges done", exchange.get("success", 0))
    async with mcp_connect(f"{base}/tool/mcp", headers={"Authorization": f"Bearer {alice}"}) as conn:
        await conn.session.call_tool("whoami", {})
    grants = (await oauth.stats())["grant_types"]
    show("...after a second session", grants["urn:ietf:params:oauth:grant-type:token-exchange"]["success"])

    step("5. No token on a route that needs one: the proxy answers 401 and sends nothing upstream")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/tool/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}) as resp,
    ):
        show("status", resp.status)
        show("WWW-Authenticate", resp.headers.get("WWW-Authenticate"))
        show("body", await resp.text())


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
