"""Inbound bearer-token verification: the proxy as an OAuth resource server (RFC 6750, RFC 9068).

A caller's JWT is accepted only when its header names an allowlisted asymmetric algorithm, its
``kid`` names a key the issuer publishes (of the type that algorithm needs), its signature holds,
and its ``iss``, ``aud``, ``exp`` (and ``nbf``/``iat`` if present) are right. Failures are 401 with
``error="invalid_token"`` and a description that names the rule, never the token; a token without
a required scope is 403 ``insufficient_scope``. A verified token's outcome is remembered briefly,
keyed by a digest of the token, never past its expiry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import jwt

from mcpproxy.config.inbound import VerifySettings
from mcpproxy.credentials import Subject
from mcpproxy.errors import JSONRPC_INTERNAL_ERROR, JSONRPC_SERVER_ERROR, ProxyError, bearer_challenge
from mcpproxy.expiring import ExpiringLRU
from mcpproxy.inbound.jwks import KeysUnavailable, SigningKey

# error_description texts (RFC 6750 §3): they say which rule failed and never echo the token.
MISSING_TOKEN = "this route requires a bearer token"
MALFORMED = "the access token is not a well-formed JWT"
ALGORITHM = "the access token's signing algorithm is not accepted"
UNKNOWN_KEY = "the access token's signing key is not known"
SIGNATURE = "the access token's signature is invalid"
EXPIRED = "the access token has expired"
NOT_YET_VALID = "the access token is not yet valid"
ISSUER = "the access token was issued by an issuer this resource does not trust"
AUDIENCE = "the access token was not issued for this resource"
INVALID = "the access token is invalid"
SCOPE = "the access token lacks a required scope"
UNAVAILABLE = "token verification is temporarily unavailable"

_REQUIRED_CLAIMS = ("exp", "iss", "aud")


class KeySource(Protocol):
    async def key(self, kid: str | None, alg: str) -> SigningKey | None: ...


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for: its claims, scopes, ``sub`` and ``client_id``."""

    claims: Mapping[str, Any]
    scopes: frozenset[str]
    sub: str | None
    client_id: str | None
    expires_at: float


def identity_of(claims: Mapping[str, Any]) -> Identity:
    sub = claims.get("sub")
    client = claims.get("client_id", claims.get("azp"))
    exp = claims.get("exp")
    return Identity(
        claims=MappingProxyType(dict(claims)),
        scopes=scopes_of(claims),
        sub=sub if isinstance(sub, str) else None,
        client_id=client if isinstance(client, str) else None,
        expires_at=float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else 0.0,
    )


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """``scope`` (RFC 9068: space-separated) or ``scp`` (Entra, Okta: string or list)."""
    scopes: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list):
            scopes.update(v for v in value if isinstance(v, str))
    return frozenset(scopes)


def invalid_token(description: str, *, detail: str = "") -> ProxyError:
    return ProxyError(
        401,
        description,
        JSONRPC_SERVER_ERROR,
        detail=detail,
        www_authenticate=bearer_challenge(error="invalid_token", description=description),
        reason="invalid_token",
    )


class TokenVerifier:
    """Verifies one route's bearer tokens against its ``auth.verify`` settings."""

    def __init__(
        self,
        settings: VerifySettings,
        keys: KeySource,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._keys = keys
        self._wall = wall
        self._algorithms = frozenset(settings.algorithms)
        self._audience = list(settings.audience)
        self._required = frozenset(settings.required_scopes)
        self._scope_param = " ".join(settings.required_scopes) or None
        self._cache: ExpiringLRU[bytes, Identity] | None = None
        if settings.cache_s > 0:
            self._cache = ExpiringLRU(settings.cache_entries, clock)

    async def verify(self, subject: Subject | None) -> Identity:
        """The caller's identity, or a :class:`ProxyError` (401 / 403 / 503) with its challenge."""
        identity = self.cached(subject)
        if identity is not None:
            return identity
        assert subject is not None
        identity = await self._verify(subject.token.reveal())
        if self._cache is not None:
            ttl = min(self.settings.cache_s, identity.expires_at - self._wall())
            self._cache.put(subject.token.digest(), identity, ttl)
        return self._in_scope(identity)

    def cached(self, subject: Subject | None) -> Identity | None:
        """:meth:`verify` answered from the cache of verified tokens, without waiting; None when
        the token still has to be verified."""
        if subject is None:
            raise ProxyError(
                401,
                MISSING_TOKEN,
                JSONRPC_SERVER_ERROR,
                www_authenticate=bearer_challenge(scope=self._scope_param),
                reason="missing_token",
            )
        if self._cache is None:
            return None
        identity = self._cache.get(subject.token.digest())  # the hash the token cache uses too
        return None if identity is None else self._in_scope(identity)

    def _in_scope(self, identity: Identity) -> Identity:
        if not self._required <= identity.scopes:
            raise ProxyError(
                403,
                SCOPE,
                JSONRPC_SERVER_ERROR,
                www_authenticate=bearer_challenge(
                    error="insufficient_scope", description=SCOPE, scope=self._scope_param
                ),
                reason="insufficient_scope",
            )
        return identity

    async def _verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise invalid_token(MALFORMED, detail=type(exc).__name__) from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise invalid_token(ALGORITHM, detail=f"alg={str(alg)[:16]!r}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise invalid_token(MALFORMED, detail="kid is not a string")
        try:
            key = await self._keys.key(kid, alg)
        except KeysUnavailable as exc:
            raise ProxyError(
                503,
                UNAVAILABLE,
                JSONRPC_INTERNAL_ERROR,
                detail=str(exc),
                retry_after=5,
                reason="verification_unavailable",
            ) from None
        if key is None:
            raise invalid_token(UNKNOWN_KEY)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_s,
                options={"require": list(_REQUIRED_CLAIMS)},
            )
        except jwt.PyJWTError as exc:
            raise invalid_token(_describe(exc), detail=type(exc).__name__) from None
        return identity_of(claims)


def _describe(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return EXPIRED
    if isinstance(exc, jwt.ImmatureSignatureError):
        return NOT_YET_VALID
    if isinstance(exc, jwt.InvalidIssuerError):
        return ISSUER
    if isinstance(exc, jwt.InvalidAudienceError):
        return AUDIENCE
    if isinstance(exc, jwt.InvalidSignatureError):
        return SIGNATURE
    if isinstance(exc, jwt.MissingRequiredClaimError) and exc.claim in _REQUIRED_CLAIMS:
        return f"the access token lacks the {exc.claim!r} claim"
    if isinstance(exc, jwt.InvalidAlgorithmError | jwt.InvalidKeyError):
        return ALGORITHM
    if isinstance(exc, jwt.DecodeError):
        return MALFORMED
    return INVALID
