"""Every exchange type and client authentication method end to end through TokenSource and the
aiohttp transport, against the real test OAuth server (oidc-provider, tests/oauth_server). The
issued tokens are verified against the server's JWKS."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
pytest_plugins = ["tests.support.oauth"]

from mcpproxy.config import Config, parse_config  # noqa: E402
from mcpproxy.errors import ProxyError  # noqa: E402
from mcpproxy.metrics import Registry  # noqa: E402
from mcpproxy.oauth.runtime import ExchangeRuntime  # noqa: E402
from mcpproxy.oauth.tokens import TokenSource  # noqa: E402
from mcpproxy.secrets import Secret  # noqa: E402
from mcpproxy.web.oauth_http import AiohttpTokenHttp  # noqa: E402
from tests.support.oauth import (  # noqa: E402
    CLIENTS,
    GRANT_CLIENT_CREDENTIALS,
    GRANT_JWT_BEARER,
    GRANT_PASSWORD,
    GRANT_TOKEN_EXCHANGE,
    TT_ACCESS_TOKEN,
    TT_ID_JAG,
    OAuthServer,
)

ENV = {"PROXY_SECRET": "proxy-secret", "SPECIAL_SECRET": "p@ss:w/rd+&=%"}
PROXY_CLIENT = {"id": "mcp-proxy", "secret": "${env.PROXY_SECRET}"}


class Vault:
    """Every credential value a test handled; none may reach a log line or an error text."""

    def __init__(self) -> None:
        self.values: set[str] = {v for v in CLIENTS.values() if v}

    def add(self, *values: str | Secret) -> None:
        for value in values:
            self.values.add(value.reveal() if isinstance(value, Secret) else value)

    def leaks(self, text: str) -> list[str]:
        return [f"…{v[-6:]}" for v in self.values if len(v) >= 6 and v in text]

    def check_error(self, err: ProxyError) -> None:
        texts = [str(err), repr(err), err.message, err.detail, err.www_authenticate or ""]
        assert not self.leaks("\n".join(texts)), "an error text carries a credential"


@pytest.fixture(autouse=True)
def vault(oauth_server: OAuthServer) -> Iterator[Vault]:
    """Captures every structlog event of the test and fails it if one carries a credential."""
    vault = Vault()
    vault.add(oauth_server.proxy_jwt_key_file.read_text())
    with capture_logs() as events:
        yield vault
    rendered = "\n".join(json.dumps(e, default=repr) for e in events)
    leaks = vault.leaks(rendered)
    assert not leaks, f"credential values in log output: {leaks}"


def test_the_leak_check_catches_a_leak() -> None:
    vault = Vault()
    vault.add("a-credential-value")
    assert vault.leaks('{"event": "oops", "detail": "xx a-credential-value"}')
    assert not vault.leaks('{"event": "fine", "subject_fingerprint": "0123456789ab"}')


Make = Callable[..., Awaitable[tuple[TokenSource, Registry]]]


def config_for(upstream: dict[str, Any], cache: dict[str, Any] | None = None) -> Config:
    spec: dict[str, Any] = {
        "routes": [
            {"name": "tool", "path": "/tool", "upstream": "http://127.0.0.1:9/mcp",
             "auth": {"upstream": upstream}}
        ]
    }
    if cache:
        spec["cache"] = cache
    return parse_config(yaml.safe_dump(spec), ENV)


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Builds an ExchangeRuntime (its own aiohttp session) for one route called "tool"."""
    opened: list[tuple[ExchangeRuntime, AiohttpTokenHttp]] = []

    async def build(upstream: dict[str, Any]) -> tuple[TokenSource, Registry]:
        http, metrics = AiohttpTokenHttp(), Registry()
        runtime = await ExchangeRuntime.create(config_for(upstream), http, metrics)
        opened.append((runtime, http))
        source = runtime.source("tool")
        assert source is not None
        return source, metrics

    yield build
    for runtime, http in opened:
        await runtime.close()
        await http.close()


def exchange(oauth: OAuthServer, **extra: Any) -> dict[str, Any]:
    return {"type": "token_exchange", "issuer": oauth.issuer, "client": PROXY_CLIENT,
            "audience": ["my-external-tool"], **extra}


async def user(oauth: OAuthServer, vault: Vault, name: str = "alice", **kw: Any) -> Secret:
    token = Secret(await oauth.user_token(name, **kw))
    vault.add(token)
    return token


async def token_requests(oauth: OAuthServer, grant: str | None = None) -> list[dict[str, Any]]:
    """The proxy's token requests (the tests' own password grants left out)."""
    stats = await oauth.stats()
    return [r for r in stats["requests"]
            if r["grant_type"] != GRANT_PASSWORD and (grant is None or r["grant_type"] == grant)]


async def failure(source: TokenSource, subject: Secret | None, vault: Vault) -> ProxyError:
    with pytest.raises(ProxyError) as info:
        await source.get(subject)
    vault.check_error(info.value)
    return info.value


# --- each type, each client authentication -------------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", "private_key_jwt"])
async def test_token_exchange_with_each_client_auth(
    oauth: OAuthServer, vault: Vault, make: Make, method: str
) -> None:
    if method == "private_key_jwt":
        client = {"id": "mcp-proxy-jwt", "auth_method": method,
                  "private_key_file": str(oauth.proxy_jwt_key_file), "key_id": oauth.proxy_jwt_kid}
    else:
        client = {**PROXY_CLIENT, "auth_method": method}
    source, metrics = await make(exchange(oauth, client=client, scope="tools.read"))
    subject = await user(oauth, vault, "alice")
    token = await source.get(subject)
    vault.add(token)
    claims = await oauth.decode(token.reveal(), audience="my-external-tool")
    assert claims["sub"] == "alice" and claims["scope"] == "tools.read"
    assert claims["client_id"] == client["id"]
    assert "act" not in claims
    [request] = await token_requests(oauth, GRANT_TOKEN_EXCHANGE)
    assert request["auth_method"] == method and request["client_id"] == client["id"]
    assert request["subject_token_type"] == TT_ACCESS_TOKEN and request["status"] == 200
    assert metrics.exchanges.value(route="tool", kind="token_exchange", outcome="success") == 1
    assert metrics.exchange_latency.count(route="tool", kind="token_exchange") == 1


async def test_private_key_jwt_assertions_are_fresh(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    """The server refuses a replayed jti, so two exchanges prove two distinct assertions."""
    client = {"id": "mcp-proxy-jwt", "private_key_file": str(oauth.proxy_jwt_key_file),
              "key_id": oauth.proxy_jwt_kid}
    source, _ = await make(exchange(oauth, client=client))
    await source.get(await user(oauth, vault, "alice"))
    await source.get(await user(oauth, vault, "bob"))
    assert [r["status"] for r in await token_requests(oauth, GRANT_TOKEN_EXCHANGE)] == [200, 200]


async def test_basic_auth_form_encodes_special_characters(
    oauth: OAuthServer, vault: Vault, make: Make
) -> None:
    client = {"id": "proxy:special", "secret": "${env.SPECIAL_SECRET}"}
    source, _ = await make({"type": "client_credentials", "token_endpoint": oauth.token_endpoint,
                            "client": client, "audience": "my-external-tool"})
    token = await source.get(None)
    vault.add(token)
    assert (await oauth.decode(token.reveal()))["sub"] == "proxy:special"


async def test_resource_indicator_and_expiry_bound(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    source, _ = await make(exchange(oauth, audience=None, resource="https://tool.example/mcp"))
    subject = await user(oauth, vault, "alice", expires_in=600)
    token = await source.get(subject)
    vault.add(token)
    claims = await oauth.decode(token.reveal(), audience="https://tool.example/mcp")
    assert claims["exp"] <= time.time() + 600 + 2  # never outlives the user's token
    [request] = await token_requests(oauth, GRANT_TOKEN_EXCHANGE)
    assert request["resource"] == ["https://tool.example/mcp"] and request["audience"] == []


async def test_actor_token_gives_act_claim(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    source, _ = await make(exchange(oauth, actor={}))
    alice = await source.get(await user(oauth, vault, "alice"))
    bob = await source.get(await user(oauth, vault, "bob"))
    vault.add(alice, bob)
    for token, name in ((alice, "alice"), (bob, "bob")):
        claims = await oauth.decode(token.reveal(), audience="my-external-tool")
        assert claims["sub"] == name and claims["act"] == {"sub": "mcp-proxy"}
    requests = await token_requests(oauth)
    assert [r["grant_type"] for r in requests] == [
        GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE, GRANT_TOKEN_EXCHANGE  # actor token cached
    ]
    assert all(r["had_actor"] for r in requests[1:])


async def test_jwt_bearer_with_user_token(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    source, _ = await make({"type": "jwt_bearer", "token_endpoint": oauth.token_endpoint,
                            "client": PROXY_CLIENT, "audience": "my-external-tool"})
    token = await source.get(await user(oauth, vault, "bob"))
    vault.add(token)
    claims = await oauth.decode(token.reveal(), audience="my-external-tool")
    assert claims["sub"] == "bob"
    [request] = await token_requests(oauth, GRANT_JWT_BEARER)
    assert request["had_assertion"] and request["auth_method"] == "client_secret_basic"


async def test_jwt_bearer_with_a_jag_from_the_caller(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    """Seed 003: the caller already holds an ID-JAG; the proxy redeems it with Basic client auth."""
    subject = await user(oauth, vault, "alice")
    jag = await oauth.token({
        "grant_type": GRANT_TOKEN_EXCHANGE, "subject_token": subject.reveal(),
        "subject_token_type": TT_ACCESS_TOKEN, "requested_token_type": TT_ID_JAG,
        "audience": oauth.issuer, "resource": "https://inventory.example/mcp",
    })
    vault.add(jag.access_token)
    source, _ = await make({"type": "jwt_bearer", "token_endpoint": oauth.token_endpoint,
                            "client": PROXY_CLIENT})
    token = await source.get(Secret(jag.access_token))
    vault.add(token)
    claims = await oauth.decode(token.reveal(), audience="https://inventory.example/mcp")
    assert claims["sub"] == "alice"


async def test_id_jag_two_steps(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    source, metrics = await make({
        "type": "id_jag",
        "issuer": oauth.issuer,
        "client": PROXY_CLIENT,
        "subject_token_type": "access_token",
        "resource": "https://tool.example/mcp",
        "scope": "tools.read",
        "resource_as": {"issuer": oauth.issuer, "client": {**PROXY_CLIENT, "auth_method": "client_secret_post"}},
    })
    token = await source.get(await user(oauth, vault, "carol"))
    vault.add(token)
    claims = await oauth.decode(token.reveal(), audience="https://tool.example/mcp")
    assert claims["sub"] == "carol" and claims["scope"] == "tools.read"
    first, second = await token_requests(oauth)
    assert first["grant_type"] == GRANT_TOKEN_EXCHANGE and first["requested_token_type"] == TT_ID_JAG
    assert first["audience"] == [oauth.issuer] and first["auth_method"] == "client_secret_basic"
    assert second["grant_type"] == GRANT_JWT_BEARER and second["had_assertion"]
    assert second["auth_method"] == "client_secret_post"
    for kind in ("id_jag_request", "id_jag_redeem"):
        assert metrics.exchanges.value(route="tool", kind=kind, outcome="success") == 1


async def test_entra_obo(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    await oauth.set_mode(entra=True)
    source, _ = await make({"type": "entra_obo", "token_endpoint": oauth.token_endpoint,
                            "client": {**PROXY_CLIENT, "auth_method": "client_secret_post"},
                            "scope": "api://my-external-tool/.default"})
    subject = await user(oauth, vault, "alice", audience="mcp-proxy")  # OBO: aud = the middle tier
    token = await source.get(subject)
    vault.add(token)
    claims = await oauth.decode(token.reveal(), audience="api://my-external-tool")
    assert claims["sub"] == "alice" and claims["scp"] == "user_impersonation" and claims["azp"] == "mcp-proxy"
    [request] = await token_requests(oauth)
    assert request["requested_token_use"] == "on_behalf_of"
    # A token for someone else (aud is not the proxy) is the caller's problem: 401.
    err = await failure(source, await user(oauth, vault, "bob"), vault)
    assert err.status == 401


async def test_entra_mode_refuses_rfc8693_as_misconfiguration(
    oauth: OAuthServer, vault: Vault, make: Make
) -> None:
    await oauth.set_mode(entra=True)
    source, _ = await make(exchange(oauth))
    err = await failure(source, await user(oauth, vault), vault)
    assert err.status == 502 and "unsupported_grant_type" in err.detail


async def test_client_credentials(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    source, _ = await make({"type": "client_credentials", "issuer": oauth.issuer,
                            "client": PROXY_CLIENT, "audience": "my-external-tool", "scope": "svc"})
    tokens = await asyncio.gather(*(source.get(None) for _ in range(10)))
    vault.add(*tokens)
    assert len({t.reveal() for t in tokens}) == 1
    claims = await oauth.decode(tokens[0].reveal(), audience="my-external-tool")
    assert claims["sub"] == "mcp-proxy" and claims["scope"] == "svc"
    assert len(await token_requests(oauth)) == 1


async def test_keycloak_mode(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    """Keycloak's standard exchange: the proxy must be in the subject token's aud; no act."""
    await oauth.set_mode(keycloak=True)
    source, _ = await make(exchange(oauth))
    subject = await user(oauth, vault, "alice", scope="mcp-proxy-aud")
    token = await source.get(subject)
    vault.add(token)
    claims = await oauth.decode(token.reveal(), audience="my-external-tool")
    assert claims["sub"] == "alice" and "act" not in claims
    not_for_us = await failure(source, await user(oauth, vault, "bob"), vault)  # aud: llama-stack only
    assert not_for_us.status == 401 and not_for_us.www_authenticate
    garbage = await failure(source, Secret("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.sig"), vault)
    assert garbage.status == 401
    assert (await oauth.stats())["errors"] == {"access_denied": 1, "invalid_token": 1}


# --- caching ------------------------------------------------------------------------------------


async def test_100_concurrent_gets_one_exchange(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    source, metrics = await make(exchange(oauth))
    alice, bob = await user(oauth, vault, "alice"), await user(oauth, vault, "bob")
    tokens = await asyncio.gather(*(source.get(alice) for _ in range(100)), source.get(bob))
    vault.add(*tokens)
    assert len({t.reveal() for t in tokens[:100]}) == 1
    assert (await oauth.decode(tokens[0].reveal()))["sub"] == "alice"
    assert (await oauth.decode(tokens[100].reveal()))["sub"] == "bob"
    stats = await oauth.stats()
    assert stats["grant_types"][GRANT_TOKEN_EXCHANGE] == {"success": 2, "error": 0}
    assert stats["endpoints"].get("/.well-known/oauth-authorization-server") == 1
    assert metrics.cache.value(route="tool", result="miss") == 2
    assert metrics.cache.value(route="tool", result="joined") == 99


async def test_expiry_means_re_exchange(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    subject = await user(oauth, vault)  # before the TTL switch: the subject itself must not expire
    await oauth.set_mode(token_ttl=2)  # exchanged tokens cached for 1 s (the skew takes at most half)
    source, _ = await make(exchange(oauth))
    first = await source.get(subject)
    assert await source.get(subject) == first
    await asyncio.sleep(1.1)
    second = await source.get(subject)
    vault.add(first, second)
    assert second != first
    assert len(await token_requests(oauth, GRANT_TOKEN_EXCHANGE)) == 2


async def test_invalidate_gets_a_fresh_token(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    source, _ = await make(exchange(oauth))
    subject = await user(oauth, vault)
    first = await source.get(subject)
    await source.invalidate(subject, rejected=first)
    second = await source.get(subject)
    vault.add(first, second)
    assert first != second


async def test_missing_expires_in_uses_default(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    await oauth.set_mode(fail="no_expires_in")
    source, _ = await make(exchange(oauth))
    subject = await user(oauth, vault)
    assert await source.get(subject) == await source.get(subject)
    assert len(await token_requests(oauth, GRANT_TOKEN_EXCHANGE)) == 1


# --- errors -------------------------------------------------------------------------------------


async def test_refused_subject_is_401_and_remembered(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    source, metrics = await make(exchange(oauth))
    expired = await user(oauth, vault, expires_in=-10)
    for _ in range(3):
        err = await failure(source, expired, vault)
        assert err.status == 401 and err.www_authenticate is not None
        assert 'error="invalid_token"' in err.www_authenticate
    assert len(await token_requests(oauth, GRANT_TOKEN_EXCHANGE)) == 1  # negative cache
    assert metrics.cache.value(route="tool", result="negative") == 2
    assert metrics.exchanges.value(route="tool", kind="token_exchange", outcome="refused") == 1


@pytest.mark.parametrize(
    ("mode", "upstream", "status", "error"),
    [
        ({}, {"client": {"id": "mcp-proxy", "secret": "wrong-secret-value"}}, 502, "invalid_client"),
        ({"allowed_audiences": ["other"]}, {}, 502, "invalid_target"),
        ({"allowed_scopes": ["a"]}, {"scope": "b"}, 502, "invalid_scope"),
        ({}, {"resource": "urn:x:y", "requested_token_type": "saml2"}, 502, "invalid_request"),
        ({"fail": "500"}, {}, 503, ""),
        ({"fail": "invalid_json"}, {}, 503, "JSON"),
        ({"fail": "no_issued_token_type"}, {}, 502, "issued_token_type"),
        ({"fail": "slow", "delay_ms": 1500}, {"timeout_s": 0.3}, 503, "no answer"),
    ],
)
async def test_error_mapping(
    oauth: OAuthServer, vault: Vault, make: Make,
    mode: dict[str, Any], upstream: dict[str, Any], status: int, error: str,
) -> None:
    vault.add("wrong-secret-value")
    if mode:
        await oauth.set_mode(**mode)
    source, _ = await make(exchange(oauth, **upstream))
    subject = await user(oauth, vault)
    err = await failure(source, subject, vault)
    assert err.status == status, err.detail
    assert error in err.detail
    if status == 502:
        assert err.message == "upstream credentials misconfigured for route tool"
    if status == 503:
        assert err.retry_after and err.retry_after > 0
        await oauth.set_mode(fail=None)
        vault.add(await source.get(subject))  # not remembered: the next request succeeds


async def test_oauth_server_down_and_back(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    source, metrics = await make(exchange(oauth, timeout_s=1))
    alice, bob = await user(oauth, vault, "alice"), await user(oauth, vault, "bob")
    cached = await source.get(alice)
    await oauth.stop()
    try:
        assert await source.get(alice) == cached  # still served from the cache
        err = await failure(source, bob, vault)
        assert err.status == 503 and err.retry_after
    finally:
        await oauth.start()
    token = await source.get(bob)
    vault.add(cached, token)
    assert (await oauth.decode(token.reveal()))["sub"] == "bob"
    assert metrics.exchanges.value(route="tool", kind="token_exchange", outcome="unavailable") == 1


async def test_discovery_failure_when_down_at_start(oauth: OAuthServer, vault: Vault, make: Make) -> None:
    subject = await user(oauth, vault)
    await oauth.stop()
    try:
        source, _ = await make(exchange(oauth, timeout_s=1))  # starting does not need the server
        err = await failure(source, subject, vault)
        assert err.status == 503 and "metadata" in err.detail
    finally:
        await oauth.start()
    vault.add(await source.get(subject))
