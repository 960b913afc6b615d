"""One request to a token endpoint: resolve the URL, authenticate the client, post the form,
classify the answer, count it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mcpproxy.config.exchange import AuthServer, ClientSettings
from mcpproxy.metrics import Registry
from mcpproxy.oauth.client_auth import ClientAuth
from mcpproxy.oauth.discovery import Discovery
from mcpproxy.oauth.errors import TokenEndpointError, classify_reply, unavailable
from mcpproxy.oauth.response import parse_json
from mcpproxy.oauth.transport import Form, TokenHttp, TransportError
from mcpproxy.secrets import Secret

T = TypeVar("T")


class TokenEndpoint:
    """An authorization server's token endpoint, used by one client on behalf of one route."""

    def __init__(
        self,
        route: str,
        server: AuthServer,
        client: ClientSettings,
        http: TokenHttp,
        discovery: Discovery,
        metrics: Registry,
    ) -> None:
        self.route = route
        self.server = server
        self.client = client
        self._auth = ClientAuth(client)
        self._http = http
        self._discovery = discovery
        self._metrics = metrics

    async def url(self) -> str:
        if self.server.token_endpoint is not None:
            return self.server.token_endpoint
        assert self.server.issuer is not None
        return await self._discovery.token_endpoint(
            self.server.issuer,
            allow_insecure=self.server.allow_insecure,
            timeout_s=self.server.timeout_s,
        )

    async def request(
        self,
        kind: str,
        form: Form,
        parse: Callable[[dict[str, Any], str], T],
        known: Sequence[Secret] = (),
    ) -> T:
        """POST ``form`` and return ``parse(answer, what)``; raises :class:`TokenEndpointError`.
        ``known`` are secrets of this request, scrubbed from whatever reaches the log."""
        started = time.monotonic()
        outcome = "success"
        try:
            url = await self.url()
            what = f"{kind} at {url}"
            fields, headers = self._auth.apply(form, url, self.server.issuer)
            try:
                reply = await self._http.post_form(
                    url, fields, {"Accept": "application/json", **headers}, self.server.timeout_s
                )
            except TransportError as exc:
                raise unavailable(f"{what}: {exc}") from None
            if reply.status != 200:
                secrets = [*known, *([self.client.secret] if self.client.secret else [])]
                raise classify_reply(what, reply, secrets)
            return parse(parse_json(reply.body, what), what)
        except TokenEndpointError as err:
            outcome = err.kind
            raise
        finally:
            elapsed = time.monotonic() - started
            self._metrics.exchanges.inc(route=self.route, kind=kind, outcome=outcome)
            self._metrics.exchange_latency.observe(elapsed, route=self.route, kind=kind)
