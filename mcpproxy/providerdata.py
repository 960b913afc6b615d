"""Llama Stack's provider-data header and lightspeed-stack's MCP-HEADERS, parsed strictly.

``X-LlamaStack-Provider-Data`` (new name ``X-OGX-Provider-Data``) carries JSON with
``mcp_headers: {"<endpoint uri>": {header: value}}``. Llama Stack matches an endpoint on host and
path — scheme and query ignored, trailing slash significant, no prefix match. The proxy applies
the same rule to the route's public URL, and also accepts keys naming a path *inside* the route
(a legacy ``…/sse`` endpoint, for instance), refusing the request if those disagree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from multidict import istr

from mcpproxy.errors import bad_request
from mcpproxy.headers import Headers

PROVIDER_DATA_HEADERS = (istr("X-LlamaStack-Provider-Data"), istr("X-OGX-Provider-Data"))
MCP_HEADERS_HEADER = "MCP-HEADERS"
_MAX_JSON_DEPTH = 8


def provider_data(headers: Headers, max_bytes: int) -> Mapping[str, Any] | None:
    """The parsed provider-data object, from either header name (they must agree if both sent)."""
    values = [v for name in PROVIDER_DATA_HEADERS for v in headers.getall(name, ())]
    if not values:
        return None
    if len(set(values)) > 1:
        raise bad_request("conflicting provider-data headers", reason="conflicting_credentials")
    return _json_object(values[0], "provider-data header", max_bytes)


def mcp_headers_for(
    data: Mapping[str, Any] | None, public_host: str, route_path: str
) -> list[Mapping[str, Any]]:
    """Every ``mcp_headers`` entry whose key names this route (same host, path at or under it)."""
    if data is None:
        return []
    table = data.get("mcp_headers")
    if table is None:
        return []
    if not isinstance(table, Mapping):
        raise bad_request("provider-data mcp_headers must be an object", reason="malformed_provider_data")
    matches: list[Mapping[str, Any]] = []
    for key, entry in table.items():
        if not isinstance(entry, Mapping):
            raise bad_request(
                "provider-data mcp_headers entries must be objects", reason="malformed_provider_data"
            )
        if _names_route(str(key), public_host, route_path):
            matches.append(entry)
    return matches


def lightspeed_headers(headers: Headers, server: str, max_bytes: int) -> Mapping[str, Any] | None:
    """lightspeed-stack's ``MCP-HEADERS: {"<server name>": {header: value}}`` entry for ``server``."""
    values = headers.getall(MCP_HEADERS_HEADER, ())
    if not values:
        return None
    if len(values) > 1:
        raise bad_request("MCP-HEADERS sent more than once", reason="duplicate_credentials")
    data = _json_object(values[0], "MCP-HEADERS header", max_bytes)
    entry = data.get(server)
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        raise bad_request("MCP-HEADERS entries must be objects", reason="malformed_provider_data")
    return entry


def header_value(entry: Mapping[str, Any], name: str) -> str | None:
    """Case-insensitive lookup of a header inside a JSON header map; only strings count."""
    found = [v for k, v in entry.items() if str(k).lower() == name.lower()]
    if not found:
        return None
    if len(found) > 1:
        raise bad_request(f"{name} given twice in one header map", reason="duplicate_credentials")
    value = found[0]
    if not isinstance(value, str):
        raise bad_request(f"{name} in a header map must be a string", reason="malformed_provider_data")
    return value


def _names_route(key: str, public_host: str, route_path: str) -> bool:
    parts = urlsplit(key if "//" in key else f"//{key}")
    if parts.netloc.lower() != public_host.lower():
        return False
    base = route_path.rstrip("/")
    return parts.path in (base, base + "/") or parts.path.startswith(base + "/")


def _json_object(text: str, what: str, max_bytes: int) -> Mapping[str, Any]:
    if len(text) > max_bytes:
        raise bad_request(f"{what} is too large", reason="malformed_provider_data")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise bad_request(f"{what} is not valid JSON", reason="malformed_provider_data") from None
    if not isinstance(data, dict):
        raise bad_request(f"{what} must be a JSON object", reason="malformed_provider_data")
    if _depth(data) > _MAX_JSON_DEPTH:
        raise bad_request(f"{what} is nested too deeply", reason="malformed_provider_data")
    return data


def _depth(value: Any, level: int = 0) -> int:
    if level > _MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level
