"""The issuer's signing keys: found through its metadata, cached, refetched when they may have rotated.

Keys are fetched on first use and again once ``max_age_s`` has passed. A token signed with a
``kid`` the cache does not know triggers a refetch — but at most one per ``refresh_min_s``, so a
flood of tokens with made-up key ids costs the identity provider one request, not one per token.
Concurrent callers share a single fetch. When a refetch fails, the keys already held stay in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
import structlog

from mcpproxy.config.urls import insecure_reason
from mcpproxy.oauth.discovery import metadata_urls
from mcpproxy.oauth.transport import TokenHttp, TransportError

log = structlog.get_logger("mcpproxy.inbound")

#: After a failed first fetch (no keys at all), retry no sooner than this.
FAILURE_BACKOFF_S = 5.0
#: JWK members that only a private key has; a public key set must not carry them.
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
#: Which key type (and curve) each algorithm family needs.
_KEY_TYPES: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}


class KeysUnavailable(Exception):
    """No keys could be obtained (the issuer or its JWKS is unreachable or malformed)."""


@dataclass(frozen=True)
class SigningKey:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Any  # a cryptography public key object

    def fits(self, alg: str) -> bool:
        """The key may verify ``alg``: its type (and curve) match, and its own ``alg``, if any, is it."""
        needed = _KEY_TYPES.get(alg)
        if needed is None or needed[0] != self.kty:
            return False
        if needed[1] is not None and self.crv != needed[1]:
            return False
        return self.alg is None or self.alg == alg


class JwksCache:
    """One issuer's key set. ``http`` is the proxy's outbound HTTP (see :class:`TokenHttp`)."""

    def __init__(
        self,
        issuer: str,
        http: TokenHttp,
        *,
        jwks_uri: str | None = None,
        allow_insecure: bool = False,
        refresh_min_s: float = 30.0,
        max_age_s: float = 300.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self._http = http
        self._configured_uri = jwks_uri
        self._uri = jwks_uri
        self._allow_insecure = allow_insecure
        self._refresh_min = refresh_min_s
        self._max_age = max_age_s
        self._timeout = timeout_s
        self._clock = clock
        self._keys: list[SigningKey] | None = None
        self._fresh_until = 0.0
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._last_error = "not fetched yet"
        self.fetches = 0

    async def key(self, kid: str | None, alg: str) -> SigningKey | None:
        """The key for a token's ``kid`` and ``alg``; None when the issuer has no such key.

        Raises :class:`KeysUnavailable` only when no keys at all could be obtained.
        """
        if self._keys is None:
            await self._refresh("initial")
        elif self._clock() >= self._fresh_until and self._inflight is None:
            self._start("max_age")  # in the background: the keys held stay valid meanwhile
        found = self._find(kid, alg)
        if found is not None:
            return found
        if self._inflight is not None or self._may_refetch():
            await self._refresh("unknown_kid")
            found = self._find(kid, alg)
        return found

    async def close(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def _find(self, kid: str | None, alg: str) -> SigningKey | None:
        keys = self._keys or []
        if kid is not None and any(k.kid is not None for k in keys):
            return next((k for k in keys if k.kid == kid and k.fits(alg)), None)
        # No kid in the token, or none in the key set (some issuers publish a single key bare):
        # only an unambiguous key will do.
        fitting = [k for k in keys if k.fits(alg)]
        return fitting[0] if len(fitting) == 1 else None

    def _may_refetch(self) -> bool:
        return self._last_attempt is None or self._clock() - self._last_attempt >= self._refresh_min

    async def _refresh(self, reason: str) -> None:
        """Fetch the key set once for everybody waiting; failures keep the keys already held.

        The fetch runs as its own task, so a caller that goes away (a cancelled request) neither
        cancels it nor leaves the others waiting on nothing.
        """
        task = self._inflight
        if task is None:
            if self._keys is None and self._last_attempt is not None:
                backoff = min(FAILURE_BACKOFF_S, self._refresh_min or FAILURE_BACKOFF_S)
                if self._clock() - self._last_attempt < backoff:
                    raise KeysUnavailable(f"{self._last_error}; not retrying yet")
            task = self._start(reason)
        await asyncio.shield(task)
        self._raise_if_empty()

    def _start(self, reason: str) -> asyncio.Task[None]:
        self._last_attempt = self._clock()
        task = self._inflight = asyncio.create_task(self._run_fetch(reason))
        return task

    async def _run_fetch(self, reason: str) -> None:
        try:
            keys = await self._fetch()
        except KeysUnavailable as exc:
            self._last_error = str(exc)
            log.warning("jwks_fetch_failed", issuer=self.issuer, reason=reason, detail=str(exc))
            if self._keys is not None:
                # Keep serving with what we have; try again after the refetch interval.
                self._fresh_until = self._clock() + max(self._refresh_min, FAILURE_BACKOFF_S)
        else:
            self._keys = keys
            self._fresh_until = self._clock() + self._max_age
            log.info("jwks_fetched", issuer=self.issuer, reason=reason, keys=len(keys))
        finally:
            self._inflight = None

    def _raise_if_empty(self) -> None:
        if self._keys is None:
            raise KeysUnavailable(f"no signing keys of {self.issuer}: {self._last_error}")

    async def _fetch(self) -> list[SigningKey]:
        self.fetches += 1
        uri = self._uri or await self._discover()
        try:
            reply = await self._http.get_json(uri, self._timeout)
        except TransportError as exc:
            raise KeysUnavailable(f"JWKS of {self.issuer}: {exc}") from None
        if reply.status != 200:
            if self._configured_uri is None:
                self._uri = None  # the metadata may have moved it: discover again next time
            raise KeysUnavailable(f"JWKS of {self.issuer} answered HTTP {reply.status}")
        return parse_jwks(reply.body, self.issuer)

    async def _discover(self) -> str:
        """The ``jwks_uri`` of the issuer's RFC 8414 (then OpenID Connect) metadata."""
        last = "no metadata"
        for url in metadata_urls(self.issuer):
            try:
                reply = await self._http.get_json(url, self._timeout)
            except TransportError as exc:
                raise KeysUnavailable(f"metadata of {self.issuer}: {exc}") from None
            if reply.status != 200:
                last = f"HTTP {reply.status} at {url}"
                continue
            doc = _json_object(reply.body, f"metadata of {self.issuer}")
            if doc.get("issuer") != self.issuer:
                raise KeysUnavailable(f"metadata of {self.issuer} names another issuer")
            uri = doc.get("jwks_uri")
            if not isinstance(uri, str) or urlsplit(uri).scheme not in ("http", "https"):
                raise KeysUnavailable(f"metadata of {self.issuer} has no usable jwks_uri")
            problem = insecure_reason(uri, self._allow_insecure)
            if problem:
                raise KeysUnavailable(f"jwks_uri of {self.issuer} {problem}")
            self._uri = uri
            log.info("discovered jwks_uri", issuer=self.issuer, jwks_uri=uri)
            return uri
        raise KeysUnavailable(f"no authorization server metadata for {self.issuer} ({last})")


def parse_jwks(body: bytes, issuer: str) -> list[SigningKey]:
    """The usable public signature keys of a JWK Set; symmetric and private keys are ignored."""
    doc = _json_object(body, f"JWKS of {issuer}")
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise KeysUnavailable(f"JWKS of {issuer} has no keys array")
    keys: list[SigningKey] = []
    for entry in entries:
        key = _signing_key(entry)
        if key is not None:
            keys.append(key)
    return keys


def _signing_key(entry: Any) -> SigningKey | None:
    if not isinstance(entry, Mapping):
        return None
    kty = entry.get("kty")
    if kty not in ("RSA", "EC", "OKP") or entry.get("use", "sig") != "sig":
        return None
    ops = entry.get("key_ops")
    if isinstance(ops, list) and "verify" not in ops:
        return None
    public = {k: v for k, v in entry.items() if k not in _PRIVATE_MEMBERS}
    alg = public.get("alg")
    try:
        parsed = jwt.PyJWK(public)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None
    kid = public.get("kid")
    return SigningKey(
        kid=kid if isinstance(kid, str) else None,
        kty=str(kty),
        crv=public.get("crv") if isinstance(public.get("crv"), str) else None,
        alg=alg if isinstance(alg, str) else None,
        key=parsed.key,
    )


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise KeysUnavailable(f"{what} is not JSON") from None
    if not isinstance(doc, dict):
        raise KeysUnavailable(f"{what} is not a JSON object")
    return doc
