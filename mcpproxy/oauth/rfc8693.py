"""RFC 8693 OAuth 2.0 Token Exchange: the request form and the response rules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mcpproxy.config.exchange import ACCESS_TOKEN, TokenExchangeSettings
from mcpproxy.oauth.errors import misconfigured
from mcpproxy.oauth.response import Issued, access_token_response
from mcpproxy.oauth.token_endpoint import TokenEndpoint
from mcpproxy.secrets import Secret

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"


def exchange_form(
    subject: Secret,
    subject_token_type: str,
    *,
    audience: Sequence[str] = (),
    resource: Sequence[str] = (),
    scope: Sequence[str] = (),
    requested_token_type: str | None = None,
    actor: Secret | None = None,
    actor_token_type: str = ACCESS_TOKEN,
    extra: Sequence[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """§2.1: ``audience`` and ``resource`` repeat once per value; ``scope`` is space-separated."""
    form = [
        ("grant_type", GRANT_TYPE),
        ("subject_token", subject.reveal()),
        ("subject_token_type", subject_token_type),
    ]
    form += [("audience", a) for a in audience]
    form += [("resource", r) for r in resource]
    if scope:
        form.append(("scope", " ".join(scope)))
    if requested_token_type:
        form.append(("requested_token_type", requested_token_type))
    if actor is not None:
        form += [("actor_token", actor.reveal()), ("actor_token_type", actor_token_type)]
    return form + list(extra)


def exchange_response(data: Mapping[str, Any], what: str, requested: str | None) -> Issued:
    """§2.2.1: ``access_token`` and ``issued_token_type`` are required; ``token_type`` is
    ``Bearer`` or ``N_A`` (a token that is not an access token); when a type was requested, the
    issued one must be it."""
    issued = access_token_response(data, what, token_types=("bearer", "n_a"))
    if issued.issued_token_type is None:
        raise misconfigured(f"{what}: the answer has no issued_token_type (RFC 8693 §2.2.1)")
    if requested is not None and issued.issued_token_type != requested:
        raise misconfigured(f"{what}: issued {issued.issued_token_type!r}, requested {requested!r}")
    return issued


class TokenExchangeGrant:
    kind = "token_exchange"

    def __init__(self, settings: TokenExchangeSettings, endpoint: TokenEndpoint) -> None:
        self.settings = settings
        self.endpoint = endpoint

    async def issue(self, subject: Secret | None, actor: Secret | None) -> Issued:
        assert subject is not None
        s = self.settings
        form = exchange_form(
            subject,
            s.subject_token_type,
            audience=s.audience,
            resource=s.resource,
            scope=s.scope,
            requested_token_type=s.requested_token_type,
            actor=actor,
            actor_token_type=s.actor.token_type if s.actor else ACCESS_TOKEN,
            extra=s.extra_params,
        )
        known = [subject] if actor is None else [subject, actor]
        return await self.endpoint.request(
            self.kind,
            form,
            lambda data, what: exchange_response(data, what, s.requested_token_type),
            known,
        )
