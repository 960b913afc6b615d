"""Seed 000 through the real OGX: a user token, an exchange, a tool that accepts only its own audience.

    bash scripts/ogx-env.sh              # once: builds .ogx-venv (ogx 1.5.0, pinned, offline tiktoken)
    .venv/bin/python scripts/demo_ogx.py

Starts, all on 127.0.0.1: the test OAuth server (oidc-provider with RFC 8693), an MCP server that
accepts only JWTs issued for ``my-external-tool``, ``mcpproxy serve`` with one token-exchange route,
a small OpenAI-compatible model that calls the tool the prompt names, and ``ogx run``. Then alice
sends one ``POST /v1/responses`` whose MCP tool points at mcpproxy, carrying her own token (audience
``llama-stack``); the script prints the answer and what the tool saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.fake_llm import FINAL_PREFIX, FakeLLM, directive  # noqa: E402
from tests.support.mcp_servers import McpServerProcess, rpc_method  # noqa: E402
from tests.support.oauth import GRANT_TOKEN_EXCHANGE, OAuthServer  # noqa: E402
from tests.support.ogx import (  # noqa: E402
    BUILD_HINT,
    OGX_VENV,
    SEED_AUDIENCE,
    TIKTOKEN_CACHE,
    OgxServer,
    audience_of,
    bearer_claims,
    exchange_route,
    jwt_tool_server,
    mcp_tool,
    proxy_config,
    proxy_env,
)
from tests.support.proxy import start_proxy_process  # noqa: E402

ROUTE = "/tool/mcp"


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m")


def show(label: str, value: Any) -> None:
    print(f"   {label:<30} {value}")


def ogx_env_missing() -> str | None:
    for needed in (OGX_VENV / "bin" / "ogx", OGX_VENV / ".stamp", TIKTOKEN_CACHE):
        if not needed.exists():
            return f"{needed} is missing; {BUILD_HINT}"
    return None


async def main() -> int:
    missing = ogx_env_missing()
    if missing:
        print(f"demo_ogx: {missing}", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mcpproxy-demo-ogx-") as tmp:
        workdir = Path(tmp)
        fake = FakeLLM().start_in_thread()
        ogx = OgxServer(workdir / "ogx", fake.base_url)
        ogx_started = asyncio.ensure_future(asyncio.to_thread(ogx.start))  # ≈ 3-8 s; meanwhile:
        oauth = OAuthServer()
        tool: McpServerProcess | None = None
        proxy = None
        try:
            await oauth.start()
            tool = jwt_tool_server("sse", oauth.issuer, oauth.jwks_uri).start()
            routes = [exchange_route("my-external-tool", ROUTE, tool.url, oauth.issuer)]
            proxy = start_proxy_process(proxy_config(routes), workdir, proxy_env())
            await ogx_started
            print(f"OAuth server   {oauth.issuer}")
            print(f"MCP tool       {tool.url}   (accepts only aud={SEED_AUDIENCE})")
            print(f"mcpproxy       {proxy.url(ROUTE)}   (log {proxy.log_path})")
            print(f"OGX 1.5        {ogx.url}   (model: {fake.base_url})")
            print(f"started in {time.monotonic() - started:.1f} s")
            await story(ogx, oauth, tool, proxy.url(ROUTE))
        finally:
            with contextlib.suppress(Exception):
                await ogx_started
            ogx.stop()
            fake.stop_thread()
            if proxy is not None:
                proxy.stop()
            if tool is not None:
                tool.stop()
            await oauth.stop()
    print("\nThe tests of this path: .venv/bin/pytest tests/e2e -m ogx")
    return 0


async def story(ogx: OgxServer, oauth: OAuthServer, tool: McpServerProcess, route_url: str) -> None:
    alice = await oauth.user_token("alice")
    claims = await oauth.decode(alice)
    step("alice's token, from the OAuth server (password grant for client llama-stack)")
    show("sub / aud", f"{claims['sub']} / {claims['aud']}")

    step("OGX straight to the tool with alice's token: refused (wrong audience)")
    direct = await asyncio.to_thread(
        ogx.create_response, directive("whoami"), [mcp_tool(tool.url, authorization=alice)]
    )
    show("POST /v1/responses", f"HTTP {direct.status}")
    tool.reset_sync()
    await oauth.reset()

    step("OGX through mcpproxy: POST /v1/responses with the tool's server_url = the proxy route")
    request = {
        "model": "openai/fake-model",
        "input": directive("whoami"),
        "tools": [mcp_tool(route_url, authorization="<alice's token>")],
    }
    print("   " + json.dumps(request))
    resp = await asyncio.to_thread(
        ogx.create_response, directive("whoami"), [mcp_tool(route_url, authorization=alice)]
    )
    show("HTTP status", resp.status)
    if resp.status != 200:
        show("body", resp.http.text[:500])
        raise SystemExit(1)
    answer = resp.output_text
    show("answer", answer[:160] + ("…" if len(answer) > 160 else ""))
    seen = json.loads(answer[len(FINAL_PREFIX) :]) if answer.startswith(FINAL_PREFIX) else {}
    step("What the tool saw (the claims it verified itself)")
    for key in ("sub", "aud", "iss", "tenant", "client_id"):
        show(key, seen.get(key))

    step("What reached the MCP server, request by request")
    for record in tool.requests_sync():
        [value] = record["headers"].get("authorization", ["(none)"])
        upstream = bearer_claims(value)
        who = f"Bearer <sub={upstream.get('sub')} aud={','.join(audience_of(upstream))}>"
        method = rpc_method(record) or ""
        show(f"{record['method']} {method}", f"{record['status']}  {who}")
    grants = (await oauth.stats())["grant_types"].get(GRANT_TOKEN_EXCHANGE, {})
    show("RFC 8693 exchanges", f"{grants.get('success', 0)} (one per user token, then cached)")
    show("alice's own token upstream", "never" if alice not in json.dumps(tool.requests_sync()) else "YES")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
