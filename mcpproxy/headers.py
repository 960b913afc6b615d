"""Header policy in both directions, as plain functions over case-insensitive multidicts.

Requests: an allowlist (the MCP protocol headers plus a route's ``forward_headers``) decides what
leaves the proxy; everything else — credentials, cookies, hop-by-hop headers and whatever the
caller's ``Connection`` header names — stays behind. Responses: hop-by-hop headers go, and
``Set-Cookie`` only passes where a route asks for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy, istr

Headers = CIMultiDict[str] | CIMultiDictProxy[str]

_TOKEN: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
    }
)

#: Headers that carry a caller's credential in any deployment we know of. Never forwarded.
CREDENTIAL_HEADERS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-llamastack-provider-data",
        "x-ogx-provider-data",
        "mcp-headers",
        "x-api-key",
        "api-key",
        "private-token",
        "x-auth-token",
        "x-access-token",
        "x-amz-security-token",
    }
)

#: What an MCP client and server exchange on every transport revision (lower-case).
MCP_REQUEST_HEADERS: Final = frozenset(
    {
        "accept",
        "content-type",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
        "mcp-method",
        "mcp-name",
        "user-agent",
        "traceparent",
        "tracestate",
    }
)

#: Response headers the proxy sets itself or must not relay as they came.
RESPONSE_DROP: Final = HOP_BY_HOP | {"content-length", "server", "date"}

_RESPONSE_DROP_COOKIES: Final = RESPONSE_DROP | {"set-cookie", "set-cookie2"}

# Field names looked up on every request. A CIMultiDict folds the case of a str key at each
# lookup; an istr carries its folded form, which makes the lookup about three times cheaper.
REQUEST_ID: Final = istr("X-Request-Id")
#: What the line form of the response policy drops: the proxy sets X-Request-Id itself.
_LINES_DROP: Final = RESPONSE_DROP | {REQUEST_ID.lower()}
_LINES_DROP_COOKIES: Final = _RESPONSE_DROP_COOKIES | {REQUEST_ID.lower()}
HOST: Final = istr("Host")
CONTENT_LENGTH: Final = istr("Content-Length")
CONNECTION: Final = istr("Connection")
AUTHORIZATION: Final = istr("Authorization")
MCP_METHOD: Final = istr("Mcp-Method")
MCP_NAME: Final = istr("Mcp-Name")
X_FORWARDED_FOR = istr("X-Forwarded-For")
X_FORWARDED_PROTO = istr("X-Forwarded-Proto")
X_FORWARDED_HOST = istr("X-Forwarded-Host")
#: Request fields the proxy sets itself (:func:`_add_forwarding`, with or without X-Forwarded-Host):
#: never the caller's.
_PROXY_SET: Final = frozenset(
    name.lower() for name in (X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST, REQUEST_ID)
)
_PROXY_SET_NO_HOST: Final = _PROXY_SET - {X_FORWARDED_HOST.lower()}


def is_token(name: str) -> bool:
    """RFC 9110 field-name syntax."""
    return bool(_TOKEN.match(name))


def connection_named(headers: Headers) -> set[str]:
    """Header names listed in ``Connection`` (RFC 9110 §7.6.1): hop-by-hop for this request."""
    named: set[str] = set()
    for value in headers.getall(CONNECTION, ()):
        named.update(part.strip().lower() for part in value.split(",") if part.strip())
    return named


def upstream_request_headers(
    incoming: Headers,
    allowed: frozenset[str],
    *,
    client_ip: str,
    scheme: str,
    host: str,
    request_id: str,
) -> CIMultiDict[str]:
    """Headers for the upstream request: allowlisted caller headers plus the proxy's own.

    ``allowed`` must already exclude credential and hop-by-hop names (the config loader refuses
    them in ``forward_headers``); names the caller lists in ``Connection`` are dropped here too,
    so ``Connection: X-Request-Id`` cannot smuggle an allowlisted header past the policy.
    """
    dropped = connection_named(incoming) if CONNECTION in incoming else ()
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in allowed and lower not in dropped:
            out.add(name, value)
    forwarding: list[str] = []
    _add_forwarding(forwarding, _prior_hops(incoming), client_ip, scheme, host, request_id)
    for line in forwarding:
        name, _, value = line.partition(": ")
        out[name] = value
    return out


def upstream_request_lines(
    names: list[str],
    lines: list[str],
    incoming: Headers,
    allowed: frozenset[str],
    *,
    client_ip: str,
    scheme: str,
    host: str,
    request_id: str,
    replaced: str | None = None,
) -> list[str]:
    """:func:`upstream_request_headers` over the request's field lines as received (``names``:
    each line's name in lower case; ``incoming``: the same fields as a multidict), keeping lines
    whole. ``replaced`` names a field the caller adds next (the upstream credential's), which
    no line of the caller's may then carry."""
    dropped = _PROXY_SET if host else _PROXY_SET_NO_HOST
    if replaced is not None and replaced.lower() in allowed:
        dropped = dropped | {replaced.lower()}
    out = _kept_lines(names, lines, allowed, dropped)
    if out is None:  # a Connection field: the names it lists go too
        dropped = dropped | connection_named(incoming)
        out = [lines[i] for i, name in enumerate(names) if name in allowed and name not in dropped]
    prior = _prior_hops(incoming) if X_FORWARDED_FOR in incoming else ""
    _add_forwarding(out, prior, client_ip, scheme, host, request_id)
    return out


def _kept_lines(
    names: list[str], lines: list[str], allowed: frozenset[str], dropped: frozenset[str]
) -> list[str] | None:
    """The lines whose names are allowed and not dropped; None when a ``Connection`` field is
    among them (looked for in the same pass: ``"connection" in names`` compared every name;
    ``allowed`` never holds it, a hop-by-hop field)."""
    out = []
    for i, name in enumerate(names):
        if name in allowed:
            if name not in dropped:
                out.append(lines[i])
        elif name == "connection":
            return None
    return out


def _prior_hops(incoming: Headers) -> str:
    return ", ".join(incoming.getall(X_FORWARDED_FOR, ()))


class _Hops:
    """The forwarding lines last made, and what they were made of: a caller connection's
    requests come from one address, by one scheme, mostly with one Host, so they are made once
    rather than concatenated anew on every request."""

    __slots__ = ("client_ip", "host", "lines", "prior", "scheme")

    def __init__(self) -> None:
        self.prior = self.client_ip = self.scheme = self.host = ""
        self.lines: tuple[str, ...] = ()

    def lines_for(self, prior: str, client_ip: str, scheme: str, host: str) -> tuple[str, ...]:
        if (
            client_ip == self.client_ip
            and prior == self.prior
            and host == self.host
            and scheme == self.scheme
            and self.lines
        ):
            return self.lines
        lines = [
            "X-Forwarded-For: " + (f"{prior}, {client_ip}" if prior else client_ip),
            "X-Forwarded-Proto: " + scheme,
        ]
        if host:
            lines.append("X-Forwarded-Host: " + host)
        self.prior, self.client_ip, self.scheme, self.host = prior, client_ip, scheme, host
        self.lines = tuple(lines)
        return self.lines


_HOPS: Final = _Hops()


def _add_forwarding(
    out: list[str], prior: str, client_ip: str, scheme: str, host: str, request_id: str
) -> None:
    """Append the field lines the proxy sets on every upstream request, in place of any the
    caller sent (as lines: the relay's form; the multidict form splits them again). ``prior``:
    the caller's own X-Forwarded-For, the hops before it."""
    out.extend(_HOPS.lines_for(prior, client_ip, scheme, host))
    out.append("X-Request-Id: " + request_id)


def field_lines(fields: Iterable[tuple[str, str]]) -> list[str]:
    """Fields (a multidict's ``items()``, or pairs) as head lines, ``Name: value``."""
    return list(map(": ".join, fields))


def downstream_response_headers(
    upstream: Headers, *, relay_set_cookie: bool, drop: Iterable[str] = ()
) -> CIMultiDict[str]:
    """Headers relayed to the caller: hop-by-hop and Connection-named ones removed."""
    removed = RESPONSE_DROP if relay_set_cookie else _RESPONSE_DROP_COOKIES
    if drop or CONNECTION in upstream:
        removed = removed | connection_named(upstream) | {d.lower() for d in drop}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in removed:
            out.add(name, value)
    return out


def downstream_response_lines(
    names: list[str], lines: list[str], *, relay_set_cookie: bool
) -> list[str] | None:
    """:func:`downstream_response_headers` over a head's field lines as received (``names``: each
    line's name in lower case), keeping lines whole; without the ``X-Request-Id`` the proxy sets
    itself. None when a ``Connection`` field is present: its options name more fields to drop,
    which the multidict form handles."""
    if "connection" in names:
        return None
    removed = _LINES_DROP if relay_set_cookie else _LINES_DROP_COOKIES
    # by index, not zip(): compiled, enumerate over a list is a plain loop, zip a generic iterator
    return [lines[i] for i, name in enumerate(names) if name not in removed]


def route_allowlist(forward_headers: Iterable[str], strip: Iterable[str]) -> frozenset[str]:
    """The request headers a route passes on: MCP protocol set plus its own, minus anything stripped."""
    stripped = {s.lower() for s in strip} | CREDENTIAL_HEADERS | HOP_BY_HOP | {"host", "content-length"}
    return frozenset((MCP_REQUEST_HEADERS | {h.lower() for h in forward_headers}) - stripped)
