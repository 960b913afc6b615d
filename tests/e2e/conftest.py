"""Fixtures of the end-to-end tests (real OGX / Llama Stack servers; ``pytest -m ogx``).

The MCP server fixtures (``mcp_json``, ``mcp_server_factory``, ...) come from
``tests.support.mcp_servers`` (loaded by tests/conftest.py); the OGX / Llama Stack ones from
``tests.support.ogx``, imported here because only a top-level conftest may use pytest_plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.e2e.wiretap import WireTap
from tests.support.ogx import (  # noqa: F401  (fixtures)
    fake_llm,
    fake_llm_server,
    llamastack_server,
    llamastack_server_factory,
    ogx,
    ogx_server,
    ogx_server_factory,
)


@pytest.fixture
def wiretap() -> Iterator[Callable[[str, int], WireTap]]:
    """``wiretap(host, port)`` -> a started :class:`WireTap` in front of host:port."""
    taps: list[WireTap] = []

    def start(host: str, port: int) -> WireTap:
        tap = WireTap(host, port).start_in_thread()
        taps.append(tap)
        return tap

    yield start
    for tap in taps:
        tap.stop_thread()
