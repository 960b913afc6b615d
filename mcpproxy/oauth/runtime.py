"""Builds each exchange route's token source from the validated configuration."""

from __future__ import annotations

from mcpproxy.config.exchange import (
    AuthServer,
    CacheSettings,
    ClientCredentialsSettings,
    ClientSettings,
    EntraOboSettings,
    ExchangeSettings,
    IdJagSettings,
    JwtBearerSettings,
    TokenExchangeSettings,
)
from mcpproxy.config.model import Config
from mcpproxy.metrics import Registry
from mcpproxy.oauth.client_credentials import ClientCredentialsGrant
from mcpproxy.oauth.discovery import Discovery
from mcpproxy.oauth.entra_obo import EntraOboGrant
from mcpproxy.oauth.id_jag import IdJagGrant
from mcpproxy.oauth.rfc7523 import JwtBearerGrant
from mcpproxy.oauth.rfc8693 import TokenExchangeGrant
from mcpproxy.oauth.token_endpoint import TokenEndpoint
from mcpproxy.oauth.tokens import Grant, TokenSource
from mcpproxy.oauth.transport import TokenHttp
from mcpproxy.tokencache import MemoryTokenCache, TokenCache


class ExchangeRuntime:
    """The token sources of all exchange routes, sharing one cache and one discovery cache."""

    def __init__(self, sources: dict[str, TokenSource], cache: TokenCache) -> None:
        self._sources = sources
        self.cache = cache

    @classmethod
    async def create(cls, config: Config, http: TokenHttp, metrics: Registry) -> ExchangeRuntime:
        exchanges = {
            name: rule.exchange for route in config.routes for name, rule in route.exchange_rules().items()
        }
        cache = await build_cache(config.cache or CacheSettings()) if exchanges else MemoryTokenCache()
        builder = _Builder(http, Discovery(http), cache, metrics)
        sources = {name: builder.source(name, settings) for name, settings in exchanges.items()}
        return cls(sources, cache)

    @property
    def sources(self) -> dict[str, TokenSource]:
        return dict(self._sources)

    def source(self, route_name: str) -> TokenSource | None:
        return self._sources.get(route_name)

    async def close(self) -> None:
        await self.cache.close()


async def build_cache(settings: CacheSettings) -> TokenCache:
    if settings.backend == "memory":
        return MemoryTokenCache(settings.max_entries)
    from mcpproxy.tokencache_redis import RedisTokenCache  # only deployments with Redis need it

    cache = RedisTokenCache.create(settings)
    await cache.check()
    return cache


class _Builder:
    def __init__(self, http: TokenHttp, discovery: Discovery, cache: TokenCache, metrics: Registry) -> None:
        self.http = http
        self.discovery = discovery
        self.cache = cache
        self.metrics = metrics

    def source(self, route: str, s: ExchangeSettings) -> TokenSource:
        actor: TokenSource | None = None
        grant: Grant
        if isinstance(s, TokenExchangeSettings):
            grant = TokenExchangeGrant(s, self._endpoint(route, s.server, s.client))
            if s.actor is not None:
                own = ClientCredentialsSettings(
                    s.server,
                    s.client,
                    s.actor.audience,
                    s.actor.resource,
                    s.actor.scope,
                    timing=s.timing,
                )
                actor = self.source(f"{route}:actor", own)
        elif isinstance(s, JwtBearerSettings):
            grant = JwtBearerGrant(s, self._endpoint(route, s.server, s.client))
        elif isinstance(s, IdJagSettings):
            ras = s.resource_as
            idp = self._endpoint(route, s.server, s.client)
            grant = IdJagGrant(s, idp, self._endpoint(route, ras.server, ras.client))
        elif isinstance(s, EntraOboSettings):
            grant = EntraOboGrant(s, self._endpoint(route, s.server, s.client))
        else:
            grant = ClientCredentialsGrant(s, self._endpoint(route, s.server, s.client))
        return TokenSource(route, s, grant, self.cache, self.metrics, actor=actor)

    def _endpoint(self, route: str, server: AuthServer, client: ClientSettings) -> TokenEndpoint:
        return TokenEndpoint(route, server, client, self.http, self.discovery, self.metrics)
