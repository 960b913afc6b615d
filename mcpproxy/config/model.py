"""The validated configuration: plain frozen dataclasses, built only by :mod:`mcpproxy.config.loader`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from mcpproxy.secrets import Secret

if TYPE_CHECKING:
    from mcpproxy.config.exchange import CacheSettings, ExchangeSettings
    from mcpproxy.config.inbound import AuditSettings, PolicySettings, VerifySettings


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8081
    max_body_bytes: int = 10 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_credential_bytes: int = 8 * 1024
    workers: int = 1
    shutdown_grace_s: float = 30.0
    access_log: bool = True
    strip_headers: tuple[str, ...] = ()
    #: Seconds between checks of the config file for changes (0: reload on SIGHUP only).
    watch_config_s: float = 0.0
    #: Serve the common request shape (POST/DELETE with a small body) on the raw-protocol relay
    #: (:mod:`mcpproxy.web.relay`); off: every request goes through aiohttp's server and client.
    fast_path: bool = True
    #: Threads, at most, each relaying one long streamed answer off the event loop
    #: (:mod:`mcpproxy.web.offload`); 0: every stream stays on the loop.
    stream_threads: int = 16


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    idle: float = 300.0


# --- where the caller's credential is read ----------------------------------------------------


@dataclass(frozen=True)
class AuthorizationSource:
    """``Authorization: Bearer <t>``; a doubled ``Bearer Bearer <t>`` (OGX's prefixing) reads as t."""

    kind: Literal["authorization"] = "authorization"

    @property
    def header_names(self) -> tuple[str, ...]:
        return ("authorization",)


@dataclass(frozen=True)
class HeaderSource:
    name: str
    prefix: str = ""
    kind: Literal["header"] = "header"

    @property
    def header_names(self) -> tuple[str, ...]:
        return (self.name.lower(),)


@dataclass(frozen=True)
class ProviderDataSource:
    """``X-LlamaStack-Provider-Data`` / ``X-OGX-Provider-Data``: ``mcp_headers[<public url>][key]``."""

    key: str = "Authorization"
    kind: Literal["provider_data"] = "provider_data"

    @property
    def header_names(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class McpHeadersSource:
    """lightspeed-stack's ``MCP-HEADERS: {"<server name>": {header: value}}``."""

    server: str
    key: str = "Authorization"
    kind: Literal["mcp_headers"] = "mcp_headers"

    @property
    def header_names(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class McpMetaSource:
    """``params._meta.<key>`` of a POSTed JSON-RPC request (seed 001); removed before forwarding."""

    key: str
    kind: Literal["mcp_meta"] = "mcp_meta"

    @property
    def header_names(self) -> tuple[str, ...]:
        return ()


SubjectSource = AuthorizationSource | HeaderSource | ProviderDataSource | McpHeadersSource | McpMetaSource


# --- what the upstream receives ---------------------------------------------------------------


@dataclass(frozen=True)
class NoUpstreamAuth:
    type: Literal["none"] = "none"
    needs_subject: bool = False


@dataclass(frozen=True)
class StaticUpstreamAuth:
    header: str
    format: str
    secret: Secret
    type: Literal["static"] = "static"
    needs_subject: bool = False


@dataclass(frozen=True)
class ForwardUpstreamAuth:
    header: str
    format: str
    type: Literal["forward"] = "forward"
    needs_subject: bool = True


@dataclass(frozen=True)
class ExchangeUpstreamAuth:
    """Any OAuth-based type (token_exchange, jwt_bearer, id_jag, entra_obo, client_credentials)."""

    header: str
    format: str
    exchange: ExchangeSettings
    type: str = "token_exchange"
    needs_subject: bool = True


UpstreamAuth = NoUpstreamAuth | StaticUpstreamAuth | ForwardUpstreamAuth | ExchangeUpstreamAuth


#: MCP methods that only open, keep or describe a session — what ``auth.fallback`` may cover.
FALLBACK_SAFE_METHODS = frozenset(
    {
        "initialize",
        "notifications/initialized",
        "notifications/cancelled",
        "ping",
        "tools/list",
        "resources/list",
        "resources/templates/list",
        "prompts/list",
    }
)
DEFAULT_FALLBACK_METHODS = ("initialize", "notifications/initialized", "tools/list")


@dataclass(frozen=True)
class FallbackSettings:
    """``auth.fallback``: the route's own identity for chosen session methods when the caller
    sent no credential (OGX opens a connector's first session without the user's token).
    GET (the session's stream) and DELETE (its end) qualify too; nothing that runs a tool does."""

    upstream: UpstreamAuth
    methods: frozenset[str]


@dataclass(frozen=True)
class AuthSettings:
    subject: tuple[SubjectSource, ...] = ()
    upstream: UpstreamAuth = field(default_factory=NoUpstreamAuth)
    strip_headers: tuple[str, ...] = ()
    verify: VerifySettings | None = None
    fallback: FallbackSettings | None = None

    @property
    def reads_body(self) -> bool:
        return any(isinstance(s, McpMetaSource) for s in self.subject)


@dataclass(frozen=True)
class RouteSettings:
    name: str
    path: str
    upstream: str
    forward_headers: tuple[str, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    public_url: str | None = None
    relay_set_cookie: bool = False
    #: Concurrent upstream requests; each OGX session holds one GET stream open besides its POSTs.
    max_connections: int = 1000
    auth: AuthSettings = field(default_factory=AuthSettings)
    policy: PolicySettings | None = None

    def exchange_rules(self) -> dict[str, ExchangeUpstreamAuth]:
        """The route's OAuth-backed rules by token-source name: the route's, and its fallback's."""
        rules: dict[str, ExchangeUpstreamAuth] = {}
        if isinstance(self.auth.upstream, ExchangeUpstreamAuth):
            rules[self.name] = self.auth.upstream
        fallback = self.auth.fallback
        if fallback is not None and isinstance(fallback.upstream, ExchangeUpstreamAuth):
            rules[f"{self.name}:fallback"] = fallback.upstream
        return rules


@dataclass(frozen=True)
class Config:
    server: ServerSettings
    routes: tuple[RouteSettings, ...]
    cache: CacheSettings | None = None
    warnings: tuple[str, ...] = ()
    source: str = "<config>"
    audit: AuditSettings | None = None
