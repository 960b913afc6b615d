"""aiohttp's HTTP/1 protocol handler with errors the proxy's way.

aiohttp answers requests it cannot parse (an over-long header, a bad request line, conflicting
``Content-Length`` / ``Transfer-Encoding``) itself, in plain text that quotes up to 100 bytes of
the offending input — which may be a credential — and logs the exception with the same text.
This handler answers such requests, and any unexpected failure, with a JSON-RPC error body that
quotes nothing, and logs only the error's type.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from mcpproxy.errors import JSONRPC_INTERNAL_ERROR, JSONRPC_INVALID_REQUEST
from mcpproxy.jsonrpc import error_body
from mcpproxy.requestid import new_request_id
from mcpproxy.web.app import LIVE
from mcpproxy.web.relay import CallerConnection, Relay

log = structlog.get_logger("mcpproxy.http")


class ProxyRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        error = type(exc).__name__ if exc is not None else None
        if status >= 500:
            log.error("internal_error", status=status, error=error)
        else:
            log.warning("malformed_http_request", status=status, error=error)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; closing the connection")
        request_id = new_request_id()
        code = JSONRPC_INTERNAL_ERROR if status >= 500 else JSONRPC_INVALID_REQUEST
        text = "internal proxy error" if status >= 500 else "malformed HTTP request"
        response = web.Response(
            status=status,
            reason=HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else None,
            body=error_body(code, text, None, request_id),
            content_type="application/json",
            headers={"X-Request-Id": request_id},
        )
        response.force_close()
        return response


class ProxyServer(Server):
    """aiohttp's connection factory, with every connection starting on the relay."""

    relay: Relay | None = None

    def __call__(self) -> RequestHandler:
        if self.relay is not None:
            return CallerConnection(self.relay)  # type: ignore[return-value]  # hands over to handler()
        return self.handler()

    def handler(self) -> RequestHandler:
        return ProxyRequestHandler(self, loop=self._loop, **self._kwargs)

    def pre_shutdown(self) -> None:
        if self.relay is not None:
            self.relay.close_idle()
        super().pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's signature
        if self.relay is None:
            await super().shutdown(timeout)
            return
        await asyncio.gather(self.relay.shutdown(timeout), super().shutdown(timeout))


class ProxyRunner(web.AppRunner):
    """An AppRunner whose connections are served by :class:`ProxyRequestHandler`."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        # aiohttp builds the Server inside Application._make_handler; swapping the class keeps
        # its construction (and every argument it passes) aiohttp's own.
        server.__class__ = ProxyServer
        assert isinstance(server, ProxyServer)
        server.relay = Relay(self._app[LIVE], server.handler)
        server.request_handler = _origin_form_only(server.request_handler)
        return server


def _origin_form_only(
    handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
) -> Callable[[BaseRequest], Awaitable[web.StreamResponse]]:
    """Refuse ``OPTIONS *`` and absolute-form targets before routing (which would answer them
    with aiohttp's plain-text 404): a proxy route is only ever addressed by its path."""

    async def guarded(request: BaseRequest) -> web.StreamResponse:
        if request.raw_path.startswith("/"):
            return await handler(request)
        request_id = new_request_id()
        return web.Response(
            status=400,
            body=error_body(JSONRPC_INVALID_REQUEST, "request target must be a path", None, request_id),
            content_type="application/json",
            headers={"X-Request-Id": request_id},
        )

    return guarded


def runner_kwargs(**kwargs: Any) -> dict[str, Any]:
    return {"handler_cancellation": True, "access_log": None, **kwargs}
