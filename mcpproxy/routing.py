"""Maps a raw request target onto a route and the upstream URL it is proxied to.

The raw target is checked before anything is decoded, so no spelling of ``..`` (``%2e%2e``,
``%2E.``), no encoded slash or backslash, no empty segment and no absolute-form target can
move a request outside its route's upstream path.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote, urlsplit

from mcpproxy.config.model import RouteSettings
from mcpproxy.errors import ProxyError, bad_request
from mcpproxy.expiring import remember


class Match:
    """A request target's route (shared by the requests with the same target: never changed)."""

    __slots__ = ("name", "query", "remainder", "route", "upstream_url")

    def __init__(self, route: RouteSettings, remainder: str, query: str, upstream_url: str) -> None:
        self.route = route
        self.name = route.name  # read on every request: a native attribute, not the dataclass's
        self.remainder = remainder  # "" or "/…": the part after the route path, raw (percent-encoded)
        self.query = query  # raw query string without "?"
        self.upstream_url = upstream_url


class RouteTable:
    def __init__(self, routes: tuple[RouteSettings, ...]) -> None:
        # Longest path first, so "/a/b" would win over "/a" (the loader refuses overlaps anyway).
        self._routes = sorted(routes, key=lambda r: len(r.path), reverse=True)
        self._exact = {r.path: r for r in routes}
        self.by_name = {r.name: r for r in routes}
        #: Targets already matched: a client sends the same target request after request, and
        #: a lookup costs a tenth of the check and the match. Bounded, so varied targets (a
        #: query per session) cannot grow it.
        self._known: dict[str, Match] = {}

    def match(self, raw_target: str) -> Match | None:
        """The route for ``raw_target`` (origin-form path plus query), or None for an unknown path.

        Raises a 400 :class:`ProxyError` for targets that try to escape their route.
        """
        known = self._known.get(raw_target)
        if known is not None:
            return known
        found = self._match(raw_target)
        if found is not None:
            remember(self._known, raw_target, found, _MAX_KNOWN)
        return found

    def _match(self, raw_target: str) -> Match | None:
        path, _, query = raw_target.partition("?")
        if path not in _CHECKED:
            check_target(path)
            if len(_CHECKED) < _MAX_CHECKED:
                _CHECKED.add(path)
        route = self._exact.get(path)
        if route is not None:
            return Match(route, "", query, upstream_url(route.upstream, "", query))
        for route in self._routes:
            prefix = route.path.rstrip("/")
            if path.startswith(prefix + "/"):
                remainder = path[len(prefix) :]
                return Match(route, remainder, query, upstream_url(route.upstream, remainder, query))
        return None


#: Paths that passed :func:`check_target`: a client sends the same path on every request of a
#: session (only the query differs), and a set lookup costs a tenth of the check. Bounded, so
#: varied paths cannot grow it.
_CHECKED: Final[set[str]] = set()
_MAX_CHECKED: Final = 1024
_MAX_KNOWN: Final = 1024


def check_target(path: str) -> None:
    if not path.startswith("/"):
        raise _escape("request target must be a path (origin-form)")
    if "\\" in path or "\0" in path:
        raise _escape("request path contains a backslash or NUL")
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered or "%00" in lowered:
        raise _escape("request path contains an encoded slash, backslash or NUL")
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        if segment == "" and i != len(segments) - 1:
            raise _escape("request path contains an empty segment")
        if segment in (".", "..") or ("%" in segment and unquote(segment) in (".", "..")):
            raise _escape("request path contains a dot segment")


def _escape(message: str) -> ProxyError:
    return bad_request(message, reason="path_escape")


def upstream_url(base: str, remainder: str, query: str) -> str:
    url = base if not remainder else base.rstrip("/") + remainder
    return f"{url}?{query}" if query else url


def rewrite_endpoint(endpoint: str, upstream_base: str, public_prefix: str) -> str | None:
    """Map a legacy SSE ``endpoint`` event's URL onto the proxy's route.

    ``/messages/?session_id=x`` (relative to the upstream origin) or an absolute URL on the
    upstream's origin becomes ``<public_prefix>/messages/?session_id=x``. Returns None when the
    endpoint lies outside the upstream's base path or origin: the client must not be sent there.
    """
    up = urlsplit(upstream_base)
    target = urlsplit(endpoint)
    if target.scheme or target.netloc:
        if (target.scheme, target.netloc) != (up.scheme, up.netloc):
            return None
    elif not target.path.startswith("/"):
        return None
    base_path = up.path.rstrip("/")
    path = target.path
    if base_path:
        if path != base_path and not path.startswith(base_path + "/"):
            return None
        path = path[len(base_path) :]
    try:
        check_target(path or "/")
    except ProxyError:
        return None
    rewritten = public_prefix.rstrip("/") + path
    return f"{rewritten}?{target.query}" if target.query else rewritten
