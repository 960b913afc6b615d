"""Settings of the inbound side, validated at load: token verification (``auth.verify``), per-route
policy (``routes[].policy``) and the audit trail (top-level ``audit``).

Everything unsafe is refused with its YAML path: an issuer that is not http(s) (plain http only to a
loopback address unless ``allow_insecure``), ``none`` or HMAC in the algorithm allowlist (a public
key must never be usable as an HMAC secret), malformed globs, claim requirements on a route that
verifies no token and therefore has no claims to check.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mcpproxy.config.errors import ConfigError
from mcpproxy.config.reader import Section
from mcpproxy.config.urls import check_url

#: Asymmetric JWS algorithms a verifier may accept. ``none`` and ``HS*`` are never accepted.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
_REFUSED_ALGORITHMS = ("none", "HS256", "HS384", "HS512")

_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,256}$")  # RFC 6749 §3.3 scope-token
_CLAIM_PATH = re.compile(r"^[A-Za-z0-9_:$@-]{1,128}(\.[A-Za-z0-9_:$@-]{1,128}){0,7}$")
_GLOB = re.compile(r"^[\x21-\x7e]{1,512}$")  # printable ASCII, no whitespace

PolicyDefault = Literal["allow", "deny"]
ClaimValue = str | int | float | bool


@dataclass(frozen=True)
class VerifySettings:
    """``auth.verify``: validate the caller's bearer JWT against one issuer."""

    issuer: str
    audience: tuple[str, ...]
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
    required_scopes: tuple[str, ...] = ()
    leeway_s: float = 30.0
    jwks_uri: str | None = None
    allow_insecure: bool = False
    #: An unknown ``kid`` refetches the JWKS at most once per this many seconds.
    jwks_refresh_min_s: float = 30.0
    #: How long a fetched JWKS is used before it is fetched again.
    jwks_max_age_s: float = 300.0
    #: How long a verified token's result may be reused (never past its ``exp``); 0 turns it off.
    cache_s: float = 60.0
    cache_entries: int = 10_000
    timeout_s: float = 5.0
    #: ``scopes_supported`` of the route's protected resource metadata (default: every scope the
    #: route's verify and policy sections name).
    scopes_supported: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ClaimRequirement:
    """A claim (dotted path into the token's claims) that must equal one of ``values``; a list
    claim (``groups``, ``roles``) satisfies it when it contains one of them."""

    path: tuple[str, ...]
    values: tuple[ClaimValue, ...]

    @property
    def name(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class PolicyRule:
    tools: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()
    require_scopes: tuple[str, ...] = ()
    require_claims: tuple[ClaimRequirement, ...] = ()
    deny: bool = False
    index: int = 0

    def patterns(self, kind: str) -> tuple[str, ...]:
        if kind == "tools":
            return self.tools
        if kind == "resources":
            return self.resources
        if kind == "prompts":
            return self.prompts
        return ()


@dataclass(frozen=True)
class PolicySettings:
    """``routes[].policy``: which tools, resources and prompts a caller may use.

    Every rule whose globs match a name applies, and all of them must hold (so rules compose as
    constraints: ``delete_*`` needing ``admin`` and ``*`` needing ``tenant: acme`` both apply to
    ``delete_records``). A rule without requirements allows what it matches (an allowlist entry
    under ``default: deny``); ``deny: true`` refuses it outright. A name no rule matches gets
    ``default``.
    """

    default: PolicyDefault = "allow"
    rules: tuple[PolicyRule, ...] = ()

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s for r in self.rules for s in r.require_scopes))


@dataclass(frozen=True)
class AuditSettings:
    """Top-level ``audit``: one JSON line per tools/call, to ``file`` or the main log stream."""

    file: str | None = None
    include_arguments: bool = False
    enabled: bool = field(default=True)


# --- auth.verify --------------------------------------------------------------------------------


def parse_verify(sec: Section) -> VerifySettings:
    d = VerifySettings(issuer="", audience=())
    allow_insecure = sec.flag("allow_insecure", False)
    issuer: str = sec.text("issuer")
    check_url(sec, "issuer", issuer, allow_insecure=allow_insecure)
    jwks_uri: str | None = sec.text("jwks_uri", None)
    if jwks_uri is not None:
        check_url(sec, "jwks_uri", jwks_uri, allow_insecure=allow_insecure)
    audience = tuple(dict.fromkeys(sec.strings("audience")))
    if not audience:
        sec.error("audience", "must name at least one audience (tokens not issued for the proxy are refused)")
    algorithms = _algorithms(sec)
    required = _scopes(sec, "required_scopes")
    supported = _scopes(sec, "scopes_supported") if sec.has("scopes_supported") else None
    settings = VerifySettings(
        issuer=issuer,
        audience=audience,
        algorithms=algorithms,
        required_scopes=required,
        leeway_s=float(sec.number("leeway_s", d.leeway_s, maximum=600)),
        jwks_uri=jwks_uri,
        allow_insecure=allow_insecure,
        jwks_refresh_min_s=float(sec.number("jwks_refresh_min_s", d.jwks_refresh_min_s, maximum=86400)),
        jwks_max_age_s=float(sec.number("jwks_max_age_s", d.jwks_max_age_s, minimum=1, maximum=86400)),
        cache_s=float(sec.number("cache_s", d.cache_s, maximum=3600)),
        cache_entries=int(sec.integer("cache_entries", d.cache_entries, minimum=1, maximum=10_000_000)),
        timeout_s=float(sec.number("timeout_s", d.timeout_s, minimum=0.1, maximum=120)),
        scopes_supported=supported,
    )
    sec.finish()
    return settings


def _algorithms(sec: Section) -> tuple[str, ...]:
    names: list[str] = sec.strings("algorithms", list(ASYMMETRIC_ALGORITHMS))
    if not names:
        sec.error("algorithms", "must name at least one algorithm")
    for i, name in enumerate(names):
        path = f"{sec.at('algorithms')}[{i}]"
        if name in _REFUSED_ALGORITHMS or name.lower() == "none" or name.upper().startswith("HS"):
            raise ConfigError(
                path, f"{name!r} is never accepted: only asymmetric algorithms can verify a bearer token"
            )
        if name not in ASYMMETRIC_ALGORITHMS:
            raise ConfigError(path, f"unknown algorithm {name!r}; use {', '.join(ASYMMETRIC_ALGORITHMS)}")
    return tuple(dict.fromkeys(names))


def _scopes(sec: Section, key: str) -> tuple[str, ...]:
    values: list[str] = sec.strings(key, [])
    for i, scope in enumerate(values):
        if not _SCOPE.match(scope):
            raise ConfigError(f"{sec.at(key)}[{i}]", f"{scope!r} is not a valid scope (no spaces or quotes)")
    return tuple(dict.fromkeys(values))


# --- routes[].policy ----------------------------------------------------------------------------


def parse_policy(sec: Section, *, verifies: bool) -> PolicySettings:
    default = sec.choice("default", ("allow", "deny"), "allow")
    rules: list[PolicyRule] = []
    for i, rule_sec in enumerate(sec.sections("rules")):
        rules.append(_rule(rule_sec, i, verifies))
    sec.finish()
    if not sec.has("rules") and default == "allow":
        sec.error(
            "rules", "is required unless default is deny (a policy that allows everything checks nothing)"
        )
    return PolicySettings(default=default, rules=tuple(rules))


def _rule(sec: Section, index: int, verifies: bool) -> PolicyRule:
    globs = {kind: _globs(sec, kind) for kind in ("tools", "resources", "prompts")}
    if not any(globs.values()):
        raise ConfigError(sec.path, "a rule must name tools, resources or prompts")
    scopes = _scopes(sec, "require_scopes")
    claims = _claims(sec, "require_claims")
    deny = sec.flag("deny", False)
    if deny and (scopes or claims):
        sec.error("deny", "a deny rule refuses outright; require_scopes and require_claims do not apply")
    if (scopes or claims) and not verifies:
        key = "require_scopes" if scopes else "require_claims"
        sec.error(key, "needs auth.verify on this route: without a verified token there are no claims")
    rule = PolicyRule(
        tools=globs["tools"],
        resources=globs["resources"],
        prompts=globs["prompts"],
        require_scopes=scopes,
        require_claims=claims,
        deny=deny,
        index=index,
    )
    sec.finish()
    return rule


def _globs(sec: Section, key: str) -> tuple[str, ...]:
    values: list[str] = sec.strings(key, [])
    for i, glob in enumerate(values):
        path = f"{sec.at(key)}[{i}]"
        if not _GLOB.match(glob):
            raise ConfigError(path, f"{glob!r} is not a valid glob (printable characters, no spaces)")
        if not _balanced_brackets(glob):
            raise ConfigError(path, f"{glob!r} has an unclosed '['")
    return tuple(dict.fromkeys(values))


def _balanced_brackets(glob: str) -> bool:
    """fnmatch treats an unclosed ``[`` as a literal, which is never what the author meant."""
    i = 0
    while i < len(glob):
        if glob[i] == "[":
            j = i + 1
            if j < len(glob) and glob[j] in "!]":
                j += 1
            while j < len(glob) and glob[j] != "]":
                j += 1
            if j >= len(glob):
                return False
            i = j
        i += 1
    return True


def _claims(parent: Section, key_name: str) -> tuple[ClaimRequirement, ...]:
    data = parent.raw(key_name, None)
    if data is None:
        return ()
    sec = Section.of(data, parent.at(key_name))
    out: list[ClaimRequirement] = []
    for key in list(data):
        if not _CLAIM_PATH.match(key):
            sec.error(key, "is not a valid claim name (letters, digits, _ : $ @ -; '.' separates levels)")
        raw = sec.raw(key)
        items: list[Any] = raw if isinstance(raw, list) else [raw]
        if not items:
            sec.error(key, "must give at least one value")
        values: list[ClaimValue] = []
        for item in items:
            if not isinstance(item, str | int | float | bool):
                sec.error(key, "values must be strings, numbers or booleans")
            values.append(item)
        out.append(ClaimRequirement(tuple(key.split(".")), tuple(values)))
    sec.finish()
    return tuple(out)


# --- audit --------------------------------------------------------------------------------------


def parse_audit(sec: Section) -> AuditSettings:
    file_name: str | None = sec.text("file", None)
    if file_name is not None:
        path = Path(file_name).expanduser()
        if not path.parent.is_dir():
            sec.error("file", f"directory {str(path.parent)!r} does not exist")
        if path.is_dir():
            sec.error("file", f"{file_name!r} is a directory")
        writable = os.access(path, os.W_OK) if path.exists() else os.access(path.parent, os.W_OK)
        if not writable:
            sec.error("file", f"{file_name!r} is not writable")
    settings = AuditSettings(
        file=file_name,
        include_arguments=sec.flag("include_arguments", False),
        enabled=sec.flag("enabled", True),
    )
    sec.finish()
    return settings
