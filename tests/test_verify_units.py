"""The framework-free verification core: JWKS cache (discovery, rate limit, single flight, failure
handling), verifier result cache (never past exp), key/algorithm matching."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mcpproxy.config.inbound import VerifySettings
from mcpproxy.credentials import Subject
from mcpproxy.errors import ProxyError
from mcpproxy.inbound import verify as v
from mcpproxy.inbound.jwks import JwksCache, KeysUnavailable, parse_jwks
from mcpproxy.inbound.verify import TokenVerifier, scopes_of
from mcpproxy.oauth.transport import Form, HttpReply, TransportError
from mcpproxy.secrets import Secret

ISSUER = "https://idp.example/realms/demo"
META = "https://idp.example/.well-known/oauth-authorization-server/realms/demo"
OIDC = "https://idp.example/realms/demo/.well-known/openid-configuration"
JWKS = "https://idp.example/realms/demo/certs"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def jwk(key: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any]
    if isinstance(key, rsa.RSAPrivateKey):
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    else:
        data = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    if kid is not None:
        data["kid"] = kid
    data.update(extra)
    return data


class FakeIdp:
    """A TokenHttp answering metadata and JWKS requests; counts them; can fail or stall."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.calls: list[str] = []
        self.fail: Exception | int | None = None
        self.gate: asyncio.Event | None = None
        self.metadata: dict[str, Any] = {"issuer": ISSUER, "jwks_uri": JWKS}

    async def post_form(
        self, url: str, form: Form, headers: Mapping[str, str], timeout_s: float
    ) -> HttpReply:
        raise AssertionError("no token requests here")

    async def get_json(self, url: str, timeout_s: float) -> HttpReply:
        self.calls.append(url)
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.fail, Exception):
            raise self.fail
        if url == META:
            return HttpReply(200, {}, json.dumps(self.metadata).encode())
        if url == JWKS:
            if isinstance(self.fail, int):
                return HttpReply(self.fail, {}, b"")
            return HttpReply(200, {}, json.dumps({"keys": self.keys}).encode())
        return HttpReply(404, {}, b"")

    def count(self, url: str) -> int:
        return self.calls.count(url)


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())
ED = ed25519.Ed25519PrivateKey.generate()


def cache(idp: FakeIdp, clock: Clock, **kw: Any) -> JwksCache:
    return JwksCache(ISSUER, idp, clock=clock, **{"refresh_min_s": 30, "max_age_s": 300, **kw})


async def test_discovery_then_jwks_then_cached() -> None:
    idp, clock = FakeIdp([jwk(RSA, "k1")]), Clock()
    keys = cache(idp, clock)
    assert (await keys.key("k1", "RS256")) is not None
    assert (await keys.key("k1", "RS256")) is not None
    assert idp.calls == [META, JWKS]


async def test_oidc_discovery_fallback_and_issuer_check() -> None:
    idp, clock = FakeIdp([jwk(RSA, "k1")]), Clock()

    async def only_oidc(url: str, timeout_s: float) -> HttpReply:
        idp.calls.append(url)
        if url == OIDC:
            return HttpReply(200, {}, json.dumps(idp.metadata).encode())
        if url == JWKS:
            return HttpReply(200, {}, json.dumps({"keys": idp.keys}).encode())
        return HttpReply(404, {}, b"")

    idp.get_json = only_oidc  # type: ignore[method-assign]
    assert await cache(idp, clock).key("k1", "RS256") is not None
    assert idp.calls == [META, OIDC, JWKS]
    idp.metadata = {"issuer": "https://evil.example", "jwks_uri": JWKS}
    with pytest.raises(KeysUnavailable, match="another issuer"):
        await cache(idp, clock).key("k1", "RS256")
    idp.metadata = {"issuer": ISSUER, "jwks_uri": "http://idp.example/certs"}
    with pytest.raises(KeysUnavailable, match="https"):
        await cache(idp, clock).key("k1", "RS256")


async def test_unknown_kid_refetch_rate_limited() -> None:
    idp, clock = FakeIdp([jwk(RSA, "k1")]), Clock()
    keys = cache(idp, clock)
    await keys.key("k1", "RS256")
    for i in range(100):
        assert await keys.key(f"random-{i}", "RS256") is None
    assert idp.count(JWKS) == 1
    clock.now += 30
    idp.keys.append(jwk(RSA2, "k2"))
    results = await asyncio.gather(*(keys.key(f"x{i}", "RS256") for i in range(50)), keys.key("k2", "RS256"))
    assert results[-1] is not None and results[:-1] == [None] * 50
    assert idp.count(JWKS) == 2  # one refetch served all 51


async def test_single_flight_for_concurrent_first_use() -> None:
    idp, clock = FakeIdp([jwk(RSA, "k1")]), Clock()
    idp.gate = asyncio.Event()
    keys = cache(idp, clock)
    waiting = [asyncio.create_task(keys.key("k1", "RS256")) for _ in range(20)]
    await asyncio.sleep(0.01)
    idp.gate.set()
    assert all(k is not None for k in await asyncio.gather(*waiting))
    assert idp.count(JWKS) == 1 and idp.count(META) == 1


async def test_a_cancelled_caller_does_not_cancel_the_fetch() -> None:
    idp, clock = FakeIdp([jwk(RSA, "k1")]), Clock()
    idp.gate = asyncio.Event()
    keys = cache(idp, clock)
    first = asyncio.create_task(keys.key("k1", "RS256"))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(keys.key("k1", "RS256"))
    await asyncio.sleep(0.01)
    first.cancel()
    idp.gate.set()
    assert await second is not None
    assert idp.count(JWKS) == 1


async def test_failures_keep_known_keys_and_back_off() -> None:
    idp, clock = FakeIdp([jwk(RSA, "k1")]), Clock()
    keys = cache(idp, clock)
    await keys.key("k1", "RS256")
    idp.fail = TransportError("down")
    clock.now += 301  # stale: refreshed in the background, the held keys still answer
    assert await keys.key("k1", "RS256") is not None
    await asyncio.sleep(0.01)
    assert await keys.key("k1", "RS256") is not None
    assert idp.count(META) + idp.count(JWKS) == 2 + 1  # exactly one failed attempt


async def test_no_keys_at_all_is_unavailable_with_backoff() -> None:
    idp, clock = FakeIdp([jwk(RSA, "k1")]), Clock()
    idp.fail = TransportError("down")
    keys = cache(idp, clock)
    with pytest.raises(KeysUnavailable):
        await keys.key("k1", "RS256")
    with pytest.raises(KeysUnavailable, match="not retrying yet"):
        await keys.key("k1", "RS256")
    assert len(idp.calls) == 1
    idp.fail = None
    clock.now += 5
    assert await keys.key("k1", "RS256") is not None


async def test_jwks_404_rediscovers() -> None:
    idp, clock = FakeIdp([jwk(RSA, "k1")]), Clock()
    keys = cache(idp, clock, refresh_min_s=0)
    await keys.key("k1", "RS256")
    idp.fail = 404
    assert await keys.key("other", "RS256") is None
    idp.fail = None
    assert await keys.key("k1", "RS256") is not None  # the keys held still work
    assert idp.count(META) == 1
    assert await keys.key("other-again", "RS256") is None
    assert idp.count(META) == 2  # the JWKS location is looked up again


def test_parse_jwks_keeps_only_public_signature_keys() -> None:
    entries = [
        jwk(RSA, "rsa"),
        jwk(EC, "ec"),
        jwk(ED, "ed"),
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        jwk(RSA2, "enc", use="enc"),
        jwk(RSA2, "signonly", key_ops=["sign"]),
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        "not a key",
        {**jwk(RSA2, "with-private"), "d": "AAAA"},
    ]
    keys = {k.kid: k for k in parse_jwks(json.dumps({"keys": entries}).encode(), ISSUER)}
    assert set(keys) == {"rsa", "ec", "ed", "with-private"}
    assert isinstance(keys["with-private"].key, rsa.RSAPublicKey)  # private members dropped
    assert keys["rsa"].fits("RS256") and keys["rsa"].fits("PS384") and not keys["rsa"].fits("ES256")
    assert keys["ec"].fits("ES256") and not keys["ec"].fits("ES384") and not keys["ec"].fits("RS256")
    assert keys["ed"].fits("EdDSA") and not keys["ed"].fits("HS256")
    with pytest.raises(KeysUnavailable):
        parse_jwks(b'{"nokeys": []}', ISSUER)


async def test_key_alg_pins_the_algorithm_and_kidless_tokens() -> None:
    idp, clock = FakeIdp([jwk(RSA, "k1", alg="RS256"), jwk(EC, None)]), Clock()
    keys = cache(idp, clock)
    assert await keys.key("k1", "PS256") is None  # the JWK says RS256 only
    assert await keys.key(None, "ES256") is not None  # one fitting key: a kid is not needed
    idp2 = FakeIdp([jwk(RSA, "a"), jwk(RSA2, "b")])
    assert await cache(idp2, clock).key(None, "RS256") is None  # ambiguous without a kid
    bare = FakeIdp([jwk(RSA, None)])  # an issuer publishing one key without a kid
    assert await cache(bare, clock).key("whatever-kid", "RS256") is not None


# --- the verifier ----------------------------------------------------------------------------


class StaticKeys:
    def __init__(self, keys: JwksCache) -> None:
        self.inner = keys
        self.lookups = 0

    async def key(self, kid: str | None, alg: str) -> Any:
        self.lookups += 1
        return await self.inner.key(kid, alg)


def settings(**kw: Any) -> VerifySettings:
    return VerifySettings(issuer=ISSUER, audience=("api",), required_scopes=("mcp",), leeway_s=0, **kw)


def sign(key: Any, alg: str, kid: str = "k1", **claims: Any) -> Subject:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": "api", "sub": "u", "scope": "mcp", "exp": now + 3600, "iat": now, **claims}
    return Subject(Secret(jwt.encode(body, key, algorithm=alg, headers={"kid": kid})), "authorization")


@pytest.mark.parametrize(
    ("key", "alg", "kid"),
    [(RSA, "RS256", "k1"), (RSA, "PS512", "k1"), (EC, "ES256", "e1"), (ED, "EdDSA", "d1")],
)
async def test_every_asymmetric_family_verifies(key: Any, alg: str, kid: str) -> None:
    idp = FakeIdp([jwk(RSA, "k1"), jwk(EC, "e1"), jwk(ED, "d1")])
    verifier = TokenVerifier(settings(), cache(idp, Clock()))
    identity = await verifier.verify(sign(key, alg, kid, client_id="c", scope="mcp extra"))
    assert identity.sub == "u" and identity.client_id == "c" and identity.scopes == {"mcp", "extra"}


async def test_result_cache_never_outlives_the_token() -> None:
    idp, clock = FakeIdp([jwk(RSA, "k1")]), Clock()
    wall = [time.time()]
    keys = StaticKeys(cache(idp, clock))
    verifier = TokenVerifier(settings(cache_s=60), keys, clock=clock, wall=lambda: wall[0])
    short = sign(RSA, "RS256", exp=int(wall[0]) + 10)
    await verifier.verify(short)
    await verifier.verify(short)
    assert keys.lookups == 1  # cached
    clock.now += 11  # past exp: the entry lived min(cache_s, exp - now), so it is gone
    wall[0] += 11
    await verifier.verify(short)  # (PyJWT's own clock still says valid) verified afresh
    assert keys.lookups == 2
    long = sign(RSA, "RS256")
    await verifier.verify(long)
    clock.now += 59
    await verifier.verify(long)
    assert keys.lookups == 3
    clock.now += 2  # cache_s passed: verified again
    await verifier.verify(long)
    assert keys.lookups == 4
    expired = sign(RSA, "RS256", exp=int(time.time()) - 5)
    with pytest.raises(ProxyError) as info:
        await verifier.verify(expired)
    assert info.value.status == 401 and info.value.message == v.EXPIRED


async def test_cached_identity_still_needs_the_scope() -> None:
    idp, clock = FakeIdp([jwk(RSA, "k1")]), Clock()
    verifier = TokenVerifier(settings(), cache(idp, clock), clock=clock)
    token = sign(RSA, "RS256", scope="openid")
    for _ in range(2):
        with pytest.raises(ProxyError) as info:
            await verifier.verify(token)
        assert info.value.status == 403 and info.value.reason == "insufficient_scope"


async def test_alg_refused_before_any_key_lookup() -> None:
    idp, clock = FakeIdp([jwk(RSA, "k1")]), Clock()
    keys = StaticKeys(cache(idp, clock))
    verifier = TokenVerifier(settings(algorithms=("ES256",)), keys)
    with pytest.raises(ProxyError) as info:
        await verifier.verify(sign(RSA, "RS256"))
    assert info.value.message == v.ALGORITHM and keys.lookups == 0 and idp.calls == []


def test_scopes_of() -> None:
    assert scopes_of({"scope": "a b  c"}) == {"a", "b", "c"}
    assert scopes_of({"scp": ["x", 1, "y"]}) == {"x", "y"}
    assert scopes_of({"scp": "x y", "scope": "z"}) == {"x", "y", "z"}
    assert scopes_of({"scope": 5}) == frozenset()
