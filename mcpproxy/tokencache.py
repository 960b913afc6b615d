"""The in-process token cache: bounded, per-entry expiry, single-flight, negative entries.

* Keys are SHA-256 digests of everything that determines the token (the route's exchange
  settings, the subject token, the actor token) — a raw token is never a key.
* Concurrent misses for one key share one fetch; a waiter that is cancelled does not cancel the
  fetch the others wait for.
* A refusal of the caller's token (a 401) is remembered for a few seconds, so a client retrying
  a bad token does not hammer the authorization server. Unavailability (503) is not remembered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from cachetools import TLRUCache

from mcpproxy.errors import ProxyError
from mcpproxy.secrets import Secret

_KEY_DOMAIN = b"mcpproxy-token-cache-v1\0"


@dataclass(frozen=True)
class Fresh:
    """A token just obtained, and how long it may be handed out (seconds; <= 0: not cached)."""

    token: Secret
    ttl: float


Fetch = Callable[[], Awaitable[Fresh]]
#: Receives how a lookup was answered: hit, joined, negative (and, from fetches, miss, shared_hit).
Note = Callable[[str], None]


class TokenCache(Protocol):
    async def get_or_fetch(self, key: bytes, fetch: Fetch, *, negative_ttl: float, note: Note) -> Secret: ...

    async def invalidate(self, key: bytes, rejected: Secret | None = None) -> None: ...

    async def close(self) -> None: ...


def settings_digest(settings: object) -> bytes:
    """A stable digest of a settings dataclass; secrets contribute only their fingerprint."""
    canonical = json.dumps(_canonical(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


def _canonical(value: object) -> object:
    if isinstance(value, Secret):
        return {"secret": value.fingerprint()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"@": type(value).__name__, **fields}
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot canonicalise {type(value).__name__}")


def cache_key(settings: bytes, subject: Secret | None, actor: Secret | None) -> bytes:
    """SHA-256 over length-prefixed parts, so no two different inputs share a key."""
    h = hashlib.sha256(_KEY_DOMAIN)
    for part in (settings, subject, actor):
        data = b"" if part is None else part if isinstance(part, bytes) else part.reveal().encode()
        h.update(b"-" if part is None else b"+")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()


@dataclass(frozen=True)
class _Token:
    token: Secret
    expires_at: float


@dataclass(frozen=True)
class _Refusal:
    error: ProxyError
    expires_at: float


def _expiry(_key: bytes, entry: _Token | _Refusal, _now: float) -> float:
    return entry.expires_at


class MemoryTokenCache:
    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: TLRUCache[bytes, _Token | _Refusal] = TLRUCache(
            maxsize=max_entries, ttu=_expiry, timer=clock
        )
        self._inflight: dict[bytes, asyncio.Task[Secret]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get_or_fetch(self, key: bytes, fetch: Fetch, *, negative_ttl: float, note: Note) -> Secret:
        entry = self._entries.get(key)
        if isinstance(entry, _Token):
            note("hit")
            return entry.token
        if isinstance(entry, _Refusal):
            note("negative")
            raise dataclasses.replace(entry.error)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._fill(key, fetch, negative_ttl))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
        else:
            note("joined")
        # shield: a cancelled waiter leaves the fetch running for the others (and the cache).
        return await asyncio.shield(task)

    async def _fill(self, key: bytes, fetch: Fetch, negative_ttl: float) -> Secret:
        try:
            fresh = await fetch()
        except ProxyError as err:
            if err.status == 401 and negative_ttl > 0:
                self._entries[key] = _Refusal(err, self._clock() + negative_ttl)
            raise
        self.put(key, fresh)
        return fresh.token

    def put(self, key: bytes, fresh: Fresh) -> None:
        if fresh.ttl > 0:
            self._entries[key] = _Token(fresh.token, self._clock() + fresh.ttl)

    def _settled(self, key: bytes, task: asyncio.Task[Secret]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody awaited is not reported twice

    async def invalidate(self, key: bytes, rejected: Secret | None = None) -> None:
        """Drop the entry — only if it still holds ``rejected``, when given, so a token another
        request already replaced is not thrown away."""
        entry = self._entries.get(key)
        if isinstance(entry, _Token) and (rejected is None or entry.token == rejected):
            del self._entries[key]

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._entries.clear()
