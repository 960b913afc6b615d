"""Real MCP servers as subprocesses, pytest fixtures for them, and SDK client helpers.

Servers: ``tests/servers/mcp_app.py`` (``python -m tests.servers.mcp_app``), built with ``mcp`` 2.x.

Fixtures (load with ``pytest_plugins = ["tests.support.mcp_servers"]`` or from a conftest):

* ``mcp_json``, ``mcp_sse``, ``mcp_stateless``, ``mcp_legacy`` -> :class:`McpServerProcess`,
  one process per mode for the whole session, ``reset()`` before each test.
* ``mcp_server_factory(mode, **opts)`` -> :class:`McpServerProcess`, for protected or otherwise
  configured servers (``require_bearer_jwt=True, issuer=..., jwks_url=..., audience=...``,
  ``require_headers={"X-Api-Key": "k1"}``, ``host_check=True``, ``path="/mcp/"``...). Servers
  with equal options are shared for the session; ``fresh=True`` starts a private one.

Clients (the official SDK's, so tests speak exactly what the SDK speaks):

* ``async with mcp_connect(url, transport="streamable"|"sse", headers=...) as conn`` ->
  :class:`McpConnection` (``.session`` is an initialized ``ClientSession``; ``.logs`` collects
  log notifications, ``.notifications`` every server notification).
* ``async with mcp_session(url, ...) as session`` -> the ``ClientSession`` alone.
* ``await call_tool_collect(session, name, args)`` -> :class:`ToolCallOutcome` with the
  progress notifications of that call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Literal, NoReturn

import httpx2
import jwt
import mcp_types as types
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp.client.client import Client
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 15.0

Mode = Literal["json", "sse", "stateless", "legacy"]
TransportName = Literal["streamable", "sse"]
ProtocolChoice = Literal["handshake", "auto", "2026-07-28"]


class McpServerError(RuntimeError):
    """The server process could not be started (message carries its stderr)."""


class McpServerProcess:
    """``python -m tests.servers.mcp_app`` as a subprocess on 127.0.0.1.

    ``url`` is the endpoint a client connects to: ``http://127.0.0.1:P/mcp`` for the Streamable
    HTTP modes, ``http://127.0.0.1:P/sse`` for legacy. ``base`` is ``http://127.0.0.1:P``.
    """

    def __init__(
        self,
        mode: Mode,
        *,
        port: int = 0,
        path: str = "/mcp",
        sse_path: str = "/sse",
        messages_path: str = "/messages/",
        json_response: bool = False,
        require_bearer_jwt: bool = False,
        issuer: str | None = None,
        jwks_url: str | None = None,
        audience: str | None = None,
        scopes: Sequence[str] = (),
        require_headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        host_check: bool = False,
        retry_ms: int | None = None,
        event_store: bool = True,
        gate_timeout: float | None = None,
        record_requests: bool = True,
        extra_args: Sequence[str] = (),
        ready_timeout: float = READY_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.mode: Mode = mode
        self.port = port
        self.path = path
        self.sse_path = sse_path
        self.messages_path = messages_path
        self.ready_timeout = ready_timeout
        self._env = dict(env) if env is not None else None
        headers = (
            list(require_headers.items()) if isinstance(require_headers, Mapping) else list(require_headers)
        )
        args = [
            "--mode",
            mode,
            "--path",
            path,
            "--sse-path",
            sse_path,
            "--messages-path",
            messages_path,
        ]
        if json_response:
            args.append("--json-response")
        if require_bearer_jwt:
            if not (issuer and jwks_url and audience):
                raise ValueError("require_bearer_jwt needs issuer, jwks_url and audience")
            args += [
                "--require-bearer-jwt",
                "--issuer",
                issuer,
                "--jwks-url",
                jwks_url,
                "--audience",
                audience,
            ]
        for scope in scopes:
            args += ["--scope", scope]
        for name, value in headers:
            args += ["--require-header", f"{name}={value}"]
        if host_check:
            args.append("--host-check")
        if retry_ms is not None:
            args += ["--retry-ms", str(retry_ms)]
        if not event_store:
            args.append("--no-event-store")
        if gate_timeout is not None:
            args += ["--gate-timeout", str(gate_timeout)]
        if not record_requests:
            args.append("--no-record")
        args += list(extra_args)
        self._args = args
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> McpServerProcess:
        """Start the process (on ``self.port``; a free one when 0) and wait for READY."""
        if self.running:
            return self
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = tempfile.TemporaryFile(mode="w+", prefix="mcp_app-", suffix=".err")  # noqa: SIM115
        cmd = [
            sys.executable,
            "-m",
            "tests.servers.mcp_app",
            "--port",
            str(self.port),
            "--exit-with-parent",
            *self._args,
        ]
        env = dict(os.environ if self._env is None else self._env)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        assert self._proc.stdout is not None
        threading.Thread(target=_pump, args=(self._proc.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + self.ready_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                line = ""
                if time.monotonic() >= deadline:
                    self._fail(f"not READY within {self.ready_timeout} s")
            if line is None:
                self._fail("exited before READY")
            if line and line.startswith("READY "):
                self.port = int(line.split()[1].rsplit(":", 1)[1])
                return self

    def _fail(self, why: str) -> NoReturn:
        cmd = " ".join(self._args)
        self.stop()
        raise McpServerError(f"mcp_app ({cmd}) {why}; stderr:\n{self.stderr_text()}")

    def stderr_text(self, limit: int = 8000) -> str:
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()[-limit:]

    def terminate(self) -> None:
        """Send SIGTERM without waiting (``stop()`` then waits); lets many stop in parallel."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL); the port is kept for ``start()``."""
        self.terminate()
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout)
        if proc.stdout is not None:
            proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL, no graceful shutdown (open streams are cut)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.stop()

    def restart(self) -> McpServerProcess:
        """Stop and start again on the same port (all sessions and state are lost)."""
        self.stop()
        return self.start()

    def __enter__(self) -> McpServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The MCP endpoint: ``base + path``, or ``base + sse_path`` in legacy mode."""
        return self.base + (self.sse_path if self.mode == "legacy" else self.path)

    @property
    def host_header(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def transport(self) -> TransportName:
        """The SDK client transport that fits this server."""
        return "sse" if self.mode == "legacy" else "streamable"

    # -- test-control endpoints ------------------------------------------------------------

    def _control(self, method: str, what: str) -> Any:
        request = urllib.request.Request(
            self.base + "/__test/" + what, method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def requests_sync(self, path: str | None = None) -> list[dict[str, Any]]:
        """Every HTTP request received outside ``/__test/`` since the last reset, oldest first.

        Each: ``seq, time, method, path, query, http_version, client ("ip:port"),
        headers ({lower-case name: [values]}), body (text, ≤ 64 KiB), body_truncated, status``.
        """
        records: list[dict[str, Any]] = self._control("GET", "requests")
        return [r for r in records if path is None or r["path"] == path]

    def reset_sync(self) -> None:
        self._control("POST", "reset")

    def release_sync(self, key: str) -> None:
        self._control("POST", "release/" + urllib.parse.quote(key, safe=""))

    def health_sync(self) -> dict[str, Any]:
        result: dict[str, Any] = self._control("GET", "health")
        return result

    async def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.requests_sync, path)

    async def reset(self) -> None:
        await asyncio.to_thread(self.reset_sync)

    async def release(self, key: str) -> None:
        await asyncio.to_thread(self.release_sync, key)

    async def health(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.health_sync)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<McpServerProcess {self.mode} {self.url} {state}>"


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    try:
        for line in stream:
            lines.put(line.strip())
    except ValueError:  # closed
        pass
    finally:
        lines.put(None)


def rpc_messages(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSON-RPC message(s) in a recorded request body ([] when none)."""
    try:
        body = json.loads(record.get("body") or "null")
    except ValueError:
        return []
    if isinstance(body, list):
        return [m for m in body if isinstance(m, dict)]
    return [body] if isinstance(body, dict) else []


def rpc_method(record: Mapping[str, Any]) -> str | None:
    """The JSON-RPC method of a recorded POST, if it carried exactly one message with one."""
    messages = rpc_messages(record)
    return messages[0].get("method") if len(messages) == 1 else None


# --------------------------------------------------------------------------------------------
# Pytest fixtures
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _started(server: McpServerProcess) -> Iterator[McpServerProcess]:
    with server:
        yield server


@pytest.fixture(scope="session")
def mcp_json_process() -> Iterator[McpServerProcess]:
    with _started(McpServerProcess("json")) as server:
        yield server


@pytest.fixture(scope="session")
def mcp_sse_process() -> Iterator[McpServerProcess]:
    with _started(McpServerProcess("sse")) as server:
        yield server


@pytest.fixture(scope="session")
def mcp_stateless_process() -> Iterator[McpServerProcess]:
    with _started(McpServerProcess("stateless")) as server:
        yield server


@pytest.fixture(scope="session")
def mcp_legacy_process() -> Iterator[McpServerProcess]:
    with _started(McpServerProcess("legacy")) as server:
        yield server


def _fresh(server: McpServerProcess) -> McpServerProcess:
    if not server.running:  # a previous test stopped it
        server.start()
    server.reset_sync()
    return server


@pytest.fixture
def mcp_json(mcp_json_process: McpServerProcess) -> McpServerProcess:
    """Streamable HTTP, stateful, JSON answers."""
    return _fresh(mcp_json_process)


@pytest.fixture
def mcp_sse(mcp_sse_process: McpServerProcess) -> McpServerProcess:
    """Streamable HTTP, stateful, SSE answers, resumable (in-memory event store, retry 100 ms)."""
    return _fresh(mcp_sse_process)


@pytest.fixture
def mcp_stateless(mcp_stateless_process: McpServerProcess) -> McpServerProcess:
    """Streamable HTTP without sessions (2026-07-28 requests served by the SDK's modern path)."""
    return _fresh(mcp_stateless_process)


@pytest.fixture
def mcp_legacy(mcp_legacy_process: McpServerProcess) -> McpServerProcess:
    """2024-11-05 HTTP+SSE: ``url`` is ``…/sse``; POSTs go to ``/messages/?session_id=…``."""
    return _fresh(mcp_legacy_process)


McpServerFactory = Callable[..., McpServerProcess]


@pytest.fixture(scope="session")
def _mcp_server_pool() -> Iterator[dict[str, McpServerProcess]]:
    pool: dict[str, McpServerProcess] = {}
    try:
        yield pool
    finally:
        for server in pool.values():
            server.terminate()
        for server in pool.values():
            server.__exit__()


@pytest.fixture
def mcp_server_factory(_mcp_server_pool: dict[str, McpServerProcess]) -> McpServerFactory:
    """``mcp_server_factory(mode, *, fresh=False, **McpServerProcess options)`` -> started server.

    Servers are shared by option set for the whole session (and reset on each call);
    ``fresh=True`` always starts a new one (stopped at session end).
    """

    def factory(mode: Mode, *, fresh: bool = False, **opts: Any) -> McpServerProcess:
        key = json.dumps([mode, opts], sort_keys=True, default=str)
        if fresh:
            key = f"{key}#{len(_mcp_server_pool)}"
        server = _mcp_server_pool.get(key)
        if server is None:
            server = _mcp_server_pool[key] = McpServerProcess(mode, **opts)
        return _fresh(server)

    return factory


# --------------------------------------------------------------------------------------------
# SDK client helpers
# --------------------------------------------------------------------------------------------


@dataclass
class McpConnection:
    """An initialized SDK client session and what the server sent outside responses."""

    client: Client
    logs: list[types.LoggingMessageNotificationParams] = field(default_factory=list)
    notifications: list[IncomingMessage] = field(default_factory=list)

    @property
    def session(self) -> ClientSession:
        return self.client.session

    @property
    def protocol_version(self) -> str:
        return self.client.protocol_version


@asynccontextmanager
async def mcp_connect(
    url: str,
    *,
    transport: TransportName = "streamable",
    headers: Mapping[str, str] | None = None,
    protocol: ProtocolChoice = "handshake",
    read_timeout: float = 30.0,
    terminate_on_close: bool = True,
    http_client: httpx2.AsyncClient | None = None,
) -> AsyncIterator[McpConnection]:
    """Connect with the official SDK client and yield an initialized :class:`McpConnection`.

    ``transport="streamable"`` uses ``streamable_http_client`` (headers go on an
    ``httpx2.AsyncClient``, or pass your own ``http_client``); ``"sse"`` uses ``sse_client``
    (legacy HTTP+SSE; ``url`` is the ``/sse`` URL). ``protocol``: ``"handshake"`` runs
    ``initialize`` (what OGX / Llama Stack do: 2025-11-25, sessions); ``"auto"`` is the SDK
    ``Client`` default (probes ``server/discover`` at 2026-07-28 first, falls back);
    ``"2026-07-28"`` adopts the stateless revision without a probe. Logs are requested at
    ``debug`` level on 2026-07-28 (where log delivery is a per-request opt-in).

    A failed connect raises the underlying error, not the SDK's nested task-group groups: an
    HTTP 4xx on a Streamable HTTP POST is ``MCPError(-32603, "Server returned an error
    response")`` (or the JSON-RPC error in the body), a 4xx on the legacy GET is
    ``httpx2.HTTPStatusError``.
    """
    mode = {"handshake": "legacy", "auto": "auto", "2026-07-28": "2026-07-28"}[protocol]
    logs: list[types.LoggingMessageNotificationParams] = []
    notifications: list[IncomingMessage] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async def on_message(message: IncomingMessage) -> None:
        notifications.append(message)

    async with contextlib.AsyncExitStack() as stack:
        if transport == "sse":
            if protocol != "handshake":
                raise ValueError("the legacy SSE transport only speaks the initialize handshake")
            transport_cm: Any = sse_client(
                url,
                headers=dict(headers or {}),
                timeout=read_timeout,
                sse_read_timeout=max(read_timeout, 300.0),
            )
        else:
            client = http_client
            if client is None:
                client = await stack.enter_async_context(
                    httpx2.AsyncClient(
                        headers=dict(headers or {}),
                        timeout=httpx2.Timeout(read_timeout, read=max(read_timeout, 300.0)),
                    )
                )
            transport_cm = streamable_http_client(
                url, http_client=client, terminate_on_close=terminate_on_close
            )
        sdk_client = Client(
            transport_cm,
            mode=mode,
            read_timeout_seconds=read_timeout,
            logging_callback=on_log,
            message_handler=on_message,
            log_level="debug" if protocol != "handshake" else None,
            cache=None,
        )
        try:
            await stack.enter_async_context(sdk_client)
        except BaseExceptionGroup as group:
            leaf = single_leaf(group)
            if leaf is None:
                raise
            raise leaf from group
        yield McpConnection(sdk_client, logs, notifications)


def single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside (possibly nested) task-group exception groups, else None."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return leaves[0] if len(leaves) == 1 else None


@asynccontextmanager
async def mcp_session(url: str, **kwargs: Any) -> AsyncIterator[ClientSession]:
    """Like :func:`mcp_connect`, yielding the initialized ``ClientSession`` alone."""
    async with mcp_connect(url, **kwargs) as conn:
        yield conn.session


@dataclass(frozen=True)
class ProgressEvent:
    progress: float
    total: float | None
    message: str | None
    at: float  # time.monotonic() when it reached the client


@dataclass
class ToolCallOutcome:
    result: types.CallToolResult
    progress: list[ProgressEvent]

    @property
    def text(self) -> str:
        return tool_text(self.result)

    def json(self) -> Any:
        return json.loads(self.text)


async def call_tool_collect(
    session: ClientSession,
    name: str,
    arguments: Mapping[str, Any] | None = None,
    *,
    timeout: float = 30.0,
    on_progress: Callable[[ProgressEvent], Any] | None = None,
) -> ToolCallOutcome:
    """Call a tool with a progress callback; return its result and the progress it reported.

    ``on_progress`` (sync or async) sees each event as it arrives (e.g. to release a gate).
    """
    events: list[ProgressEvent] = []

    async def callback(progress: float, total: float | None, message: str | None) -> None:
        event = ProgressEvent(progress, total, message, time.monotonic())
        events.append(event)
        if on_progress is not None:
            outcome = on_progress(event)
            if asyncio.iscoroutine(outcome):
                await outcome

    result = await asyncio.wait_for(
        session.call_tool(name, dict(arguments or {}), progress_callback=callback), timeout
    )
    return ToolCallOutcome(result, events)


def tool_text(result: types.CallToolResult) -> str:
    """The concatenated text content of a tool result."""
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def tool_json(result: types.CallToolResult) -> Any:
    return json.loads(tool_text(result))


# --------------------------------------------------------------------------------------------
# A local JWT issuer: RSA key + JWKS over HTTP (for JWT-protected servers without the OAuth server)
# --------------------------------------------------------------------------------------------


class LocalJwtIssuer:
    """Mints RS256 JWTs and serves their JWKS at ``jwks_url`` from a background thread.

    ``issuer`` is ``http://127.0.0.1:P`` and the JWKS lives at ``/jwks``. ``rotate()`` adds a
    new signing key (the old one stays published); ``foreign_token()`` is signed by a key the
    JWKS never lists.
    """

    def __init__(self) -> None:
        self._keys: list[tuple[str, rsa.RSAPrivateKey]] = []
        self._foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rotate()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def rotate(self) -> str:
        kid = f"k{len(self._keys) + 1}"
        self._keys.append((kid, rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        return kid

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_url(self) -> str:
        return self.issuer + "/jwks"

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self._keys:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def token(
        self,
        *,
        sub: str = "alice",
        aud: str | list[str] = "tool-a",
        lifetime: float = 300,
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        """A signed access token; extra ``claims`` override or add (e.g. ``scope``, ``act``)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": aud,
            "iat": now,
            "exp": now + int(lifetime),
            "client_id": "test-client",
            "scope": "openid",
            **claims,
        }
        kid, key = next((k, v) for k, v in self._keys if k == kid) if kid else self._keys[-1]
        return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})

    def foreign_token(self, **kwargs: Any) -> str:
        """A token that looks right but is signed by a key the JWKS does not publish."""
        good = jwt.decode(self.token(**kwargs), options={"verify_signature": False})
        return jwt.encode(good, self._foreign, algorithm="RS256", headers={"kid": self._keys[-1][0]})

    def start(self) -> LocalJwtIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/jwks":
                    body = json.dumps(issuer.jwks()).encode()
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                else:
                    body = b'{"error": "not found"}'
                    self.send_response(404)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture(scope="session")
def local_jwt_issuer() -> Iterator[LocalJwtIssuer]:
    issuer = LocalJwtIssuer().start()
    try:
        yield issuer
    finally:
        issuer.stop()
