"""Client authentication at the token endpoint: RFC 6749 §2.3.1 (basic, post), RFC 7523 §2.2
(``private_key_jwt``)."""

from __future__ import annotations

import base64
import secrets
import time
from urllib.parse import quote_plus

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mcpproxy.config.exchange import ClientSettings
from mcpproxy.oauth.transport import Form
from mcpproxy.secrets import Secret

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 60


def basic_authorization(client_id: str, secret: Secret) -> Secret:
    """``Basic`` credentials with id and secret form-urlencoded first, as RFC 6749 §2.3.1 says
    (a ``:`` or ``+`` in either would otherwise be misread)."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret.reveal())}"
    return Secret("Basic " + base64.b64encode(pair.encode()).decode("ascii"))


class ClientAuth:
    """Adds this client's authentication to a token request."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None
        if settings.auth_method == "private_key_jwt":
            assert settings.private_key is not None
            key = serialization.load_pem_private_key(settings.private_key.reveal().encode(), password=None)
            # The loader already refused other key types (config.exchange.signing_algorithm).
            assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
            self._key = key

    def apply(
        self, form: Form, token_endpoint: str, issuer: str | None
    ) -> tuple[list[tuple[str, str]], dict[str, str]]:
        """The form and headers to send; ``issuer`` is used as the assertion audience if asked."""
        s = self.settings
        fields = list(form)
        if s.auth_method == "client_secret_basic":
            assert s.secret is not None
            return fields, {"Authorization": basic_authorization(s.id, s.secret).reveal()}
        if s.auth_method == "client_secret_post":
            assert s.secret is not None
            return [*fields, ("client_id", s.id), ("client_secret", s.secret.reveal())], {}
        audience = issuer if s.assertion_audience == "issuer" and issuer else token_endpoint
        assertion = self.client_assertion(audience)
        return [
            *fields,
            ("client_id", s.id),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion.reveal()),
        ], {}

    def client_assertion(self, audience: str, now: float | None = None) -> Secret:
        """A signed JWT (RFC 7523 §3): iss = sub = client id, the server as aud, a fresh jti and
        a one-minute lifetime, so a captured assertion is useless soon and cannot be replayed."""
        s = self.settings
        assert self._key is not None and s.signing_alg is not None
        issued_at = int(now if now is not None else time.time())
        claims = {
            "iss": s.id,
            "sub": s.id,
            "aud": audience,
            "jti": secrets.token_urlsafe(24),
            "iat": issued_at,
            "exp": issued_at + ASSERTION_LIFETIME_S,
        }
        headers = {"kid": s.key_id} if s.key_id else None
        return Secret(jwt.encode(claims, self._key, algorithm=s.signing_alg, headers=headers))
