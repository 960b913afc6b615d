"""RFC 7523 §2.1: a JWT (the caller's token, or an ID-JAG) as an authorization grant."""

from __future__ import annotations

from collections.abc import Sequence

from mcpproxy.config.exchange import JwtBearerSettings
from mcpproxy.oauth.response import Issued, access_token_response
from mcpproxy.oauth.token_endpoint import TokenEndpoint
from mcpproxy.secrets import Secret

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def jwt_bearer_form(
    assertion: Secret,
    *,
    audience: Sequence[str] = (),
    resource: Sequence[str] = (),
    scope: Sequence[str] = (),
    extra: Sequence[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    form = [("grant_type", GRANT_TYPE), ("assertion", assertion.reveal())]
    form += [("audience", a) for a in audience]
    form += [("resource", r) for r in resource]
    if scope:
        form.append(("scope", " ".join(scope)))
    return form + list(extra)


class JwtBearerGrant:
    kind = "jwt_bearer"

    def __init__(self, settings: JwtBearerSettings, endpoint: TokenEndpoint) -> None:
        self.settings = settings
        self.endpoint = endpoint

    async def issue(self, subject: Secret | None, actor: Secret | None) -> Issued:
        assert subject is not None
        s = self.settings
        form = jwt_bearer_form(
            subject, audience=s.audience, resource=s.resource, scope=s.scope, extra=s.extra_params
        )
        return await self.endpoint.request(self.kind, form, access_token_response, [subject])
