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
from typing import Final, Protocol

from mcpproxy.errors import ProxyError
from mcpproxy.expiring import ExpiringLRU, remember
from mcpproxy.secrets import Secret

_KEY_DOMAIN: Final = b"mcpproxy-token-cache-v2\0"


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

    def peek(self, key: bytes, note: Note) -> Secret | None:
        """The cached token, without waiting: None when only ``get_or_fetch`` can tell.
        Raises the remembered refusal of a negative entry."""
        ...

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


def key_hasher(settings: bytes) -> Callable[[Secret | None, Secret | None], bytes]:
    """The cache key of a subject and actor token for one route's settings: SHA-256 over
    length-prefixed parts, so no two different inputs share a key. The tokens enter as their own
    SHA-256 (:meth:`Secret.digest`, which the log fingerprint reuses); the settings' part of the
    input is prepared once (the lookup runs on every request of an exchange route)."""
    prefix = _KEY_DOMAIN + _part(settings)
    #: The keys of subjects without an actor, by the subject's digest: a caller's token comes
    #: back request after request. Bounded (emptied when full); it holds digests, no token.
    known: dict[bytes, bytes] = {}

    def derive(subject: Secret | None, actor: Secret | None) -> bytes:
        return hashlib.sha256(
            prefix
            + (_ABSENT if subject is None else _DIGEST + subject.digest())
            + (_ABSENT if actor is None else _DIGEST + actor.digest())
        ).digest()

    def key(subject: Secret | None, actor: Secret | None) -> bytes:
        if subject is None or actor is not None:
            return derive(subject, actor)
        digest = subject.digest()
        found = known.get(digest)
        return found if found is not None else remember(known, digest, derive(subject, None), _MAX_KNOWN)

    return key


_MAX_KNOWN: Final = 4096


#: A part of the key: a tag, the length of what follows, then that. Tokens enter as their 32-byte
#: SHA-256, an absent token as a tag of its own.
_DIGEST: Final = b"+" + (32).to_bytes(8, "big")
_ABSENT: Final = b"-" + bytes(8)


def _part(data: bytes) -> bytes:
    return b"+" + len(data).to_bytes(8, "big") + data


@dataclass(frozen=True)
class _Token:
    token: Secret


@dataclass(frozen=True)
class _Refusal:
    error: ProxyError


class MemoryTokenCache:
    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: ExpiringLRU[bytes, _Token | _Refusal] = ExpiringLRU(max_entries, clock)
        self._inflight: dict[bytes, asyncio.Task[Secret]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: bytes, note: Note) -> Secret | None:
        entry = self._entries.get(key)
        if isinstance(entry, _Token):
            note("hit")
            return entry.token
        if isinstance(entry, _Refusal):
            note("negative")
            raise dataclasses.replace(entry.error)
        return None

    async def get_or_fetch(self, key: bytes, fetch: Fetch, *, negative_ttl: float, note: Note) -> Secret:
        token = self.peek(key, note)
        if token is not None:
            return token
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
                self._entries.put(key, _Refusal(err), negative_ttl)
            raise
        self.put(key, fresh)
        return fresh.token

    def put(self, key: bytes, fresh: Fresh) -> None:
        self._entries.put(key, _Token(fresh.token), fresh.ttl)

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
            self._entries.pop(key)

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._entries.clear()
