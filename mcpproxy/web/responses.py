"""Rendering of the proxy's own answers: JSON-RPC error bodies and challenges."""

from __future__ import annotations

from aiohttp import web

from mcpproxy.errors import ProxyError
from mcpproxy.headers import REQUEST_ID
from mcpproxy.jsonrpc import JsonId, error_body


def error_response(
    error: ProxyError, request_id: str, jsonrpc_id: JsonId = None, resource_metadata: str | None = None
) -> web.Response:
    headers = {REQUEST_ID: request_id, **error.extra_headers}
    if error.www_authenticate:
        challenge = error.www_authenticate
        if resource_metadata and "resource_metadata=" not in challenge:
            challenge += f', resource_metadata="{resource_metadata}"'
        headers["WWW-Authenticate"] = challenge
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return web.Response(
        status=error.status,
        body=error_body(error.code, error.message, jsonrpc_id, request_id),
        content_type="application/json",
        headers=headers,
    )
