"""Load-time validation of the OAuth upstream types and the cache section: every refusal names
its YAML path."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mcpproxy.config import Config, ConfigError, parse_config
from mcpproxy.config.exchange import (
    ACCESS_TOKEN,
    ID_JAG,
    ID_TOKEN,
    ClientCredentialsSettings,
    EntraOboSettings,
    IdJagSettings,
    JwtBearerSettings,
    TokenExchangeSettings,
    needs_subject,
)
from mcpproxy.config.model import ExchangeUpstreamAuth, ForwardUpstreamAuth, StaticUpstreamAuth
from mcpproxy.credentials import Subject
from mcpproxy.secrets import Secret
from mcpproxy.upstream_auth import UpstreamCredential

UP = "routes[0].auth.upstream"
CLIENT = {"id": "mcp-proxy", "secret": "${env.PROXY_SECRET}"}
ENV = {"PROXY_SECRET": "proxy-secret", "CACHE_KEY": base64.b64encode(bytes(range(32))).decode()}


def load(upstream: dict[str, Any], cache: dict[str, Any] | None = None) -> Config:
    spec: dict[str, Any] = {
        "routes": [
            {
                "name": "tool",
                "path": "/tool",
                "upstream": "http://127.0.0.1:9/mcp",
                "auth": {"upstream": upstream},
            }
        ]
    }
    if cache is not None:
        spec["cache"] = cache
    return parse_config(yaml.safe_dump(spec), ENV)


def exchange_of(config: Config) -> Any:
    upstream = config.routes[0].auth.upstream
    assert isinstance(upstream, ExchangeUpstreamAuth)
    return upstream.exchange


def te(**extra: Any) -> dict[str, Any]:
    return {"type": "token_exchange", "token_endpoint": "https://as.example/token", "client": CLIENT, **extra}


def refused(upstream: dict[str, Any], cache: dict[str, Any] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(upstream, cache)
    return info.value


def pem_file(tmp_path: Path, key: Any, name: str = "key.pem") -> str:
    path = tmp_path / name
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(path)


# --- accepted shapes ----------------------------------------------------------------------------


def test_token_exchange_full() -> None:
    config = load(
        te(
            issuer="https://as.example",
            audience=["tool-a", "tool-b"],
            resource="https://tool.example/mcp",
            scope="tools.read tools.write",
            subject_token_type="jwt",
            requested_token_type="access_token",
            actor={"scope": ["proxy"]},
            extra_params={"tenant": "acme"},
            skew_s=10,
            negative_ttl_s=2,
            timeout_s=3,
        )
    )
    s = exchange_of(config)
    assert isinstance(s, TokenExchangeSettings)
    assert s.audience == ("tool-a", "tool-b")
    assert s.resource == ("https://tool.example/mcp",)
    assert s.scope == ("tools.read", "tools.write")
    assert s.subject_token_type == "urn:ietf:params:oauth:token-type:jwt"
    assert s.requested_token_type == ACCESS_TOKEN
    assert s.actor is not None and s.actor.scope == ("proxy",)
    assert s.extra_params == (("tenant", "acme"),)
    assert s.timing.skew_s == 10 and s.timing.negative_ttl_s == 2
    assert s.server.timeout_s == 3
    assert s.client.auth_method == "client_secret_basic"
    assert s.client.secret is not None and s.client.secret.reveal() == "proxy-secret"
    assert "proxy-secret" not in repr(config)
    assert needs_subject(s)


def test_defaults_and_loopback_http() -> None:
    s = exchange_of(load({"type": "token_exchange", "issuer": "http://127.0.0.1:9400", "client": CLIENT}))
    assert s.subject_token_type == ACCESS_TOKEN
    assert s.requested_token_type is None
    assert s.server.issuer == "http://127.0.0.1:9400" and s.server.token_endpoint is None
    assert (s.timing.skew_s, s.timing.negative_ttl_s, s.timing.default_lifetime_s) == (30, 5, 60)


def test_allow_insecure_permits_plain_http() -> None:
    s = exchange_of(load(te(token_endpoint="http://as.internal/token", allow_insecure=True)))
    assert s.server.allow_insecure


def test_jwt_bearer() -> None:
    s = exchange_of(load({"type": "jwt_bearer", "token_endpoint": "https://as/token", "client": CLIENT,
                          "scope": ["inventory.read"]}))
    assert isinstance(s, JwtBearerSettings) and s.scope == ("inventory.read",)


def test_id_jag_audience_defaults_to_resource_as_issuer() -> None:
    s = exchange_of(
        load(
            {
                "type": "id_jag",
                "issuer": "https://idp.example",
                "client": CLIENT,
                "resource_as": {
                    "issuer": "https://as.tool.example",
                    "client": {"id": "tool-client", "secret": "t"},
                    "scope": "tools.read",
                },
            }
        )
    )
    assert isinstance(s, IdJagSettings)
    assert s.audience == "https://as.tool.example"
    assert s.subject_token_type == ID_TOKEN
    assert s.resource_as.scope == ("tools.read",)
    assert ID_JAG.endswith("id-jag")


def test_entra_obo_tenant_builds_endpoint() -> None:
    s = exchange_of(
        load({"type": "entra_obo", "tenant": "contoso.onmicrosoft.com", "client": CLIENT,
              "scope": "api://1111-2222/.default"})
    )
    assert isinstance(s, EntraOboSettings)
    assert s.server.token_endpoint == (
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    )


def test_client_credentials_needs_no_subject() -> None:
    config = load({"type": "client_credentials", "token_endpoint": "https://as/token", "client": CLIENT})
    s = exchange_of(config)
    assert isinstance(s, ClientCredentialsSettings)
    assert not needs_subject(s)
    assert config.routes[0].auth.upstream.needs_subject is False


def test_private_key_jwt_rsa_and_ec(tmp_path: Path) -> None:
    rsa_file = pem_file(tmp_path, rsa.generate_private_key(65537, 2048), "rsa.pem")
    ec_file = pem_file(tmp_path, ec.generate_private_key(ec.SECP256R1()), "ec.pem")
    s = exchange_of(load(te(client={"id": "c", "private_key_file": rsa_file, "key_id": "k1"})))
    assert (s.client.auth_method, s.client.signing_alg, s.client.key_id) == ("private_key_jwt", "RS256", "k1")
    s = exchange_of(load(te(client={"id": "c", "auth_method": "private_key_jwt", "private_key_file": ec_file})))
    assert s.client.signing_alg == "ES256"


def test_cache_memory_and_redis() -> None:
    config = load(te(), cache={"max_entries": 50})
    assert config.cache is not None and config.cache.backend == "memory" and config.cache.max_entries == 50
    hex_key = bytes(range(32)).hex()
    for key in ("${env.CACHE_KEY}", hex_key):
        config = load(te(), cache={"backend": "redis", "url": "redis://:pw@127.0.0.1:6379/0",
                                   "encryption_key": key, "lock_timeout_s": 2})
        assert config.cache is not None and config.cache.redis is not None
        assert config.cache.redis.key_bytes() == bytes(range(32))
        assert "pw@" not in repr(config)


# --- refusals, each with its path ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "path", "words"),
    [
        (te(token_endpoint="http://as.example/token"), f"{UP}.token_endpoint", "https"),
        ({"type": "token_exchange", "issuer": "http://as.example", "client": CLIENT}, f"{UP}.issuer", "https"),
        ({"type": "token_exchange", "client": CLIENT}, f"{UP}.issuer", "token_endpoint"),
        (te(token_endpoint="https://u:p@as/token"), f"{UP}.token_endpoint", "credentials"),
        (te(token_endpoint="https://as/token#x"), f"{UP}.token_endpoint", "fragment"),
        (te(token_endpoint="ftp://as/token"), f"{UP}.token_endpoint", "http"),
        (te(extra_params={"subject_token": "x"}), f"{UP}.extra_params.subject_token", "set by the proxy"),
        (te(extra_params={"Client_Secret": "x"}), f"{UP}.extra_params.Client_Secret", "set by the proxy"),
        (te(extra_params={"bad name": "x"}), f"{UP}.extra_params.bad name", "parameter name"),
        (te(extra_params={"x": "a\nb"}), f"{UP}.extra_params.x", "control"),
        (te(extra_params=["x"]), f"{UP}.extra_params", "mapping"),
        (te(resource=["https://tool/#frag"]), f"{UP}.resource[0]", "fragment"),
        (te(resource=["/relative"]), f"{UP}.resource[0]", "absolute URI"),
        (te(resource=["https://ok", "no-scheme"]), f"{UP}.resource[1]", "absolute URI"),
        (te(scope=['bad"scope']), f"{UP}.scope[0]", "valid scope"),
        (te(subject_token_type="not a uri"), f"{UP}.subject_token_type", "token type"),
        (te(skew_s=-1), f"{UP}.skew_s", "between"),
        (te(timeout_s=0), f"{UP}.timeout_s", "between"),
        (te(surprise=True), f"{UP}.surprise", "unknown key"),
        (te(actor={"scopes": "x"}), f"{UP}.actor.scopes", "unknown key"),
        (te(client={"id": "c"}), f"{UP}.client.secret", "required"),
        (te(client={"secret": "s"}), f"{UP}.client.id", "required"),
        (te(client={"id": "c", "secret": "s", "auth_method": "tls"}), f"{UP}.client.auth_method", "one of"),
        (te(client={"id": "c", "secret": "s", "key_id": "k"}), f"{UP}.client.key_id", "private_key_jwt"),
        (te(client={"id": "c", "auth_method": "private_key_jwt"}), f"{UP}.client.private_key_file", "required"),
        (te(client={"id": "c", "auth_method": "private_key_jwt", "private_key_file": "/nonexistent.pem"}),
         f"{UP}.client.private_key_file", "cannot read"),
        (te(client={"id": "c", "private_key": "not a key"}), f"{UP}.client.private_key_file", "PEM"),
        (te(client={"id": "c", "secret": "s", "extra": 1}), f"{UP}.client.extra", "unknown key"),
        ({"type": "jwt_bearer", "token_endpoint": "https://as/token", "client": CLIENT, "actor": {}},
         f"{UP}.actor", "unknown key"),
        ({"type": "id_jag", "token_endpoint": "https://idp/token", "client": CLIENT,
          "resource_as": {"token_endpoint": "https://as/token", "client": CLIENT}},
         f"{UP}.audience", "resource_as"),
        ({"type": "id_jag", "token_endpoint": "https://idp/token", "client": CLIENT,
          "resource_as": {"token_endpoint": "http://as/token", "client": CLIENT}},
         f"{UP}.resource_as.token_endpoint", "https"),
        ({"type": "id_jag", "token_endpoint": "https://idp/token", "client": CLIENT},
         f"{UP}.resource_as", "required"),
        ({"type": "entra_obo", "tenant": "t", "client": CLIENT}, f"{UP}.scope", "required"),
        ({"type": "entra_obo", "tenant": "t", "client": CLIENT, "scope": ["api://a/.default", "api://b/x"]},
         f"{UP}.scope", "one resource"),
        ({"type": "entra_obo", "tenant": "t", "token_endpoint": "https://x/token", "client": CLIENT,
          "scope": "api://a/.default"}, f"{UP}.tenant", "not both"),
        ({"type": "entra_obo", "tenant": "bad/tenant", "client": CLIENT, "scope": "api://a/.default"},
         f"{UP}.tenant", "tenant id"),
    ],
)
def test_refusals_name_their_path(upstream: dict[str, Any], path: str, words: str) -> None:
    err = refused(upstream)
    assert err.path == path, str(err)
    assert words in err.message, str(err)


def test_small_rsa_key_and_wrong_curve_refused(tmp_path: Path) -> None:
    small = pem_file(tmp_path, rsa.generate_private_key(65537, 1024), "small.pem")
    err = refused(te(client={"id": "c", "private_key_file": small}))
    assert err.path == f"{UP}.client.private_key_file" and "2048" in err.message
    p384 = pem_file(tmp_path, ec.generate_private_key(ec.SECP384R1()), "p384.pem")
    err = refused(te(client={"id": "c", "private_key_file": p384}))
    assert err.path == f"{UP}.client.private_key_file" and "P-256" in err.message


@pytest.mark.parametrize(
    ("cache", "path", "words"),
    [
        ({"backend": "redis", "encryption_key": "${env.CACHE_KEY}"}, "cache.url", "required"),
        ({"backend": "redis", "url": "http://x", "encryption_key": "${env.CACHE_KEY}"}, "cache.url", "redis://"),
        ({"backend": "redis", "url": "redis://x"}, "cache.encryption_key", "required"),
        ({"backend": "redis", "url": "redis://x", "encryption_key": "c2hvcnQ="}, "cache.encryption_key", "32-byte"),
        ({"backend": "redis", "url": "redis://x", "encryption_key": "zz" * 32}, "cache.encryption_key", "32-byte"),
        ({"backend": "memcached"}, "cache.backend", "one of"),
        ({"url": "redis://x"}, "cache.url", "only for backend: redis"),
        ({"max_entries": 0}, "cache.max_entries", "between"),
        ({"backend": "redis", "url": "redis://x", "encryption_key": "${env.CACHE_KEY}", "lock": 1},
         "cache.lock", "unknown key"),
    ],
)
def test_cache_refusals(cache: dict[str, Any], path: str, words: str) -> None:
    err = refused(te(), cache)
    assert err.path == path, str(err)
    assert words in err.message, str(err)


class _Tokens:
    """A token source that hands out whatever token it is told to (UpstreamCredential's formatting
    is under test here, not the exchange)."""

    def __init__(self) -> None:
        self.token = Secret("first-token")

    def peek(self, subject: Secret | None) -> Secret | None:
        return self.token

    async def get(self, subject: Secret | None) -> Secret:
        return self.token

    async def invalidate(self, subject: Secret | None, rejected: Secret | None = None) -> None:
        pass


def _exchange_credential(fmt: str) -> tuple[UpstreamCredential, _Tokens, Subject]:
    """An exchange route's credential (header X-Upstream-Token, ``fmt``) over _Tokens, and a caller."""
    rule = load(te(header="X-Upstream-Token", format=fmt)).routes[0].auth.upstream
    tokens = _Tokens()
    return UpstreamCredential(rule, tokens), tokens, Subject(Secret("caller"), "authorization")


async def test_the_header_value_follows_the_token_it_is_made_of() -> None:
    credential, tokens, subject = _exchange_credential("Token {token}!")
    first = credential.value_now(subject)
    assert first == "Token first-token!"
    assert credential.value_now(subject) is first  # the same token: the value made of it, kept
    tokens.token = Secret("second-token")  # a new token (a refresh, another caller's)
    assert credential.value_now(subject) == "Token second-token!"
    assert await credential.value(subject) == "Token second-token!"
    tokens.token = Secret("first-token")  # an equal token in a new Secret is formatted anew
    assert await credential.value(subject) == "Token first-token!"


async def test_the_field_line_follows_the_token_it_is_made_of() -> None:
    """header_line keeps the line (and the check) for the value it keeps, and makes any other."""
    credential, tokens, subject = _exchange_credential("Token {token}")
    good = credential.value_now(subject)
    assert isinstance(good, str)
    line = credential.header_line(good)
    assert line == "X-Upstream-Token: Token first-token"
    assert credential.header_line(good) is line  # the kept value: the line made of it, kept
    tokens.token = Secret("bad\r\nX-Injected: 1")  # an OAuth server's token with a line break
    bad = credential.value_now(subject)
    assert isinstance(bad, str)
    assert credential.header_line(bad) is None
    assert credential.header_line(credential.value_now(subject)) is None  # remembered
    assert credential.header_line(good) == line  # no longer the kept value: made afresh
    assert credential.header_line("Token a\0b") is None


def test_a_static_credential_line_is_made_once() -> None:
    rule = StaticUpstreamAuth(header="X-Api-Key", format="{token}", secret=Secret("k3y"))
    credential = UpstreamCredential(rule)
    value = credential.value_now(None)
    assert isinstance(value, str)
    assert credential.header_line(value) == "X-Api-Key: k3y"
    assert credential.header_line(value) is credential.header_line(value)


async def test_a_forwarded_value_follows_the_callers_token() -> None:
    credential = UpstreamCredential(ForwardUpstreamAuth(header="X-Token", format="Token {token}"))
    alice, bob = Subject(Secret("alice-token"), "authorization"), Subject(Secret("bob-token"), "authorization")
    first = credential.value_now(alice)
    assert first == "Token alice-token"
    assert credential.value_now(alice) is first  # the same caller's Secret: the value made of it, kept
    assert credential.value_now(bob) == "Token bob-token"
    assert await credential.value(alice) == "Token alice-token"
