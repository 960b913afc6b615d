"""Errors that end a proxied request, each with the HTTP status and JSON-RPC code it maps to.

The core raises these; the web layer renders them (JSON-RPC error body, ``WWW-Authenticate``,
``Retry-After``). ``message`` goes to the client and must never contain a credential;
``detail`` goes to the log only and must never contain one either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# JSON-RPC error codes. -32000..-32099 are "server error" codes reserved for implementations.
JSONRPC_PARSE_ERROR = -32700
JSONRPC_INVALID_REQUEST = -32600
JSONRPC_INTERNAL_ERROR = -32603
JSONRPC_SERVER_ERROR = -32000
#: 2026-07-28 HeaderMismatch: Mcp-Method / Mcp-Name missing, malformed or disagreeing with the body.
#: (The spec and the mcp SDKs use -32020; -32001 was an earlier draft's number.)
JSONRPC_HEADER_MISMATCH = -32020


@dataclass
class ProxyError(Exception):
    status: int
    message: str
    code: int = JSONRPC_SERVER_ERROR
    detail: str = ""
    www_authenticate: str | None = None
    retry_after: int | None = None
    reason: str = "error"
    extra_headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"


@dataclass
class PolicyDenied(ProxyError):
    """A 403 refusal by a route's tool policy (:mod:`mcpproxy.policy`); for a refused batch,
    ``batch_ids`` are the JSON-RPC ids every element answers with. (Here, with the other errors,
    because the policy module is compiled and an exception it defines could not subclass this
    interpreted one.)"""

    batch_ids: tuple[str | int | float | None, ...] | None = None


def bad_request(message: str, *, reason: str = "bad_request", detail: str = "") -> ProxyError:
    return ProxyError(400, message, JSONRPC_INVALID_REQUEST, detail=detail, reason=reason)


def unauthorized(
    message: str, *, error: str = "invalid_request", reason: str = "unauthorized", detail: str = ""
) -> ProxyError:
    """401 with an RFC 6750 challenge; the web layer adds ``resource_metadata`` when known."""
    return ProxyError(
        401,
        message,
        JSONRPC_SERVER_ERROR,
        detail=detail,
        www_authenticate=bearer_challenge(error=error, description=message),
        reason=reason,
    )


def missing_credential() -> ProxyError:
    """A route that needs the caller's credential found none (fail closed, nothing sent upstream)."""
    return unauthorized(
        "this route requires a caller credential", error="invalid_request", reason="missing_credential"
    )


def bearer_challenge(
    *,
    error: str | None = None,
    description: str | None = None,
    scope: str | None = None,
    resource_metadata: str | None = None,
) -> str:
    params = ['realm="mcpproxy"']
    for name, value in (
        ("error", error),
        ("error_description", description),
        ("scope", scope),
        ("resource_metadata", resource_metadata),
    ):
        if value:
            params.append(f'{name}="{_quote(value)}"')
    return "Bearer " + ", ".join(params)


def _quote(value: str) -> str:
    """RFC 7235 quoted-string content: drop what would break the header, escape quotes."""
    cleaned = "".join(c for c in value if c == "\t" or 0x20 <= ord(c) < 0x7F)
    return cleaned.replace("\\", "\\\\").replace('"', '\\"')
