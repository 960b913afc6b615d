"""OAuth 2.0 Protected Resource Metadata (RFC 9728) for each route, and the challenges that point at it.

A route's resource identifier is its public URL (``public_url``, or the request's scheme and Host
plus the route path). Its metadata lives at that URL with ``/.well-known/oauth-protected-resource``
inserted between host and path (RFC 9728 §3.1), names the route's token issuer as its
authorization server, and is what every 401 of the route points to with ``resource_metadata``.
An upstream's own challenge is rewritten to point there too: the caller talks to the proxy, whose
resource and authorization server are not the upstream's.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mcpproxy.config.model import RouteSettings
from mcpproxy.errors import bearer_challenge

WELL_KNOWN = "/.well-known/oauth-protected-resource"
#: Challenge parameters an upstream's 401/403 keeps when relayed; realm and resource_metadata are ours.
_KEPT = ("error", "error_description", "scope")
_TOKEN_CHARS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]+)(:[0-9]{1,5})?$")


def safe_host(host: str) -> str | None:
    """The request's Host if it is a plain host[:port] (it ends up inside a quoted header value)."""
    return host if _HOST.match(host) else None


def resource_url(route: RouteSettings, scheme: str, host: str) -> str:
    """The route's resource identifier as clients see it."""
    if route.public_url:
        return route.public_url
    return f"{scheme}://{host}{route.path}"


def metadata_url(resource: str) -> str:
    """RFC 9728 §3.1: the well-known suffix goes between the host and the path."""
    parts = urlsplit(resource)
    path = "" if parts.path == "/" else parts.path
    return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN + path, parts.query, ""))


def metadata_paths(route: RouteSettings) -> tuple[str, ...]:
    """The request paths (under the well-known prefix) that serve this route's metadata: its own
    path and, when the public URL's path differs (a path-rewriting ingress), that one too."""
    paths = [route.path.rstrip("/")]
    if route.public_url:
        public = urlsplit(route.public_url).path.rstrip("/")
        if public not in paths:
            paths.append(public)  # "" when the public URL is a bare origin: the root metadata
    return tuple(paths)


def scopes_supported(route: RouteSettings) -> tuple[str, ...]:
    verify = route.auth.verify
    if verify is not None and verify.scopes_supported is not None:
        return verify.scopes_supported
    scopes = list(verify.required_scopes) if verify is not None else []
    if route.policy is not None:
        scopes.extend(route.policy.scopes)
    return tuple(dict.fromkeys(scopes))


def document(route: RouteSettings, resource: str) -> dict[str, Any]:
    """The metadata document of ``route`` served for ``resource``."""
    doc: dict[str, Any] = {"resource": resource}
    if route.auth.verify is not None:
        doc["authorization_servers"] = [route.auth.verify.issuer]
    scopes = scopes_supported(route)
    if scopes:
        doc["scopes_supported"] = list(scopes)
    doc["bearer_methods_supported"] = ["header"]
    doc["resource_name"] = route.name
    return doc


def rewrite_challenge(values: list[str], resource_metadata: str | None) -> str:
    """An upstream's ``WWW-Authenticate`` values as one Bearer challenge of the proxy: its
    ``error``, ``error_description`` and ``scope`` kept, realm and ``resource_metadata`` ours."""
    kept: dict[str, str] = {}
    for value in values:
        for scheme, params in parse_challenges(value):
            if scheme.lower() == "bearer":
                kept = {k: v for k, v in params.items() if k in _KEPT}
                break
        else:
            continue
        break
    return bearer_challenge(
        error=kept.get("error"),
        description=kept.get("error_description"),
        scope=kept.get("scope"),
        resource_metadata=resource_metadata,
    )


def parse_challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """RFC 9110 §11.6.1 challenges: ``scheme [param=value, …]``, several per header value.

    Lenient: what it cannot read it skips. Parameter names are lower-cased; values unquoted.
    """
    challenges: list[tuple[str, dict[str, str]]] = []
    pos, end = 0, len(header)
    while pos < end:
        while pos < end and header[pos] in " \t,":
            pos += 1
        if pos < end and header[pos] in '="':
            # a stray value (no parameter name before it): skip it whole
            _, pos = _param_value(header, pos + 1 if header[pos] == "=" else pos)
            continue
        match = _TOKEN_CHARS.match(header, pos)
        if match is None:
            pos += 1
            continue
        name = match.group()
        pos = match.end()
        after = pos
        while after < end and header[after] in " \t":
            after += 1
        if after < end and header[after] == "=" and challenges:
            value, pos = _param_value(header, after + 1)
            challenges[-1][1].setdefault(name.lower(), value)
            continue
        challenges.append((name, {}))
    return challenges


def _param_value(header: str, pos: int) -> tuple[str, int]:
    end = len(header)
    while pos < end and header[pos] in " \t":
        pos += 1
    if pos < end and header[pos] == '"':
        out: list[str] = []
        pos += 1
        while pos < end and header[pos] != '"':
            if header[pos] == "\\" and pos + 1 < end:
                pos += 1
            out.append(header[pos])
            pos += 1
        return "".join(out), pos + 1
    match = _TOKEN_CHARS.match(header, pos)
    if match is None:
        return "", pos
    return match.group(), match.end()
