"""The test OAuth server (tests/oauth_server) against its contract, through real HTTP."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.oauth import (
    GRANT_CLIENT_CREDENTIALS,
    GRANT_JWT_BEARER,
    GRANT_PASSWORD,
    GRANT_TOKEN_EXCHANGE,
    TT_ACCESS_TOKEN,
    TT_ID_JAG,
    TT_ID_TOKEN,
    TT_JWT,
    OAuthServer,
    TokenResponse,
    basic_auth_header,
)


def header(token: str) -> dict[str, Any]:
    return jwt.get_unverified_header(token)


@functools.cache
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def foreign_token(issuer: str, **claims: Any) -> str:
    """A well-formed token claiming to come from ``issuer`` but signed by another key."""
    key = other_key()
    now = int(time.time())
    payload = {"iss": issuer, "sub": "mallory", "aud": "mcp-proxy", "iat": now, "exp": now + 300}
    return jwt.encode({**payload, **claims}, key, algorithm="RS256", headers={"typ": "at+jwt"})


async def exchange(
    oauth: OAuthServer, subject: str, client_id: str = "mcp-proxy", **params: Any
) -> TokenResponse:
    form = {
        "grant_type": GRANT_TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": TT_ACCESS_TOKEN,
        **params,
    }
    return await oauth.token(form, client_id=client_id)


def assert_error(resp: TokenResponse, error: str, status: int = 400) -> None:
    assert resp.status == status, resp.text
    assert resp.body is not None and resp.body["error"] == error, resp.text
    assert resp.body.get("error_description"), resp.text


# -- discovery and keys --------------------------------------------------------------------------


async def test_discovery_documents(oauth: OAuthServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(oauth.discovery_url) as resp:
            oidc = await resp.json()
        async with session.get(oauth.metadata_url) as resp:
            assert resp.status == 200
            rfc8414 = await resp.json()
    assert oidc == rfc8414
    assert oidc["issuer"] == oauth.issuer == f"http://127.0.0.1:{oauth.port}"
    assert oidc["token_endpoint"] == oauth.token_endpoint
    assert oidc["jwks_uri"] == oauth.jwks_uri
    for grant in (GRANT_PASSWORD, GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE, GRANT_JWT_BEARER):
        assert grant in oidc["grant_types_supported"]
    for method in ("client_secret_basic", "client_secret_post", "private_key_jwt"):
        assert method in oidc["token_endpoint_auth_methods_supported"]
    jwks = await oauth.jwks()
    assert all(k["kty"] == "RSA" and "d" not in k for k in jwks["keys"])
    stats = await oauth.stats()
    assert stats["endpoints"]["/jwks"] == 1
    assert stats["endpoints"]["/.well-known/oauth-authorization-server"] == 1


# -- password grant --------------------------------------------------------------------------------


async def test_password_grant_issues_rfc9068_token(oauth: OAuthServer) -> None:
    token = await oauth.user_token("alice", scope="openid tools")
    head = header(token)
    assert head["typ"] == "at+jwt" and head["alg"] == "RS256" and head["kid"]
    claims = await oauth.decode(token, audience="llama-stack")
    assert claims["iss"] == oauth.issuer
    assert claims["sub"] == "alice"
    assert claims["aud"] == "llama-stack"
    assert claims["client_id"] == "llama-stack"
    assert claims["scope"] == "openid tools"
    assert claims["tenant"] == "acme"
    assert claims["groups"] == ["admins", "engineering"]
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["jti"]
    bob = await oauth.decode(await oauth.user_token("bob"))
    assert bob["tenant"] == "globex" and bob["jti"] != claims["jti"]


async def test_password_grant_audiences_and_expiry(oauth: OAuthServer) -> None:
    token = await oauth.user_token("carol", audience=["llama-stack", "mcp-proxy"], expires_in=120)
    claims = await oauth.decode(token)
    assert claims["aud"] == ["llama-stack", "mcp-proxy"]
    assert claims["exp"] - claims["iat"] == 120
    # Keycloak-style audience mapper: scope `X-aud` adds audience X to the default.
    mapped = await oauth.decode(await oauth.user_token("alice", scope="my-external-tool-aud"))
    assert mapped["aud"] == ["llama-stack", "my-external-tool"]
    expired = await oauth.user_token("alice", expires_in=-10)
    with pytest.raises(jwt.ExpiredSignatureError):
        await oauth.decode(expired)
    public = await oauth.decode(await oauth.user_token("bob", client_id="llama-stack-public"))
    assert public["client_id"] == "llama-stack-public"


async def test_password_grant_errors(oauth: OAuthServer) -> None:
    form = {"grant_type": GRANT_PASSWORD, "username": "alice", "password": "wrong"}
    assert_error(await oauth.token(form, client_id="llama-stack"), "invalid_grant")
    form = {"grant_type": GRANT_PASSWORD, "username": "nobody", "password": "nobody"}
    assert_error(await oauth.token(form, client_id="llama-stack"), "invalid_grant")
    form = {"grant_type": GRANT_PASSWORD, "password": "alice"}
    assert_error(await oauth.token(form, client_id="llama-stack"), "invalid_request")


# -- client authentication -----------------------------------------------------------------------


async def test_client_secret_basic_and_post(oauth: OAuthServer) -> None:
    for auth in ("basic", "post"):
        body = await oauth.client_credentials("mcp-proxy", auth=auth)
        assert (await oauth.decode(body["access_token"]))["client_id"] == "mcp-proxy"
    requests = (await oauth.stats())["requests"]
    assert [r["auth_method"] for r in requests] == ["client_secret_basic", "client_secret_post"]


async def test_client_secret_basic_is_form_urlencoded(oauth: OAuthServer) -> None:
    body = await oauth.client_credentials("proxy:special")
    assert (await oauth.decode(body["access_token"]))["sub"] == "proxy:special"
    # The same credentials without form-encoding do not authenticate.
    raw = "Basic " + base64.b64encode(b"proxy:special:p@ss:w/rd+&=%").decode()
    resp = await oauth.token(
        {"grant_type": GRANT_CLIENT_CREDENTIALS}, client_id=None, headers={"Authorization": raw}
    )
    assert resp.status in (400, 401) and resp.error in ("invalid_client", "invalid_request")
    assert basic_auth_header("a b", "c+d") == "Basic " + base64.b64encode(b"a+b:c%2Bd").decode()


async def test_client_authentication_failures(oauth: OAuthServer) -> None:
    cc = {"grant_type": GRANT_CLIENT_CREDENTIALS}
    bad_secret = await oauth.token(
        cc, client_id=None, headers={"Authorization": basic_auth_header("mcp-proxy", "nope")}
    )
    assert_error(bad_secret, "invalid_client", 401)
    assert bad_secret.headers.get("WWW-Authenticate", "").startswith("Basic")
    unknown = await oauth.token(
        cc, client_id=None, headers={"Authorization": basic_auth_header("ghost", "x")}
    )
    assert_error(unknown, "invalid_client", 401)
    both = await oauth.token(
        {**cc, "client_id": "mcp-proxy", "client_secret": "proxy-secret"}, client_id="mcp-proxy", auth="basic"
    )
    assert_error(both, "invalid_request")
    assert_error(await oauth.token(cc, client_id=None), "invalid_request")


async def test_private_key_jwt(oauth: OAuthServer) -> None:
    body = await oauth.client_credentials(
        "mcp-proxy-jwt", auth="private_key_jwt", audience="my-external-tool"
    )
    claims = await oauth.decode(body["access_token"], audience="my-external-tool")
    assert claims["client_id"] == "mcp-proxy-jwt"
    # A replayed jti is refused; so is an assertion signed by another key or already expired.
    assertion = oauth.client_assertion(jti="fixed-jti-1")
    cc = {
        "grant_type": GRANT_CLIENT_CREDENTIALS,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    }
    first = await oauth.token({**cc, "client_assertion": assertion}, client_id=None)
    assert first.ok, first.text
    replay = await oauth.token({**cc, "client_assertion": assertion}, client_id=None)
    assert_error(replay, "invalid_client", 401)
    forged = await oauth.token(
        {**cc, "client_assertion": oauth.client_assertion(key=other_key())}, client_id=None
    )
    assert_error(forged, "invalid_client", 401)
    expired = await oauth.token(
        {**cc, "client_assertion": oauth.client_assertion(lifetime=-30)}, client_id=None
    )
    assert_error(expired, "invalid_client", 401)
    issuer_aud = oauth.client_assertion(audience=oauth.issuer)
    assert (await oauth.token({**cc, "client_assertion": issuer_aud}, client_id=None)).ok


async def test_unsupported_and_missing_grant_type(oauth: OAuthServer) -> None:
    resp = await oauth.token({"grant_type": "urn:example:nope"})
    assert_error(resp, "unsupported_grant_type")
    assert_error(await oauth.token({}), "invalid_request")


# -- client credentials ----------------------------------------------------------------------------


async def test_client_credentials(oauth: OAuthServer) -> None:
    body = await oauth.client_credentials("my-external-tool", scope="read")
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["scope"] == "read"
    claims = await oauth.decode(body["access_token"])
    assert claims["sub"] == claims["client_id"] == claims["aud"] == "my-external-tool"
    body = await oauth.client_credentials(audience=["a", "b"], resource="https://tool.example/mcp")
    claims = await oauth.decode(body["access_token"])
    assert claims["aud"] == ["a", "b", "https://tool.example/mcp"]
    resp = await oauth.token({"grant_type": GRANT_CLIENT_CREDENTIALS, "resource": "not-a-uri"})
    assert_error(resp, "invalid_target")
    resp = await oauth.token({"grant_type": GRANT_CLIENT_CREDENTIALS, "resource": "https://x/#f"})
    assert_error(resp, "invalid_target")
    public = await oauth.token(
        {"grant_type": GRANT_CLIENT_CREDENTIALS}, client_id="llama-stack-public", auth="none"
    )
    assert public.status == 400 and public.error == "invalid_request"


# -- RFC 8693 token exchange -------------------------------------------------------------------------


async def test_token_exchange(oauth: OAuthServer) -> None:
    subject = await oauth.user_token("alice", audience="mcp-proxy", scope="tools")
    resp = await exchange(oauth, subject, audience="my-external-tool")
    assert resp.ok, resp.text
    assert resp.body is not None
    assert resp.body["issued_token_type"] == TT_ACCESS_TOKEN
    assert resp.body["token_type"] == "Bearer"
    assert resp.body["scope"] == "tools"
    assert 3590 <= resp.body["expires_in"] <= 3600
    claims = await oauth.decode(resp.access_token, audience="my-external-tool")
    assert claims["sub"] == "alice" and claims["tenant"] == "acme"
    assert claims["client_id"] == "mcp-proxy"
    assert "act" not in claims
    assert header(resp.access_token)["typ"] == "at+jwt"


async def test_token_exchange_targets_scope_and_token_type(oauth: OAuthServer) -> None:
    subject = await oauth.user_token("bob", audience="mcp-proxy", scope="a b")
    resp = await exchange(
        oauth,
        subject,
        audience=["t1", "t2"],
        resource=["https://r1.example/mcp", "https://r2.example/mcp"],
        scope="a",
        requested_token_type=TT_JWT,
        subject_token_type=TT_JWT,
    )
    assert resp.ok, resp.text
    assert resp.body is not None
    assert resp.body["issued_token_type"] == TT_JWT and resp.body["scope"] == "a"
    claims = await oauth.decode(resp.access_token)
    assert claims["aud"] == ["t1", "t2", "https://r1.example/mcp", "https://r2.example/mcp"]
    assert claims["scope"] == "a" and claims["tenant"] == "globex"
    # No target: the token is for the requester. id_token subject type is accepted.
    resp = await exchange(oauth, subject, subject_token_type=TT_ID_TOKEN)
    assert (await oauth.decode(resp.access_token))["aud"] == "mcp-proxy"
    last = (await oauth.stats())["requests"][1]
    assert last["audience"] == ["t1", "t2"]
    assert last["resource"] == ["https://r1.example/mcp", "https://r2.example/mcp"]
    assert last["requested_token_type"] == TT_JWT and last["client_id"] == "mcp-proxy"


async def test_token_exchange_lifetime_capped_by_subject(oauth: OAuthServer) -> None:
    subject = await oauth.user_token("alice", expires_in=100)
    resp = await exchange(oauth, subject, audience="t")
    assert resp.body is not None and 95 <= resp.body["expires_in"] <= 100
    subject_claims = await oauth.decode(subject)
    assert (await oauth.decode(resp.access_token))["exp"] <= subject_claims["exp"]


async def test_token_exchange_with_actor(oauth: OAuthServer) -> None:
    subject = await oauth.user_token("alice", audience="mcp-proxy")
    actor = (await oauth.client_credentials("mcp-proxy"))["access_token"]
    resp = await exchange(
        oauth, subject, audience="tool-a", actor_token=actor, actor_token_type=TT_ACCESS_TOKEN
    )
    assert resp.ok, resp.text
    first = await oauth.decode(resp.access_token)
    assert first["act"] == {"sub": "mcp-proxy"} and first["sub"] == "alice"
    # Exchanging again with another actor nests the earlier actor (RFC 8693 §4.1).
    actor2 = (await oauth.client_credentials("my-external-tool"))["access_token"]
    again = await exchange(
        oauth,
        resp.access_token,
        client_id="my-external-tool",
        audience="tool-b",
        actor_token=actor2,
        actor_token_type=TT_ACCESS_TOKEN,
    )
    claims = await oauth.decode(again.access_token)
    assert claims["act"] == {"sub": "my-external-tool", "act": {"sub": "mcp-proxy"}}
    assert (await oauth.stats())["requests"][-1]["had_actor"] is True


async def test_token_exchange_errors(oauth: OAuthServer) -> None:
    subject = await oauth.user_token("alice")
    assert_error(await exchange(oauth, subject, subject_token_type="urn:x"), "invalid_request")
    missing = await oauth.token({"grant_type": GRANT_TOKEN_EXCHANGE, "subject_token_type": TT_ACCESS_TOKEN})
    assert_error(missing, "invalid_request")
    assert_error(await exchange(oauth, subject, requested_token_type="urn:x"), "invalid_request")
    assert_error(await exchange(oauth, subject, actor_token=subject), "invalid_request")
    assert_error(await exchange(oauth, subject, resource="relative/path"), "invalid_target")
    expired = await oauth.user_token("alice", expires_in=-5)
    resp = await exchange(oauth, expired)
    assert_error(resp, "invalid_grant")
    assert resp.body is not None and "expired" in resp.body["error_description"]
    assert_error(await exchange(oauth, foreign_token(oauth.issuer)), "invalid_grant")
    assert_error(await exchange(oauth, "not-a-jwt"), "invalid_grant")
    bad_actor = await exchange(oauth, subject, actor_token="x", actor_token_type=TT_ACCESS_TOKEN)
    assert_error(bad_actor, "invalid_grant")
    public = await oauth.token(
        {"grant_type": GRANT_TOKEN_EXCHANGE, "subject_token": subject, "subject_token_type": TT_ACCESS_TOKEN},
        client_id="llama-stack-public",
        auth="none",
    )
    assert public.status == 400 and public.error == "invalid_request"


async def test_allowed_audiences_and_scopes(oauth: OAuthServer) -> None:
    await oauth.set_mode(allowed_audiences=["tool-a"], allowed_scopes=["read"])
    subject = await oauth.user_token("alice")
    assert (await exchange(oauth, subject, audience="tool-a", scope="read")).ok
    assert_error(await exchange(oauth, subject, audience="tool-b", scope="read"), "invalid_target")
    assert_error(await exchange(oauth, subject, audience="tool-a", scope="write"), "invalid_scope")


# -- ID-JAG and RFC 7523 JWT bearer ------------------------------------------------------------------


async def test_id_jag_then_jwt_bearer(oauth: OAuthServer) -> None:
    subject = await oauth.user_token("alice", audience="mcp-proxy")
    resp = await exchange(
        oauth,
        subject,
        audience=oauth.issuer,
        requested_token_type=TT_ID_JAG,
        resource="https://tool.example/mcp",
        scope="inventory:read",
    )
    assert resp.ok, resp.text
    assert resp.body is not None
    assert resp.body["issued_token_type"] == TT_ID_JAG
    assert resp.body["token_type"] == "N_A"
    assert resp.body["expires_in"] <= 300
    jag = resp.access_token
    assert header(jag)["typ"] == "oauth-id-jag+jwt"
    jag_claims = await oauth.decode(jag, audience=oauth.issuer)
    assert jag_claims["sub"] == "alice" and jag_claims["client_id"] == "mcp-proxy"
    assert jag_claims["resource"] == "https://tool.example/mcp"
    assert jag_claims["exp"] - jag_claims["iat"] <= 300 and jag_claims["jti"]

    bearer = await oauth.token({"grant_type": GRANT_JWT_BEARER, "assertion": jag})
    assert bearer.ok, bearer.text
    assert bearer.body is not None and "issued_token_type" not in bearer.body
    assert bearer.body["token_type"] == "Bearer" and bearer.body["expires_in"] == 3600
    claims = await oauth.decode(bearer.access_token, audience="https://tool.example/mcp")
    assert claims["sub"] == "alice" and claims["tenant"] == "acme"
    assert claims["client_id"] == "mcp-proxy" and claims["scope"] == "inventory:read"
    # An explicit target wins over the JAG's resource claim.
    explicit = await oauth.token({"grant_type": GRANT_JWT_BEARER, "assertion": jag, "audience": "other"})
    assert (await oauth.decode(explicit.access_token))["aud"] == "other"


async def test_id_jag_errors(oauth: OAuthServer) -> None:
    subject = await oauth.user_token("alice", audience="mcp-proxy")
    jag_for = {"requested_token_type": TT_ID_JAG}
    assert_error(await exchange(oauth, subject, **jag_for), "invalid_request")
    two = await exchange(oauth, subject, audience=[oauth.issuer, "x"], **jag_for)
    assert_error(two, "invalid_request")
    jag = (await exchange(oauth, subject, audience=oauth.issuer, **jag_for)).access_token
    stolen = await oauth.token(
        {"grant_type": GRANT_JWT_BEARER, "assertion": jag}, client_id="my-external-tool"
    )
    assert_error(stolen, "invalid_grant")
    foreign_as = (await exchange(oauth, subject, audience="https://other-as.example", **jag_for)).access_token
    wrong_aud = await oauth.token({"grant_type": GRANT_JWT_BEARER, "assertion": foreign_as})
    assert_error(wrong_aud, "invalid_grant")
    assert_error(await exchange(oauth, jag, audience="t"), "invalid_grant")
    assert_error(await oauth.token({"grant_type": GRANT_JWT_BEARER}), "invalid_request")
    forged = await oauth.token({"grant_type": GRANT_JWT_BEARER, "assertion": foreign_token(oauth.issuer)})
    assert_error(forged, "invalid_grant")


async def test_jwt_bearer_with_access_token(oauth: OAuthServer) -> None:
    subject = await oauth.user_token("bob", audience="mcp-proxy", scope="s1")
    resp = await oauth.token(
        {"grant_type": GRANT_JWT_BEARER, "assertion": subject, "resource": "https://tool.example/mcp"}
    )
    claims = await oauth.decode(resp.access_token, audience="https://tool.example/mcp")
    assert claims["sub"] == "bob" and claims["scope"] == "s1" and claims["client_id"] == "mcp-proxy"


# -- Entra on-behalf-of ------------------------------------------------------------------------------


async def test_entra_on_behalf_of(oauth: OAuthServer) -> None:
    mode = await oauth.set_mode(entra=True)
    assert mode["entra"] is True
    subject = await oauth.user_token("alice", audience="mcp-proxy")
    assert_error(await exchange(oauth, subject, audience="x"), "unsupported_grant_type")
    obo = {
        "grant_type": GRANT_JWT_BEARER,
        "assertion": subject,
        "requested_token_use": "on_behalf_of",
        "scope": "api://inventory/.default",
    }
    resp = await oauth.token(obo)
    assert resp.ok, resp.text
    assert resp.body is not None and "issued_token_type" not in resp.body
    assert resp.body["scope"] == "api://inventory/.default"
    claims = await oauth.decode(resp.access_token, audience="api://inventory")
    assert claims["scp"] == "user_impersonation" and claims["azp"] == "mcp-proxy"
    assert claims["sub"] == "alice" and claims["tid"] == "acme"
    named = await oauth.token({**obo, "scope": "api://inventory/read api://inventory/write"})
    assert (await oauth.decode(named.access_token))["scp"] == "read write"
    # The assertion must be addressed to the calling client (the middle tier).
    stranger = await oauth.user_token("alice", audience="llama-stack")
    assert_error(await oauth.token({**obo, "assertion": stranger}), "invalid_grant")
    assert_error(await oauth.token({**obo, "scope": "api://a/.default api://b/.default"}), "invalid_scope")
    assert_error(await oauth.token({**obo, "scope": "nodefault"}), "invalid_scope")
    plain = await oauth.token({"grant_type": GRANT_JWT_BEARER, "assertion": subject})
    assert_error(plain, "invalid_request")


# -- Keycloak mode -----------------------------------------------------------------------------------


async def test_keycloak_mode(oauth: OAuthServer) -> None:
    await oauth.set_mode(keycloak=True)
    not_for_proxy = await oauth.user_token("alice")  # aud llama-stack only
    assert_error(await exchange(oauth, not_for_proxy, audience="my-external-tool"), "access_denied", 403)
    subject = await oauth.user_token("alice", audience=["llama-stack", "mcp-proxy"])
    resp = await exchange(oauth, subject, audience="my-external-tool", resource="https://ignored.example/mcp")
    assert resp.ok, resp.text
    claims = await oauth.decode(resp.access_token)
    assert claims["aud"] == "my-external-tool" and "act" not in claims
    actor = (await oauth.client_credentials())["access_token"]
    with_actor = await exchange(
        oauth, subject, audience="my-external-tool", actor_token=actor, actor_token_type=TT_ACCESS_TOKEN
    )
    assert_error(with_actor, "invalid_request")
    assert_error(await exchange(oauth, subject, audience="no-such-client"), "invalid_client")
    assert_error(await exchange(oauth, foreign_token(oauth.issuer)), "invalid_token")
    jag = await exchange(oauth, subject, audience=oauth.issuer, requested_token_type=TT_ID_JAG)
    assert_error(jag, "invalid_request")


async def test_modes_are_validated_and_reset(oauth: OAuthServer) -> None:
    with pytest.raises(AssertionError):
        await oauth.set_mode(nonsense=True)
    with pytest.raises(AssertionError):
        await oauth.set_mode(fail="explode")
    with pytest.raises(AssertionError):
        await oauth.set_mode(keycloak=True, entra=True)
    await oauth.set_mode(keycloak=True, token_ttl=5)
    await oauth.user_token("alice")
    await oauth.reset()
    stats = await oauth.stats()
    assert stats["total"] == 0 and stats["requests"] == []
    mode = await oauth.set_mode()
    assert mode["keycloak"] is False and mode["token_ttl"] is None


# -- faults ------------------------------------------------------------------------------------------


async def test_fault_500_and_invalid_json(oauth: OAuthServer) -> None:
    await oauth.set_mode(fail="500")
    resp = await oauth.token({"grant_type": GRANT_CLIENT_CREDENTIALS, "audience": "a"})
    assert resp.status == 500 and resp.body is None
    assert (await oauth.jwks())["keys"]  # faults only hit the token endpoint
    await oauth.set_mode(fail="invalid_json")
    resp = await oauth.token({"grant_type": GRANT_CLIENT_CREDENTIALS})
    assert resp.status == 200 and resp.body is None
    with pytest.raises(ValueError):
        json.loads(resp.text)
    stats = await oauth.stats()
    assert stats["outcomes"] == {"success": 1, "error": 1}
    assert stats["errors"] == {"http_500": 1}
    assert stats["requests"][0]["audience"] == ["a"]


async def test_fault_missing_fields(oauth: OAuthServer) -> None:
    subject = await oauth.user_token("alice")
    await oauth.set_mode(fail="no_expires_in")
    resp = await exchange(oauth, subject, audience="t")
    assert resp.ok and resp.body is not None
    assert "expires_in" not in resp.body and "issued_token_type" in resp.body
    await oauth.set_mode(fail="no_issued_token_type")
    resp = await exchange(oauth, subject, audience="t")
    assert resp.ok and resp.body is not None
    assert "issued_token_type" not in resp.body and "expires_in" in resp.body


async def test_faults_spare_harness_helpers(oauth: OAuthServer) -> None:
    await oauth.set_mode(fail="500")
    token = await oauth.user_token("alice")  # sends X-Test-No-Fault
    assert (await oauth.decode(token))["sub"] == "alice"
    assert (await oauth.client_credentials())["access_token"]
    assert (await oauth.token({"grant_type": GRANT_CLIENT_CREDENTIALS})).status == 500
    assert (await oauth.stats())["outcomes"] == {"success": 2, "error": 1}


async def test_fault_slow_and_fail_times(oauth: OAuthServer) -> None:
    await oauth.set_mode(fail="slow", delay_ms=300)
    started = time.monotonic()
    assert (await oauth.token({"grant_type": GRANT_CLIENT_CREDENTIALS})).ok
    assert time.monotonic() - started >= 0.3
    await oauth.set_mode(fail="500", fail_times=2)
    statuses = [(await oauth.token({"grant_type": GRANT_CLIENT_CREDENTIALS})).status for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert (await oauth.set_mode())["fail"] is None


async def test_token_ttl(oauth: OAuthServer) -> None:
    await oauth.set_mode(token_ttl=30)
    body = await oauth.client_credentials()
    assert body["expires_in"] == 30
    claims = await oauth.decode(body["access_token"])
    assert claims["exp"] - claims["iat"] == 30
    subject = await oauth.user_token("alice")
    resp = await exchange(oauth, subject, audience="x")
    assert resp.body is not None and resp.body["expires_in"] <= 30


# -- stats ---------------------------------------------------------------------------------------------


async def test_stats_record_requests_without_secrets(oauth: OAuthServer) -> None:
    subject = await oauth.user_token("alice", audience="mcp-proxy")
    await exchange(oauth, subject, audience="tool", scope="x", requested_token_type=TT_ACCESS_TOKEN)
    await exchange(oauth, "garbage")
    stats = await oauth.stats()
    assert stats["total"] == 3
    assert stats["outcomes"] == {"success": 2, "error": 1}
    assert stats["grant_types"][GRANT_PASSWORD] == {"success": 1, "error": 0}
    assert stats["grant_types"][GRANT_TOKEN_EXCHANGE] == {"success": 1, "error": 1}
    assert stats["errors"] == {"invalid_grant": 1}
    entry = stats["requests"][1]
    assert entry == {
        "grant_type": GRANT_TOKEN_EXCHANGE,
        "client_id": "mcp-proxy",
        "auth_method": "client_secret_basic",
        "audience": ["tool"],
        "resource": [],
        "scope": "x",
        "requested_token_type": TT_ACCESS_TOKEN,
        "subject_token_type": TT_ACCESS_TOKEN,
        "requested_token_use": None,
        "had_subject_token": True,
        "had_assertion": False,
        "had_actor": False,
        "status": 200,
        "error": None,
    }
    dump = json.dumps(stats)
    assert subject not in dump and "proxy-secret" not in dump and 'alice"' not in dump


# -- keys and restarts ---------------------------------------------------------------------------------


async def test_rotate_keys(oauth: OAuthServer) -> None:
    before = await oauth.user_token("alice")
    old_kid = header(before)["kid"]
    new_kid = await oauth.rotate_keys()
    kids = [k["kid"] for k in (await oauth.jwks())["keys"]]
    assert kids[0] == new_kid and old_kid in kids
    after = await oauth.user_token("alice")
    assert header(after)["kid"] == new_kid
    await oauth.decode(before)
    await oauth.decode(after)
    # Tokens signed with the old key are still accepted as subject tokens.
    assert (await exchange(oauth, before, audience="t")).ok


async def test_restart_on_same_port_keeps_keys() -> None:
    async with OAuthServer() as server:
        issuer = server.issuer
        token = await server.user_token("alice")
        await server.stop()
        assert not server.running
        with pytest.raises(aiohttp.ClientConnectionError):
            await server.stats()
        await server.restart()
        assert server.issuer == issuer
        claims = await server.decode(token)
        assert claims["sub"] == "alice"
        resp = await exchange(server, token, audience="t")
        assert resp.ok, resp.text


def test_sync_helpers_and_concurrency(oauth: OAuthServer) -> None:
    assert oauth.set_mode_sync(token_ttl=60)["token_ttl"] == 60
    oauth.reset_sync()
    assert oauth.stats_sync()["total"] == 0

    async def many() -> list[str]:
        return await asyncio.gather(*(oauth.user_token("bob") for _ in range(20)))

    started = time.monotonic()
    tokens = asyncio.run(many())
    assert len(set(tokens)) == 20
    assert time.monotonic() - started < 5
    assert oauth.stats_sync()["outcomes"]["success"] == 20
