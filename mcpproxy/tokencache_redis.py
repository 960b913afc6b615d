"""A token cache shared by several replicas through Redis, with the in-process cache in front.

* Entries are encrypted with AES-256-GCM; the Redis key is bound in as associated data, so an
  entry cannot be moved to another key. Keys are the cache digests (never a token), values expire
  with the token (``PX``).
* A miss takes a Redis lock (``SET NX PX`` + a release that checks the lock's random value), so
  concurrent misses across replicas make one exchange; the others poll for the value, bounded by
  the lock timeout, and then fall back to their own exchange.
* A refusal of the caller's token is shared too (encrypted, for the negative TTL).
* If Redis fails, the cache keeps serving from memory (one log line per outage) and tries Redis
  again after ``retry_s``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from mcpproxy.config.exchange import CacheSettings, RedisSettings
from mcpproxy.errors import ProxyError
from mcpproxy.secrets import Secret
from mcpproxy.tokencache import Fetch, Fresh, MemoryTokenCache, Note

log = structlog.get_logger("mcpproxy.tokencache")

_VERSION = b"\x01"
_NONCE_BYTES = 12
_RELEASE = """
if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end
return 0
"""
_POLL_FIRST_S = 0.01
_POLL_MAX_S = 0.2
_FAILURES = (RedisError, OSError)


class RedisTokenCache:
    def __init__(
        self,
        client: Redis,
        settings: RedisSettings,
        memory: MemoryTokenCache,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._settings = settings
        self._aead = AESGCM(settings.key_bytes())
        self.memory = memory
        self._wall = wall
        self._monotonic = monotonic
        self._down_until = 0.0
        self._degraded = False
        self._undecryptable_logged = False

    @classmethod
    def create(cls, cache: CacheSettings) -> RedisTokenCache:
        settings = cache.redis
        assert settings is not None
        client = Redis.from_url(
            settings.url.reveal(),
            socket_timeout=settings.timeout_s,
            socket_connect_timeout=settings.timeout_s,
            retry=Retry(NoBackoff(), 0),  # a failure falls back to memory at once instead
        )
        return cls(client, settings, MemoryTokenCache(cache.max_entries))

    # --- the TokenCache protocol -----------------------------------------------------------------

    async def get_or_fetch(self, key: bytes, fetch: Fetch, *, negative_ttl: float, note: Note) -> Secret:
        async def shared() -> Fresh:
            return await self._shared(key, fetch, negative_ttl, note)

        return await self.memory.get_or_fetch(key, shared, negative_ttl=negative_ttl, note=note)

    def peek(self, key: bytes, note: Note) -> Secret | None:
        return self.memory.peek(key, note)

    async def invalidate(self, key: bytes, rejected: Secret | None = None) -> None:
        await self.memory.invalidate(key, rejected)
        if not self._usable():
            return
        name = self._name(key)
        try:
            found = await self._read(name)
            if isinstance(found, Fresh) and (rejected is None or found.token == rejected):
                await self._client.delete(name)
        except _FAILURES as exc:
            self._went_down(exc)

    async def close(self) -> None:
        await self.memory.close()
        await self._client.aclose()

    async def check(self) -> bool:
        """Ping Redis once (at start-up) so an unreachable server is logged early."""
        try:
            await self._client.ping()
        except _FAILURES as exc:
            self._went_down(exc)
            return False
        log.info("shared token cache connected", key_prefix=self._settings.key_prefix)
        return True

    # --- shared lookup ---------------------------------------------------------------------------

    async def _shared(self, key: bytes, fetch: Fetch, negative_ttl: float, note: Note) -> Fresh:
        """Runs once per key and process (the memory cache single-flights it)."""
        if not self._usable():
            return await fetch()
        name, lock = self._name(key), self._lock_name(key)
        deadline = self._monotonic() + self._settings.lock_timeout_s
        delay = _POLL_FIRST_S
        try:
            while True:
                found = await self._read(name)
                if found is not None:
                    return self._shared_hit(found, note)
                owner = secrets.token_hex(16)
                lock_ms = int(self._settings.lock_timeout_s * 1000)
                if await self._client.set(lock, owner, nx=True, px=lock_ms):
                    return await self._fetch_locked(name, lock, owner, fetch, negative_ttl, note)
                if self._monotonic() >= deadline:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, _POLL_MAX_S)
        except _FAILURES as exc:
            self._went_down(exc)
            return await fetch()
        log.warning(
            "another replica's exchange took too long; exchanging here",
            lock_wait_s=self._settings.lock_timeout_s,
        )
        return await fetch()

    async def _fetch_locked(
        self, name: str, lock: str, owner: str, fetch: Fetch, negative_ttl: float, note: Note
    ) -> Fresh:
        try:
            found = await self._read(name)  # it may have landed between our read and the lock
            if found is not None:
                return self._shared_hit(found, note)
            try:
                fresh = await fetch()
            except ProxyError as err:
                if err.status == 401 and negative_ttl > 0:
                    await self._store(name, _refusal_payload(err), negative_ttl)
                raise
            await self._store(name, {"token": fresh.token.reveal()}, fresh.ttl)
            return fresh
        finally:
            await self._release(lock, owner)

    def _shared_hit(self, found: Fresh | ProxyError, note: Note) -> Fresh:
        if isinstance(found, ProxyError):
            note("negative")
            raise found
        note("shared_hit")
        return found

    # --- Redis operations ------------------------------------------------------------------------

    async def _read(self, name: str) -> Fresh | ProxyError | None:
        blob = await self._client.get(name)
        self._went_up()
        if not isinstance(blob, bytes):
            return None
        payload = self._decrypt(name, blob)
        if payload is None:
            return None
        remaining = float(payload.get("exp", 0)) - self._wall()
        if remaining <= 0:
            return None
        if "refusal" in payload:
            return _refusal_error(payload["refusal"])
        return Fresh(Secret(str(payload["token"])), remaining)

    async def _store(self, name: str, payload: dict[str, Any], ttl: float) -> None:
        """Best effort: a failed write only costs other replicas an exchange."""
        if ttl <= 0:
            return
        blob = self._encrypt(name, {**payload, "exp": self._wall() + ttl})
        try:
            await self._client.set(name, blob, px=max(1, int(ttl * 1000)))
        except _FAILURES as exc:
            self._went_down(exc)

    async def _release(self, lock: str, owner: str) -> None:
        try:
            await self._client.eval(_RELEASE, 1, lock, owner)
        except _FAILURES as exc:
            self._went_down(exc)  # the lock expires by itself

    def _encrypt(self, name: str, payload: dict[str, Any]) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        plain = json.dumps(payload, separators=(",", ":")).encode()
        return _VERSION + nonce + self._aead.encrypt(nonce, plain, name.encode())

    def _decrypt(self, name: str, blob: bytes) -> dict[str, Any] | None:
        nonce, sealed = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        try:
            if blob[:1] != _VERSION:
                raise InvalidTag
            data = json.loads(self._aead.decrypt(nonce, sealed, name.encode()))
        except (InvalidTag, ValueError):
            if not self._undecryptable_logged:
                self._undecryptable_logged = True
                log.warning(
                    "a shared cache entry cannot be decrypted (another encryption_key on the same "
                    "key_prefix?); treating it as a miss"
                )
            return None
        return data if isinstance(data, dict) else None

    def _name(self, key: bytes) -> str:
        return f"{self._settings.key_prefix}{key.hex()}"

    def _lock_name(self, key: bytes) -> str:
        return f"{self._settings.key_prefix}lock:{key.hex()}"

    # --- availability ----------------------------------------------------------------------------

    def _usable(self) -> bool:
        return self._monotonic() >= self._down_until

    def _went_down(self, exc: BaseException) -> None:
        self._down_until = self._monotonic() + self._settings.retry_s
        if not self._degraded:
            self._degraded = True
            log.warning(
                "redis unavailable; serving tokens from the in-process cache",
                error=type(exc).__name__,
                retry_s=self._settings.retry_s,
            )

    def _went_up(self) -> None:
        if self._degraded:
            self._degraded = False
            log.info("redis reachable again; token cache shared")


def _refusal_payload(err: ProxyError) -> dict[str, Any]:
    return {
        "refusal": {
            "message": err.message,
            "code": err.code,
            "detail": err.detail,
            "www_authenticate": err.www_authenticate,
            "reason": err.reason,
        }
    }


def _refusal_error(data: dict[str, Any]) -> ProxyError:
    return ProxyError(
        401,
        str(data.get("message", "")),
        int(data.get("code", 0)),
        detail=f"{data.get('detail', '')} (shared negative cache)",
        www_authenticate=data.get("www_authenticate"),
        reason=str(data.get("reason", "token_refused")),
    )
