"""Finding the caller's credential and refusing smuggled or conflicting ones.

Every configured source is read (not only the first that matches) so that two different
credentials — a header token that differs from the provider-data one, two ``Authorization``
headers — are refused with 400 instead of silently picking one. The first source that found a
value names the subject's origin in logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from multidict import istr

from mcpproxy.config.model import (
    AuthorizationSource,
    AuthSettings,
    HeaderSource,
    McpHeadersSource,
    McpMetaSource,
    ProviderDataSource,
    SubjectSource,
)
from mcpproxy.errors import bad_request
from mcpproxy.expiring import remember
from mcpproxy.headers import AUTHORIZATION, CREDENTIAL_HEADERS, Headers
from mcpproxy.jsonrpc import Body
from mcpproxy.providerdata import (
    header_value,
    lightspeed_headers,
    mcp_headers_for,
    provider_data,
)
from mcpproxy.secrets import Secret


class Subject:
    """The caller's credential and where it was found."""

    __slots__ = ("source", "token")

    def __init__(self, token: Secret, source: str) -> None:
        self.token = token
        self.source = source


class RequestView:
    """What credential resolution looks at: headers, the route's public host and path, the body."""

    __slots__ = ("body", "headers", "max_bytes", "public_host", "route_path")

    def __init__(
        self, headers: Headers, public_host: str, route_path: str, body: Body | None, max_bytes: int
    ) -> None:
        self.headers = headers
        self.public_host = public_host
        self.route_path = route_path
        self.body = body
        self.max_bytes = max_bytes


def credential_header_names(auth: AuthSettings, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Every header that may carry a caller credential on this route — all removed before
    forwarding. As istrs: a multidict folds the case of a str at every lookup, an istr carries
    its folded form (:func:`check_credential_headers` looks up each of them on every request);
    in a tuple, which compiled code walks without an iterator."""
    names = set(CREDENTIAL_HEADERS) | {e.lower() for e in extra} | set(auth.strip_headers)
    for source in auth.subject:
        names.update(source.header_names)
    return tuple(istr(name) for name in sorted(names))


def check_credential_headers(
    headers: Headers, names: tuple[str, ...], max_bytes: int, plain_values: bool = False
) -> None:
    """Refuse duplicates and malformed values of credential headers, whether or not they are used.

    Looked up by name (``names`` are lower case; the multidict's lookups ignore case), a handful
    of hash lookups, rather than by walking every field of the request. ``plain_values``: the
    head's parser already refused every value with a control character (the relay's does), so
    a ~1 KB token need not be scanned again."""
    for name in names:
        if name not in headers:
            continue
        values = headers.getall(name)
        if len(values) > 1 and name != "cookie":
            raise bad_request(f"{name} sent more than once", reason="duplicate_credentials")
        for value in values:
            if not plain_values and ("\r" in value or "\n" in value or "\0" in value):
                raise bad_request(f"{name} contains a control character", reason="malformed_credential")
            if len(value) > max_bytes:
                raise bad_request(f"{name} is too long", reason="malformed_credential")


def resolve_subject(sources: tuple[SubjectSource, ...], view: RequestView) -> Subject | None:
    found: list[tuple[str, Secret]] = []
    for source in sources:
        values = _read(source, view)
        if values:
            label = _label(source)
            for value in values:
                found.append((label, _secret(value, label, view.max_bytes)))
    if not found:
        return None
    label, secret = found[0]
    if len(found) > 1 and any(other.reveal() != secret.reveal() for _, other in found[1:]):
        labels = sorted({label for label, _ in found})
        raise bad_request(
            "conflicting credentials from " + ", ".join(labels), reason="conflicting_credentials"
        )
    return Subject(secret, label)


def strip_meta_credentials(body: Body, sources: tuple[SubjectSource, ...]) -> bool:
    """Remove ``params._meta.<key>`` credentials from the body; True when anything was removed."""
    keys = [s.key for s in sources if isinstance(s, McpMetaSource)]
    changed = False
    for message in body.messages:
        meta = _meta(message)
        if meta is None:
            continue
        for key in keys:
            if key in meta:
                del meta[key]
                changed = True
    return changed


def _read(source: SubjectSource, view: RequestView) -> list[str]:
    if isinstance(source, AuthorizationSource):
        return [_bearer(v) for v in view.headers.getall(AUTHORIZATION, ())]
    if isinstance(source, HeaderSource):
        return [_strip_prefix(v, source) for v in view.headers.getall(source.name, ())]
    if isinstance(source, ProviderDataSource):
        data = provider_data(view.headers, view.max_bytes * 4)
        entries = mcp_headers_for(data, view.public_host, view.route_path)
        values = [header_value(e, source.key) for e in entries]
        return [_bearer(v) if source.key.lower() == "authorization" else v for v in values if v is not None]
    if isinstance(source, McpHeadersSource):
        entry = lightspeed_headers(view.headers, source.server, view.max_bytes * 4)
        value = header_value(entry, source.key) if entry is not None else None
        if value is None:
            return []
        return [_bearer(value) if source.key.lower() == "authorization" else value]
    return _meta_values(source, view.body)


def _meta_values(source: McpMetaSource, body: Body | None) -> list[str]:
    if body is None:
        return []
    values: list[str] = []
    for message in body.messages:
        meta = _meta(message)
        if meta is None or source.key not in meta:
            continue
        value = meta[source.key]
        if not isinstance(value, str):
            raise bad_request(f"_meta.{source.key} must be a string", reason="malformed_credential")
        values.append(value)
    return values


def _meta(message: dict[str, Any]) -> dict[str, Any] | None:
    params = message.get("params")
    if not isinstance(params, dict):
        return None
    meta = params.get("_meta")
    return meta if isinstance(meta, dict) else None


def _bearer(value: str) -> str:
    """``Bearer <t>`` → t; ``Bearer Bearer <t>`` (OGX prefixes unconditionally) → t."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise bad_request("Authorization must use the Bearer scheme", reason="malformed_credential")
    rest = rest.strip()
    inner_scheme, _, inner = rest.partition(" ")
    # (the length first: without a second scheme, inner_scheme is the whole ~1 KB token)
    if len(inner_scheme) == 6 and inner_scheme.lower() == "bearer" and inner.strip():
        rest = inner.strip()
    return rest


def _strip_prefix(value: str, source: HeaderSource) -> str:
    value = value.strip()
    if not source.prefix:
        return value
    if not value.lower().startswith(source.prefix.lower()):
        raise bad_request(f"{source.name} must start with {source.prefix!r}", reason="malformed_credential")
    return value[len(source.prefix) :].strip()


#: The callers' credentials already found well formed, each as the one :class:`Secret` every
#: request that sends it gets: a caller sends the same token request after request, and the
#: format check and the SHA-256 of the cache key (:meth:`Secret.digest`, computed once a secret)
#: cost about 1.3 µs of every relayed exchange request. Bounded (emptied when full), like the token
#: cache it feeds, and holding only what callers keep sending: a token is no more valid for being
#: here (validity is the verifier's and the token endpoint's to judge).
#:
#: Keyed by a token's last characters (a JWT's signature), and a hit compared whole: a dict keyed
#: by the whole token hashed its ~1 KB on every request (a token arrives as a new str), ten times
#: the cost of the slice, lookup and comparison. Two tokens that end alike share a slot, never a
#: Secret.
_SECRETS: Final[dict[str, Secret]] = {}
_MAX_SECRETS: Final = 512
_TAIL: Final = 32


def _secret(value: str, label: str, max_bytes: int) -> Secret:
    """The caller's credential ``value`` (found under ``label``) as a Secret, once checked."""
    if not value:
        raise bad_request(f"empty credential in {label}", reason="malformed_credential")
    if len(value) > max_bytes:
        raise bad_request(f"credential in {label} is too long", reason="malformed_credential")
    tail = value[-_TAIL:]
    known = _SECRETS.get(tail)
    if known is not None and known.reveal() == value:
        return known
    if not _visible(value):
        raise bad_request(
            f"credential in {label} contains whitespace or control characters",
            reason="malformed_credential",
        )
    return remember(_SECRETS, tail, Secret(value), _MAX_SECRETS)


_VISIBLE_ASCII: Final = bytes(range(0x21, 0x7F))


def _visible(value: str) -> bool:
    """No space, control or separator character. An ASCII token (nearly all) is checked with
    ``bytes.translate`` (a third of ``isprintable``'s time over a ~1 KB JWT, on every request)."""
    if value.isascii():
        return not value.encode().translate(None, _VISIBLE_ASCII)
    return " " not in value and value.isprintable()


def _label(source: SubjectSource) -> str:
    if isinstance(source, AuthorizationSource):  # the common source: no attribute read
        return "authorization"
    if isinstance(source, HeaderSource):
        return f"header:{source.name}"
    if isinstance(source, McpMetaSource):
        return f"mcp_meta:{source.key}"
    return source.kind
