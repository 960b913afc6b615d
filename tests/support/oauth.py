"""Harness for the test OAuth 2.0 authorization server in ``tests/oauth_server/`` (oidc-provider).

``OAuthServer`` runs ``node tests/oauth_server/server.mjs`` on a free loopback port. Process
control is synchronous underneath (``subprocess``), so one server can be shared by tests running in
different event loops; ``start()``/``stop()``/``restart()`` are async wrappers for async tests.

The harness generates two RSA keys: the server's signing key (passed in, so a restarted server keeps
its keys and earlier tokens stay valid) and the key of the ``mcp-proxy-jwt`` client, whose private
PEM is written to ``proxy_jwt_key_file`` (kid ``proxy_jwt_kid``) for ``private_key_jwt`` tests.

Fixtures: ``oauth_server`` (session scope, started once) and ``oauth`` (function scope: the same
server, restarted if a test stopped it, with counters and modes reset).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SERVER_DIR = Path(__file__).resolve().parent.parent / "oauth_server"
SERVER_SCRIPT = SERVER_DIR / "server.mjs"
READY_TIMEOUT = 15.0

# Static clients of the test server: client_id -> secret (None: no secret).
CLIENTS: dict[str, str | None] = {
    "llama-stack": "llama-stack-secret",
    "llama-stack-public": None,  # auth method "none"; password grant only
    "mcp-proxy": "proxy-secret",
    "mcp-proxy-jwt": None,  # private_key_jwt with OAuthServer.proxy_jwt_key_file
    "my-external-tool": "my-external-tool-secret",
    "proxy:special": "p@ss:w/rd+&=%",  # needs RFC 6749 §2.3.1 form-encoding in Basic auth
}
# Users of the password grant (password == username) and their custom claims.
USERS: dict[str, dict[str, Any]] = {
    "alice": {"tenant": "acme", "groups": ["admins", "engineering"]},
    "bob": {"tenant": "globex", "groups": ["engineering"]},
    "carol": {"tenant": "acme", "groups": ["sales"]},
}

GRANT_PASSWORD = "password"
GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TT_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
TT_JWT = "urn:ietf:params:oauth:token-type:jwt"
TT_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
TT_ID_JAG = "urn:ietf:params:oauth:token-type:id-jag"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Token requests with this header are spared by the fault switches (still counted in stats).
NO_FAULT = {"X-Test-No-Fault": "1"}

AuthMethod = Literal["basic", "post", "none", "private_key_jwt"]
FormValue = str | int | Sequence[str] | None


class OAuthServerError(RuntimeError):
    """The server process could not be started."""


@dataclass
class TokenResponse:
    """A token endpoint answer: HTTP status, parsed JSON body (None if not JSON), raw text."""

    status: int
    body: dict[str, Any] | None
    text: str
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def error(self) -> str | None:
        return None if self.body is None else self.body.get("error")

    @property
    def access_token(self) -> str:
        if self.status != 200 or self.body is None or "access_token" not in self.body:
            raise AssertionError(f"token request failed: {self.status} {self.text}")
        return str(self.body["access_token"])


def basic_auth_header(client_id: str, secret: str) -> str:
    """``Authorization: Basic`` value per RFC 6749 §2.3.1 (form-urlencode id and secret first)."""
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _form(data: Mapping[str, FormValue]) -> list[tuple[str, str]]:
    """Form fields; sequence values become repeated parameters, None values are left out."""
    out: list[tuple[str, str]] = []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, str | int):
            out.append((key, str(value)))
        else:
            out.extend((key, str(v)) for v in value)
    return out


def _new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(key: rsa.RSAPrivateKey, kid: str, *, private: bool) -> dict[str, Any]:
    source = key if private else key.public_key()
    data: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(source))
    data.update(kid=kid, alg="RS256", use="sig")
    return data


class OAuthServer:
    """A running test authorization server (one node process on 127.0.0.1)."""

    def __init__(self, *, node: str | None = None) -> None:
        self.node = node or shutil.which("node") or "node"
        self._tmp = Path(tempfile.mkdtemp(prefix="oauth-server-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        # The server's own signing key, kept across restarts.
        self._signing_key_file = self._tmp / "signing-key.json"
        self._signing_key_file.write_text(
            json.dumps(_jwk(_new_rsa_key(), f"srv-{uuid.uuid4().hex[:8]}", private=True))
        )
        # The key of the private_key_jwt client `mcp-proxy-jwt`.
        self.proxy_jwt_kid = f"proxy-{uuid.uuid4().hex[:8]}"
        self._proxy_key = _new_rsa_key()
        self.proxy_jwt_key_file = self._tmp / "mcp-proxy-jwt.pem"
        self.proxy_jwt_key_file.write_bytes(
            self._proxy_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self._proxy_jwks_file = self._tmp / "mcp-proxy-jwt.jwks.json"
        self._proxy_jwks_file.write_text(
            json.dumps({"keys": [_jwk(self._proxy_key, self.proxy_jwt_kid, private=False)]})
        )
        self._stderr_file = self._tmp / "stderr.log"

    # -- addresses -------------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        if self.port is None:
            raise OAuthServerError("the OAuth server was never started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def metadata_url(self) -> str:
        """RFC 8414 authorization server metadata."""
        return f"{self.issuer}/.well-known/oauth-authorization-server"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- process control (blocking) --------------------------------------------------------------

    def start_sync(self) -> None:
        """Start the server (on the port it had before, if any); wait for ``READY``."""
        if self.running:
            return
        cmd = [
            self.node,
            str(SERVER_SCRIPT),
            "--port",
            str(self.port or 0),
            "--signing-key",
            str(self._signing_key_file),
            "--private-key-jwt-jwks",
            str(self._proxy_jwks_file),
            "--exit-with-stdin",
        ]
        with self._stderr_file.open("wb") as stderr:
            proc = subprocess.Popen(
                cmd, cwd=SERVER_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
            )
        self._proc = proc
        line = self._wait_ready(proc)
        if not line.startswith("READY "):
            self.stop_sync()
            raise OAuthServerError(f"OAuth server did not start: {line!r}\n{self._stderr()}")
        issuer = line.split(" ", 1)[1].strip()
        port = int(issuer.rsplit(":", 1)[1])
        if self.port is not None and port != self.port:
            self.stop_sync()
            raise OAuthServerError(f"OAuth server came back on port {port}, not {self.port}")
        self.port = port

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> str:
        assert proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    self.stop_sync()
                    raise OAuthServerError(f"OAuth server not ready after {READY_TIMEOUT}s\n{self._stderr()}")
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    code = proc.wait()
                    raise OAuthServerError(f"OAuth server exited ({code})\n{self._stderr()}")
                buf += chunk
        return buf.split(b"\n", 1)[0].decode()

    def _stderr(self) -> str:
        try:
            return self._stderr_file.read_text(errors="replace")
        except OSError:
            return ""

    def stop_sync(self) -> None:
        """Stop the server (the port is remembered for ``start``/``restart``)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()

    def restart_sync(self) -> None:
        self.stop_sync()
        self.start_sync()

    def close(self) -> None:
        """Stop the server and delete its key files."""
        self.stop_sync()
        shutil.rmtree(self._tmp, ignore_errors=True)

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    async def restart(self) -> None:
        await asyncio.to_thread(self.restart_sync)

    async def __aenter__(self) -> OAuthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> OAuthServer:
        self.start_sync()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- client authentication -------------------------------------------------------------------

    def client_assertion(
        self,
        client_id: str = "mcp-proxy-jwt",
        *,
        jti: str | None = None,
        audience: str | None = None,
        lifetime: int = 60,
        key: rsa.RSAPrivateKey | None = None,
    ) -> str:
        """A ``private_key_jwt`` client assertion (RFC 7523 §2.2) signed with the client's key."""
        now = int(time.time())
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience or self.token_endpoint,
            "jti": jti or uuid.uuid4().hex,
            "iat": now,
            "exp": now + lifetime,
        }
        signing_key = key or self._proxy_key
        return jwt.encode(claims, signing_key, algorithm="RS256", headers={"kid": self.proxy_jwt_kid})

    def _auth(self, form: list[tuple[str, str]], client_id: str | None, auth: AuthMethod) -> dict[str, str]:
        """Adds client authentication to ``form``; returns extra headers."""
        if client_id is None:
            return {}
        secret = CLIENTS.get(client_id) or ""
        if auth == "basic":
            return {"Authorization": basic_auth_header(client_id, secret)}
        if auth == "post":
            form += [("client_id", client_id), ("client_secret", secret)]
        elif auth == "private_key_jwt":
            form += [
                ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ("client_assertion", self.client_assertion(client_id)),
            ]
        else:
            form.append(("client_id", client_id))
        return {}

    # -- HTTP helpers (async, aiohttp) -------------------------------------------------------------

    async def token(
        self,
        data: Mapping[str, FormValue],
        *,
        client_id: str | None = "mcp-proxy",
        auth: AuthMethod = "basic",
        headers: Mapping[str, str] | None = None,
    ) -> TokenResponse:
        """POST to the token endpoint as ``client_id`` (secrets from ``CLIENTS``); never raises on
        an OAuth error. ``client_id=None`` sends no client authentication at all."""
        form = _form(data)
        all_headers = {**self._auth(form, client_id, auth), **(headers or {})}
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.token_endpoint, data=form, headers=all_headers) as resp,
        ):
            text = await resp.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = None
            return TokenResponse(
                resp.status, body if isinstance(body, dict) else None, text, dict(resp.headers)
            )

    async def user_token(
        self,
        username: str,
        audience: str | Sequence[str] | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        *,
        client_id: str = "llama-stack",
    ) -> str:
        """A user access token from the password grant (password == username). Default aud is
        the requesting client; a scope ``X-aud`` adds audience ``X`` (Keycloak-style mapper).
        Negative ``expires_in`` gives an already expired token. Not affected by fault modes."""
        form = {
            "grant_type": GRANT_PASSWORD,
            "username": username,
            "password": username,
            "audience": audience,
            "scope": scope,
            "expires_in": expires_in,
        }
        auth: AuthMethod = "none" if CLIENTS.get(client_id, "x") is None else "basic"
        resp = await self.token(form, client_id=client_id, auth=auth, headers=NO_FAULT)
        return resp.access_token

    async def client_credentials(
        self,
        client_id: str = "mcp-proxy",
        *,
        audience: str | Sequence[str] | None = None,
        resource: str | Sequence[str] | None = None,
        scope: str | None = None,
        auth: AuthMethod = "basic",
    ) -> dict[str, Any]:
        """The token response of a client credentials grant (raises on error; not affected by
        fault modes)."""
        resp = await self.token(
            {
                "grant_type": GRANT_CLIENT_CREDENTIALS,
                "audience": audience,
                "resource": resource,
                "scope": scope,
            },
            client_id=client_id,
            auth=auth,
            headers=NO_FAULT,
        )
        _ = resp.access_token  # raises, with the body, when the request failed
        assert resp.body is not None
        return resp.body

    async def _control(self, method: str, path: str, payload: Any = None) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, f"{self.issuer}{path}", json=payload) as resp,
        ):
            body: dict[str, Any] = await resp.json(content_type=None)
            if resp.status != 200:
                raise AssertionError(f"{method} {path}: {resp.status} {body}")
            return body

    async def stats(self) -> dict[str, Any]:
        """Counts of token requests (``total``, ``outcomes``, ``grant_types``, ``errors``),
        ``endpoints`` hit (JWKS, discovery) and the last 50 ``requests`` (no secrets)."""
        return await self._control("GET", "/__test/stats")

    async def reset(self) -> None:
        await self._control("POST", "/__test/reset")

    async def set_mode(self, **switches: Any) -> dict[str, Any]:
        """Merge mode switches (keycloak, entra, fail, delay_ms, fail_times, token_ttl,
        allowed_audiences, allowed_scopes); returns the whole mode."""
        return (await self._control("POST", "/__test/mode", switches))["mode"]  # type: ignore[no-any-return]

    async def rotate_keys(self) -> str:
        """Add a signing key and make it current; returns its kid."""
        return str((await self._control("POST", "/__test/rotate-keys"))["kid"])

    async def jwks(self) -> dict[str, Any]:
        return await self._control("GET", "/jwks")

    async def decode(self, token: str, audience: str | Sequence[str] | None = None) -> dict[str, Any]:
        """Verify ``token`` against the server's current JWKS (signature, iss, exp; aud when
        ``audience`` is given) and return its claims."""
        return decode_with_jwks(token, await self.jwks(), self.issuer, audience)

    # -- HTTP helpers (blocking, for sync fixtures and tests) -------------------------------------

    def _control_sync(self, method: str, path: str, payload: Any = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(f"{self.issuer}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result

    def stats_sync(self) -> dict[str, Any]:
        return self._control_sync("GET", "/__test/stats")

    def reset_sync(self) -> None:
        self._control_sync("POST", "/__test/reset", {})

    def set_mode_sync(self, **switches: Any) -> dict[str, Any]:
        return self._control_sync("POST", "/__test/mode", switches)["mode"]  # type: ignore[no-any-return]

    def rotate_keys_sync(self) -> str:
        return str(self._control_sync("POST", "/__test/rotate-keys", {})["kid"])


def decode_with_jwks(
    token: str,
    jwks: Mapping[str, Any],
    issuer: str,
    audience: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Verify an RS256 JWT against a JWK Set (selected by kid) and return its claims."""
    kid = jwt.get_unverified_header(token).get("kid")
    keys = {k["kid"]: k for k in jwks["keys"]}
    if kid not in keys:
        raise jwt.InvalidTokenError(f"kid {kid!r} not in JWKS")
    key = jwt.PyJWK(keys[kid])
    aud = None if audience is None else ([audience] if isinstance(audience, str) else list(audience))
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=["RS256"],
        issuer=issuer,
        audience=aud,
        options={"verify_aud": audience is not None, "require": ["exp", "iat", "iss", "sub"]},
    )
    return claims


# -- pytest fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def oauth_server() -> Iterator[OAuthServer]:
    """One test authorization server for the whole session."""
    server = OAuthServer()
    server.start_sync()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def oauth(oauth_server: OAuthServer) -> OAuthServer:
    """The session's authorization server, running, with counters and modes reset."""
    if not oauth_server.running:
        oauth_server.start_sync()
    oauth_server.reset_sync()
    return oauth_server
