"""The OAuth core's HTTP (:class:`~mcpproxy.oauth.transport.TokenHttp`) on an aiohttp client
session, and the token-source factory the application uses for exchange routes."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit

import aiohttp

from mcpproxy.config.model import Config
from mcpproxy.metrics import Registry
from mcpproxy.oauth.runtime import ExchangeRuntime
from mcpproxy.oauth.transport import Form, HttpReply, TransportError
from mcpproxy.upstream_auth import TokenSource
from mcpproxy.web.app import TokenSources

MAX_BODY_BYTES = 256 * 1024


class AiohttpTokenHttp:
    """Bounded answers, no redirects, no proxy settings from the environment, own connection pool."""

    def __init__(self, *, max_body_bytes: int = MAX_BODY_BYTES, limit: int = 100) -> None:
        self._max = max_body_bytes
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit), trust_env=False
            )
        return self._session

    async def post_form(
        self, url: str, form: Form, headers: Mapping[str, str], timeout_s: float
    ) -> HttpReply:
        body = urlencode(list(form)).encode("ascii")
        all_headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        return await self._send("POST", url, timeout_s, all_headers, body)

    async def get_json(self, url: str, timeout_s: float) -> HttpReply:
        return await self._send("GET", url, timeout_s, {"Accept": "application/json"}, None)

    async def _send(
        self, method: str, url: str, timeout_s: float, headers: Mapping[str, str], body: bytes | None
    ) -> HttpReply:
        where = urlsplit(url).netloc
        try:
            async with self._client().request(
                method,
                url,
                data=body,
                headers=dict(headers),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                data = await self._read(resp, where)
                return HttpReply(resp.status, dict(resp.headers), data)
        except TimeoutError:
            raise TransportError(f"no answer from {where} within {timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"cannot reach {where} ({type(exc).__name__})") from None

    async def _read(self, resp: aiohttp.ClientResponse, where: str) -> bytes:
        if resp.content_length is not None and resp.content_length > self._max:
            raise TransportError(f"answer from {where} exceeds {self._max} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(16 * 1024):
            size += len(chunk)
            if size > self._max:
                raise TransportError(f"answer from {where} exceeds {self._max} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def exchange_token_sources(config: Config, metrics: Registry) -> TokenSources:
    """The application's :data:`~mcpproxy.web.app.TokenSourceFactory` for exchange routes."""
    http = AiohttpTokenHttp()
    runtime = await ExchangeRuntime.create(config, http, metrics)

    async def close() -> None:
        await runtime.close()
        await http.close()

    sources: dict[str, TokenSource] = dict(runtime.sources)
    return TokenSources(sources, close)
