"""The audit trail: one JSON line per tools/call (allowed, denied, failed), no token, no arguments
unless asked for — written by real calls through the proxy."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from mcpproxy.config import ConfigError, parse_config
from tests.support.mcp_servers import McpServerProcess, mcp_connect, tool_text
from tests.support.oauth import OAuthServer
from tests.support.proxy import LOG_DIR, ProxyFactory, SecretRegistry
from tests.support.verify import Forger, bearer, post, verify_block

PATH = "/a/mcp"
POLICY = {"rules": [{"tools": ["drop_table"], "require_scopes": ["admin"]}]}


def call(name: str, args: dict[str, Any], id_: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {"name": name, "arguments": args}}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def spec(upstream: str, oauth: OAuthServer, audit: dict[str, Any]) -> dict[str, Any]:
    return {
        "audit": audit,
        "routes": [
            {
                "name": "audited",
                "path": PATH,
                "upstream": upstream,
                "auth": {"verify": verify_block(oauth)},
                "policy": POLICY,
            }
        ],
    }


async def test_one_line_per_call_and_no_token(
    tmp_path: Path,
    oauth: OAuthServer,
    mcp_stateless: McpServerProcess,
    proxy_factory: ProxyFactory,
    secrets_registry: SecretRegistry,
) -> None:
    trail = tmp_path / "audit.log"
    proxy = await proxy_factory(spec(mcp_stateless.url, oauth, {"file": str(trail)}))
    carol = await oauth.user_token("carol", audience="mcpproxy", scope="mcp")
    secrets_registry.add(carol)
    async with mcp_connect(proxy.url(PATH), headers=bearer(carol)) as conn:
        await conn.session.list_tools()  # not a call: no line
        assert tool_text(await conn.session.call_tool("add", {"a": 20, "b": 22})) == "42"
        with pytest.raises(MCPError):
            await conn.session.call_tool("drop_table", {"table": "customers-secret-name"})
    forged = Forger(oauth).alg_none(sub="mallory")
    secrets_registry.add(forged)
    status, _, _ = await post(proxy.url(PATH), call("add", {"a": 1, "b": 1}, id_="x1"), bearer(forged))
    assert status == 401
    status, _, _ = await post(
        proxy.url(PATH),
        [call("add", {"a": 1, "b": 1}, 5), call("drop_table", {"table": "t"}, 6)],
        bearer(carol),
    )
    assert status == 403

    records = lines(trail)
    assert len(records) == 5
    allowed, denied, unauthenticated, batch_ok, batch_bad = records
    assert allowed["tool"] == "add" and allowed["decision"] == "allow"
    assert (
        allowed["sub"] == "carol" and allowed["client_id"] == "llama-stack" and allowed["route"] == "audited"
    )
    assert allowed["status"] == 200 and allowed["upstream_status"] == 200 and allowed["duration_ms"] > 0
    assert isinstance(allowed["jsonrpc_id"], int) and len(allowed["request_id"]) >= 8
    assert datetime.fromisoformat(allowed["time"]).tzinfo == UTC or allowed["time"].endswith("Z")
    assert denied["tool"] == "drop_table" and denied["decision"] == "deny"
    assert denied["reason"] == "rules[0]: missing scope admin"
    assert denied["status"] == 403 and denied["upstream_status"] is None
    assert unauthenticated["decision"] == "deny" and unauthenticated["reason"] == "invalid_token"
    assert unauthenticated["sub"] is None and unauthenticated["jsonrpc_id"] == "x1"
    assert (batch_ok["tool"], batch_ok["decision"], batch_ok["reason"]) == ("add", "deny", "batch refused")
    assert batch_bad["tool"] == "drop_table" and batch_bad["decision"] == "deny"
    assert batch_ok["request_id"] == batch_bad["request_id"]

    text = trail.read_text()
    assert carol not in text and forged not in text
    assert "arguments" not in text and "customers-secret-name" not in text
    for part in carol.split("."):
        assert part not in text


async def test_arguments_only_when_asked_for(
    tmp_path: Path, oauth: OAuthServer, mcp_stateless: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    trail = tmp_path / "audit.log"
    proxy = await proxy_factory(
        spec(mcp_stateless.url, oauth, {"file": str(trail), "include_arguments": True})
    )
    carol = await oauth.user_token("carol", audience="mcpproxy", scope="mcp")
    async with mcp_connect(proxy.url(PATH), headers=bearer(carol)) as conn:
        await conn.session.call_tool("add", {"a": 3, "b": 4})
    [record] = lines(trail)
    assert record["arguments"] == {"a": 3, "b": 4}
    assert carol not in trail.read_text()


async def test_without_a_file_the_trail_joins_the_log_stream(
    mcp_json: McpServerProcess, proxy_factory: ProxyFactory, secrets_registry: SecretRegistry
) -> None:
    """Audit without verify or policy: a forward route; the subject shows only as a fingerprint."""
    user_key = "user-key-AUDIT-5555"
    secrets_registry.add(user_key)
    proxy = await proxy_factory(
        {
            "audit": {},
            "routes": [
                {
                    "name": "plain",
                    "path": "/plain/mcp",
                    "upstream": mcp_json.url,
                    "auth": {
                        "subject": [{"header": "X-User-Key"}],
                        "upstream": {"type": "forward", "header": "X-Api-Key"},
                    },
                }
            ],
        }
    )
    async with mcp_connect(proxy.url("/plain/mcp"), headers={"X-User-Key": user_key}) as conn:
        await conn.session.call_tool("add", {"a": 1, "b": 1})
    entries = [
        json.loads(line)
        for line in (LOG_DIR / "in-process.log").read_text().splitlines()
        if line.startswith("{") and '"audit"' in line
    ]
    [entry] = [e for e in entries if e.get("route") == "plain"]
    assert entry["event"] == "audit" and entry["tool"] == "add" and entry["decision"] == "allow"
    assert entry["sub"] is None and len(entry["subject_fingerprint"]) == 12
    assert user_key not in json.dumps(entry)


async def test_routes_record_calls_only_with_audit_or_policy(
    tmp_path: Path, mcp_json: McpServerProcess, proxy_factory: ProxyFactory
) -> None:
    from mcpproxy.web.app import LIVE

    proxy = await proxy_factory(
        {"routes": [{"name": "plain", "path": "/plain/mcp", "upstream": mcp_json.url}]}
    )
    assert proxy.app[LIVE].state.handler.audit is None
    assert not proxy.app[LIVE].state.handler.runtimes["plain"].records_calls


def test_audit_config_validated(tmp_path: Path) -> None:
    route = "routes:\n  - {name: a, path: /a/mcp, upstream: 'http://127.0.0.1:1/mcp'}\n"
    config = parse_config(f"audit: {{file: {tmp_path}/audit.log, include_arguments: true}}\n" + route, {})
    assert config.audit is not None and config.audit.include_arguments
    for text, path in (
        ("audit: {file: /nonexistent-dir/x/audit.log}\n", "audit.file"),
        ("audit: {fiel: x}\n", "audit.fiel"),
        (f"audit: {{file: {tmp_path}}}\n", "audit.file"),
        ("audit: {include_arguments: 'yes'}\n", "audit.include_arguments"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_config(text + route, {})
        assert info.value.path == path


async def test_real_process_writes_the_trail(
    tmp_path: Path,
    oauth: OAuthServer,
    mcp_json: McpServerProcess,
    proxy_process: Any,
    secrets_registry: SecretRegistry,
) -> None:
    """`mcpproxy serve` itself: verify, policy and the audit file work outside the test harness."""
    import yaml

    trail = tmp_path / "trail" / "audit.jsonl"
    trail.parent.mkdir()
    proc = proxy_process(yaml.safe_dump(spec(mcp_json.url, oauth, {"file": str(trail)})))
    alice = await oauth.user_token("alice", audience="mcpproxy", scope="mcp admin")
    secrets_registry.add(alice)
    async with mcp_connect(proc.url(PATH), headers=bearer(alice)) as conn:
        assert "drop_table" in {t.name for t in (await conn.session.list_tools()).tools}
        await conn.session.call_tool("drop_table", {"table": "t"})
    [record] = lines(trail)
    assert (record["tool"], record["decision"], record["sub"]) == ("drop_table", "allow", "alice")
    assert alice not in trail.read_text()
