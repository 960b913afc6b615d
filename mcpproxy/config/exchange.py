"""Settings of the OAuth-based upstream types. (Being written; see the token-exchange issue.)"""

from __future__ import annotations

from dataclasses import dataclass

from mcpproxy.config.reader import Section

EXCHANGE_TYPES = ("token_exchange", "jwt_bearer", "id_jag", "entra_obo", "client_credentials")


@dataclass(frozen=True)
class ExchangeSettings:
    type: str


@dataclass(frozen=True)
class CacheSettings:
    backend: str = "memory"


def parse_exchange(sec: Section, type_name: str) -> ExchangeSettings:
    sec.error("type", f"{type_name!r} is not available yet")


def needs_subject(settings: ExchangeSettings) -> bool:
    return settings.type != "client_credentials"


def parse_cache(sec: Section) -> CacheSettings:
    sec.error("backend", "not available yet")
