"""Starting mcpproxy for a test: in-process on a real socket, or as a real `mcpproxy serve` process.

Every proxy a test starts logs into the session's log directory, which the ``leak_guard``
fixture scans at the end for every credential value the tests registered.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from mcpproxy import logs
from mcpproxy.config import Config, parse_config
from mcpproxy.metrics import Registry
from mcpproxy.web.app import LIVE, build_app
from mcpproxy.web.protocol import ProxyRunner, runner_kwargs
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
#: One directory per test session (several sessions may run at once on a developer's machine).
LOG_DIR = Path(os.environ.get("MCPPROXY_TEST_LOG_DIR", ROOT / ".cache" / "test-logs")) / f"session-{os.getpid()}"


class SecretRegistry:
    """Credential values the tests used; none may appear in any proxy log line."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, *values: str) -> None:
        self.values.update(v for v in values if v and len(v) >= 8)


SECRETS = SecretRegistry()




def make_config(spec: Mapping[str, Any] | str, env: Mapping[str, str] | None = None) -> Config:
    text = spec if isinstance(spec, str) else yaml.safe_dump(dict(spec))
    return parse_config(text, {**os.environ, **(env or {})})


class ProxyTestServer(TestServer):
    """aiohttp's TestServer on the proxy's own runner (the one ``mcpproxy serve`` uses)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return ProxyRunner(self.app, **runner_kwargs(**kwargs))


@dataclass
class RunningProxy:
    base: str
    app: web.Application
    metrics: Registry

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def config(self) -> Config:
        return self.app[LIVE].state.config


ProxyFactory = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def proxy_factory() -> AsyncIterator[ProxyFactory]:
    """``await proxy_factory(spec, env=None)``: the real app on a real loopback socket."""
    servers: list[TestServer] = []

    async def start(spec: Mapping[str, Any] | str, env: Mapping[str, str] | None = None) -> RunningProxy:
        config = make_config(spec, env)
        metrics = Registry()
        app = build_app(config, metrics=metrics)
        server = ProxyTestServer(app, host="127.0.0.1", port=free_port())
        await server.start_server()
        servers.append(server)
        return RunningProxy(str(server.make_url("")).rstrip("/"), app, metrics)

    yield start
    for server in servers:
        await server.close()


@dataclass
class ProxyProcess:
    """``mcpproxy serve`` as a real process (for CLI, signal and fault tests)."""

    config_path: Path
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"raw": line})
        return out

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def start_proxy_process(
    config_text: str, tmp: Path, env: Mapping[str, str] | None = None, port: int | None = None
) -> ProxyProcess:
    port = port or free_port()
    data = yaml.safe_load(config_text)
    data.setdefault("server", {})
    data["server"].update({"host": "127.0.0.1", "port": port})
    config_path = tmp / "mcpproxy.yaml"
    config_path.write_text(yaml.safe_dump(data))
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"proxy-{port}-{time.time_ns()}.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcpproxy", "serve", "--config", str(config_path)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    running = ProxyProcess(config_path, port, proc, log_path)
    _wait_ready(running)
    return running


def _wait_ready(proxy: ProxyProcess, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.proc.poll() is not None:
            raise RuntimeError(f"mcpproxy exited: {proxy.log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=0.2) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b" 200 " in sock.recv(100):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    proxy.stop()
    raise RuntimeError("mcpproxy did not become ready")


@pytest.fixture
def proxy_process(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def start(
        config_text: str, env: Mapping[str, str] | None = None, port: int | None = None
    ) -> ProxyProcess:
        proc = start_proxy_process(config_text, tmp_path, env, port)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session", autouse=True)
def leak_guard() -> Iterator[SecretRegistry]:
    """Routes every in-process proxy log line to a file and, at session end, fails the run if
    any registered credential value appears in any proxy log (in-process or subprocess)."""
    if LOG_DIR.exists():
        shutil.rmtree(LOG_DIR)
    LOG_DIR.mkdir(parents=True)
    stream = (LOG_DIR / "in-process.log").open("a", encoding="utf-8")
    logs.configure("debug", stream)
    yield SECRETS
    stream.flush()
    stream.close()
    leaks = find_leaks(LOG_DIR, SECRETS.values)
    if leaks:
        pytest.fail("credential values found in proxy logs: " + "; ".join(leaks), pytrace=False)
    shutil.rmtree(LOG_DIR, ignore_errors=True)


def find_leaks(directory: Path, values: set[str]) -> list[str]:
    """``file: …prefix`` for every credential value found in any log file under ``directory``."""
    leaks = []
    for path in sorted(directory.glob("*.log")):
        text = path.read_text(errors="replace")
        leaks.extend(f"{path.name}: …{v[:4]}" for v in values if v in text)
    return leaks


@pytest.fixture
def secrets_registry() -> SecretRegistry:
    return SECRETS
