"""Finding the token endpoint from an issuer: RFC 8414 metadata, then OpenID Connect discovery.

The document's ``issuer`` must equal the configured one exactly (RFC 8414 §3.3), and the token
endpoint it names must pass the same https rule as a configured one. Answers are cached; failures
are not, so a server that comes back is found on the next request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import structlog

from mcpproxy.config.urls import insecure_reason
from mcpproxy.oauth.errors import TokenEndpointError, classify_reply, misconfigured, unavailable
from mcpproxy.oauth.response import parse_json
from mcpproxy.oauth.transport import TokenHttp, TransportError

log = structlog.get_logger("mcpproxy.oauth")

METADATA_TTL_S = 3600.0


def metadata_urls(issuer: str) -> tuple[str, str]:
    """RFC 8414 §3.1 (well-known segment inserted before the issuer's path) and OIDC Discovery
    §4 (appended to the issuer)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    rfc8414 = urlunsplit(
        (parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", "")
    )
    oidc = urlunsplit((parts.scheme, parts.netloc, path + "/.well-known/openid-configuration", "", ""))
    return rfc8414, oidc


class Discovery:
    def __init__(
        self, http: TokenHttp, ttl_s: float = METADATA_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._http = http
        self._ttl = ttl_s
        self._clock = clock
        self._known: dict[str, tuple[str, float]] = {}
        self._inflight: dict[str, asyncio.Task[str]] = {}

    async def token_endpoint(self, issuer: str, *, allow_insecure: bool, timeout_s: float) -> str:
        """The issuer's token endpoint; concurrent first requests share one discovery (and its
        failure)."""
        cached = self._known.get(issuer)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        task = self._inflight.get(issuer)
        if task is None:
            task = asyncio.create_task(self._discover(issuer, allow_insecure, timeout_s))
            self._inflight[issuer] = task
            task.add_done_callback(lambda done: self._settled(issuer, done))
        return await asyncio.shield(task)

    def _settled(self, issuer: str, task: asyncio.Task[str]) -> None:
        del self._inflight[issuer]
        if not task.cancelled() and task.exception() is None:
            self._known[issuer] = (task.result(), self._clock() + self._ttl)

    async def _discover(self, issuer: str, allow_insecure: bool, timeout_s: float) -> str:
        failure: TokenEndpointError | None = None
        for url in metadata_urls(issuer):
            try:
                reply = await self._http.get_json(url, timeout_s)
            except TransportError as exc:
                raise unavailable(f"metadata of {issuer}: {exc}") from None
            if reply.status == 200:
                doc = parse_json(reply.body, f"metadata at {url}")
                return self._token_endpoint_of(doc, issuer, allow_insecure)
            failure = classify_reply(f"metadata at {url}", reply)
            if failure.kind == "unavailable":
                raise failure
        assert failure is not None
        raise misconfigured(f"no authorization server metadata for {issuer}: {failure.detail}")

    @staticmethod
    def _token_endpoint_of(doc: dict[str, object], issuer: str, allow_insecure: bool) -> str:
        if doc.get("issuer") != issuer:
            raise misconfigured(f"metadata of {issuer} names another issuer")
        endpoint = doc.get("token_endpoint")
        if not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in ("http", "https"):
            raise misconfigured(f"metadata of {issuer} has no usable token_endpoint")
        problem = insecure_reason(endpoint, allow_insecure)
        if problem:
            raise misconfigured(f"token_endpoint {endpoint} of {issuer} {problem}")
        log.info("discovered token endpoint", issuer=issuer, endpoint=endpoint)
        return endpoint
