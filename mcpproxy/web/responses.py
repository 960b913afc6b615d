"""Rendering of the proxy's own answers: JSON-RPC error bodies and challenges."""

from __future__ import annotations

import json
from collections.abc import Sequence

from aiohttp import web

from mcpproxy.errors import ProxyError
from mcpproxy.headers import REQUEST_ID
from mcpproxy.jsonrpc import JsonId, error_body


def error_response(
    error: ProxyError, request_id: str, jsonrpc_id: JsonId = None, resource_metadata: str | None = None
) -> web.Response:
    return web.Response(
        status=error.status,
        body=error_body(error.code, error.message, jsonrpc_id, request_id),
        content_type="application/json",
        headers=_headers(error, request_id, resource_metadata),
    )


def batch_error_response(
    error: ProxyError, request_id: str, jsonrpc_ids: Sequence[JsonId], resource_metadata: str | None = None
) -> web.Response:
    """A refused batch: one JSON-RPC error per request of the batch, in a JSON array."""
    payload = [json.loads(error_body(error.code, error.message, i, request_id)) for i in jsonrpc_ids]
    return web.Response(
        status=error.status,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=_headers(error, request_id, resource_metadata),
    )


def _headers(error: ProxyError, request_id: str, resource_metadata: str | None) -> dict[str, str]:
    headers = {REQUEST_ID: request_id, **error.extra_headers}
    if error.www_authenticate:
        challenge = error.www_authenticate
        if resource_metadata and "resource_metadata=" not in challenge:
            challenge += f', resource_metadata="{resource_metadata}"'
        headers["WWW-Authenticate"] = challenge
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return headers
