"""What the OAuth code needs from HTTP, as a protocol, so the core stays framework-free."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

Form = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]
    body: bytes


class TransportError(Exception):
    """The server was unreachable, too slow or answered too much. The message names no secret."""


class TokenHttp(Protocol):
    async def post_form(
        self, url: str, form: Form, headers: Mapping[str, str], timeout_s: float
    ) -> HttpReply:
        """POST ``application/x-www-form-urlencoded``; never follows redirects."""
        ...

    async def get_json(self, url: str, timeout_s: float) -> HttpReply:
        """GET with ``Accept: application/json`` (metadata discovery); never follows redirects."""
        ...
