"""A route's upstream tokens: the cache in front of the route's grant, and the lifetime rules.

Lifetime of a cached token = min(``expires_in``, the subject token's remaining ``exp``) minus a
skew (default 30 s) that never takes more than half the lifetime, so short-lived tokens are still
used for a while and a token never reaches the upstream in its last seconds. The subject's ``exp``
is read without verification — only for timing; the authorization server verifies the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from mcpproxy.config.exchange import ExchangeSettings, needs_subject
from mcpproxy.errors import missing_credential
from mcpproxy.metrics import Registry
from mcpproxy.oauth.errors import TokenEndpointError, to_proxy_error
from mcpproxy.oauth.response import Issued
from mcpproxy.secrets import Secret
from mcpproxy.tokencache import Fresh, TokenCache, key_hasher, settings_digest

log = structlog.get_logger("mcpproxy.oauth")


class Grant(Protocol):
    kind: str

    async def issue(self, subject: Secret | None, actor: Secret | None) -> Issued: ...


def cache_ttl(lifetime: float, subject_remaining: float | None, skew: float) -> float:
    """Seconds a token may be handed out; <= 0 means not at all (do not cache)."""
    if subject_remaining is not None:
        lifetime = min(lifetime, subject_remaining)
    if lifetime <= 0:
        return 0.0
    return lifetime - min(skew, lifetime / 2)


def jwt_expiry(token: Secret) -> float | None:
    """The ``exp`` of a JWS compact token, unverified; None for anything else."""
    parts = token.reveal().split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp)


class TokenSource:
    """Upstream tokens for one route: ``get`` on every upstream request, ``invalidate`` when the
    upstream answered 401 (then one retry with a fresh token)."""

    def __init__(
        self,
        route: str,
        settings: ExchangeSettings,
        grant: Grant,
        cache: TokenCache,
        metrics: Registry,
        *,
        actor: TokenSource | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.route = route
        self.settings = settings
        self.grant = grant
        self.actor = actor
        self.needs_subject = needs_subject(settings)
        self._cache = cache
        self._metrics = metrics
        self._key = key_hasher(settings_digest(settings))
        self._wall = wall
        self._warned_no_expiry = False

    def peek(self, subject: Secret | None) -> Secret | None:
        """The cached token for ``subject`` without waiting; None when ``get`` has to."""
        subject = self._subject(subject)
        actor = self.actor.peek(None) if self.actor else None
        if self.actor is not None and actor is None:
            return None
        return self._cache.peek(self._key(subject, actor), self._note)

    async def get(self, subject: Secret | None) -> Secret:
        subject = self._subject(subject)
        actor = await self.actor.get(None) if self.actor else None
        key = self._key(subject, actor)

        async def fetch() -> Fresh:
            return await self._fetch(subject, actor)

        return await self._cache.get_or_fetch(
            key, fetch, negative_ttl=self.settings.timing.negative_ttl_s, note=self._note
        )

    def _subject(self, subject: Secret | None) -> Secret | None:
        if not self.needs_subject:
            return None
        if not subject:
            raise missing_credential()
        return subject

    def _note(self, result: str) -> None:
        self._metrics.cache.add((self.route, result))

    async def invalidate(self, subject: Secret | None, rejected: Secret | None = None) -> None:
        """Forget the cached token of ``subject`` (only if it is still ``rejected``, when given)."""
        if not self.needs_subject:
            subject = None
        actor = await self.actor.get(None) if self.actor else None
        await self._cache.invalidate(self._key(subject, actor), rejected)

    async def _fetch(self, subject: Secret | None, actor: Secret | None) -> Fresh:
        self._note("miss")
        kind = self.grant.kind
        try:
            issued = await self.grant.issue(subject, actor)
        except TokenEndpointError as err:
            log.warning(
                "token request failed",
                route=self.route,
                kind=kind,
                outcome=err.kind,
                detail=err.detail,
                subject_fingerprint=subject.fingerprint() if subject else None,
            )
            if actor is not None and self.actor is not None and err.kind != "unavailable":
                await self.actor.invalidate(None, actor)  # in case the AS no longer takes it
            raise to_proxy_error(self.route, err) from None
        ttl = cache_ttl(self._lifetime(issued), self._subject_remaining(subject), self.settings.timing.skew_s)
        log.debug(
            "token obtained",
            route=self.route,
            kind=kind,
            subject_fingerprint=subject.fingerprint() if subject else None,
            token_fingerprint=issued.token.fingerprint(),
            cache_ttl_s=round(ttl, 1),
        )
        return Fresh(issued.token, ttl)

    def _lifetime(self, issued: Issued) -> float:
        if issued.expires_in is not None:
            return issued.expires_in
        default = self.settings.timing.default_lifetime_s
        if not self._warned_no_expiry:
            self._warned_no_expiry = True
            log.warning(
                "the authorization server gave no expires_in; assuming default_lifetime_s",
                route=self.route,
                kind=self.grant.kind,
                default_lifetime_s=default,
            )
        return default

    def _subject_remaining(self, subject: Secret | None) -> float | None:
        exp = jwt_expiry(subject) if subject is not None else None
        return None if exp is None else exp - self._wall()
