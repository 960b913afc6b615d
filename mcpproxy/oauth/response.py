"""RFC 6749 §5.1 successful token responses: parsed, checked, the token wrapped in a Secret."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from mcpproxy.oauth.errors import misconfigured, unavailable
from mcpproxy.secrets import Secret

MAX_TOKEN_CHARS = 16 * 1024
#: What may go into an HTTP header value after "Bearer ": visible ASCII, no spaces or controls.
_HEADER_SAFE = re.compile(r"^[\x21-\x7e]+$")


@dataclass(frozen=True)
class Issued:
    token: Secret
    expires_in: float | None
    issued_token_type: str | None = None
    token_type: str | None = None


def parse_json(body: bytes, what: str) -> dict[str, Any]:
    """The JSON object of a 200 answer; anything else is treated as a transient failure."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise unavailable(f"{what}: the answer is not valid JSON") from None
    if not isinstance(data, dict):
        raise unavailable(f"{what}: the answer is not a JSON object")
    return data


def access_token_response(
    data: Mapping[str, Any], what: str, *, token_types: Collection[str] = ("bearer",)
) -> Issued:
    """``access_token`` required; ``token_type`` (when present) one of ``token_types``;
    ``expires_in`` a positive number (or numeric string) — otherwise unknown (None)."""
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        raise misconfigured(f"{what}: the answer has no access_token")
    if len(token) > MAX_TOKEN_CHARS or not _HEADER_SAFE.match(token):
        raise misconfigured(f"{what}: the access_token cannot be sent in an HTTP header")
    token_type = data.get("token_type")
    if token_type is not None and (not isinstance(token_type, str) or token_type.lower() not in token_types):
        shown = token_type if isinstance(token_type, str) else type(token_type).__name__
        raise misconfigured(f"{what}: unusable token_type {shown[:40]!r}")
    issued_type = data.get("issued_token_type")
    return Issued(
        token=Secret(token),
        expires_in=_expires_in(data.get("expires_in")),
        issued_token_type=issued_type if isinstance(issued_type, str) else None,
        token_type=token_type,
    )


def _expires_in(value: object) -> float | None:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value > 0 and math.isfinite(value) else None
