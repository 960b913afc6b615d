"""Loads and validates the YAML route table. Every refusal names the YAML path it is about."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mcpproxy.config import exchange, inbound
from mcpproxy.config.envsubst import substitute
from mcpproxy.config.errors import ConfigError
from mcpproxy.config.model import (
    DEFAULT_FALLBACK_METHODS,
    FALLBACK_SAFE_METHODS,
    AuthorizationSource,
    AuthSettings,
    Config,
    ExchangeUpstreamAuth,
    FallbackSettings,
    ForwardUpstreamAuth,
    HeaderSource,
    McpHeadersSource,
    McpMetaSource,
    NoUpstreamAuth,
    ProviderDataSource,
    RouteSettings,
    ServerSettings,
    StaticUpstreamAuth,
    SubjectSource,
    Timeouts,
    UpstreamAuth,
)
from mcpproxy.config.reader import Section
from mcpproxy.config.urls import check_url
from mcpproxy.headers import CREDENTIAL_HEADERS, HOP_BY_HOP, is_token

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@-]+$")
RESERVED_PATHS = ("/healthz", "/readyz", "/metrics", "/.well-known")
UPSTREAM_TYPES = ("none", "static", "forward", *exchange.EXCHANGE_TYPES)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate a config file; raises :class:`ConfigError`."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {name}: {exc.strerror}") from None
    return parse_config(text, env if env is not None else os.environ, source=name)


def parse_config(text: str, env: Mapping[str, str], source: str = "<config>") -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError("", f"{source}: {where}{problem}") from None
    if data is None:
        raise ConfigError("", f"{source} is empty")
    root = Section.of(substitute(data, env), "")
    warnings: list[str] = []
    server = _server(root.section("server", None))
    routes = _routes(root, server, warnings)
    cache_section = root.optional_section("cache")
    cache = exchange.parse_cache(cache_section) if cache_section else None
    audit_section = root.optional_section("audit")
    audit = inbound.parse_audit(audit_section) if audit_section else None
    root.finish()
    return Config(server, routes, cache, tuple(warnings), source, audit=audit)


def _server(sec: Section | None) -> ServerSettings:
    if sec is None:
        return ServerSettings()
    d = ServerSettings()
    settings = ServerSettings(
        host=sec.text("host", d.host),
        port=sec.integer("port", d.port, maximum=65535),
        max_body_bytes=sec.integer("max_body_bytes", d.max_body_bytes, minimum=1024),
        max_header_bytes=sec.integer("max_header_bytes", d.max_header_bytes, minimum=1024),
        max_credential_bytes=sec.integer("max_credential_bytes", d.max_credential_bytes, minimum=256),
        workers=sec.integer("workers", d.workers, minimum=1, maximum=64),
        shutdown_grace_s=sec.number("shutdown_grace_s", d.shutdown_grace_s),
        access_log=sec.flag("access_log", d.access_log),
        strip_headers=_header_names(sec, "strip_headers"),
        watch_config_s=sec.number("watch_config_s", d.watch_config_s, maximum=3600),
        fast_path=sec.flag("fast_path", d.fast_path),
        stream_threads=sec.integer("stream_threads", d.stream_threads, minimum=0, maximum=1024),
    )
    sec.finish()
    return settings


def _routes(root: Section, server: ServerSettings, warnings: list[str]) -> tuple[RouteSettings, ...]:
    if not root.has("routes"):
        root.error("routes", "is required: at least one route")
    routes: list[RouteSettings] = []
    seen_names: dict[str, str] = {}
    for sec in root.sections("routes"):
        route = _route(sec, warnings)
        if route.name in seen_names:
            raise ConfigError(
                sec.at("name"), f"duplicate route name {route.name!r} (also {seen_names[route.name]})"
            )
        seen_names[route.name] = sec.path
        for other, other_path in zip(routes, _paths(root, len(routes)), strict=True):
            if _overlaps(route.path, other.path):
                raise ConfigError(sec.at("path"), f"{route.path!r} overlaps {other.path!r} of {other_path}")
        routes.append(route)
    if not routes:
        root.error("routes", "must list at least one route")
    return tuple(routes)


def _paths(root: Section, count: int) -> list[str]:
    return [f"{root.at('routes')}[{i}]" for i in range(count)]


def _route(sec: Section, warnings: list[str]) -> RouteSettings:
    name = sec.text("name")
    if not _NAME.match(name):
        sec.error("name", "use letters, digits, '.', '_' or '-' (at most 64 characters)")
    path = _route_path(sec)
    upstream = _upstream_url(sec)
    forward = _header_names(sec, "forward_headers")
    for header in forward:
        if header in CREDENTIAL_HEADERS or header in HOP_BY_HOP:
            sec.error(
                "forward_headers",
                f"{header!r} cannot be forwarded from the caller; credentials come from auth.upstream",
            )
    timeouts_sec = sec.optional_section("timeouts")
    timeouts = _timeouts(timeouts_sec) if timeouts_sec else Timeouts()
    public_url = sec.text("public_url", None)
    if public_url is not None:
        check_url(sec, "public_url", public_url)
    auth_sec = sec.optional_section("auth")
    auth = _auth(auth_sec, name, warnings) if auth_sec else AuthSettings()
    policy_sec = sec.optional_section("policy")
    policy = inbound.parse_policy(policy_sec, verifies=auth.verify is not None) if policy_sec else None
    route = RouteSettings(
        name=name,
        path=path,
        upstream=upstream,
        forward_headers=forward,
        timeouts=timeouts,
        public_url=public_url,
        relay_set_cookie=sec.flag("relay_set_cookie", False),
        max_connections=sec.integer("max_connections", 1000, minimum=1, maximum=100_000),
        auth=auth,
        policy=policy,
    )
    sec.finish()
    return route


def _route_path(sec: Section) -> str:
    path: str = sec.text("path")
    if not path.startswith("/") or path == "/":
        sec.error("path", "must start with '/' and name at least one segment")
    segments = path.strip("/").split("/")
    for segment in segments:
        if segment in ("", ".", "..") or not _PATH_SEGMENT.match(segment) or "%" in segment:
            sec.error("path", f"invalid segment {segment!r} in {path!r}")
    for reserved in RESERVED_PATHS:
        if _overlaps(path, reserved):
            sec.error("path", f"{path!r} collides with the proxy's own {reserved}")
    return path


def _upstream_url(sec: Section) -> str:
    url: str = sec.text("upstream")
    check_url(sec, "upstream", url)
    return url


def _timeouts(sec: Section) -> Timeouts:
    d = Timeouts()
    timeouts = Timeouts(
        connect=sec.number("connect", d.connect, minimum=0.01, maximum=600),
        idle=sec.number("idle", d.idle, minimum=0.01, maximum=86400),
    )
    sec.finish()
    return timeouts


def _header_names(sec: Section, key: str) -> tuple[str, ...]:
    names = sec.strings(key, [])
    for i, header in enumerate(names):
        if not is_token(header):
            raise ConfigError(f"{sec.at(key)}[{i}]", f"{header!r} is not a valid header name")
    return tuple(dict.fromkeys(h.lower() for h in names))


# --- auth ------------------------------------------------------------------------------------


def _auth(sec: Section, route_name: str, warnings: list[str]) -> AuthSettings:
    upstream_sec = sec.optional_section("upstream")
    upstream = _upstream_auth(upstream_sec) if upstream_sec else NoUpstreamAuth()
    verify_sec = sec.optional_section("verify")
    verify = inbound.parse_verify(verify_sec) if verify_sec else None
    needs_subject = upstream.needs_subject or verify is not None
    default_subject: list[Any] = ["authorization"] if needs_subject else []
    subject = tuple(_subjects(sec, route_name, default_subject))
    if verify is not None and not subject:
        sec.error("subject", "auth.verify needs at least one subject source (the token to verify)")
    if upstream.needs_subject and not subject:
        sec.error("subject", f"upstream type {upstream.type!r} needs at least one subject source")
    if isinstance(upstream, ForwardUpstreamAuth):
        warnings.append(
            f"{sec.at('upstream.type')}: 'forward' passes the caller's own credential to the "
            "upstream; the MCP authorization spec forbids token passthrough — use it only for "
            "upstreams that are not OAuth resource servers (API keys, personal tokens)"
        )
    fallback_sec = sec.optional_section("fallback")
    fallback = _fallback(fallback_sec, upstream, verify is not None) if fallback_sec else None
    auth = AuthSettings(
        subject=subject,
        upstream=upstream,
        strip_headers=_header_names(sec, "strip_headers"),
        verify=verify,
        fallback=fallback,
    )
    sec.finish()
    return auth


def _fallback(sec: Section, main: UpstreamAuth, verifies: bool) -> FallbackSettings:
    if not main.needs_subject:
        sec.error("upstream", "a fallback only applies where auth.upstream needs the caller's credential")
    if verifies:
        sec.error("upstream", "cannot be combined with auth.verify: every request there must carry a token")
    upstream = _upstream_auth(sec.section("upstream"))
    if upstream.needs_subject or isinstance(upstream, NoUpstreamAuth):
        sec.error("upstream", "must be the route's own identity: type static or client_credentials")
    methods = sec.strings("methods", list(DEFAULT_FALLBACK_METHODS))
    for i, method in enumerate(methods):
        if method not in FALLBACK_SAFE_METHODS:
            raise ConfigError(
                f"{sec.at('methods')}[{i}]",
                f"{method!r} would run as the proxy's own identity; allowed: "
                + ", ".join(sorted(FALLBACK_SAFE_METHODS)),
            )
    sec.finish()
    return FallbackSettings(upstream=upstream, methods=frozenset(methods))


def _subjects(sec: Section, route_name: str, default: list[Any]) -> list[SubjectSource]:
    raw = sec.raw("subject", default)
    if not isinstance(raw, list):
        sec.error("subject", "expected a list of sources")
    sources: list[SubjectSource] = []
    for i, item in enumerate(raw):
        path = f"{sec.at('subject')}[{i}]"
        source = _subject(item, path, route_name)
        if source in sources:
            raise ConfigError(path, "listed twice")
        sources.append(source)
    return sources


def _subject(item: Any, path: str, route_name: str) -> SubjectSource:
    if item == "authorization":
        return AuthorizationSource()
    if item == "provider_data":
        return ProviderDataSource()
    if item == "mcp_headers":
        return McpHeadersSource(server=route_name)
    if isinstance(item, str):
        raise ConfigError(path, f"unknown source {item!r}")
    sec = Section.of(item, path)
    kinds = [k for k in ("header", "provider_data", "mcp_headers", "mcp_meta") if sec.has(k)]
    if len(kinds) != 1:
        raise ConfigError(path, "give exactly one of header, provider_data, mcp_headers, mcp_meta")
    source: SubjectSource
    kind = kinds[0]
    if kind == "header":
        name = sec.text("header")
        if not is_token(name):
            sec.error("header", f"{name!r} is not a valid header name")
        if name.lower() in ("cookie", "proxy-authorization") or name.lower() in HOP_BY_HOP:
            sec.error("header", f"{name!r} cannot carry a subject token")
        source = HeaderSource(name=name, prefix=sec.text("prefix", ""))
    elif kind == "provider_data":
        opts = sec.section("provider_data") if isinstance(sec.raw("provider_data"), dict) else None
        key = opts.text("key", "Authorization") if opts else "Authorization"
        if opts:
            opts.finish()
        source = ProviderDataSource(key=key)
    elif kind == "mcp_headers":
        opts = sec.section("mcp_headers") if isinstance(sec.raw("mcp_headers"), dict) else None
        server = opts.text("server", route_name) if opts else route_name
        key = opts.text("key", "Authorization") if opts else "Authorization"
        if opts:
            opts.finish()
        source = McpHeadersSource(server=server, key=key)
    else:
        key = sec.text("mcp_meta")
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", key):
            sec.error("mcp_meta", f"{key!r} is not a valid _meta key")
        source = McpMetaSource(key=key)
    sec.finish()
    return source


def _upstream_auth(sec: Section) -> UpstreamAuth:
    kind = sec.choice("type", UPSTREAM_TYPES)
    result: UpstreamAuth
    if kind == "none":
        result = NoUpstreamAuth()
    else:
        header = sec.text("header", "Authorization")
        if not is_token(header) or header.lower() in HOP_BY_HOP or header.lower() == "host":
            sec.error("header", f"{header!r} cannot carry an upstream credential")
        default_format = "Bearer {token}" if header.lower() == "authorization" else "{token}"
        fmt = _format(sec, default_format)
        if kind == "static":
            secret = sec.secret("secret", "secret_file")
            assert secret is not None
            result = StaticUpstreamAuth(header=header, format=fmt, secret=secret)
        elif kind == "forward":
            result = ForwardUpstreamAuth(header=header, format=fmt)
        else:
            settings = exchange.parse_exchange(sec, kind)
            result = ExchangeUpstreamAuth(
                header=header,
                format=fmt,
                exchange=settings,
                type=kind,
                needs_subject=exchange.needs_subject(settings),
            )
    sec.finish()
    return result


def _format(sec: Section, default: str) -> str:
    fmt: str = sec.text("format", default)
    placeholders = re.findall(r"\{([^{}]*)\}", fmt)
    if placeholders != ["token"] or fmt.count("{") != 1 or fmt.count("}") != 1:
        sec.error("format", "must contain {token} exactly once and no other braces")
    if any(c in fmt for c in "\r\n\0"):
        sec.error("format", "must not contain control characters")
    return fmt


def _overlaps(a: str, b: str) -> bool:
    """True when one path is a segment-wise prefix of the other ("/a" and "/a/b", not "/ab")."""
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")
