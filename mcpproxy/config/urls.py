"""URL rules shared by every part of the configuration that names a server."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from mcpproxy.config.reader import Section


def check_url(sec: Section, key: str, url: str, *, allow_insecure: bool | None = None) -> None:
    """Refuse anything but an absolute http(s) URL with a host, no userinfo, query or fragment.

    ``allow_insecure`` is for URLs that credentials are sent to (token endpoints, JWKS): given,
    plain http is refused unless the host is loopback or it is True. None: either scheme is fine.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        sec.error(key, f"must be an http:// or https:// URL, got {url!r}")
    if not parts.hostname:
        sec.error(key, f"has no host: {url!r}")
    if parts.username or parts.password:
        sec.error(key, "must not carry credentials in the URL")
    if parts.query or parts.fragment or "#" in url:
        sec.error(key, "must not have a query or fragment")
    try:
        _ = parts.port
    except ValueError:
        sec.error(key, f"has an invalid port: {url!r}")
    if allow_insecure is not None:
        problem = insecure_reason(url, allow_insecure)
        if problem:
            sec.error(key, problem)


def insecure_reason(url: str, allow_insecure: bool) -> str | None:
    """Why ``url`` may not carry credentials, or None: plain http only to loopback or when allowed."""
    parts = urlsplit(url)
    if parts.scheme == "https" or allow_insecure:
        return None
    if parts.scheme == "http" and is_loopback(parts.hostname or ""):
        return None
    return "must use https (plain http only to a loopback address, or set allow_insecure: true)"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
