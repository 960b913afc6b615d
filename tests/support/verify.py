"""Helpers shared by the inbound tests (verification, PRM, policy, audit). No tests of its own.

``Forger`` signs tokens with the test OAuth server's own signing key (the one it was started with,
which stays in its JWKS after rotations), so a test can give a token exactly the claim that is
wrong — an ``nbf`` in the future, another issuer — while everything else stays valid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDict

from mcpproxy.metrics import Registry
from mcpproxy.web.app import build_app
from tests.support.net import free_port
from tests.support.oauth import OAuthServer
from tests.support.proxy import ProxyTestServer, RunningProxy, make_config

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Forger:
    def __init__(self, oauth: OAuthServer) -> None:
        self.oauth = oauth
        jwk = json.loads(oauth._signing_key_file.read_text())
        self.kid: str = jwk["kid"]
        key = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwk))
        assert isinstance(key, rsa.RSAPrivateKey)
        self.key = key

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.oauth.issuer,
            "sub": "alice",
            "aud": "mcpproxy",
            "client_id": "llama-stack",
            "scope": "mcp",
            "tenant": "acme",
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def token(
        self,
        *,
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = "",
        alg: str = "RS256",
        **claims: Any,
    ) -> str:
        headers = {"typ": "at+jwt"}
        if kid is not None:
            headers["kid"] = kid or self.kid
        return jwt.encode(self.claims(**claims), key or self.key, algorithm=alg, headers=headers)

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def hs256_with_public_key(self, **claims: Any) -> str:
        """The classic key-confusion forgery: HMAC keyed with the issuer's public key."""
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.kid}).encode())
        payload = b64url(json.dumps(self.claims(**claims)).encode())
        signing_input = f"{header}.{payload}".encode()
        signature = hmac.new(self.public_pem(), signing_input, hashlib.sha256).digest()
        return f"{header}.{payload}.{b64url(signature)}"

    def alg_none(self, **claims: Any) -> str:
        header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        payload = b64url(json.dumps(self.claims(**claims)).encode())
        return f"{header}.{payload}."

    def tampered(self, token: str, **changes: Any) -> str:
        """``token`` with its payload edited and its original signature kept."""
        header, payload, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims.update(changes)
        return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


def verify_block(oauth: OAuthServer, **extra: Any) -> dict[str, Any]:
    return {
        "issuer": oauth.issuer,
        "audience": ["mcpproxy"],
        "algorithms": ["RS256", "ES256"],
        "required_scopes": ["mcp"],
        "leeway_s": 5,
        **extra,
    }


@asynccontextmanager
async def proxy_at(spec: Mapping[str, Any] | str, port: int | None = None) -> AsyncIterator[RunningProxy]:
    """The real app on a loopback port chosen before the config is written (so it can name its
    own public URL, e.g. as a token audience)."""
    config = make_config(spec)
    metrics = Registry()
    app = build_app(config, metrics=metrics)
    server = ProxyTestServer(app, host="127.0.0.1", port=port or free_port())
    await server.start_server()
    try:
        yield RunningProxy(str(server.make_url("")).rstrip("/"), app, metrics)
    finally:
        await server.close()


async def post(
    url: str, body: Any, headers: Mapping[str, str] | None = None
) -> tuple[int, CIMultiDict[str], Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=json.dumps(body), headers={**ACCEPT, **(headers or {})}) as resp,
    ):
        return await _answer(resp)


async def get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, CIMultiDict[str], Any]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=dict(headers or {})) as resp:
        return await _answer(resp)


async def _answer(resp: aiohttp.ClientResponse) -> tuple[int, CIMultiDict[str], Any]:
    """Status, headers, and the body as JSON (as text when it is not JSON)."""
    text = await resp.text()
    try:
        payload: Any = json.loads(text)
    except ValueError:
        payload = text
    return resp.status, CIMultiDict(resp.headers), payload


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sse_messages(text: str) -> list[Any]:
    """The JSON payloads of an SSE body's events."""
    out = []
    for event in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].lstrip() for line in event.split("\n") if line.startswith("data:")]
        if data and "".join(data).strip():
            out.append(json.loads("\n".join(data)))
    return out
