"""The shared token cache: two replicas (two ExchangeRuntimes, each with its own aiohttp session
and Redis client) against one real redis-server and the real test OAuth server."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from redis.asyncio import Redis
from structlog.testing import capture_logs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
pytest_plugins = ["tests.support.oauth", "tests.support.redis_server"]

from mcpproxy.config import parse_config  # noqa: E402
from mcpproxy.errors import ProxyError  # noqa: E402
from mcpproxy.metrics import Registry  # noqa: E402
from mcpproxy.oauth.runtime import ExchangeRuntime  # noqa: E402
from mcpproxy.oauth.tokens import TokenSource  # noqa: E402
from mcpproxy.secrets import Secret  # noqa: E402
from mcpproxy.web.oauth_http import AiohttpTokenHttp  # noqa: E402
from tests.support.oauth import CLIENTS, GRANT_TOKEN_EXCHANGE, OAuthServer  # noqa: E402

if TYPE_CHECKING:
    from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.redis

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(1, 33))).decode()


class Replica:
    def __init__(self, runtime: ExchangeRuntime, http: AiohttpTokenHttp, metrics: Registry) -> None:
        self.runtime, self.http, self.metrics = runtime, http, metrics
        source = runtime.source("tool")
        assert source is not None
        self.source: TokenSource = source

    def cache(self, result: str) -> float:
        return self.metrics.cache.value(route="tool", result=result)


Start = Callable[..., Awaitable[Replica]]
Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def logs(oauth_server: OAuthServer) -> Iterator[Logs]:
    """Every structlog event of the test; none may carry a credential the test handled."""
    with capture_logs() as events:
        yield events
    rendered = "\n".join(json.dumps(e, default=repr) for e in events)
    for value in [*(v for v in CLIENTS.values() if v), KEY_A, KEY_B]:
        assert value not in rendered


@pytest.fixture
async def start(oauth: OAuthServer, redis_db: RedisServer) -> AsyncIterator[Start]:
    replicas: list[Replica] = []

    async def replica(key: str = KEY_A, **cache: Any) -> Replica:
        spec = {
            "routes": [{
                "name": "tool", "path": "/tool", "upstream": "http://127.0.0.1:9/mcp",
                "auth": {"upstream": {
                    "type": "token_exchange", "issuer": oauth.issuer, "audience": "my-external-tool",
                    "client": {"id": "mcp-proxy", "secret": "${env.PROXY_SECRET}"},
                }},
            }],
            "cache": {"backend": "redis", "url": redis_db.url, "encryption_key": "${env.CACHE_KEY}",
                      "timeout_s": 0.5, "retry_s": 0.2, **cache},
        }
        config = parse_config(yaml.safe_dump(spec), {"PROXY_SECRET": "proxy-secret", "CACHE_KEY": key})
        http, metrics = AiohttpTokenHttp(), Registry()
        made = Replica(await ExchangeRuntime.create(config, http, metrics), http, metrics)
        replicas.append(made)
        return made

    yield replica
    for r in replicas:
        await r.runtime.close()
        await r.http.close()


@pytest.fixture
async def raw(redis_db: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_db.url)
    yield client
    await client.aclose()


async def exchanges(oauth: OAuthServer) -> int:
    stats = await oauth.stats()
    return int(stats["grant_types"].get(GRANT_TOKEN_EXCHANGE, {}).get("success", 0))


async def split_gets(a: Replica, b: Replica, subject: Secret, n: int = 50) -> list[Secret]:
    return list(await asyncio.gather(*((a if i % 2 else b).source.get(subject) for i in range(n))))


async def test_two_replicas_50_concurrent_gets_one_exchange(
    oauth: OAuthServer, start: Start, logs: Logs
) -> None:
    a, b = await start(), await start()
    alice = Secret(await oauth.user_token("alice"))
    tokens = await split_gets(a, b, alice)
    assert len({t.reveal() for t in tokens}) == 1
    assert await exchanges(oauth) == 1
    assert a.cache("miss") + b.cache("miss") == 1
    assert a.cache("shared_hit") + b.cache("shared_hit") == 1
    assert a.cache("joined") + b.cache("joined") == 48
    claims = await oauth.decode(tokens[0].reveal(), audience="my-external-tool")
    assert claims["sub"] == "alice"
    # A third replica that starts later reads the shared entry instead of exchanging.
    c = await start()
    assert await c.source.get(alice) == tokens[0]
    assert c.cache("shared_hit") == 1 and await exchanges(oauth) == 1


async def test_entries_are_encrypted_and_expire_with_the_token(
    oauth: OAuthServer, start: Start, raw: Redis, logs: Logs
) -> None:
    a = await start()
    alice = Secret(await oauth.user_token("alice"))
    token = await a.source.get(alice)
    keys = [k.decode() if isinstance(k, bytes) else k for k in await raw.keys("*")]
    assert len(keys) == 1
    name = keys[0]
    assert name.startswith("mcpproxy:token:") and len(name) == len("mcpproxy:token:") + 64
    blob = await raw.get(name)
    assert blob is not None
    for value in (token.reveal(), alice.reveal(), "alice", "proxy-secret"):
        assert value.encode() not in blob and value not in name
    assert token.reveal().split(".")[1][:20].encode() not in blob  # not even a fragment of it
    ttl_ms = await raw.pttl(name)
    assert 3_500_000 < ttl_ms <= 3_570_000  # 3600 s token minus 30 s skew
    assert await raw.keys("*lock:*") == []  # the lock was released


async def test_tampered_or_foreign_entries_are_misses(
    oauth: OAuthServer, start: Start, raw: Redis, logs: Logs
) -> None:
    a = await start()
    alice = Secret(await oauth.user_token("alice"))
    first = await a.source.get(alice)
    [name] = await raw.keys("mcpproxy:token:*")
    stored = await raw.get(name)
    assert isinstance(stored, bytes)
    blob = bytearray(stored)
    blob[-1] ^= 1
    await raw.set(name, bytes(blob), px=60_000)
    b = await start()  # empty memory cache: must go to Redis, and cannot use the entry
    second = await b.source.get(alice)
    assert second != first and await exchanges(oauth) == 2
    other_key = await start(key=KEY_B)  # another deployment's key on the same prefix
    assert await other_key.source.get(alice) != second
    assert await exchanges(oauth) == 3
    warnings = [e for e in logs if "cannot be decrypted" in e["event"]]
    assert len(warnings) == 2  # once per replica


async def test_refusals_are_shared(oauth: OAuthServer, start: Start, logs: Logs) -> None:
    a, b = await start(), await start()
    expired = Secret(await oauth.user_token("alice", expires_in=-10))
    results = await asyncio.gather(*((a if i % 2 else b).source.get(expired) for i in range(20)),
                                   return_exceptions=True)
    assert all(isinstance(r, ProxyError) and r.status == 401 for r in results)
    stats = await oauth.stats()
    assert stats["grant_types"][GRANT_TOKEN_EXCHANGE] == {"success": 0, "error": 1}
    assert a.cache("negative") + b.cache("negative") == 1


async def test_invalidate_removes_the_shared_entry(
    oauth: OAuthServer, start: Start, raw: Redis, logs: Logs
) -> None:
    a = await start()
    alice = Secret(await oauth.user_token("alice"))
    first = await a.source.get(alice)
    await a.source.invalidate(alice, rejected=first)
    assert await raw.keys("mcpproxy:token:*") == []
    b = await start()
    assert await b.source.get(alice) != first
    assert await exchanges(oauth) == 2


async def test_lock_wait_is_bounded(oauth: OAuthServer, start: Start, logs: Logs) -> None:
    """A replica whose peer holds the lock too long does its own exchange instead of hanging."""
    a, b = await start(lock_timeout_s=0.2), await start(lock_timeout_s=0.2)
    await oauth.set_mode(fail="slow", delay_ms=600)
    alice = Secret(await oauth.user_token("alice"))
    first = asyncio.create_task(a.source.get(alice))
    await asyncio.sleep(0.05)
    second = await asyncio.wait_for(b.source.get(alice), timeout=3)
    await first
    assert second.reveal()
    assert await exchanges(oauth) == 2


async def test_redis_down_mid_run_then_back(
    oauth: OAuthServer, start: Start, redis_db: RedisServer, logs: Logs
) -> None:
    a, b = await start(), await start()
    alice, bob, carol = [Secret(await oauth.user_token(n)) for n in ("alice", "bob", "carol")]
    shared = await split_gets(a, b, alice, 10)
    assert await exchanges(oauth) == 1

    redis_db.stop()
    assert await a.source.get(alice) == shared[0]  # memory still serves what it holds
    tokens = await split_gets(a, b, bob, 50)  # each replica exchanges for itself, none fails
    assert len({t.reveal() for t in tokens}) == 2 and await exchanges(oauth) == 3
    for _ in range(3):  # more misses while down: still serving, still logged only once
        await a.source.get(Secret(await oauth.user_token("alice", scope="s")))
    down = [e for e in logs if e["event"].startswith("redis unavailable")]
    assert len(down) == 2 and all(e["log_level"] == "warning" for e in down)  # once per replica

    redis_db.start()
    await asyncio.sleep(0.25)  # retry_s
    tokens = await split_gets(a, b, carol, 50)
    assert len({t.reveal() for t in tokens}) == 1
    assert await exchanges(oauth) == 7  # 3 + the 3 scoped alice tokens + 1 shared for carol
    assert len([e for e in logs if e["event"].startswith("redis reachable again")]) >= 1


async def test_unreachable_at_start_still_serves(
    oauth: OAuthServer, start: Start, redis_db: RedisServer, logs: Logs
) -> None:
    redis_db.stop()
    a = await start()
    alice = Secret(await oauth.user_token("alice"))
    assert await a.source.get(alice) == await a.source.get(alice)
    assert await exchanges(oauth) == 1
    assert [e["event"] for e in logs if e["event"].startswith("redis")] == [
        "redis unavailable; serving tokens from the in-process cache"
    ]
