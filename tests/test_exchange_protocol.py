"""The protocol pieces without a server: client authentication encodings, request forms,
response validation, error mapping and scrubbing, discovery, lifetime math."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from mcpproxy.config.exchange import ACCESS_TOKEN, ID_JAG, AuthServer, ClientSettings
from mcpproxy.metrics import Registry
from mcpproxy.oauth.client_auth import CLIENT_ASSERTION_TYPE, ClientAuth, basic_authorization
from mcpproxy.oauth.discovery import Discovery, metadata_urls
from mcpproxy.oauth.entra_obo import obo_form
from mcpproxy.oauth.errors import (
    REDACTED,
    TokenEndpointError,
    classify_reply,
    scrub,
    to_proxy_error,
)
from mcpproxy.oauth.response import access_token_response, parse_json
from mcpproxy.oauth.rfc7523 import jwt_bearer_form
from mcpproxy.oauth.rfc8693 import exchange_form, exchange_response
from mcpproxy.oauth.token_endpoint import TokenEndpoint
from mcpproxy.oauth.tokens import cache_ttl, jwt_expiry
from mcpproxy.oauth.transport import Form, HttpReply, TransportError
from mcpproxy.secrets import Secret

SUBJECT = Secret("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVlLWhlcmU")


def reply(status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> HttpReply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    return HttpReply(status, dict(headers or {}), raw)


class FakeHttp:
    """Answers by URL from a script; records every request."""

    def __init__(self, answers: dict[str, HttpReply | Exception]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, list[tuple[str, str]], dict[str, str]]] = []

    async def post_form(self, url: str, form: Form, headers: Mapping[str, str], timeout_s: float) -> HttpReply:
        self.calls.append(("POST", url, list(form), dict(headers)))
        return self._answer(url)

    async def get_json(self, url: str, timeout_s: float) -> HttpReply:
        self.calls.append(("GET", url, [], {}))
        return self._answer(url)

    def _answer(self, url: str) -> HttpReply:
        answer = self.answers.get(url, reply(404, {"error": "not_found"}))
        if isinstance(answer, Exception):
            raise answer
        return answer


# --- client authentication ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_id", "secret"),
    [("mcp-proxy", "proxy-secret"), ("proxy:special", "p@ss:w/rd+&=%"), ("ü id", "sëcret with space")],
)
def test_basic_form_urlencodes_id_and_secret(client_id: str, secret: str) -> None:
    header = basic_authorization(client_id, Secret(secret)).reveal()
    assert header.startswith("Basic ")
    encoded_id, _, encoded_secret = base64.b64decode(header[6:]).decode().partition(":")
    assert ":" not in encoded_id  # the separator is unambiguous
    assert (unquote_plus(encoded_id), unquote_plus(encoded_secret)) == (client_id, secret)


def test_post_puts_credentials_in_the_form() -> None:
    auth = ClientAuth(ClientSettings("c", "client_secret_post", Secret("s3")))
    form, headers = auth.apply([("grant_type", "x")], "https://as/token", None)
    assert form == [("grant_type", "x"), ("client_id", "c"), ("client_secret", "s3")]
    assert headers == {}


def private_key_client(key: Any, alg: str, **kw: Any) -> ClientSettings:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return ClientSettings("jwt-client", "private_key_jwt", None, Secret(pem), "kid-1", alg, **kw)


@pytest.mark.parametrize(
    ("key", "alg"),
    [(rsa.generate_private_key(65537, 2048), "RS256"), (ec.generate_private_key(ec.SECP256R1()), "ES256")],
)
def test_private_key_jwt_assertion(key: Any, alg: str) -> None:
    auth = ClientAuth(private_key_client(key, alg))
    form, headers = auth.apply([], "https://as/token", "https://as")
    fields = dict(form)
    assert headers == {}
    assert fields["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    assertion = fields["client_assertion"]
    assert jwt.get_unverified_header(assertion) == {"alg": alg, "kid": "kid-1", "typ": "JWT"}
    claims = jwt.decode(assertion, key.public_key(), algorithms=[alg], audience="https://as/token")
    assert claims["iss"] == claims["sub"] == "jwt-client"
    assert claims["exp"] - claims["iat"] == 60
    assert abs(claims["iat"] - time.time()) < 5
    second = dict(auth.apply([], "https://as/token", "https://as")[0])["client_assertion"]
    assert jwt.decode(second, options={"verify_signature": False})["jti"] != claims["jti"]


def test_private_key_jwt_issuer_audience() -> None:
    key = rsa.generate_private_key(65537, 2048)
    auth = ClientAuth(private_key_client(key, "RS256", assertion_audience="issuer"))
    assertion = dict(auth.apply([], "https://as/token", "https://as")[0])["client_assertion"]
    assert jwt.decode(assertion, options={"verify_signature": False})["aud"] == "https://as"


# --- request forms ------------------------------------------------------------------------------


def test_exchange_form_repeats_targets_and_joins_scope() -> None:
    form = exchange_form(
        SUBJECT,
        ACCESS_TOKEN,
        audience=["a", "b"],
        resource=["https://r1", "https://r2"],
        scope=["s1", "s2"],
        requested_token_type=ACCESS_TOKEN,
        actor=Secret("actor-token"),
        extra=[("tenant", "acme")],
    )
    assert form == [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token", SUBJECT.reveal()),
        ("subject_token_type", ACCESS_TOKEN),
        ("audience", "a"),
        ("audience", "b"),
        ("resource", "https://r1"),
        ("resource", "https://r2"),
        ("scope", "s1 s2"),
        ("requested_token_type", ACCESS_TOKEN),
        ("actor_token", "actor-token"),
        ("actor_token_type", ACCESS_TOKEN),
        ("tenant", "acme"),
    ]


def test_minimal_forms() -> None:
    assert exchange_form(SUBJECT, ACCESS_TOKEN) == [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token", SUBJECT.reveal()),
        ("subject_token_type", ACCESS_TOKEN),
    ]
    assert jwt_bearer_form(SUBJECT, scope=["x"]) == [
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("assertion", SUBJECT.reveal()),
        ("scope", "x"),
    ]
    assert obo_form(SUBJECT, ["api://app/.default"]) == [
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("assertion", SUBJECT.reveal()),
        ("requested_token_use", "on_behalf_of"),
        ("scope", "api://app/.default"),
    ]


# --- response validation ------------------------------------------------------------------------


def good(**over: Any) -> dict[str, Any]:
    return {"access_token": "tok-123", "token_type": "Bearer", "expires_in": 300,
            "issued_token_type": ACCESS_TOKEN, **over}


def test_exchange_response_ok() -> None:
    issued = exchange_response(good(), "x", ACCESS_TOKEN)
    assert issued.token.reveal() == "tok-123" and issued.expires_in == 300
    assert exchange_response(good(token_type="N_A", issued_token_type=ID_JAG), "x", ID_JAG).token


@pytest.mark.parametrize(
    ("body", "requested", "words"),
    [
        (good(issued_token_type=None), None, "issued_token_type"),
        ({"access_token": "t", "token_type": "Bearer"}, None, "issued_token_type"),
        (good(issued_token_type=ID_JAG), ACCESS_TOKEN, "requested"),
        (good(access_token=""), None, "no access_token"),
        (good(access_token=None), None, "no access_token"),
        (good(access_token="a b"), None, "header"),
        (good(access_token="a\r\nX-Evil: 1"), None, "header"),
        (good(token_type="DPoP"), None, "token_type"),
        (good(token_type=5), None, "token_type"),
    ],
)
def test_exchange_response_refusals(body: dict[str, Any], requested: str | None, words: str) -> None:
    with pytest.raises(TokenEndpointError) as info:
        exchange_response(body, "token_exchange at https://as/token", requested)
    assert info.value.kind == "misconfigured"
    assert words in info.value.detail


@pytest.mark.parametrize(
    ("value", "expected"),
    [(300, 300.0), ("3599", 3599.0), (0, None), (-5, None), ("soon", None), (True, None),
     (None, None), (float("inf"), None), (float("nan"), None)],
)
def test_expires_in(value: Any, expected: float | None) -> None:
    body = {"access_token": "t", "token_type": "bearer", "expires_in": value}
    assert access_token_response(body, "x").expires_in == expected


def test_invalid_json_is_transient() -> None:
    for body in (b'{"access_token": "trunc', b"[1, 2]", b"\xff\xfe"):
        with pytest.raises(TokenEndpointError) as info:
            parse_json(body, "x")
        assert info.value.kind == "unavailable"


# --- error mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, {"error": "invalid_grant", "error_description": "subject_token is invalid"}, "refused"),
        (400, {"error": "invalid_token"}, "refused"),
        (403, {"error": "access_denied", "error_description": "Client is not within the token audience"}, "refused"),
        (400, {"error": "interaction_required"}, "refused"),
        (400, {"error": "invalid_request", "error_description": "subject_token is expired"}, "refused"),
        (400, {"error": "invalid_request", "error_description": "the assertion signature is invalid"}, "refused"),
        (400, {"error": "invalid_request", "error_description": "unsupported subject_token_type: x"}, "misconfigured"),
        (400, {"error": "invalid_request", "error_description": "missing required parameter 'scope'"}, "misconfigured"),
        (400, {"error": "invalid_request"}, "misconfigured"),
        (401, {"error": "invalid_client"}, "misconfigured"),
        (400, {"error": "unauthorized_client"}, "misconfigured"),
        (400, {"error": "invalid_target"}, "misconfigured"),
        (400, {"error": "invalid_scope"}, "misconfigured"),
        (400, {"error": "unsupported_grant_type"}, "misconfigured"),
        (400, {"error": "something_new"}, "misconfigured"),
        (400, b"<html>bad request</html>", "misconfigured"),
        (302, b"", "misconfigured"),
        (400, {"error": "temporarily_unavailable"}, "unavailable"),
        (500, {"error": "invalid_grant"}, "unavailable"),
        (502, b"bad gateway", "unavailable"),
        (503, b"", "unavailable"),
        (429, {"error": "slow_down"}, "unavailable"),
    ],
)
def test_classify(status: int, body: Any, kind: str) -> None:
    assert classify_reply("token_exchange at https://as/token", reply(status, body)).kind == kind


def test_retry_after_taken_from_the_server_and_capped() -> None:
    assert classify_reply("x", reply(503, b"", {"Retry-After": "7"})).retry_after == 7
    assert classify_reply("x", reply(429, b"", {"retry-after": "99999"})).retry_after == 300
    assert classify_reply("x", reply(500, b"", {"Retry-After": "Wed, 21 Oct 2015"})).retry_after == 5


def test_proxy_errors() -> None:
    refused = to_proxy_error("tool", classify_reply("x", reply(400, {"error": "invalid_grant"})))
    assert refused.status == 401
    assert refused.www_authenticate is not None
    assert refused.www_authenticate.startswith("Bearer ") and 'error="invalid_token"' in refused.www_authenticate
    bad = to_proxy_error("tool", classify_reply("x", reply(400, {"error": "invalid_scope"})))
    assert (bad.status, bad.message) == (502, "upstream credentials misconfigured for route tool")
    assert "invalid_scope" in bad.detail and "invalid_scope" not in bad.message
    down = to_proxy_error("tool", classify_reply("x", reply(500, b"oops")))
    assert (down.status, down.retry_after) == (503, 5)


def test_error_description_is_never_shown_and_logged_scrubbed() -> None:
    secret = Secret("client-secret-value")
    echo = {
        "error": "invalid_grant",
        "error_description": f"bad token {SUBJECT.reveal()} for client-secret-value at\r\nX-Injected: 1",
    }
    err = classify_reply("x", reply(400, echo), [SUBJECT, secret])
    proxy_error = to_proxy_error("tool", err)
    for text in (err.detail, str(err), proxy_error.message, proxy_error.detail, str(proxy_error),
                 proxy_error.www_authenticate or ""):
        assert SUBJECT.reveal() not in text
        assert "client-secret-value" not in text
        assert "\n" not in text
    assert "bad token" not in proxy_error.message


def test_non_json_body_is_scrubbed_and_capped() -> None:
    body = ("x" * 10 + " " + SUBJECT.reveal() + " ") * 50
    err = classify_reply("x", reply(502, body.encode()))
    assert SUBJECT.reveal() not in err.detail
    assert len(err.detail) < 200


def test_scrub() -> None:
    assert scrub(f"token {SUBJECT.reveal()} end") == f"token {REDACTED} end"
    assert scrub("opaque 2YotnFZFEjr1zCsicMWpAA2YotnFZFEjr1zCsicMWpAA") == f"opaque {REDACTED}"
    assert scrub("short words stay: invalid_grant") == "short words stay: invalid_grant"
    assert scrub("pw hunter22 here", [Secret("hunter22")]) == f"pw {REDACTED} here"
    assert scrub("a\r\nb\x00c") == "a b c"
    assert len(scrub("word " * 100, limit=50)) == 50


@given(
    token=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=24, max_size=200),
    before=st.text(max_size=40),
    after=st.text(max_size=40),
)
def test_scrub_never_leaves_a_long_token(token: str, before: str, after: str) -> None:
    out = scrub(f"{before} {token} {after}", limit=10_000)
    assert token not in out


# --- discovery ----------------------------------------------------------------------------------


def test_metadata_urls() -> None:
    assert metadata_urls("https://as.example") == (
        "https://as.example/.well-known/oauth-authorization-server",
        "https://as.example/.well-known/openid-configuration",
    )
    assert metadata_urls("https://kc.example/realms/demo") == (
        "https://kc.example/.well-known/oauth-authorization-server/realms/demo",
        "https://kc.example/realms/demo/.well-known/openid-configuration",
    )


async def test_discovery_prefers_rfc8414_and_caches() -> None:
    issuer = "https://as.example"
    http = FakeHttp({f"{issuer}/.well-known/oauth-authorization-server":
                     reply(200, {"issuer": issuer, "token_endpoint": f"{issuer}/oauth/token"})})
    discovery = Discovery(http)
    for _ in range(3):
        assert await discovery.token_endpoint(issuer, allow_insecure=False, timeout_s=1) == f"{issuer}/oauth/token"
    assert len(http.calls) == 1


async def test_discovery_falls_back_to_openid_configuration() -> None:
    issuer = "https://kc.example/realms/demo"
    http = FakeHttp({f"{issuer}/.well-known/openid-configuration":
                     reply(200, {"issuer": issuer, "token_endpoint": f"{issuer}/protocol/openid-connect/token"})})
    endpoint = await Discovery(http).token_endpoint(issuer, allow_insecure=False, timeout_s=1)
    assert endpoint.endswith("/protocol/openid-connect/token")
    assert [c[1] for c in http.calls] == list(metadata_urls(issuer))


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"issuer": "https://evil.example", "token_endpoint": "https://evil.example/token"}, "another issuer"),
        ({"issuer": "https://as.example"}, "token_endpoint"),
        ({"issuer": "https://as.example", "token_endpoint": "http://as.example/token"}, "https"),
    ],
)
async def test_discovery_refusals(doc: dict[str, Any], words: str) -> None:
    http = FakeHttp({"https://as.example/.well-known/oauth-authorization-server": reply(200, doc)})
    with pytest.raises(TokenEndpointError) as info:
        await Discovery(http).token_endpoint("https://as.example", allow_insecure=False, timeout_s=1)
    assert info.value.kind == "misconfigured" and words in info.value.detail


async def test_discovery_failures_are_not_cached() -> None:
    issuer = "https://as.example"
    url = f"{issuer}/.well-known/oauth-authorization-server"
    http = FakeHttp({url: TransportError("cannot reach as.example")})
    discovery = Discovery(http)
    with pytest.raises(TokenEndpointError) as info:
        await discovery.token_endpoint(issuer, allow_insecure=False, timeout_s=1)
    assert info.value.kind == "unavailable"
    http.answers[url] = reply(200, {"issuer": issuer, "token_endpoint": f"{issuer}/token"})
    assert await discovery.token_endpoint(issuer, allow_insecure=False, timeout_s=1) == f"{issuer}/token"
    none = FakeHttp({})
    with pytest.raises(TokenEndpointError) as info:
        await Discovery(none).token_endpoint(issuer, allow_insecure=False, timeout_s=1)
    assert info.value.kind == "misconfigured"


async def test_concurrent_discoveries_share_one_request_and_its_failure() -> None:
    issuer = "https://as.example"
    url = f"{issuer}/.well-known/oauth-authorization-server"

    class SlowHttp(FakeHttp):
        async def get_json(self, url: str, timeout_s: float) -> HttpReply:
            await asyncio.sleep(0.02)
            return await super().get_json(url, timeout_s)

    http = SlowHttp({url: TransportError("no answer within 1s")})
    discovery = Discovery(http)
    results = await asyncio.gather(
        *(discovery.token_endpoint(issuer, allow_insecure=False, timeout_s=1) for _ in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(r, TokenEndpointError) and r.kind == "unavailable" for r in results)
    assert len(http.calls) == 1
    http.answers[url] = reply(200, {"issuer": issuer, "token_endpoint": f"{issuer}/token"})
    results = await asyncio.gather(
        *(discovery.token_endpoint(issuer, allow_insecure=False, timeout_s=1) for _ in range(20))
    )
    assert set(results) == {f"{issuer}/token"} and len(http.calls) == 2


# --- the token endpoint call --------------------------------------------------------------------


async def test_token_endpoint_counts_outcomes() -> None:
    metrics = Registry()
    url = "https://as.example/token"
    http = FakeHttp({url: reply(200, good())})
    endpoint = TokenEndpoint(
        "tool", AuthServer(None, url), ClientSettings("c", "client_secret_basic", Secret("s")),
        http, Discovery(http), metrics,
    )
    issued = await endpoint.request("token_exchange", [("grant_type", "x")], access_token_response)
    assert issued.token.reveal() == "tok-123"
    _, _, form, headers = http.calls[0]
    assert form == [("grant_type", "x")]
    assert headers["Authorization"].startswith("Basic ") and headers["Accept"] == "application/json"
    http.answers[url] = reply(400, {"error": "invalid_grant"})
    with pytest.raises(TokenEndpointError):
        await endpoint.request("token_exchange", [], access_token_response)
    http.answers[url] = TransportError("no answer")
    with pytest.raises(TokenEndpointError):
        await endpoint.request("token_exchange", [], access_token_response)
    http.answers[url] = reply(200, {"token_type": "Bearer"})
    with pytest.raises(TokenEndpointError):
        await endpoint.request("token_exchange", [], access_token_response)
    for outcome in ("success", "refused", "unavailable", "misconfigured"):
        assert metrics.exchanges.value(route="tool", kind="token_exchange", outcome=outcome) == 1
    assert metrics.exchange_latency.count(route="tool", kind="token_exchange") == 4


# --- lifetime -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "subject_remaining", "skew", "ttl"),
    [
        (3600, None, 30, 3570),
        (3600, 600, 30, 570),  # the subject token ends first
        (300, 900, 30, 270),
        (60, None, 30, 30),  # skew exactly half
        (20, None, 30, 10),  # short token: skew clamped to half the lifetime
        (4, None, 30, 2),
        (3600, -5, 30, 0),  # subject already expired: do not cache
        (3600, None, 0, 3600),
    ],
)
def test_cache_ttl(lifetime: float, subject_remaining: float | None, skew: float, ttl: float) -> None:
    assert cache_ttl(lifetime, subject_remaining, skew) == ttl


@given(st.floats(0.001, 1e6), st.floats(0, 3600))
def test_cache_ttl_keeps_at_least_half(lifetime: float, skew: float) -> None:
    ttl = cache_ttl(lifetime, None, skew)
    assert lifetime / 2 <= ttl <= lifetime


def test_jwt_expiry() -> None:
    token = jwt.encode({"sub": "a", "exp": 2_000_000_000}, "k" * 32, algorithm="HS256")
    assert jwt_expiry(Secret(token)) == 2_000_000_000
    assert jwt_expiry(Secret(jwt.encode({"sub": "a"}, "k" * 32, algorithm="HS256"))) is None
    assert jwt_expiry(Secret("opaque-token")) is None
    assert jwt_expiry(Secret("a.!!!.c")) is None
    assert jwt_expiry(Secret("a." + base64.urlsafe_b64encode(b'{"exp": "soon"}').decode() + ".c")) is None
