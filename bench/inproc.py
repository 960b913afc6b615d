"""The relay's own Python cost per request, measured in-process (no sockets, no event loop).

The wrk figures of bench/run.py include the kernel's socket work and the event loop, and on a
shared VM they move by ±30 % from run to run, which hides differences of a few µs between
configurations. Here one process serves requests of each configuration through the real relay
(``CallerConnection``) and the real upstream protocol (``UpstreamConnection``) whose transports
are in-memory: the caller's bytes go in with ``data_received``, the upstream "answers" the moment
the request is written. What is timed (``time.process_time``) is exactly the Python path of a
relayed request — head parsing, judging, the token cache, the upstream request, the answer's
head, the access line and the metrics — interleaved over the configurations and repeated.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from mcpproxy import logs
from mcpproxy.config.loader import load_config
from mcpproxy.web.app import LIVE, build_app
from mcpproxy.web.protocol import ProxyRunner, runner_kwargs
from mcpproxy.web.relay import CallerConnection, Relay
from mcpproxy.web.upstream import UpstreamConnection

_BODY = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"' + b"x" * 200 + b'"}]}}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
    b"date: Sun, 22 Nov 2026 10:00:00 GMT\r\nserver: uvicorn\r\n\r\n" % len(_BODY)
) + _BODY


class _Transport:
    """An in-memory transport: counts what is written, remembers being closed."""

    def __init__(self) -> None:
        self.writes = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Upstream(_Transport):
    """The upstream side: every request written is answered at once with ``ANSWER``."""

    def __init__(self, conn: UpstreamConnection) -> None:
        super().__init__()
        self.conn = conn

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.conn.data_received(ANSWER)


class _Served:
    """One configuration's application, and a caller connection on its relay."""

    def __init__(self, runner: ProxyRunner, caller: CallerConnection, transport: _Transport) -> None:
        self.runner = runner
        self.caller = caller
        self.transport = transport


async def _serve(kind: str, config: dict[str, Any], tmp: Path) -> _Served:
    path = tmp / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    app = build_app(load_config(str(path)))
    runner = ProxyRunner(app, **runner_kwargs())
    await runner.setup()
    live = app[LIVE]
    runtime = live.state.handler.runtimes["canned"]
    upstream = UpstreamConnection(runtime.pool)
    upstream.connection_made(_Upstream(upstream))  # type: ignore[arg-type]
    runtime.pool.release(upstream)
    caller = CallerConnection(Relay(live, lambda: asyncio.Protocol()))
    transport = _Transport()
    caller.connection_made(transport)  # type: ignore[arg-type]
    return _Served(runner, caller, transport)


async def _request(served: _Served, raw: bytes) -> None:
    served.caller.data_received(raw)
    while served.caller.busy:  # a step had to wait (the first exchange, the first key fetch)
        await asyncio.sleep(0.001)


async def measure(
    configs: dict[str, dict[str, Any]], raw: bytes, *, requests: int = 3000, rounds: int = 7
) -> dict[str, dict[str, float]]:
    """Median and minimum CPU µs per request for each configuration (``configs``: name → the
    proxy configuration bench/run.py would start it with)."""
    logs.configure("info", io.StringIO())  # the access line is written, to memory
    with tempfile.TemporaryDirectory(prefix="mcpproxy-inproc-") as tmpdir:
        served = {name: await _serve(name, config, Path(tmpdir)) for name, config in configs.items()}
        try:
            for s in served.values():
                for _ in range(20):
                    await _request(s, raw)
                if s.transport.writes < 20 or s.transport.closed:
                    raise RuntimeError("the in-process relay did not answer")
            samples: dict[str, list[float]] = {name: [] for name in served}
            order = list(served)
            for _ in range(rounds):
                for name in order:
                    samples[name].append(await _timed(served[name], raw, requests))
                order.reverse()  # no configuration always runs first (or right after another)
        finally:
            for s in served.values():
                await s.runner.cleanup()
            logs.configure("info")
    return {
        name: {"median_us": statistics.median(values), "min_us": min(values)}
        for name, values in samples.items()
    }


async def _timed(s: _Served, raw: bytes, requests: int) -> float:
    caller = s.caller
    await asyncio.sleep(0)
    started = time.process_time()
    for _ in range(requests):
        caller.data_received(raw)
        if caller.busy:
            raise RuntimeError("a warm request had to wait")
    return (time.process_time() - started) / requests * 1e6
