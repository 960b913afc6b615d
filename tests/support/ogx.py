"""Real OGX 1.5 and Llama Stack 0.6.x servers for end-to-end tests, offline, on 127.0.0.1.

The servers run from their own virtualenvs, built by ``bash scripts/ogx-env.sh``
(``.ogx-venv/``, ``.llamastack-venv/``); a missing or incomplete environment fails the test
(never skips it). Each server gets a config written into a temporary directory and a free port.

* :class:`OgxServer` — ``ogx run --insecure`` with a Responses API stack whose inference is
  ``remote::openai`` pointed at :class:`tests.support.fake_llm.FakeLLM` (which calls the MCP tool
  a prompt names), ``inline::sqlite-vec`` vector_io (tiktoken's cl100k_base from the env's offline
  cache) and ``inline::localfs`` files. ``create_response()`` posts ``/v1/responses``; build the
  tool with :func:`mcp_tool` — its ``server_url`` is whatever the test passes (an MCP server, or
  later mcpproxy in front of one). ``connectors`` (``{"connector_id": ..., "url": ...}``) are
  config-time, so a test needing them starts its own server with ``ogx_server_factory``.
* :class:`LlamaStackServer` — ``llama stack run`` 0.6.1 with ``apis: [tool_runtime]`` and the
  ``remote::model-context-protocol`` provider. Toolgroups (``mcp_endpoint`` uri chosen by the
  test) are registered in the config (``toolgroups={id: uri}``) or at run time with
  :meth:`LlamaStackServer.register_toolgroup`; ``invoke()`` posts ``/v1/tool-runtime/invoke`` with
  the ``authorization`` parameter and/or provider data (``mcp_headers``).

Fixtures (import them into a conftest): ``fake_llm_server`` (session), ``fake_llm`` (reset per
test), ``ogx_server`` (session), ``ogx`` (per test: the session server, fake LLM reset),
``ogx_server_factory`` (private servers, e.g. with connectors), ``llamastack_server`` (session),
``llamastack_server_factory``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import jwt
import pytest
import yaml

from tests.support.fake_llm import DEFAULT_MODEL, FakeLLM
from tests.support.mcp_servers import McpServerProcess, Mode, rpc_method
from tests.support.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
OGX_VENV = REPO_ROOT / ".ogx-venv"
LLAMASTACK_VENV = REPO_ROOT / ".llamastack-venv"
TIKTOKEN_CACHE = OGX_VENV / "tiktoken-cache"
BUILD_HINT = "run `bash scripts/ogx-env.sh` (it builds .ogx-venv and .llamastack-venv)"
START_TIMEOUT = 90.0
OGX_MODEL = f"openai/{DEFAULT_MODEL}"  # remote::openai's provider_id "openai" + the fake's model

_ids = itertools.count(1)


class ServerError(RuntimeError):
    """A server failed to start or stopped unexpectedly (the message carries its log)."""


def require_env(venv: Path, executable: str) -> Path:
    """The venv's ``bin/<executable>``; fails the test (not skip) when the env isn't built."""
    exe = venv / "bin" / executable
    if not exe.exists() or not (venv / ".stamp").exists():
        pytest.fail(f"{venv.name} is missing or incomplete ({exe}); {BUILD_HINT}", pytrace=False)
    return exe




# -- plain HTTP (sync; the servers are other processes) -----------------------------------------


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)

    def sse_events(self) -> list[dict[str, Any]]:
        """The ``data:`` payloads of an event-stream body, JSON-decoded (``[DONE]`` dropped)."""
        events: list[dict[str, Any]] = []
        for block in self.text.replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(line[5:].lstrip() for line in block.split("\n") if line.startswith("data:"))
            if data and data != "[DONE]":
                events.append(json.loads(data))
        return events


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> HttpResult:
    """One request; any status is returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    request = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return HttpResult(resp.status, dict(resp.headers.items()), resp.read().decode())
    except urllib.error.HTTPError as err:
        return HttpResult(err.code, dict(err.headers.items()), err.read().decode())


# -- server processes -------------------------------------------------------------------------


class ServerProcess:
    """A server subprocess in its own session, logging into ``workdir/server.log``."""

    name = "server"

    def __init__(self, workdir: Path, port: int = 0) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.log_path = workdir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
        }
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        env["OTEL_SDK_DISABLED"] = "true"
        env["PYTHONUNBUFFERED"] = "1"
        env["HOME"] = str(self.workdir)  # nothing of theirs lands in the real home
        env.pop("VIRTUAL_ENV", None)
        return env

    def log_text(self, limit: int = 20_000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise ServerError(f"{self.name} exited during start-up; log:\n{self.log_text()}")
            with contextlib.suppress(OSError):
                if http("GET", self.url + "/v1/health", timeout=2).status == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"{self.name} not healthy within {timeout} s; log:\n{self.log_text()}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group this object started
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mcp_tool(
    server_url: str | None = None,
    *,
    server_label: str = "mcp",
    authorization: str | None = None,
    headers: Mapping[str, str] | None = None,
    require_approval: str = "never",
    allowed_tools: Sequence[str] | None = None,
    connector_id: str | None = None,
) -> dict[str, Any]:
    """An OpenAI Responses ``{"type": "mcp"}`` tool as OGX accepts it."""
    tool: dict[str, Any] = {
        "type": "mcp",
        "server_label": server_label,
        "require_approval": require_approval,
    }
    if server_url is not None:
        tool["server_url"] = server_url
    if connector_id is not None:
        tool["connector_id"] = connector_id
    if authorization is not None:
        tool["authorization"] = authorization
    if headers:
        tool["headers"] = dict(headers)
    if allowed_tools is not None:
        tool["allowed_tools"] = list(allowed_tools)
    return tool


@dataclass
class OgxResponse:
    """The outcome of ``POST /v1/responses`` (streamed or not)."""

    http: HttpResult
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> int:
        return self.http.status

    @property
    def body(self) -> dict[str, Any]:
        """The response object (for a stream: the one in the final ``response.*`` event)."""
        if self.events:
            for event in reversed(self.events):
                response = event.get("response")
                if isinstance(response, dict):
                    return response
            return {}
        data = self.http.json()
        return data if isinstance(data, dict) else {}

    @property
    def output(self) -> list[dict[str, Any]]:
        return list(self.body.get("output") or [])

    def items(self, kind: str) -> list[dict[str, Any]]:
        return [item for item in self.output if item.get("type") == kind]

    @property
    def mcp_calls(self) -> list[dict[str, Any]]:
        return self.items("mcp_call")

    @property
    def output_text(self) -> str:
        return "".join(
            part.get("text", "")
            for item in self.items("message")
            for part in item.get("content") or []
            if part.get("type") == "output_text"
        )

    def __repr__(self) -> str:
        return f"<OgxResponse {self.status} {self.http.text[:400]!r}>"


class OgxServer(ServerProcess):
    """``ogx run --insecure config.yaml`` (OGX 1.5) with a Responses stack on the fake LLM."""

    name = "ogx"

    def __init__(
        self,
        workdir: Path,
        inference_url: str,
        *,
        port: int = 0,
        connectors: Sequence[Mapping[str, str]] = (),
        config_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(workdir, port)
        self.inference_url = inference_url
        self.connectors = [dict(c) for c in connectors]
        self.config_overrides = dict(config_overrides or {})
        self.exe = require_env(OGX_VENV, "ogx")
        if not TIKTOKEN_CACHE.is_dir():
            pytest.fail(f"{TIKTOKEN_CACHE} missing; {BUILD_HINT}", pytrace=False)

    def config(self) -> dict[str, Any]:
        data = str(self.workdir / "data")
        config: dict[str, Any] = {
            "version": 2,
            "distro_name": "mcpproxy-e2e",
            "apis": ["files", "inference", "responses", "tool_runtime", "vector_io"],
            "providers": {
                "inference": [
                    {
                        "provider_id": "openai",
                        "provider_type": "remote::openai",
                        "config": {"api_key": "fake-key", "base_url": self.inference_url},
                    }
                ],
                "vector_io": [
                    {
                        "provider_id": "sqlite-vec",
                        "provider_type": "inline::sqlite-vec",
                        "config": {
                            "db_path": f"{data}/sqlite_vec.db",
                            "persistence": {
                                "namespace": "vector_io::sqlite_vec",
                                "backend": "kv_default",
                            },
                        },
                    }
                ],
                "files": [
                    {
                        "provider_id": "localfs",
                        "provider_type": "inline::localfs",
                        "config": {
                            "storage_dir": f"{data}/files",
                            "metadata_store": {
                                "table_name": "files_metadata",
                                "backend": "sql_default",
                            },
                        },
                    }
                ],
                "responses": [
                    {
                        "provider_id": "builtin",
                        "provider_type": "inline::builtin",
                        "config": {
                            "persistence": {
                                "responses": {"table_name": "responses", "backend": "sql_default"}
                            }
                        },
                    }
                ],
                "tool_runtime": [
                    {
                        "provider_id": "model-context-protocol",
                        "provider_type": "remote::model-context-protocol",
                    }
                ],
            },
            "storage": {
                "backends": {
                    "kv_default": {"type": "kv_sqlite", "db_path": f"{data}/kvstore.db"},
                    "sql_default": {"type": "sql_sqlite", "db_path": f"{data}/sql_store.db"},
                },
                "stores": {
                    "metadata": {"namespace": "registry", "backend": "kv_default"},
                    "inference": {"table_name": "inference_store", "backend": "sql_default"},
                    "conversations": {
                        "table_name": "openai_conversations",
                        "backend": "sql_default",
                    },
                    "prompts": {"table_name": "prompts", "backend": "sql_default"},
                    "connectors": {"table_name": "connectors", "backend": "sql_default"},
                },
            },
            "registered_resources": {"models": []},
            "connectors": self.connectors,
            "server": {"host": "127.0.0.1", "port": self.port},
        }
        config.update(self.config_overrides)
        return config

    def command(self) -> list[str]:
        path = self.workdir / "config.yaml"
        path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        return [str(self.exe), "run", "--insecure", "--port", str(self.port), str(path)]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["TIKTOKEN_CACHE_DIR"] = str(TIKTOKEN_CACHE)
        env["OGX_DISABLE_VERSION_CHECK"] = "1"
        env["OGX_CONFIG_DIR"] = str(self.workdir / "ogx-home")
        return env

    def create_response(
        self,
        prompt: str | list[dict[str, Any]],
        tools: Sequence[Mapping[str, Any]] = (),
        *,
        stream: bool = False,
        model: str = OGX_MODEL,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        **extra: Any,
    ) -> OgxResponse:
        """``POST /v1/responses``; ``headers`` go to OGX (e.g. ``X-OGX-Provider-Data``)."""
        body: dict[str, Any] = {
            "model": model,
            "input": prompt,
            "tools": [dict(t) for t in tools],
            "stream": stream,
            **extra,
        }
        result = http("POST", self.url + "/v1/responses", body, headers, timeout)
        events = result.sse_events() if stream and result.status == 200 else []
        return OgxResponse(result, events)


class LlamaStackServer(ServerProcess):
    """``llama stack run`` (0.6.1) with ``apis: [tool_runtime]`` and MCP toolgroups."""

    name = "llama-stack"
    PROVIDER_ID = "model-context-protocol"

    def __init__(self, workdir: Path, *, toolgroups: Mapping[str, str] | None = None, port: int = 0) -> None:
        super().__init__(workdir, port)
        self.toolgroups = dict(toolgroups or {})
        self.exe = require_env(LLAMASTACK_VENV, "llama")

    def config(self) -> dict[str, Any]:
        data = str(self.workdir / "data")
        return {
            "version": 2,
            "image_name": "mcpproxy-e2e",
            "apis": ["tool_runtime"],
            "providers": {
                "tool_runtime": [
                    {"provider_id": self.PROVIDER_ID, "provider_type": "remote::model-context-protocol"}
                ]
            },
            "storage": {
                "backends": {
                    "kv_default": {"type": "kv_sqlite", "db_path": f"{data}/kvstore.db"},
                    "sql_default": {"type": "sql_sqlite", "db_path": f"{data}/sql_store.db"},
                },
                "stores": {
                    "metadata": {"namespace": "registry", "backend": "kv_default"},
                    "inference": {"table_name": "inference_store", "backend": "sql_default"},
                    "conversations": {
                        "table_name": "openai_conversations",
                        "backend": "sql_default",
                    },
                    "prompts": {"namespace": "prompts", "backend": "kv_default"},
                    "connectors": {"namespace": "connectors", "backend": "kv_default"},
                },
            },
            "registered_resources": {
                "tool_groups": [
                    {
                        "toolgroup_id": tid,
                        "provider_id": self.PROVIDER_ID,
                        "mcp_endpoint": {"uri": uri},
                    }
                    for tid, uri in self.toolgroups.items()
                ]
            },
            "server": {"host": "127.0.0.1", "port": self.port},
        }

    def command(self) -> list[str]:
        path = self.workdir / "config.yaml"
        path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        # The CLI's --port defaults to 8321 and wins over server.port in the config.
        return [str(self.exe), "stack", "run", "--port", str(self.port), str(path)]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["LLAMA_STACK_CONFIG_DIR"] = str(self.workdir / "llama-home")
        env["TIKTOKEN_CACHE_DIR"] = str(TIKTOKEN_CACHE)
        return env

    @staticmethod
    def provider_data_headers(
        mcp_headers: Mapping[str, Mapping[str, str]],
        header: str = "X-LlamaStack-Provider-Data",
        **other: Any,
    ) -> dict[str, str]:
        """``{header: '{"mcp_headers": {uri: {name: value}}, ...}'}``."""
        payload = {"mcp_headers": {k: dict(v) for k, v in mcp_headers.items()}, **other}
        return {header: json.dumps(payload)}

    def register_toolgroup(self, uri: str, toolgroup_id: str | None = None) -> str:
        """Register an MCP toolgroup at run time; returns its id (unique unless given)."""
        tid = toolgroup_id or f"mcp::t{next(_ids)}-{os.getpid()}"
        result = http(
            "POST",
            self.url + "/v1/toolgroups",
            {"toolgroup_id": tid, "provider_id": self.PROVIDER_ID, "mcp_endpoint": {"uri": uri}},
        )
        if result.status != 200:
            raise ServerError(f"register toolgroup {tid} -> {result.status} {result.text}")
        return tid

    def list_tools(
        self,
        toolgroup_id: str,
        *,
        authorization: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResult:
        """``GET /v1/tools?toolgroup_id=`` — this also indexes the group's tools (once per group),
        which ``invoke()`` needs: a tool name routes to the group that last indexed it."""
        query = {"toolgroup_id": toolgroup_id}
        if authorization is not None:
            query["authorization"] = authorization
        url = self.url + "/v1/tools?" + urllib.parse.urlencode(query)
        return http("GET", url, headers=headers)

    def list_runtime_tools(
        self,
        toolgroup_id: str,
        *,
        authorization: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResult:
        """``GET /v1/tool-runtime/list-tools`` — in 0.6.1 served from the same per-group cache."""
        query = {"tool_group_id": toolgroup_id}
        if authorization is not None:
            query["authorization"] = authorization
        url = self.url + "/v1/tool-runtime/list-tools?" + urllib.parse.urlencode(query)
        return http("GET", url, headers=headers)

    def invoke(
        self,
        tool_name: str,
        kwargs: Mapping[str, Any] | None = None,
        *,
        authorization: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> HttpResult:
        """``POST /v1/tool-runtime/invoke``; answers ``{content, error_message, ...}``."""
        body: dict[str, Any] = {"tool_name": tool_name, "kwargs": dict(kwargs or {})}
        if authorization is not None:
            body["authorization"] = authorization
        return http("POST", self.url + "/v1/tool-runtime/invoke", body, headers, timeout)


def tool_result_text(result: HttpResult) -> str:
    """The text of an ``invoke`` answer's content items."""
    data = result.json()
    return "".join(c.get("text", "") for c in data.get("content") or [] if isinstance(c, dict))


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fake_llm_server() -> Iterator[FakeLLM]:
    fake = FakeLLM().start_in_thread()
    try:
        yield fake
    finally:
        fake.stop_thread()


@pytest.fixture
def fake_llm(fake_llm_server: FakeLLM) -> FakeLLM:
    fake_llm_server.reset()
    return fake_llm_server


@pytest.fixture(scope="session")
def ogx_server(fake_llm_server: FakeLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OgxServer]:
    server = OgxServer(tmp_path_factory.mktemp("ogx"), fake_llm_server.base_url)
    with server:
        yield server


@pytest.fixture
def ogx(ogx_server: OgxServer, fake_llm: FakeLLM) -> OgxServer:
    if not ogx_server.running:
        raise ServerError(f"ogx stopped; log:\n{ogx_server.log_text()}")
    return ogx_server


OgxServerFactory = Callable[..., OgxServer]


@pytest.fixture
def ogx_server_factory(
    fake_llm: FakeLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OgxServerFactory]:
    """``factory(connectors=[{"connector_id": ..., "url": ...}], config_overrides=...)``:
    a private OGX server for this test (start-up ≈ 3 s), stopped afterwards."""
    started: list[OgxServer] = []

    def factory(**kwargs: Any) -> OgxServer:
        server = OgxServer(tmp_path_factory.mktemp("ogx-private"), fake_llm.base_url, **kwargs)
        started.append(server)
        server.start()
        return server

    try:
        yield factory
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def llamastack_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaStackServer]:
    """A session server with no toolgroups; tests register theirs (``register_toolgroup``)."""
    with LlamaStackServer(tmp_path_factory.mktemp("llamastack")) as server:
        yield server


LlamaStackFactory = Callable[..., LlamaStackServer]


@pytest.fixture
def llamastack_server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LlamaStackFactory]:
    """``factory(toolgroups={"mcp::x": uri})``: a private server with config-time toolgroups."""
    started: list[LlamaStackServer] = []

    def factory(**kwargs: Any) -> LlamaStackServer:
        server = LlamaStackServer(tmp_path_factory.mktemp("llamastack-private"), **kwargs)
        started.append(server)
        server.start()
        return server

    try:
        yield factory
    finally:
        for server in started:
            server.stop()


# -- mcpproxy between OGX / Llama Stack and JWT-validating MCP servers (seed 000) ---------------

SEED_AUDIENCE = "my-external-tool"  # the only audience the seed-000 tool accepts
PROXY_CLIENT_ID = "mcp-proxy"  # the proxy's client at the test OAuth server
PROXY_CLIENT_SECRET = "proxy-secret"  # (tests/support/oauth.py CLIENTS); given to mcpproxy by env


def exchange_route(
    name: str,
    path: str,
    upstream: str,
    issuer: str,
    *,
    subject: Sequence[Any] = ("authorization",),
    audience: str = SEED_AUDIENCE,
    **auth_extra: Any,
) -> dict[str, Any]:
    """A route whose caller token is exchanged (RFC 8693) for one aimed at ``audience``; the
    client secret comes from ``${env.PROXY_CLIENT_SECRET}``. ``auth_extra`` adds ``auth`` keys."""
    return {
        "name": name,
        "path": path,
        "upstream": upstream,
        "auth": {
            "subject": list(subject),
            "upstream": {
                "type": "token_exchange",
                "issuer": issuer,
                "client": {
                    "id": PROXY_CLIENT_ID,
                    "secret": "${env.PROXY_CLIENT_SECRET}",
                    "auth_method": "client_secret_basic",
                },
                "audience": [audience],
            },
            **auth_extra,
        },
    }


def proxy_config(routes: Sequence[Mapping[str, Any]]) -> str:
    """A route table as YAML text (``start_proxy_process`` adds host and port)."""
    return yaml.safe_dump({"routes": [dict(r) for r in routes]}, sort_keys=False)


def proxy_env() -> dict[str, str]:
    return {"PROXY_CLIENT_SECRET": PROXY_CLIENT_SECRET}


def jwt_tool_server(
    mode: Mode, issuer: str, jwks_url: str, audience: str = SEED_AUDIENCE
) -> McpServerProcess:
    """An unstarted MCP server (``tests/servers/mcp_app.py``) that accepts only bearer JWTs of
    ``issuer`` aimed at ``audience`` — seed 000's "Golang tool"."""
    return McpServerProcess(
        mode,
        require_bearer_jwt=True,
        issuer=issuer,
        jwks_url=jwks_url,
        audience=audience,
    )


def bearer_claims(value: str) -> dict[str, Any]:
    """The (unverified) claims of an ``Authorization: Bearer <jwt>`` value; {} if not a JWT."""
    token = value.split(" ", 1)[1] if value.lower().startswith("bearer ") else value
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims


def mcp_sequence(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str | None]]:
    """``(HTTP method, JSON-RPC method or None)`` of each request an MCP server recorded."""
    return [(r["method"], rpc_method(r)) for r in records]


def assert_mcp_session(
    records: Sequence[Mapping[str, Any]], expected: Sequence[tuple[str, str | None]]
) -> None:
    """The recorded requests are the ``expected`` session: the same requests, the POSTs in order,
    DELETE last. The client opens its GET stream concurrently with the next POST, so where the
    GET lands among the POSTs is not fixed (a proxy in between makes either order common)."""
    seq = mcp_sequence(records)
    assert sorted(seq, key=str) == sorted(expected, key=str), seq
    assert [s for s in seq if s[0] == "POST"] == [s for s in expected if s[0] == "POST"], seq
    if ("DELETE", None) in expected:
        assert seq[-1] == ("DELETE", None), seq


def audience_of(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    return [aud] if isinstance(aud, str) else list(aud or [])


# -- a tap that records what a server answered, chunk by chunk, with arrival times --------------


@dataclass
class TapConnection:
    """One client connection through a :class:`ResponseTap`: the request bytes and the response
    bytes as they arrived (``(monotonic time, bytes)`` per read)."""

    number: int
    request: bytearray = field(default_factory=bytearray)
    chunks: list[tuple[float, bytes]] = field(default_factory=list)

    @property
    def response(self) -> bytes:
        return b"".join(data for _, data in self.chunks)

    def arrival(self, needle: bytes, start: int = 0) -> tuple[float, int]:
        """When the response byte that completes the first ``needle`` at or after offset ``start``
        arrived, and the offset just past it; raises if absent."""
        raw = self.response
        at = raw.find(needle, start)
        if at < 0:
            raise AssertionError(f"{needle!r} not in the response of connection {self.number}")
        end = at + len(needle)
        seen = 0
        for when, data in self.chunks:
            seen += len(data)
            if seen >= end:
                return when, end
        raise AssertionError("unreachable")  # pragma: no cover

    def responses(self) -> list[tuple[int, dict[str, str], bytes]]:
        """The HTTP/1.1 responses on this connection: ``(status, lower-case headers, body)``,
        bodies de-chunked (a response cut off mid-body is returned as far as it got)."""
        raw, pos, out = self.response, 0, []
        while pos < len(raw):
            head_end = raw.find(b"\r\n\r\n", pos)
            if head_end < 0:
                break
            lines = raw[pos:head_end].decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            pos = head_end + 4
            body = bytearray()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size_end = raw.find(b"\r\n", pos)
                    if size_end < 0:
                        pos = len(raw)
                        break
                    size = int(raw[pos:size_end].split(b";")[0], 16)
                    pos = size_end + 2
                    if size == 0:
                        pos += 2
                        break
                    body += raw[pos : pos + size]
                    pos += size + 2
            else:
                length = int(headers.get("content-length", "0"))
                body += raw[pos : pos + length]
                pos += length
            out.append((status, headers, bytes(body)))
        return out


def sse_messages(body: bytes) -> list[Any]:
    """The JSON ``data:`` payloads of an event-stream body (empty priming events dropped)."""
    out: list[Any] = []
    for block in body.decode().replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in block.split("\n") if line.startswith("data:"))
        if data:
            out.append(json.loads(data))
    return out


class ResponseTap:
    """A loopback TCP relay in a thread that records both directions of every connection, the
    responses with the time each read arrived — to see what a proxy relayed, and when."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._conns: list[TapConnection] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connections(self) -> list[TapConnection]:
        with self._lock:
            return list(self._conns)

    def connection_with(self, request_marker: bytes) -> TapConnection:
        """The one connection whose request bytes contain ``request_marker``."""
        found = [c for c in self.connections() if request_marker in c.request]
        if len(found) != 1:
            raise AssertionError(f"{len(found)} connections sent {request_marker!r}")
        return found[0]

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sink: Callable[[bytes], None]
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(65536):
                sink(chunk)
                writer.write(chunk)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.write_eof()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            conn = TapConnection(len(self._conns) + 1)
            self._conns.append(conn)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return

        def got_request(data: bytes) -> None:
            with self._lock:
                conn.request += data

        def got_response(data: bytes) -> None:
            with self._lock:
                conn.chunks.append((time.monotonic(), data))

        down = asyncio.ensure_future(self._pipe(up_reader, writer, got_response))
        try:
            await self._pipe(reader, up_writer, got_request)
        finally:
            up_writer.close()  # the client is gone: so is the upstream connection
            with contextlib.suppress(Exception):
                await asyncio.wait_for(down, 2)
            writer.close()

    def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start_in_thread(self, timeout: float = 10.0) -> Self:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(asyncio.start_server(self._track, "127.0.0.1", 0))
            self.port = int(self._server.sockets[0].getsockname()[1])
            ready.set()
            loop.run_forever()
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="response-tap", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("response tap did not start")
        return self

    def stop_thread(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            self._thread = None
            self._loop = None
