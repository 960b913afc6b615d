"""RFC 6749 §4.4 client credentials: the proxy's own identity, no caller token (also the
``actor`` of a token exchange)."""

from __future__ import annotations

from collections.abc import Sequence

from mcpproxy.config.exchange import ClientCredentialsSettings
from mcpproxy.oauth.response import Issued, access_token_response
from mcpproxy.oauth.token_endpoint import TokenEndpoint
from mcpproxy.secrets import Secret

GRANT_TYPE = "client_credentials"


def client_credentials_form(
    *,
    audience: Sequence[str] = (),
    resource: Sequence[str] = (),
    scope: Sequence[str] = (),
    extra: Sequence[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    form = [("grant_type", GRANT_TYPE)]
    form += [("audience", a) for a in audience]
    form += [("resource", r) for r in resource]
    if scope:
        form.append(("scope", " ".join(scope)))
    return form + list(extra)


class ClientCredentialsGrant:
    kind = "client_credentials"

    def __init__(self, settings: ClientCredentialsSettings, endpoint: TokenEndpoint) -> None:
        self.settings = settings
        self.endpoint = endpoint

    async def issue(self, subject: Secret | None, actor: Secret | None) -> Issued:
        s = self.settings
        form = client_credentials_form(
            audience=s.audience, resource=s.resource, scope=s.scope, extra=s.extra_params
        )
        return await self.endpoint.request(self.kind, form, access_token_response)
