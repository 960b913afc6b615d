"""The in-process token cache and the per-route TokenSource, with a scripted grant: digest keys,
expiry, single-flight, cancellation, negative entries, invalidation, lifetime rules."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from structlog.testing import capture_logs

from mcpproxy.config.exchange import (
    AuthServer,
    ClientCredentialsSettings,
    ClientSettings,
    Timing,
    TokenExchangeSettings,
)
from mcpproxy.errors import ProxyError, unauthorized
from mcpproxy.metrics import Registry
from mcpproxy.oauth.errors import TokenEndpointError
from mcpproxy.oauth.response import Issued
from mcpproxy.oauth.tokens import TokenSource
from mcpproxy.secrets import Secret
from mcpproxy.tokencache import Fresh, MemoryTokenCache, key_hasher, settings_digest


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings(**over: Any) -> TokenExchangeSettings:
    base: dict[str, Any] = {
        "server": AuthServer(None, "https://as.example/token"),
        "client": ClientSettings("mcp-proxy", "client_secret_basic", Secret("proxy-secret")),
        "audience": ("tool",),
        "timing": Timing(skew_s=30, negative_ttl_s=5, default_lifetime_s=60),
    }
    return TokenExchangeSettings(**{**base, **over})


def noop(_: str) -> None:
    pass


class Notes(list[str]):
    def __call__(self, result: str) -> None:
        self.append(result)


# --- keys ---------------------------------------------------------------------------------------


def test_keys_are_digests_of_all_inputs() -> None:
    d1, d2 = settings_digest(settings()), settings_digest(settings(audience=("other",)))
    key1, key2 = key_hasher(d1), key_hasher(d2)
    alice, bob, actor = Secret("alice-token"), Secret("bob-token"), Secret("actor-token")
    keys = {
        key1(alice, None),
        key1(bob, None),
        key2(alice, None),
        key1(alice, actor),
        key1(None, None),
        key1(Secret(""), None),
    }
    assert len(keys) == 6
    assert key1(alice, None) == key_hasher(settings_digest(settings()))(Secret("alice-token"), None)
    for key in keys:
        assert len(key) == 32 and b"alice" not in key


def test_remembered_keys_are_the_keys() -> None:
    """The hasher remembers the keys of subjects without an actor (bounded); what it answers
    from memory is what it computes, before and after its memory fills up."""
    from mcpproxy import tokencache

    digest = settings_digest(settings())
    remembering, fresh = key_hasher(digest), key_hasher(digest)
    subjects = [f"user-{i}-token" for i in range(tokencache._MAX_KNOWN + 50)]
    first = [remembering(Secret(s), None) for s in subjects]
    assert first == [fresh(Secret(s), None) for s in subjects]  # a new hasher: nothing remembered
    assert [remembering(Secret(s), None) for s in subjects[::-1]] == first[::-1]
    assert remembering(Secret(subjects[0]), Secret("actor")) != first[0]


def test_settings_digest_uses_secret_fingerprints_only() -> None:
    a = settings()
    b = settings(client=ClientSettings("mcp-proxy", "client_secret_basic", Secret("rotated")))
    assert settings_digest(a) != settings_digest(b)
    assert settings_digest(a) == settings_digest(settings())


# --- memory cache -------------------------------------------------------------------------------


async def test_single_flight_100_concurrent_misses_one_fetch() -> None:
    cache = MemoryTokenCache()
    calls = 0
    release = asyncio.Event()

    async def fetch() -> Fresh:
        nonlocal calls
        calls += 1
        await release.wait()
        return Fresh(Secret("upstream-token"), 100)

    notes = Notes()
    waiters = [asyncio.create_task(cache.get_or_fetch(b"k", fetch, negative_ttl=5, note=notes))
               for _ in range(100)]
    await asyncio.sleep(0)
    release.set()
    tokens = await asyncio.gather(*waiters)
    assert calls == 1
    assert {t.reveal() for t in tokens} == {"upstream-token"}
    assert notes.count("joined") == 99
    assert (await cache.get_or_fetch(b"k", fetch, negative_ttl=5, note=notes)).reveal() == "upstream-token"
    assert notes[-1] == "hit" and calls == 1


async def test_waiters_share_an_error_and_unavailability_is_not_remembered() -> None:
    cache = MemoryTokenCache()
    calls = 0

    async def fetch() -> Fresh:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise ProxyError(503, "down", retry_after=5)

    results = await asyncio.gather(
        *(cache.get_or_fetch(b"k", fetch, negative_ttl=5, note=noop) for _ in range(20)),
        return_exceptions=True,
    )
    assert calls == 1
    assert all(isinstance(r, ProxyError) and r.status == 503 for r in results)
    with pytest.raises(ProxyError):
        await cache.get_or_fetch(b"k", fetch, negative_ttl=5, note=noop)
    assert calls == 2


async def test_cancelled_waiter_does_not_cancel_the_fetch() -> None:
    cache = MemoryTokenCache()
    started, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def fetch() -> Fresh:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return Fresh(Secret("t"), 100)

    first = asyncio.create_task(cache.get_or_fetch(b"k", fetch, negative_ttl=5, note=noop))
    await started.wait()
    second = asyncio.create_task(cache.get_or_fetch(b"k", fetch, negative_ttl=5, note=noop))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    release.set()
    assert (await second).reveal() == "t"
    assert first.cancelled()
    assert calls == 1

    # Every waiter gone: the fetch still completes and fills the cache.
    started.clear()
    release.clear()
    lone = asyncio.create_task(cache.get_or_fetch(b"k2", fetch, negative_ttl=5, note=noop))
    await started.wait()
    lone.cancel()
    release.set()
    await asyncio.sleep(0.01)
    notes = Notes()
    assert (await cache.get_or_fetch(b"k2", fetch, negative_ttl=5, note=notes)).reveal() == "t"
    assert notes == ["hit"] and calls == 2


async def test_expiry_and_uncacheable_tokens() -> None:
    clock = Clock()
    cache = MemoryTokenCache(clock=clock)
    served = iter(["t1", "t2", "t3", "t4"])
    ttl = 10.0

    async def fetch() -> Fresh:
        return Fresh(Secret(next(served)), ttl)

    async def get() -> Secret:
        return await cache.get_or_fetch(b"k", fetch, negative_ttl=5, note=noop)

    assert (await get()).reveal() == "t1"
    clock.now += 9.9
    assert (await get()).reveal() == "t1"
    clock.now += 0.2
    assert (await get()).reveal() == "t2"
    ttl = 0
    clock.now += 11
    assert (await get()).reveal() == "t3"
    assert (await get()).reveal() == "t4"  # ttl 0: never cached


async def test_negative_entries_for_refusals_only() -> None:
    clock = Clock()
    cache = MemoryTokenCache(clock=clock)
    calls = 0

    async def refuse() -> Fresh:
        nonlocal calls
        calls += 1
        raise unauthorized("refused", error="invalid_token", reason="token_refused")

    notes = Notes()
    for _ in range(3):
        with pytest.raises(ProxyError) as info:
            await cache.get_or_fetch(b"k", refuse, negative_ttl=5, note=notes)
        assert info.value.status == 401 and info.value.www_authenticate
    assert calls == 1 and notes == ["negative", "negative"]
    clock.now += 5.1
    with pytest.raises(ProxyError):
        await cache.get_or_fetch(b"k", refuse, negative_ttl=5, note=notes)
    assert calls == 2
    with pytest.raises(ProxyError):
        await cache.get_or_fetch(b"k2", refuse, negative_ttl=0, note=notes)
    with pytest.raises(ProxyError):
        await cache.get_or_fetch(b"k2", refuse, negative_ttl=0, note=notes)
    assert calls == 4  # negative_ttl 0 disables it


async def test_bounded_entries() -> None:
    cache = MemoryTokenCache(max_entries=3)

    async def fetch() -> Fresh:
        return Fresh(Secret("t"), 100)

    for i in range(10):
        await cache.get_or_fetch(bytes([i]), fetch, negative_ttl=5, note=noop)
    assert len(cache) == 3


async def test_full_cache_drops_expired_entries_first_then_the_least_recently_used() -> None:
    clock = Clock()
    cache = MemoryTokenCache(max_entries=3, clock=clock)
    ttls = {b"old": 100.0, b"short": 1.0, b"used": 100.0, b"new": 100.0, b"newer": 100.0}

    async def get(key: bytes) -> None:
        async def fetch() -> Fresh:
            return Fresh(Secret(key.decode()), ttls[key])

        await cache.get_or_fetch(key, fetch, negative_ttl=5, note=noop)

    for key in (b"old", b"short", b"used"):
        await get(key)
    clock.now += 2  # "short" has expired; "old" is the least recently used live entry
    await get(b"new")
    assert cache.peek(b"old", noop) is not None and cache.peek(b"short", noop) is None
    await get(b"used")  # order of use now: new, old (peeked above), used
    await get(b"newer")
    assert cache.peek(b"new", noop) is None and cache.peek(b"old", noop) is not None
    assert cache.peek(b"used", noop) is not None and cache.peek(b"newer", noop) is not None
    assert len(cache) == 3


async def test_invalidate_only_the_rejected_token() -> None:
    cache = MemoryTokenCache()
    served = iter(["t1", "t2"])

    async def fetch() -> Fresh:
        return Fresh(Secret(next(served)), 100)

    assert (await cache.get_or_fetch(b"k", fetch, negative_ttl=5, note=noop)).reveal() == "t1"
    await cache.invalidate(b"k", Secret("some-older-token"))
    assert (await cache.get_or_fetch(b"k", fetch, negative_ttl=5, note=noop)).reveal() == "t1"
    await cache.invalidate(b"k", Secret("t1"))
    assert (await cache.get_or_fetch(b"k", fetch, negative_ttl=5, note=noop)).reveal() == "t2"


# --- TokenSource --------------------------------------------------------------------------------


class ScriptedGrant:
    kind = "token_exchange"

    def __init__(self, answer: Callable[[Secret | None, Secret | None], Issued] | None = None) -> None:
        self.calls: list[tuple[Secret | None, Secret | None]] = []
        self.answer = answer or (lambda s, a: Issued(Secret(f"up-{len(self.calls)}"), 3600, None, "Bearer"))
        self.delay = 0.0

    async def issue(self, subject: Secret | None, actor: Secret | None) -> Issued:
        self.calls.append((subject, actor))
        issued = self.answer(subject, actor)
        await asyncio.sleep(self.delay)
        return issued


def user_jwt(sub: str, exp: float) -> Secret:
    return Secret(jwt.encode({"sub": sub, "exp": int(exp)}, "k" * 32, algorithm="HS256"))


async def test_source_single_flight_and_per_user_tokens() -> None:
    metrics = Registry()
    grant = ScriptedGrant()
    grant.delay = 0.02
    source = TokenSource("tool", settings(), grant, MemoryTokenCache(), metrics)
    alice, bob = Secret("alice-token"), Secret("bob-token")
    tokens = await asyncio.gather(*(source.get(alice) for _ in range(100)), source.get(bob))
    assert len(grant.calls) == 2
    assert len({t.reveal() for t in tokens[:100]}) == 1
    assert tokens[100] != tokens[0]
    assert metrics.cache.value(route="tool", result="miss") == 2
    assert metrics.cache.value(route="tool", result="joined") == 99
    await source.get(alice)
    assert metrics.cache.value(route="tool", result="hit") == 1


async def test_source_lifetime_follows_subject_exp_and_skew() -> None:
    wall = Clock(1_700_000_000)
    mono = Clock()
    grant = ScriptedGrant()
    source = TokenSource("tool", settings(), grant, MemoryTokenCache(clock=mono), Registry(), wall=wall)
    subject = user_jwt("alice", wall.now + 100)  # the user's token ends long before the 3600 s
    await source.get(subject)
    mono.now += 69
    await source.get(subject)
    assert len(grant.calls) == 1
    mono.now += 2  # 100 - 30 s skew = 70 s
    await source.get(subject)
    assert len(grant.calls) == 2


async def test_missing_expires_in_uses_default_and_warns_once() -> None:
    mono = Clock()
    grant = ScriptedGrant(lambda s, a: Issued(Secret("t"), None))
    source = TokenSource("tool", settings(), grant, MemoryTokenCache(clock=mono), Registry())
    with capture_logs() as logs:
        await source.get(Secret("a"))
        await source.get(Secret("b"))
    assert [e["event"] for e in logs].count(
        "the authorization server gave no expires_in; assuming default_lifetime_s"
    ) == 1
    mono.now += 29  # default 60 s, skew clamped to half: 30 s
    await source.get(Secret("a"))
    assert len(grant.calls) == 2
    mono.now += 2
    await source.get(Secret("a"))
    assert len(grant.calls) == 3


async def test_source_invalidate_then_refetch() -> None:
    grant = ScriptedGrant()
    source = TokenSource("tool", settings(), grant, MemoryTokenCache(), Registry())
    first = await source.get(Secret("alice-token"))
    await source.invalidate(Secret("alice-token"), rejected=first)
    second = await source.get(Secret("alice-token"))
    assert first != second and len(grant.calls) == 2
    await source.invalidate(Secret("alice-token"), rejected=first)  # already replaced: kept
    assert await source.get(Secret("alice-token")) == second


async def test_source_requires_a_subject_unless_client_credentials() -> None:
    source = TokenSource("tool", settings(), ScriptedGrant(), MemoryTokenCache(), Registry())
    for missing in (None, Secret("")):
        with pytest.raises(ProxyError) as info:
            await source.get(missing)
        assert info.value.status == 401
    cc = ClientCredentialsSettings(AuthServer(None, "https://as/token"),
                                   ClientSettings("c", "client_secret_basic", Secret("s")))
    grant = ScriptedGrant()
    own = TokenSource("svc", cc, grant, MemoryTokenCache(), Registry())
    assert await own.get(None) == await own.get(Secret("ignored"))
    assert grant.calls == [(None, None)]


async def test_source_maps_endpoint_errors_with_the_route_and_remembers_refusals() -> None:
    metrics = Registry()

    def refuse(s: Secret | None, a: Secret | None) -> Issued:
        raise TokenEndpointError("refused", "token_exchange at https://as/token: HTTP 400, error=invalid_grant")

    grant = ScriptedGrant(refuse)
    source = TokenSource("tool", settings(), grant, MemoryTokenCache(), metrics)
    for _ in range(3):
        with pytest.raises(ProxyError) as info:
            await source.get(Secret("bad-token"))
        assert info.value.status == 401 and "route tool" in info.value.detail
    assert len(grant.calls) == 1
    assert metrics.cache.value(route="tool", result="negative") == 2

    def misconfigured(s: Secret | None, a: Secret | None) -> Issued:
        raise TokenEndpointError("misconfigured", "HTTP 401, error=invalid_client")

    source = TokenSource("tool", settings(), ScriptedGrant(misconfigured), MemoryTokenCache(), metrics)
    with pytest.raises(ProxyError) as info:
        await source.get(Secret("t"))
    assert (info.value.status, info.value.message) == (502, "upstream credentials misconfigured for route tool")


async def test_actor_token_is_part_of_the_key() -> None:
    cc = ClientCredentialsSettings(AuthServer(None, "https://as/token"),
                                   ClientSettings("c", "client_secret_basic", Secret("s")))
    mono = Clock()
    cache = MemoryTokenCache(clock=mono)
    actor_grant = ScriptedGrant(lambda s, a: Issued(Secret(f"actor-{len(actor_grant.calls)}"), 100))
    actor = TokenSource("tool:actor", cc, actor_grant, cache, Registry())
    grant = ScriptedGrant()
    source = TokenSource("tool", settings(), grant, cache, Registry(), actor=actor)
    await source.get(Secret("alice"))
    await source.get(Secret("alice"))
    assert [a.reveal() if a else None for _, a in grant.calls] == ["actor-1"]
    mono.now += 80  # the actor token is refreshed (100 - 30 s skew), so the user's token is too
    await source.get(Secret("alice"))
    assert [a.reveal() if a else None for _, a in grant.calls] == ["actor-1", "actor-2"]
