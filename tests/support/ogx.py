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

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest
import yaml

from tests.support.fake_llm import DEFAULT_MODEL, FakeLLM

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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
