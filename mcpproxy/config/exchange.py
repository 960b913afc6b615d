"""Settings of the OAuth-based upstream types and of the token cache, validated at load.

``parse_exchange`` reads everything of a route's ``auth.upstream`` section except ``type``,
``header`` and ``format`` (the loader's) and refuses anything invalid or unsafe with its YAML path:
a plain-http OAuth endpoint that is not loopback, reserved form parameters in ``extra_params``, a
``resource`` that is not an absolute URI, a private key that cannot sign. Secrets stay
:class:`~mcpproxy.secrets.Secret` from here to the wire.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mcpproxy.config.errors import ConfigError
from mcpproxy.config.reader import Section
from mcpproxy.config.urls import check_url
from mcpproxy.secrets import Secret

EXCHANGE_TYPES = ("token_exchange", "jwt_bearer", "id_jag", "entra_obo", "client_credentials")

TOKEN_TYPE = "urn:ietf:params:oauth:token-type:"
ACCESS_TOKEN = TOKEN_TYPE + "access_token"
ID_TOKEN = TOKEN_TYPE + "id_token"
ID_JAG = TOKEN_TYPE + "id-jag"
#: Short names accepted wherever a token type URI is expected.
_TOKEN_TYPE_NAMES = ("access_token", "refresh_token", "id_token", "jwt", "saml1", "saml2", "id-jag")

AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
AuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]

#: Form parameters the proxy sets itself; ``extra_params`` may not override or duplicate them.
RESERVED_PARAMS = frozenset(
    {
        "grant_type",
        "client_id",
        "client_secret",
        "client_assertion",
        "client_assertion_type",
        "subject_token",
        "subject_token_type",
        "actor_token",
        "actor_token_type",
        "requested_token_type",
        "requested_token_use",
        "assertion",
        "audience",
        "resource",
        "scope",
        "username",
        "password",
        "refresh_token",
        "code",
        "code_verifier",
        "redirect_uri",
    }
)

_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749 §3.3
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthServer:
    """Where tokens come from: a fixed ``token_endpoint`` or one discovered from ``issuer``."""

    issuer: str | None
    token_endpoint: str | None
    allow_insecure: bool = False
    timeout_s: float = 10.0


@dataclass(frozen=True)
class ClientSettings:
    """The proxy's own client registration at an authorization server."""

    id: str
    auth_method: AuthMethod
    secret: Secret | None = None
    private_key: Secret | None = None  # PEM, private_key_jwt only
    key_id: str | None = None
    signing_alg: str | None = None  # RS256 or ES256, derived from the key
    assertion_audience: Literal["token_endpoint", "issuer"] = "token_endpoint"


@dataclass(frozen=True)
class Timing:
    skew_s: float = 30.0
    negative_ttl_s: float = 5.0
    default_lifetime_s: float = 60.0


@dataclass(frozen=True)
class ActorSettings:
    """The proxy's own client_credentials token, sent as RFC 8693 ``actor_token``."""

    audience: tuple[str, ...] = ()
    resource: tuple[str, ...] = ()
    scope: tuple[str, ...] = ()
    token_type: str = ACCESS_TOKEN


@dataclass(frozen=True)
class TokenExchangeSettings:
    server: AuthServer
    client: ClientSettings
    audience: tuple[str, ...] = ()
    resource: tuple[str, ...] = ()
    scope: tuple[str, ...] = ()
    subject_token_type: str = ACCESS_TOKEN
    requested_token_type: str | None = None
    actor: ActorSettings | None = None
    extra_params: tuple[tuple[str, str], ...] = ()
    timing: Timing = Timing()
    type: Literal["token_exchange"] = "token_exchange"


@dataclass(frozen=True)
class JwtBearerSettings:
    server: AuthServer
    client: ClientSettings
    audience: tuple[str, ...] = ()
    resource: tuple[str, ...] = ()
    scope: tuple[str, ...] = ()
    extra_params: tuple[tuple[str, str], ...] = ()
    timing: Timing = Timing()
    type: Literal["jwt_bearer"] = "jwt_bearer"


@dataclass(frozen=True)
class ResourceAuthServer:
    """ID-JAG's second hop: the authorization server of the protected resource."""

    server: AuthServer
    client: ClientSettings
    resource: tuple[str, ...] = ()
    scope: tuple[str, ...] = ()
    extra_params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class IdJagSettings:
    server: AuthServer  # the IdP
    client: ClientSettings  # the proxy's client at the IdP
    audience: str  # the resource authorization server's issuer
    resource_as: ResourceAuthServer
    resource: tuple[str, ...] = ()
    scope: tuple[str, ...] = ()
    subject_token_type: str = ID_TOKEN
    extra_params: tuple[tuple[str, str], ...] = ()
    timing: Timing = Timing()
    type: Literal["id_jag"] = "id_jag"


@dataclass(frozen=True)
class EntraOboSettings:
    server: AuthServer
    client: ClientSettings
    scope: tuple[str, ...]
    extra_params: tuple[tuple[str, str], ...] = ()
    timing: Timing = Timing()
    type: Literal["entra_obo"] = "entra_obo"


@dataclass(frozen=True)
class ClientCredentialsSettings:
    server: AuthServer
    client: ClientSettings
    audience: tuple[str, ...] = ()
    resource: tuple[str, ...] = ()
    scope: tuple[str, ...] = ()
    extra_params: tuple[tuple[str, str], ...] = ()
    timing: Timing = Timing()
    type: Literal["client_credentials"] = "client_credentials"


ExchangeSettings = (
    TokenExchangeSettings | JwtBearerSettings | IdJagSettings | EntraOboSettings | ClientCredentialsSettings
)


@dataclass(frozen=True)
class RedisSettings:
    url: Secret  # may carry a password
    encryption_key: Secret  # 32 bytes, normalised to 64 hex digits
    key_prefix: str = "mcpproxy:token:"
    lock_timeout_s: float = 10.0
    timeout_s: float = 1.0
    retry_s: float = 5.0

    def key_bytes(self) -> bytes:
        return bytes.fromhex(self.encryption_key.reveal())


@dataclass(frozen=True)
class CacheSettings:
    backend: Literal["memory", "redis"] = "memory"
    max_entries: int = 10_000
    redis: RedisSettings | None = None


# --- parsing -------------------------------------------------------------------------------------


def parse_exchange(sec: Section, type_name: str) -> ExchangeSettings:
    """Read the settings of one OAuth upstream type from ``auth.upstream`` (minus type/header/format)."""
    if type_name == "token_exchange":
        return _token_exchange(sec)
    if type_name == "jwt_bearer":
        return _jwt_bearer(sec)
    if type_name == "id_jag":
        return _id_jag(sec)
    if type_name == "entra_obo":
        return _entra_obo(sec)
    if type_name == "client_credentials":
        return _client_credentials(sec)
    sec.error("type", f"unknown exchange type {type_name!r}")


def needs_subject(settings: ExchangeSettings) -> bool:
    """Whether the route needs the caller's token: every type but client_credentials."""
    return not isinstance(settings, ClientCredentialsSettings)


def _token_exchange(sec: Section) -> TokenExchangeSettings:
    server = _server(sec)
    actor_sec = sec.optional_section("actor")
    return TokenExchangeSettings(
        server=server,
        client=_client(sec),
        audience=tuple(sec.strings("audience", [])),
        resource=_resources(sec),
        scope=_scopes(sec),
        subject_token_type=_token_type(sec, "subject_token_type", ACCESS_TOKEN),
        requested_token_type=_optional_token_type(sec, "requested_token_type"),
        actor=_actor(actor_sec) if actor_sec is not None else None,
        extra_params=_extra_params(sec),
        timing=_timing(sec),
    )


def _jwt_bearer(sec: Section) -> JwtBearerSettings:
    return JwtBearerSettings(**_plain_grant(sec))


def _plain_grant(sec: Section) -> dict[str, Any]:
    """The keys of a grant that needs nothing beyond server, client and the target."""
    return {
        "server": _server(sec),
        "client": _client(sec),
        "audience": tuple(sec.strings("audience", [])),
        "resource": _resources(sec),
        "scope": _scopes(sec),
        "extra_params": _extra_params(sec),
        "timing": _timing(sec),
    }


def _id_jag(sec: Section) -> IdJagSettings:
    server = _server(sec)
    client = _client(sec)
    ras_sec = sec.section("resource_as")
    ras = ResourceAuthServer(
        server=_server(ras_sec),
        client=_client(ras_sec),
        resource=_resources(ras_sec),
        scope=_scopes(ras_sec),
        extra_params=_extra_params(ras_sec),
    )
    ras_sec.finish()
    audience = sec.text("audience", None) or ras.server.issuer
    if audience is None:
        sec.error("audience", "is required when resource_as has no issuer (the ID-JAG's audience)")
    return IdJagSettings(
        server=server,
        client=client,
        audience=audience,
        resource_as=ras,
        resource=_resources(sec),
        scope=_scopes(sec),
        subject_token_type=_token_type(sec, "subject_token_type", ID_TOKEN),
        extra_params=_extra_params(sec),
        timing=_timing(sec),
    )


def _entra_obo(sec: Section) -> EntraOboSettings:
    tenant = sec.text("tenant", None)
    authority = sec.text("authority", None)
    if tenant is None:
        if authority is not None:
            sec.error("authority", "only together with tenant")
        server = _server(sec)
    else:
        if sec.has("issuer") or sec.has("token_endpoint"):
            sec.error("tenant", "give either tenant or issuer/token_endpoint, not both")
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,100}", tenant):
            sec.error("tenant", f"{tenant!r} is not a tenant id or domain")
        allow_insecure = sec.flag("allow_insecure", False)
        authority = (authority or "https://login.microsoftonline.com").rstrip("/")
        check_url(sec, "authority", authority, allow_insecure=allow_insecure)
        endpoint = f"{authority}/{tenant}/oauth2/v2.0/token"
        server = AuthServer(None, endpoint, allow_insecure, _timeout(sec))
    scope = _scopes(sec)
    if not scope:
        sec.error("scope", "is required, e.g. [api://<app id>/.default]")
    resources = {s.rsplit("/", 1)[0] for s in scope if "/" in s}
    if len(resources) != 1 or any("/" not in s for s in scope):
        sec.error("scope", "Entra needs scopes of exactly one resource, e.g. api://<app id>/.default")
    return EntraOboSettings(
        server=server,
        client=_client(sec),
        scope=scope,
        extra_params=_extra_params(sec),
        timing=_timing(sec),
    )


def _client_credentials(sec: Section) -> ClientCredentialsSettings:
    return ClientCredentialsSettings(**_plain_grant(sec))


def _actor(sec: Section) -> ActorSettings:
    actor = ActorSettings(
        audience=tuple(sec.strings("audience", [])),
        resource=_resources(sec),
        scope=_scopes(sec),
        token_type=_token_type(sec, "token_type", ACCESS_TOKEN),
    )
    sec.finish()
    return actor


# --- pieces --------------------------------------------------------------------------------------


def _server(sec: Section) -> AuthServer:
    issuer = sec.text("issuer", None)
    endpoint = sec.text("token_endpoint", None)
    allow_insecure = sec.flag("allow_insecure", False)
    if issuer is None and endpoint is None:
        sec.error("issuer", "give issuer (for discovery) or token_endpoint")
    if issuer is not None:
        check_url(sec, "issuer", issuer, allow_insecure=allow_insecure)
    if endpoint is not None:
        check_url(sec, "token_endpoint", endpoint, allow_insecure=allow_insecure)
    return AuthServer(issuer, endpoint, allow_insecure, _timeout(sec))


def _timeout(sec: Section) -> float:
    return float(sec.number("timeout_s", 10.0, minimum=0.1, maximum=120))


def _client(sec: Section) -> ClientSettings:
    csec = sec.section("client")
    client_id = csec.text("id")
    if _CONTROL.search(client_id):
        csec.error("id", "must not contain control characters")
    secret = csec.secret("secret", "secret_file", required=False)
    key = csec.secret("private_key", "private_key_file", required=False)
    default_method = "private_key_jwt" if key is not None else "client_secret_basic"
    method: AuthMethod = csec.choice("auth_method", AUTH_METHODS, default_method)
    key_id = csec.text("key_id", None)
    audience = csec.choice("assertion_audience", ("token_endpoint", "issuer"), "token_endpoint")
    if method == "private_key_jwt":
        if secret is not None:
            csec.error("secret", "private_key_jwt authenticates with private_key_file, not a secret")
        if key is None:
            csec.error("private_key_file", "is required for private_key_jwt")
        alg = signing_algorithm(key, csec.at("private_key_file"))
        if audience == "issuer" and not sec.has("issuer"):
            csec.error("assertion_audience", "'issuer' needs the server's issuer to be configured")
        client = ClientSettings(client_id, method, None, key, key_id, alg, audience)
    else:
        for name in ("private_key", "private_key_file", "key_id", "assertion_audience"):
            if csec.has(name):
                csec.error(name, f"only for auth_method private_key_jwt, not {method}")
        if secret is None:
            csec.error("secret", f"is required for {method} (or secret_file)")
        client = ClientSettings(client_id, method, secret)
    csec.finish()
    return client


def signing_algorithm(pem: Secret, path: str) -> str:
    """RS256 for an RSA key of at least 2048 bits, ES256 for a P-256 key; anything else is refused."""
    try:
        key = serialization.load_pem_private_key(pem.reveal().encode(), password=None)
    except (ValueError, TypeError) as exc:
        kind = "is encrypted" if isinstance(exc, TypeError) else "is not a PEM private key"
        raise ConfigError(path, f"the private key {kind}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ConfigError(path, f"an RSA key needs at least 2048 bits, got {key.key_size}")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ConfigError(path, "use an RSA (RS256) or EC P-256 (ES256) private key")


def _resources(sec: Section) -> tuple[str, ...]:
    """RFC 8707: each resource is an absolute URI without a fragment."""
    values = sec.strings("resource", [])
    for i, value in enumerate(values):
        scheme, sep, _ = value.partition(":")
        if not sep or not _URI_SCHEME.match(scheme) or _CONTROL.search(value) or " " in value:
            raise ConfigError(f"{sec.at('resource')}[{i}]", f"{value!r} is not an absolute URI")
        if "#" in value:
            raise ConfigError(f"{sec.at('resource')}[{i}]", "must not have a fragment")
    return tuple(values)


def _scopes(sec: Section) -> tuple[str, ...]:
    """Scope tokens (a list, or one space-separated string); each per RFC 6749 §3.3."""
    scopes: list[str] = []
    for i, item in enumerate(sec.strings("scope", [])):
        for token in item.split():
            if not _SCOPE_TOKEN.match(token):
                raise ConfigError(f"{sec.at('scope')}[{i}]", f"{token!r} is not a valid scope")
            if token not in scopes:
                scopes.append(token)
    return tuple(scopes)


def _token_type(sec: Section, key: str, default: str) -> str:
    return _optional_token_type(sec, key) or default


def _optional_token_type(sec: Section, key: str) -> str | None:
    """A token type URI (RFC 8693 §3), or its short name (``access_token``, ``id-jag`` …)."""
    value: str | None = sec.text(key, None)
    if value is None:
        return None
    if value in _TOKEN_TYPE_NAMES:
        return TOKEN_TYPE + value
    scheme, sep, _ = value.partition(":")
    if not sep or not _URI_SCHEME.match(scheme) or _CONTROL.search(value) or " " in value:
        names = ", ".join(_TOKEN_TYPE_NAMES)
        sec.error(key, f"{value!r} is not a token type URI (or one of {names})")
    return value


def _extra_params(sec: Section) -> tuple[tuple[str, str], ...]:
    """Additional form parameters some servers need; never one the proxy sets itself."""
    raw = sec.raw("extra_params", {})
    if not isinstance(raw, dict):
        sec.error("extra_params", "expected a mapping of parameter names to values")
    out: list[tuple[str, str]] = []
    for name, value in raw.items():
        path = f"{sec.at('extra_params')}.{name}"
        if not isinstance(name, str) or not _PARAM_NAME.match(name):
            raise ConfigError(path, "is not a valid parameter name")
        if name.lower() in RESERVED_PARAMS:
            raise ConfigError(path, "is set by the proxy and cannot be given in extra_params")
        if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
            raise ConfigError(path, "expected a non-empty string")
        if _CONTROL.search(str(value)):
            raise ConfigError(path, "must not contain control characters")
        out.append((name, str(value)))
    return tuple(out)


def _timing(sec: Section) -> Timing:
    d = Timing()
    return Timing(
        skew_s=float(sec.number("skew_s", d.skew_s, maximum=3600)),
        negative_ttl_s=float(sec.number("negative_ttl_s", d.negative_ttl_s, maximum=300)),
        default_lifetime_s=float(
            sec.number("default_lifetime_s", d.default_lifetime_s, minimum=1, maximum=86400)
        ),
    )


# --- cache ---------------------------------------------------------------------------------------


def parse_cache(sec: Section) -> CacheSettings:
    """The top-level ``cache:`` section: ``backend: memory`` (default) or ``redis``."""
    backend = sec.choice("backend", ("memory", "redis"), "memory")
    max_entries = int(sec.integer("max_entries", 10_000, minimum=1, maximum=10_000_000))
    redis = _redis(sec) if backend == "redis" else None
    if redis is None:
        for key in ("url", "encryption_key", "encryption_key_file", "key_prefix"):
            if sec.has(key):
                sec.error(key, "only for backend: redis")
    sec.finish()
    return CacheSettings(backend=backend, max_entries=max_entries, redis=redis)


def _redis(sec: Section) -> RedisSettings:
    url = sec.secret("url")
    assert url is not None
    if urlsplit(url.reveal()).scheme not in ("redis", "rediss", "unix"):
        sec.error("url", "must be a redis://, rediss:// or unix:// URL")
    key = sec.secret("encryption_key", "encryption_key_file")
    assert key is not None
    prefix = sec.text("key_prefix", "mcpproxy:token:")
    if _CONTROL.search(prefix) or " " in prefix:
        sec.error("key_prefix", "must not contain spaces or control characters")
    lock_timeout = float(sec.number("lock_timeout_s", 10.0, minimum=0.1, maximum=300))
    return RedisSettings(
        url=url,
        encryption_key=Secret(_key_hex(key, sec.at("encryption_key"))),
        key_prefix=prefix,
        lock_timeout_s=lock_timeout,
        timeout_s=float(sec.number("timeout_s", 1.0, minimum=0.01, maximum=60)),
        retry_s=float(sec.number("retry_s", 5.0, minimum=0.01, maximum=3600)),
    )


def _key_hex(key: Secret, path: str) -> str:
    """A 32-byte AES-256 key given as 64 hex digits or as base64 (standard or URL-safe)."""
    text = key.reveal().strip()
    raw: bytes | None = None
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raw = bytes.fromhex(text)
    else:
        try:
            raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != 32:
        raise ConfigError(
            path, "must be a 32-byte key, as 64 hex digits or base64 (e.g. `openssl rand -base64 32`)"
        )
    return raw.hex()
