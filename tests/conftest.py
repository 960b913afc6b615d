"""The suite's plugins, and a check of which build of mcpproxy it is about to test."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcpproxy import native

pytest_plugins = [
    "tests.support.proxy",
    "tests.support.mcp_servers",
    "tests.support.oauth",
    "tests.support.redis_server",
]

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test a build other than the one the sources describe.

    Extension modules are imported before ``.py`` files: compiled modules left from older sources
    would hide every edit since. And a run meant to test pure Python must not load any of them.
    """
    compiled = native.compiled_modules()
    if native.pure_python_requested():
        if compiled:
            pytest.exit(f"MCPPROXY_PURE_PYTHON is set, but these are compiled: {compiled}", returncode=4)
        return
    if not compiled:
        return
    stamp = ROOT / ".venv" / ".package-stamp"
    built_from = stamp.read_text().split()[0] if stamp.exists() else "(unknown)"
    if built_from != native.source_digest(ROOT) or len(compiled) != len(native.COMPILED) + len(native.C_MODULES):
        pytest.exit(
            "mcpproxy's compiled modules were built from other sources; run scripts/bootstrap.sh "
            "(or MCPPROXY_PURE_PYTHON=1 scripts/bootstrap.sh to drop them)",
            returncode=4,
        )


def pytest_report_header() -> str:
    return f"mcpproxy: {native.describe()}"
