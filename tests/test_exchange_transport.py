"""The aiohttp implementation of TokenHttp against a real local HTTP server."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from mcpproxy.oauth.transport import TransportError
from mcpproxy.web.oauth_http import AiohttpTokenHttp


async def token(request: web.Request) -> web.Response:
    form = await request.post()
    return web.json_response({
        "content_type": request.content_type,
        "audience": form.getall("audience", []),
        "subject_token": form.get("subject_token"),
        "authorization": request.headers.get("Authorization"),
    })


async def big(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * 5000)


async def big_chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    for _ in range(10):
        await resp.write(b"y" * 1000)
    return resp


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/token")


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(2)
    return web.json_response({})


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_get("/big", big)
    app.router.add_get("/chunked", big_chunked)
    app.router.add_post("/redirect", redirect)
    app.router.add_get("/slow", slow)
    async with TestServer(app, host="127.0.0.1") as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[AiohttpTokenHttp]:
    client = AiohttpTokenHttp(max_body_bytes=2000)
    yield client
    await client.close()


async def test_form_post(server: TestServer, http: AiohttpTokenHttp) -> None:
    reply = await http.post_form(
        str(server.make_url("/token")),
        [("audience", "a"), ("audience", "b"), ("subject_token", "t+/=&x")],
        {"Authorization": "Basic abc"},
        5,
    )
    assert reply.status == 200
    assert reply.body.startswith(b"{")
    body = json.loads(reply.body)
    assert body == {"content_type": "application/x-www-form-urlencoded", "audience": ["a", "b"],
                    "subject_token": "t+/=&x", "authorization": "Basic abc"}


async def test_redirects_are_not_followed(server: TestServer, http: AiohttpTokenHttp) -> None:
    reply = await http.post_form(str(server.make_url("/redirect")), [], {}, 5)
    assert reply.status == 302


@pytest.mark.parametrize("path", ["/big", "/chunked"])
async def test_answers_are_bounded(server: TestServer, http: AiohttpTokenHttp, path: str) -> None:
    with pytest.raises(TransportError, match="exceeds 2000 bytes"):
        await http.get_json(str(server.make_url(path)), 5)


async def test_timeout_and_refused_connection(server: TestServer, http: AiohttpTokenHttp) -> None:
    with pytest.raises(TransportError, match="no answer"):
        await http.get_json(str(server.make_url("/slow")), 0.2)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransportError, match="cannot reach"):
        await http.post_form(f"http://127.0.0.1:{port}/token", [], {}, 1)
