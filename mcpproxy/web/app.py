"""The aiohttp application: operational endpoints plus the catch-all proxy handler."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from mcpproxy import __version__, prm
from mcpproxy.audit import AuditLog
from mcpproxy.config.model import Config
from mcpproxy.errors import ProxyError
from mcpproxy.inbound import InboundAuth
from mcpproxy.metrics import Registry
from mcpproxy.requestid import new_request_id
from mcpproxy.routing import RouteTable
from mcpproxy.upstream_auth import TokenSource, UpstreamCredential
from mcpproxy.web.proxy import ProxyHandler, RouteRuntime
from mcpproxy.web.responses import error_response

if TYPE_CHECKING:
    from mcpproxy.web.oauth_http import AiohttpTokenHttp

log = structlog.get_logger("mcpproxy")

#: Builds the OAuth token sources of a config's exchange routes (see mcpproxy.oauth).
TokenSourceFactory = Callable[[Config, Registry], Awaitable["TokenSources"]]


class TokenSources:
    """Token sources by route name, and how to release what they hold."""

    def __init__(
        self,
        sources: dict[str, TokenSource] | None = None,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.sources = sources or {}
        self._close = close

    async def close(self) -> None:
        if self._close is not None:
            await self._close()


async def default_token_sources(config: Config, metrics: Registry) -> TokenSources:
    """OAuth token sources for the config's exchange routes (none needed: nothing is built)."""
    if not any(route.exchange_rules() for route in config.routes):
        return TokenSources()
    from mcpproxy.web.oauth_http import exchange_token_sources

    return await exchange_token_sources(config, metrics)


class ProxyState:
    """Everything built from one config: the route table and each route's live runtime."""

    def __init__(
        self,
        config: Config,
        handler: ProxyHandler,
        tokens: TokenSources,
        inbound: Inbound | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.tokens = tokens
        self.inbound = inbound

    @classmethod
    async def build(cls, config: Config, metrics: Registry, factory: TokenSourceFactory) -> ProxyState:
        tokens = await factory(config, metrics)
        inbound = Inbound.build(config)
        runtimes: dict[str, RouteRuntime] = {}
        for route in config.routes:
            credential = UpstreamCredential(route.auth.upstream, tokens.sources.get(route.name))
            fallback = route.auth.fallback
            runtimes[route.name] = RouteRuntime.create(
                route,
                credential,
                config.server.strip_headers,
                verifier=inbound.auth.verifiers.get(route.name) if inbound.auth else None,
                audit=inbound.audit is not None,
                fallback=(
                    UpstreamCredential(fallback.upstream, tokens.sources.get(f"{route.name}:fallback"))
                    if fallback is not None
                    else None
                ),
            )
        handler = ProxyHandler(
            RouteTable(config.routes),
            runtimes,
            metrics,
            max_body_bytes=config.server.max_body_bytes,
            max_credential_bytes=config.server.max_credential_bytes,
            access_log=config.server.access_log,
            audit=inbound.audit,
        )
        return cls(config, handler, tokens, inbound)

    @property
    def in_flight(self) -> int:
        return sum(runtime.in_flight for runtime in self.handler.runtimes.values())

    async def close(self) -> None:
        for runtime in self.handler.runtimes.values():
            await runtime.close()
        await self.tokens.close()
        if self.inbound is not None:
            await self.inbound.close()

    async def drain_and_close(self, poll_s: float = 0.1) -> None:
        """Close once the requests this state is serving (long SSE streams included) are done."""
        while self.in_flight:  # noqa: ASYNC110 - a counter summed over routes; 10 Hz is plenty
            await asyncio.sleep(poll_s)
        await self.close()


class Inbound:
    """The inbound side of one config: token verifiers (with their JWKS client) and the audit log."""

    def __init__(
        self, auth: InboundAuth | None, audit: AuditLog | None, http: AiohttpTokenHttp | None = None
    ) -> None:
        self.auth = auth
        self.audit = audit
        self._http = http

    @classmethod
    def build(cls, config: Config) -> Inbound:
        audit = AuditLog(config.audit) if config.audit is not None and config.audit.enabled else None
        if not any(route.auth.verify is not None for route in config.routes):
            return cls(None, audit)
        from mcpproxy.web.oauth_http import AiohttpTokenHttp  # imports this module

        http = AiohttpTokenHttp()
        return cls(InboundAuth(config.routes, http), audit, http)

    async def close(self) -> None:
        if self.auth is not None:
            await self.auth.close()
        if self._http is not None:
            await self._http.close()
        if self.audit is not None:
            self.audit.close()


class Live:
    """The application's mutable part: the state serving new requests, and states draining."""

    def __init__(self, factory: TokenSourceFactory) -> None:
        self.factory = factory
        self.current: ProxyState | None = None
        self.ready = False
        self.draining: set[asyncio.Task[None]] = set()

    @property
    def state(self) -> ProxyState:
        assert self.current is not None, "the application has not started"
        return self.current


LIVE = web.AppKey("live", Live)
METRICS = web.AppKey("metrics", Registry)


def build_app(
    config: Config,
    *,
    metrics: Registry | None = None,
    token_sources: TokenSourceFactory = default_token_sources,
) -> web.Application:
    """An application serving ``config``. Its live parts are built on startup (they need a loop)."""
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        handler_args={
            "max_field_size": config.server.max_header_bytes,
            "max_line_size": config.server.max_header_bytes,
        },
    )
    app[METRICS] = metrics or Registry()
    live = app[LIVE] = Live(token_sources)

    async def startup(app: web.Application) -> None:
        live.current = await ProxyState.build(config, app[METRICS], token_sources)
        live.ready = True
        log.info(
            "started",
            version=__version__,
            routes=[{"name": r.name, "path": r.path, "upstream": r.upstream} for r in config.routes],
        )

    async def cleanup(app: web.Application) -> None:
        live.ready = False
        for task in tuple(live.draining):
            task.cancel()
        if live.current is not None:
            await live.current.close()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get(prm.WELL_KNOWN + "{tail:(/.*)?}", _protected_resource_metadata)
    app.router.add_route("*", "/{tail:.*}", _proxy)
    return app


async def apply_config(app: web.Application, config: Config) -> None:
    """Serve ``config`` for new requests; requests in flight finish on the state they started on."""
    live = app[LIVE]
    new = await ProxyState.build(config, app[METRICS], live.factory)
    old = live.state
    live.current = new
    if (old.config.server.host, old.config.server.port) != (config.server.host, config.server.port):
        log.warning("reload_listen_address_unchanged", reason="host/port apply on restart only")
    task = asyncio.create_task(old.drain_and_close())
    live.draining.add(task)
    task.add_done_callback(live.draining.discard)
    log.info("reloaded", routes=[r.name for r in config.routes])


async def _proxy(request: web.Request) -> web.StreamResponse:
    return await request.app[LIVE].state.handler(request)


async def _protected_resource_metadata(request: web.Request) -> web.Response:
    """RFC 9728 metadata of the route named by the path after the well-known prefix."""
    handler = request.app[LIVE].state.handler
    runtime = handler.metadata_routes.get(request.match_info["tail"].rstrip("/"))
    host = prm.safe_host(request.host)
    if runtime is None or (host is None and not runtime.settings.public_url):
        missing = ProxyError(404, "no protected resource at this path", reason="no_route")
        return error_response(missing, new_request_id())
    resource = prm.resource_url(runtime.settings, request.scheme, host or "")
    return web.json_response(
        prm.document(runtime.settings, resource),
        headers={"Cache-Control": "max-age=300", "Access-Control-Allow-Origin": "*"},
    )


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def _readyz(request: web.Request) -> web.Response:
    ready = request.app[LIVE].ready
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    text = request.app[METRICS].render()
    return web.Response(text=text, content_type="text/plain", charset="utf-8")
