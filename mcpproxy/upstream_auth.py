"""What a route's upstream receives: nothing, a static service credential, the caller's own
credential re-formatted, or a token obtained from an OAuth server for this upstream."""

from __future__ import annotations

from enum import Enum
from typing import Final, Protocol

from multidict import istr

from mcpproxy.config.model import (
    ExchangeUpstreamAuth,
    ForwardUpstreamAuth,
    StaticUpstreamAuth,
    UpstreamAuth,
)
from mcpproxy.credentials import Subject
from mcpproxy.errors import missing_credential
from mcpproxy.http1 import safe_value
from mcpproxy.secrets import Secret


class Pending(Enum):
    """A value that takes waiting to know."""

    PENDING = "pending"


PENDING: Final = Pending.PENDING


class TokenSource(Protocol):
    """An OAuth-backed token provider for one route (see :mod:`mcpproxy.oauth`)."""

    def peek(self, subject: Secret | None) -> Secret | None: ...

    async def get(self, subject: Secret | None) -> Secret: ...

    async def invalidate(self, subject: Secret | None, rejected: Secret | None = None) -> None: ...


class UpstreamCredential:
    """Produces the one credential header a route's upstream request carries (or none)."""

    def __init__(self, rule: UpstreamAuth, tokens: TokenSource | None = None) -> None:
        if isinstance(rule, ExchangeUpstreamAuth) and tokens is None:
            raise ValueError("an exchange route needs a token source")
        self.rule = rule
        self.tokens = tokens
        header = getattr(rule, "header", None)
        self.header = istr(header) if header else None  # an istr, as the names in mcpproxy.headers
        self.retries_on_401 = isinstance(rule, ExchangeUpstreamAuth)
        self._static: str | None = None
        self._static_line: Secret | None = None
        #: The token last put in the header, the header value made of it (see _formatted), and
        #: the field line carrying it (see header_line).
        self._last_token: Secret | None = None
        self._last_value = Secret("")
        self._last_line = self._line("")
        if isinstance(rule, StaticUpstreamAuth):
            self._static = rule.format.replace("{token}", rule.secret.reveal())
            self._static_line = self._line(self._static)

    @property
    def needs_subject(self) -> bool:
        return self.rule.needs_subject

    async def value(self, subject: Subject | None) -> str | None:
        """The header value to send, revealed only here, right before it goes on the wire."""
        if isinstance(self.rule, ExchangeUpstreamAuth):
            assert self.tokens is not None
            token = await self.tokens.get(subject.token if subject else None)
            return self._formatted(token, self.rule.format)
        return self._value_now(subject)

    def value_now(self, subject: Subject | None) -> str | Pending | None:
        """:meth:`value` where it needs no waiting (a static or forwarded credential, a cached
        token); :data:`PENDING` where only :meth:`value` can tell."""
        if isinstance(self.rule, ExchangeUpstreamAuth):
            assert self.tokens is not None
            token = self.tokens.peek(subject.token if subject else None)
            return PENDING if token is None else self._formatted(token, self.rule.format)
        return self._value_now(subject)

    def _formatted(self, token: Secret, template: str) -> str:
        """The header value carrying ``token``. A cached token (or a caller's, from
        ``credentials._SECRETS``) is the same Secret request after request, so the last value
        made is kept (as a Secret) rather than copying the ~1 KB token into a new string each
        time."""
        if token is not self._last_token:
            value = template.replace("{token}", token.reveal())
            self._last_value, self._last_line = Secret(value), self._line(value)
            self._last_token = token
        return self._last_value.reveal()

    def header_line(self, value: str) -> str | None:
        """The field line that carries ``value``, a value this credential produced (``Header:
        value``), or None where it cannot go in a header (a CR, LF or NUL in it). Made once for
        the value :meth:`_formatted` keeps and for the static one: a ~1 KB token would otherwise
        be scanned three times and copied once more on every request."""
        if value is self._last_value.reveal():
            line = self._last_line
        elif value is self._static:
            line = self._static_line
        else:
            line = self._line(value)
        return line.reveal() if line is not None else None

    def _line(self, value: str) -> Secret | None:
        return Secret(f"{self.header}: {value}") if safe_value(value) else None

    def _value_now(self, subject: Subject | None) -> str | None:
        rule = self.rule
        if isinstance(rule, StaticUpstreamAuth):
            return self._static
        if isinstance(rule, ForwardUpstreamAuth):
            return self._formatted(self._require(subject).token, rule.format)
        return None

    async def invalidate(self, subject: Subject | None, sent: str | None = None) -> None:
        """Drop the token the upstream just refused (``sent`` is the header value it carried),
        unless a concurrent request already replaced it."""
        if self.tokens is None:
            return
        rejected = self._unformat(sent) if sent is not None else None
        await self.tokens.invalidate(subject.token if subject else None, rejected)

    def _unformat(self, value: str) -> Secret | None:
        if not isinstance(self.rule, ExchangeUpstreamAuth):
            return None
        prefix, _, suffix = self.rule.format.partition("{token}")
        if not value.startswith(prefix) or not value.endswith(suffix):
            return None
        return Secret(value[len(prefix) : len(value) - len(suffix)])

    def _require(self, subject: Subject | None) -> Subject:
        if subject is None:
            raise missing_credential()
        return subject
