"""The example MCP server of the compose demo: `my-external-tool`.

A Streamable HTTP MCP server (the `mcp` SDK, 2.x) with one tool, `get_orchestrator_instances`,
that only accepts bearer tokens which Keycloak issued *for it*: RS256 JWTs signed by a key of the
realm's JWKS, with the expected issuer and `my-external-tool` in `aud`. A user token minted for
OGX or for the proxy is refused with 401, so a successful call proves the proxy exchanged the
token. The SDK answers 401 with `WWW-Authenticate: Bearer ... resource_metadata=...` and serves
the RFC 9728 Protected Resource Metadata.

Settings (environment):
  MCP_ISSUER        expected `iss`             (default http://keycloak:8080/realms/demo)
  MCP_JWKS_URL      where the signing keys are  (default <issuer>/protocol/openid-connect/certs)
  MCP_AUDIENCE      required `aud` entry        (default my-external-tool)
  MCP_RESOURCE_URL  this server's public URL    (default http://my-external-tool:8000/mcp)
  MCP_HOST, MCP_PORT                            (default 0.0.0.0, 8000)
"""

from __future__ import annotations

import logging
import os
from typing import Any

import anyio.to_thread
import jwt
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

ISSUER = os.environ.get("MCP_ISSUER", "http://keycloak:8080/realms/demo")
JWKS_URL = os.environ.get("MCP_JWKS_URL", f"{ISSUER}/protocol/openid-connect/certs")
AUDIENCE = os.environ.get("MCP_AUDIENCE", "my-external-tool")
RESOURCE_URL = os.environ.get("MCP_RESOURCE_URL", "http://my-external-tool:8000/mcp")

log = logging.getLogger("my-external-tool")


class KeycloakJwtVerifier:
    """Checks signature (JWKS, cached), expiry, issuer and audience of an access token."""

    def __init__(self) -> None:
        self._jwks = jwt.PyJWKClient(JWKS_URL, cache_keys=True, lifespan=300, timeout=5)

    def _decode(self, token: str) -> dict[str, Any]:
        key = self._jwks.get_signing_key_from_jwt(token)
        return jwt.decode(
            token,
            key.key,
            algorithms=["RS256", "PS256", "ES256"],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iss", "aud"]},
            leeway=10,
        )

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            claims = await anyio.to_thread.run_sync(self._decode, token)
        except (jwt.PyJWTError, OSError) as exc:
            log.warning("rejected token: %s", exc)
            return None
        return AccessToken(
            token=token,
            client_id=str(claims.get("azp", "")),
            scopes=str(claims.get("scope", "")).split(),
            expires_at=int(claims["exp"]),
            resource=AUDIENCE,
            subject=claims.get("sub"),
            claims=claims,
        )


server = MCPServer(
    "my-external-tool",
    instructions="Orchestrator workflows registered in Backstage / Red Hat Developer Hub.",
    token_verifier=KeycloakJwtVerifier(),
    auth=AuthSettings(
        issuer_url=ISSUER,
        resource_server_url=RESOURCE_URL,
        validate_token_resource=False,  # the verifier checks `aud` itself
    ),
)


@server.tool()
def get_orchestrator_instances(session_id: str) -> dict[str, Any]:
    """Return the list of orchestrator instances registered in Backstage or RHDH
    (Red Hat Developer Hub)."""
    token = get_access_token()
    claims = (token.claims or {}) if token else {}
    caller = claims.get("preferred_username") or claims.get("sub") or "unknown"
    log.info("get_orchestrator_instances session_id=%r caller=%r", session_id, caller)
    return {
        "total": 5,
        "data": [
            {"name": "process_payment_refunds", "status": "RUNNING"},
            {"name": "sync_inventory_updates", "status": "READY"},
            {"name": "generate_monthly_reports", "status": "RUNNING"},
            {"name": "backup_customer_data", "status": "FAILED"},
            {"name": "send_welcome_emails", "status": "COMPLETED"},
        ],
        # Who the tool saw: the user of the original token, reached through the exchange.
        "requested_by": caller,
        "token_audience": claims.get("aud"),
        "token_authorized_party": claims.get("azp"),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    server.run(
        "streamable-http",
        host=os.environ.get("MCP_HOST", "0.0.0.0"),  # noqa: S104 - a container's only interface
        port=int(os.environ.get("MCP_PORT", "8000")),
    )


if __name__ == "__main__":
    main()
