"""A string type for credentials that cannot leak through repr, str, format or logging."""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

_FINGERPRINT_KEY: Final = b"mcpproxy-fingerprint-v1"


class Secret:
    """Holds a credential. Every implicit conversion to text yields a redaction marker.

    The value is only reachable through :meth:`reveal`, so a secret that ends up in an
    f-string, a log call, an exception message or a ``repr`` of a containing dataclass
    shows ``Secret('***')`` instead of the credential.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The credential itself; call only where it goes onto the wire."""
        return self._value

    def fingerprint(self) -> str:
        """A short, non-reversible tag to correlate log lines without exposing the value."""
        return fingerprint(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values cannot be pickled")


def fingerprint(value: str) -> str:
    """First 12 hex digits of a keyed SHA-256 (HMAC): enough to tell tokens apart, useless to
    an attacker."""
    inner = _INNER.copy()
    inner.update(value.encode())
    outer = _OUTER.copy()
    outer.update(inner.digest())
    return outer.hexdigest()[:12]


def _padded(pad: int) -> hashlib._Hash:
    """HMAC-SHA256's inner or outer hash with the key block already absorbed (RFC 2104): per
    call only a copy, where ``hmac.digest`` set up OpenSSL's HMAC afresh (half the cost, on a
    path every request of an exchange route takes)."""
    block = _FINGERPRINT_KEY.ljust(64, b"\0")
    return hashlib.sha256(bytes(b ^ pad for b in block))


_INNER = _padded(0x36)
_OUTER = _padded(0x5C)
