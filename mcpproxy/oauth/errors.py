"""RFC 6749 §5.2 error bodies, how each failure reaches the caller, and scrubbing for logs.

Three outcomes, by who can fix them:

* **refused** — the caller's token was not good enough (``invalid_grant``, ``invalid_token``,
  ``access_denied``, or ``invalid_request`` about the subject token / assertion, as RFC 8693
  §2.2.2 prescribes): 401 with an RFC 6750 challenge; remembered briefly (negative cache).
* **misconfigured** — the route's client, audience, scope or grant is wrong (``invalid_client``,
  ``unauthorized_client``, ``invalid_target``, ``invalid_scope``, ``unsupported_grant_type`` …,
  or an answer that is not a usable token): 502 naming the route; the specifics go to the log.
* **unavailable** — unreachable, timeout, 5xx, 429, unparsable JSON: 503 with ``Retry-After``.

Nothing the authorization server wrote is shown to the caller; what goes to the log is scrubbed of
anything token-shaped and capped in length.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Literal

from mcpproxy.errors import ProxyError, unauthorized
from mcpproxy.oauth.transport import HttpReply
from mcpproxy.secrets import Secret

Kind = Literal["refused", "misconfigured", "unavailable"]

#: Entra answers interaction_required when the user must satisfy a policy (MFA) first.
CALLER_REFUSALS = frozenset({"invalid_grant", "invalid_token", "access_denied", "interaction_required"})
TRANSIENT = frozenset({"temporarily_unavailable", "server_error", "slow_down"})
DEFAULT_RETRY_AFTER = 5
MAX_RETRY_AFTER = 300

_ERROR_CODE = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}$")  # RFC 6749 §5.2 charset
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){1,4}")
_OPAQUE_LIKE = re.compile(r"[A-Za-z0-9_\-+/=.~]{24,}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_ABOUT_CALLER_TOKEN = re.compile(r"subject[ _-]?token|assertion", re.IGNORECASE)
_ABOUT_REQUEST_SHAPE = re.compile(r"type|missing|unsupported|required", re.IGNORECASE)
REDACTED = "[redacted]"


class TokenEndpointError(Exception):
    """A classified failure of a request to an authorization server.

    Raised by the protocol modules, which know no route; :func:`to_proxy_error` turns it into
    the caller-facing error. ``detail`` is for logs and is already scrubbed.
    """

    def __init__(
        self, kind: Kind, detail: str, *, error: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.error = error
        self.retry_after = retry_after


def misconfigured(detail: str) -> TokenEndpointError:
    return TokenEndpointError("misconfigured", detail)


def unavailable(detail: str, retry_after: int = DEFAULT_RETRY_AFTER) -> TokenEndpointError:
    return TokenEndpointError("unavailable", detail, retry_after=retry_after)


def to_proxy_error(route: str, err: TokenEndpointError) -> ProxyError:
    if err.kind == "refused":
        return unauthorized(
            "the authorization server did not accept the caller's credential for this route",
            error="invalid_token",
            reason="token_refused",
            detail=f"route {route}: {err.detail}",
        )
    if err.kind == "misconfigured":
        return ProxyError(
            502,
            f"upstream credentials misconfigured for route {route}",
            detail=err.detail,
            reason="exchange_misconfigured",
        )
    return ProxyError(
        503,
        f"the authorization server for route {route} is unavailable; retry later",
        detail=err.detail,
        retry_after=err.retry_after or DEFAULT_RETRY_AFTER,
        reason="exchange_unavailable",
    )


def classify_reply(what: str, reply: HttpReply, known: Iterable[Secret] = ()) -> TokenEndpointError:
    """Classify a non-200 answer of ``what`` (e.g. "token_exchange at https://as/token")."""
    known = tuple(known)
    code, description = _parse_error_body(reply.body)
    detail = f"{what}: HTTP {reply.status}, error={code or '-'}"
    if description:
        detail += f", description={scrub(description, known)!r}"
    elif code is None and reply.body:
        detail += f", body={scrub(reply.body.decode('utf-8', 'replace'), known, 120)!r}"
    if reply.status >= 500 or reply.status == 429 or code in TRANSIENT:
        return TokenEndpointError("unavailable", detail, error=code, retry_after=retry_after(reply.headers))
    if code in CALLER_REFUSALS or (code == "invalid_request" and _about_caller_token(description)):
        return TokenEndpointError("refused", detail, error=code)
    return TokenEndpointError("misconfigured", detail, error=code)


def _parse_error_body(body: bytes) -> tuple[str | None, str]:
    """The ``error`` code (if well-formed) and ``error_description`` (raw, to be scrubbed)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, ""
    if not isinstance(data, dict):
        return None, ""
    code = data.get("error")
    description = data.get("error_description")
    valid_code = code if isinstance(code, str) and _ERROR_CODE.match(code) else None
    return valid_code, description if isinstance(description, str) else ""


def _about_caller_token(description: str) -> bool:
    """``invalid_request`` blames the caller only when it is about the subject token / assertion
    itself, not about a parameter the proxy chose (its type) or forgot."""
    return bool(_ABOUT_CALLER_TOKEN.search(description)) and not _ABOUT_REQUEST_SHAPE.search(description)


def retry_after(headers: Mapping[str, str]) -> int:
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), "")
    if value.strip().isdigit():
        return max(1, min(int(value.strip()), MAX_RETRY_AFTER))
    return DEFAULT_RETRY_AFTER


def scrub(text: str, known: Iterable[Secret] = (), limit: int = 200) -> str:
    """``text`` fit for a log line: known secrets, JWTs and long opaque runs replaced, control
    characters removed, at most ``limit`` characters."""
    for secret in known:
        value = secret.reveal()
        if len(value) >= 4:
            text = text.replace(value, REDACTED)
    text = _JWT_LIKE.sub(REDACTED, text)
    text = _OPAQUE_LIKE.sub(REDACTED, text)
    text = _CONTROL.sub(" ", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
