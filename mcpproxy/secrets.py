"""A string type for credentials that cannot leak through repr, str, format or logging."""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from mcpproxy.expiring import remember

_FINGERPRINT_DOMAIN: Final = b"mcpproxy-fingerprint-v2\0"


class Secret:
    """Holds a credential. Every implicit conversion to text yields a redaction marker.

    The value is only reachable through :meth:`reveal`, so a secret that ends up in an
    f-string, a log call, an exception message or a ``repr`` of a containing dataclass
    shows ``Secret('***')`` instead of the credential.
    """

    __slots__ = ("_digest", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        self._digest: bytes | None = None

    def reveal(self) -> str:
        """The credential itself; call only where it goes onto the wire."""
        return self._value

    def digest(self) -> bytes:
        """SHA-256 of the value, computed once. The token cache's key and the log fingerprint are
        both derived from it: hashing a ~1 KB JWT is the costly part, and every request of an
        exchange route needs both."""
        digest = self._digest
        if digest is None:
            digest = self._digest = hashlib.sha256(self._value.encode()).digest()
        return digest

    def fingerprint(self) -> str:
        """A short, non-reversible tag to correlate log lines without exposing the value."""
        return _tag(self.digest())

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

    def __str__(self) -> str:  # not `__str__ = __repr__`: mypyc compiles that alias wrongly
        return repr(self)

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values cannot be pickled")


#: Fingerprints already computed, by digest: a caller's token comes back request after request.
#: Bounded (emptied when full). It holds what the token cache's keys are made of, no token.
_TAGS: Final[dict[bytes, str]] = {}
_MAX_TAGS: Final = 4096


def _tag(digest: bytes) -> str:
    """First 12 hex digits of SHA-256 over a domain tag and a value's own SHA-256: enough to tell
    tokens apart, useless to an attacker, and unrelated to the token cache's keys (another domain)."""
    tag = _TAGS.get(digest)
    if tag is None:
        fresh = hashlib.sha256(_FINGERPRINT_DOMAIN + digest).hexdigest()[:12]
        tag = remember(_TAGS, digest, fresh, _MAX_TAGS)
    return tag
