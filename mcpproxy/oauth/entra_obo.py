"""Microsoft Entra ID on-behalf-of: Entra has no RFC 8693; its OBO is a JWT bearer grant with
``requested_token_use=on_behalf_of`` and the target named by ``scope`` (``api://<app>/.default``)."""

from __future__ import annotations

from collections.abc import Sequence

from mcpproxy.config.exchange import EntraOboSettings
from mcpproxy.oauth.response import Issued, access_token_response
from mcpproxy.oauth.rfc7523 import GRANT_TYPE as JWT_BEARER
from mcpproxy.oauth.token_endpoint import TokenEndpoint
from mcpproxy.secrets import Secret


def obo_form(
    assertion: Secret, scope: Sequence[str], extra: Sequence[tuple[str, str]] = ()
) -> list[tuple[str, str]]:
    return [
        ("grant_type", JWT_BEARER),
        ("assertion", assertion.reveal()),
        ("requested_token_use", "on_behalf_of"),
        ("scope", " ".join(scope)),
        *extra,
    ]


class EntraOboGrant:
    kind = "entra_obo"

    def __init__(self, settings: EntraOboSettings, endpoint: TokenEndpoint) -> None:
        self.settings = settings
        self.endpoint = endpoint

    async def issue(self, subject: Secret | None, actor: Secret | None) -> Issued:
        assert subject is not None
        form = obo_form(subject, self.settings.scope, self.settings.extra_params)
        return await self.endpoint.request(self.kind, form, access_token_response, [subject])
