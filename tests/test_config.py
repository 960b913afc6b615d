"""Load-time validation: every refusal names the YAML path it is about."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mcpproxy.config import ConfigError, parse_config
from mcpproxy.config.model import ForwardUpstreamAuth, StaticUpstreamAuth

ROOT = Path(__file__).resolve().parents[1]
GOOD = """
routes:
  - name: a
    path: /a/mcp
    upstream: http://127.0.0.1:8000/mcp
"""


def refused(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env or {})
    return info.value


def test_issue_example_loads_as_written() -> None:
    config = parse_config((ROOT / "config" / "example.yaml").read_text(), {})
    assert [r.name for r in config.routes] == ["orchestrator", "legacy"]
    orch = config.routes[0]
    assert orch.forward_headers == ("x-request-id",)
    assert (orch.timeouts.connect, orch.timeouts.idle) == (5, 300)
    assert config.server.max_body_bytes == 10485760


def test_env_substitution_with_defaults() -> None:
    text = """
server: {port: "${env.PORT:=9999}"}
routes:
  - name: a
    path: /a/mcp
    upstream: http://${env.UP_HOST}:8000/mcp
"""
    config = parse_config(text, {"UP_HOST": "127.0.0.2"})
    assert config.server.port == 9999
    assert config.routes[0].upstream == "http://127.0.0.2:8000/mcp"
    error = refused(text)
    assert error.path == "routes[0].upstream" and "UP_HOST" in error.message


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        (GOOD + "  - name: a\n    path: /b/mcp\n    upstream: http://x/mcp\n", "routes[1].name", "duplicate"),
        (
            GOOD + "  - name: b\n    path: /a/mcp/sub\n    upstream: http://x/mcp\n",
            "routes[1].path",
            "overlaps",
        ),
        (GOOD + "  - name: b\n    path: /a/mcp\n    upstream: http://x/mcp\n", "routes[1].path", "overlaps"),
        (GOOD + "  - name: b\n    path: /b\n    upstream: ftp://x/mcp\n", "routes[1].upstream", "http"),
        (GOOD + "  - name: b\n    path: /b\n    upstream: http:///mcp\n", "routes[1].upstream", "host"),
        (
            GOOD + "  - name: b\n    path: /b\n    upstream: http://u:p@x/mcp\n",
            "routes[1].upstream",
            "credentials",
        ),
        (
            GOOD + "  - name: b\n    path: /b\n    upstream: http://x/mcp\n    upstrem: 1\n",
            "routes[1].upstrem",
            "unknown",
        ),
        (GOOD + "  - name: b\n    path: b\n    upstream: http://x/mcp\n", "routes[1].path", "start with"),
        (GOOD + "  - name: b\n    path: /b/../c\n    upstream: http://x/mcp\n", "routes[1].path", "segment"),
        (
            GOOD + "  - name: b\n    path: /metrics\n    upstream: http://x/mcp\n",
            "routes[1].path",
            "collides",
        ),
        (
            GOOD
            + "  - name: b\n    path: /b\n    upstream: http://x/mcp\n    forward_headers: [authorization]\n",
            "routes[1].forward_headers",
            "credentials",
        ),
        (
            GOOD + "  - name: b\n    path: /b\n    upstream: http://x/mcp\n    timeouts: {connect: -1}\n",
            "routes[1].timeouts.connect",
            "between",
        ),
        ("server: {port: 70000}\n" + GOOD, "server.port", "between"),
        ("server: {prot: 1}\n" + GOOD, "server.prot", "unknown"),
        ("server: {stream_threads: -1}\n" + GOOD, "server.stream_threads", "between"),
        ("server: {stream_threads: 5000}\n" + GOOD, "server.stream_threads", "between"),
        ("server: {stream_threads: 1.5}\n" + GOOD, "server.stream_threads", "whole number"),
        ("routes: []\n", "routes", "at least one"),
        ("server: {}\n", "routes", "required"),
        ("routes: [1]\n", "routes[0]", "mapping"),
    ],
)
def test_refusals_name_the_yaml_path(text: str, path: str, words: str) -> None:
    error = refused(text)
    assert error.path == path, str(error)
    assert words in error.message
    assert str(error).startswith(path + ": ")


def test_yaml_syntax_error_names_line() -> None:
    error = refused("routes:\n  - name: [unclosed\n")
    assert "line" in error.message


AUTH = """
routes:
  - name: inventory
    path: /inventory/mcp
    upstream: http://127.0.0.1:8000/mcp
    auth:
      subject:
        - authorization
        - header: X-User-Token
        - provider_data
        - mcp_meta: api_key
      upstream:
        type: forward
        header: Authorization
        format: "Bearer {token}"
  - name: weather
    path: /weather/mcp
    upstream: http://127.0.0.1:8001/mcp
    auth:
      upstream:
        type: static
        header: X-Api-Key
        secret: ${env.WEATHER_API_KEY}
"""


def test_auth_example_loads_and_warns_about_forward() -> None:
    config = parse_config(AUTH, {"WEATHER_API_KEY": "wk-1234567890"})
    inventory, weather = config.routes
    assert isinstance(inventory.auth.upstream, ForwardUpstreamAuth)
    assert [s.kind for s in inventory.auth.subject] == [
        "authorization",
        "header",
        "provider_data",
        "mcp_meta",
    ]
    assert isinstance(weather.auth.upstream, StaticUpstreamAuth)
    assert weather.auth.upstream.secret.reveal() == "wk-1234567890"
    assert "wk-1234567890" not in repr(config)
    assert any("routes[0].auth.upstream.type" in w and "forward" in w for w in config.warnings)


@pytest.mark.parametrize(
    ("snippet", "path"),
    [
        ("upstream: {type: forward, format: 'Token {tok}'}", "routes[0].auth.upstream.format"),
        ("upstream: {type: forward, format: 'Bearer'}", "routes[0].auth.upstream.format"),
        ("upstream: {type: static, header: X-Api-Key}", "routes[0].auth.upstream.secret"),
        ("upstream: {type: magic}", "routes[0].auth.upstream.type"),
        ("upstream: {type: forward, header: Connection}", "routes[0].auth.upstream.header"),
        ("subject: [cookies]\n      upstream: {type: forward}", "routes[0].auth.subject[0]"),
        (
            "subject: [{header: 'Bad Header'}]\n      upstream: {type: forward}",
            "routes[0].auth.subject[0].header",
        ),
        ("subject: []\n      upstream: {type: forward}", "routes[0].auth.subject"),
        (
            "upstream: {type: static, header: X-Api-Key, secret: a, secret_file: /x}",
            "routes[0].auth.upstream.secret",
        ),
        (
            "upstream: {type: static, header: X-Api-Key, secret_file: /nonexistent/key}",
            "routes[0].auth.upstream.secret_file",
        ),
    ],
)
def test_auth_refusals(snippet: str, path: str) -> None:
    text = f"routes:\n  - name: r\n    path: /r\n    upstream: http://x/mcp\n    auth:\n      {snippet}\n"
    assert refused(text).path == path


def test_secret_file(tmp_path: Path) -> None:
    key = tmp_path / "weather"
    key.write_text("file-key-123456\n")
    text = f"routes:\n  - name: r\n    path: /r\n    upstream: http://x/mcp\n    auth:\n      upstream: {{type: static, header: X-Api-Key, secret_file: {key}}}\n"
    upstream = parse_config(text, {}).routes[0].auth.upstream
    assert isinstance(upstream, StaticUpstreamAuth) and upstream.secret.reveal() == "file-key-123456"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "mcpproxy", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_cli_check_prints_routes_and_version(tmp_path: Path) -> None:
    ok = run_cli("check", "--config", str(ROOT / "config" / "example.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "/orchestrator/mcp" in ok.stdout and "http://127.0.0.1:9000" in ok.stdout
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("mcpproxy ")


def test_cli_check_refuses_with_yaml_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "  - name: b\n    path: /b\n    upstream: nope\n")
    result = run_cli("check", "-c", str(bad))
    assert result.returncode == 1
    assert "routes[1].upstream:" in result.stderr


def test_cli_check_warns_about_forward(tmp_path: Path) -> None:
    cfg = tmp_path / "auth.yaml"
    cfg.write_text(AUTH)
    result = run_cli("check", "-c", str(cfg), env={"WEATHER_API_KEY": "wk-1234567890"})
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stdout and "forward" in result.stdout
    assert "wk-1234567890" not in result.stdout + result.stderr
