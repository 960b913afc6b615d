"""Inbound authentication: verifying the caller's bearer JWT (framework-free; HTTP comes in through
:class:`~mcpproxy.oauth.transport.TokenHttp`)."""

from __future__ import annotations

from collections.abc import Iterable

from mcpproxy.config.model import RouteSettings
from mcpproxy.inbound.jwks import JwksCache, KeysUnavailable, SigningKey
from mcpproxy.inbound.verify import Identity, TokenVerifier
from mcpproxy.oauth.transport import TokenHttp

__all__ = [
    "Identity",
    "InboundAuth",
    "JwksCache",
    "KeysUnavailable",
    "SigningKey",
    "TokenVerifier",
]


class InboundAuth:
    """The token verifiers of a config's routes; routes with the same issuer settings share one
    key cache (one JWKS fetch serves them all)."""

    def __init__(self, routes: Iterable[RouteSettings], http: TokenHttp) -> None:
        self._caches: dict[tuple[object, ...], JwksCache] = {}
        self.verifiers: dict[str, TokenVerifier] = {}
        for route in routes:
            v = route.auth.verify
            if v is None:
                continue
            key = (
                v.issuer,
                v.jwks_uri,
                v.allow_insecure,
                v.jwks_refresh_min_s,
                v.jwks_max_age_s,
                v.timeout_s,
            )
            cache = self._caches.get(key)
            if cache is None:
                cache = self._caches[key] = JwksCache(
                    v.issuer,
                    http,
                    jwks_uri=v.jwks_uri,
                    allow_insecure=v.allow_insecure,
                    refresh_min_s=v.jwks_refresh_min_s,
                    max_age_s=v.jwks_max_age_s,
                    timeout_s=v.timeout_s,
                )
            self.verifiers[route.name] = TokenVerifier(v, cache)

    async def close(self) -> None:
        for cache in self._caches.values():
            await cache.close()
