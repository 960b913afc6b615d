"""Identity Assertion JWT Authorization Grant (draft-ietf-oauth-identity-assertion-authz-grant):
two composed steps.

1. RFC 8693 at the IdP: the caller's token for an ID-JAG (``requested_token_type`` id-jag) whose
   ``audience`` is the resource authorization server's issuer.
2. RFC 7523 at that resource authorization server: the ID-JAG as ``assertion`` for an access token.
"""

from __future__ import annotations

from mcpproxy.config.exchange import ID_JAG, IdJagSettings
from mcpproxy.oauth.response import Issued, access_token_response
from mcpproxy.oauth.rfc7523 import jwt_bearer_form
from mcpproxy.oauth.rfc8693 import exchange_form, exchange_response
from mcpproxy.oauth.token_endpoint import TokenEndpoint
from mcpproxy.secrets import Secret


class IdJagGrant:
    kind = "id_jag"

    def __init__(self, settings: IdJagSettings, idp: TokenEndpoint, resource_as: TokenEndpoint) -> None:
        self.settings = settings
        self.idp = idp
        self.resource_as = resource_as

    async def issue(self, subject: Secret | None, actor: Secret | None) -> Issued:
        assert subject is not None
        s = self.settings
        request = exchange_form(
            subject,
            s.subject_token_type,
            audience=(s.audience,),
            resource=s.resource,
            scope=s.scope,
            requested_token_type=ID_JAG,
            extra=s.extra_params,
        )
        jag = await self.idp.request(
            "id_jag_request",
            request,
            lambda data, what: exchange_response(data, what, ID_JAG),
            [subject],
        )
        ras = s.resource_as
        redeem = jwt_bearer_form(jag.token, resource=ras.resource, scope=ras.scope, extra=ras.extra_params)
        return await self.resource_as.request(
            "id_jag_redeem", redeem, access_token_response, [subject, jag.token]
        )
