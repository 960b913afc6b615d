"""The relay's own Python cost per request, measured in-process (no sockets, no event loop).

The wrk figures of bench/run.py include the kernel's socket work and the event loop, and on a
shared VM they move by ±30 % from run to run, which hides differences of a few µs between
configurations. Here one process serves requests of each configuration through the real relay
(``CallerConnection``) and the real upstream protocol (``UpstreamConnection``) whose transports
are in-memory: the caller's bytes go in with ``data_received``, the upstream "answers" the moment
the request is written. What is timed (``time.process_time``) is exactly the Python path of a
relayed request — head parsing, judging, the token cache, the upstream request, the answer's
head, the access line and the metrics — interleaved over the configurations and repeated.

Where valgrind is installed, :func:`count_instructions` also runs the same loop under callgrind,
one configuration per process, and counts the instructions spent inside it only: the loop runs
inside ``itertools.starmap``, whose C function ``starmap_next`` toggles the collection
(``--toggle-collect``), so start-up and warm-up are left out. Unlike CPU time on a shared VM,
the count repeats to a fraction of a per cent, which makes it the figure to compare
configurations (and builds) by.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from itertools import repeat, starmap
from pathlib import Path
from typing import Any

import yaml

from mcpproxy import logs
from mcpproxy.config.loader import load_config
from mcpproxy.web.app import LIVE, build_app
from mcpproxy.web.protocol import ProxyRunner, runner_kwargs
from mcpproxy.web.relay import CallerConnection, Relay
from mcpproxy.web.server import install_uvloop, tune_gc
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

    def __init__(self, runner: ProxyRunner, relay: Relay, transport: _Transport) -> None:
        self.runner = runner
        self.caller = CallerConnection(relay)
        self.caller.connection_made(transport)  # type: ignore[arg-type]
        self.transport = transport
        self.flush = relay.writes.flush

    def serve(self, raw: bytes) -> None:
        """One request: its head and body in, then the two batched writes of the loop
        iterations that would follow (the request upstream, whose in-memory transport answers
        at once, and the answer to the caller)."""
        self.caller.data_received(raw)
        self.flush()
        self.flush()


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
    return _Served(runner, Relay(live, lambda: asyncio.Protocol()), _Transport())


async def _request(served: _Served, raw: bytes) -> None:
    served.serve(raw)
    while served.caller.busy:  # a step had to wait (the first exchange, the first key fetch)
        await asyncio.sleep(0.001)


async def measure(
    configs: dict[str, dict[str, Any]], raw: bytes, *, requests: int = 3000, rounds: int = 7
) -> dict[str, dict[str, float]]:
    """Median and minimum CPU µs per request for each configuration (``configs``: name → the
    proxy configuration bench/run.py would start it with)."""
    logs.configure("info", io.StringIO())  # the access line is written, to memory
    thresholds = gc.get_threshold()
    tune_gc()  # as `mcpproxy serve` does
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
            gc.unfreeze()
            gc.set_threshold(*thresholds)
    return {
        name: {"median_us": statistics.median(values), "min_us": min(values)}
        for name, values in samples.items()
    }


async def _timed(s: _Served, raw: bytes, requests: int) -> float:
    caller, serve = s.caller, s.serve
    await asyncio.sleep(0)
    started = time.process_time()
    for _ in range(requests):
        serve(raw)
        if caller.busy:
            raise RuntimeError("a warm request had to wait")
    return (time.process_time() - started) / requests * 1e6


# --- instruction counts (callgrind) ----------------------------------------------------------

_COLLECTED = re.compile(r"Collected : (\d+)")
_ROOT = Path(__file__).resolve().parent.parent


def count_instructions(
    configs: dict[str, dict[str, Any]], raw: bytes, *, requests: int = 1000, parallel: int = 2
) -> dict[str, int]:
    """Instructions per relayed request of each configuration (empty without valgrind)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return {}
    out: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="mcpproxy-ir-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "request").write_bytes(raw)
        pending = list(configs.items())
        while pending:
            batch, pending = pending[:parallel], pending[parallel:]
            running = []
            for name, config in batch:
                path = tmp / f"{name}.yaml"
                path.write_text(yaml.safe_dump(config, sort_keys=False))
                cmd = [
                    valgrind,
                    "--tool=callgrind",
                    "--collect-atstart=no",
                    "--toggle-collect=starmap_next",
                    "--callgrind-out-file=/dev/null",
                    sys.executable,
                    "-m",
                    "bench.inproc",
                    str(path),
                    str(tmp / "request"),
                    str(requests),
                ]
                proc = subprocess.Popen(cmd, cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                running.append((name, proc))
            for name, proc in running:
                text = proc.communicate(timeout=900)[0].decode(errors="replace")
                found = _COLLECTED.search(text)
                if proc.returncode != 0 or found is None or "ANSWERED" not in text:
                    raise RuntimeError(f"callgrind run of {name} failed:\n{text[-2000:]}")
                out[name] = int(found.group(1)) // requests
    return out


async def _loop_once(config_path: Path, raw: bytes, requests: int) -> None:
    """One configuration, warmed up, then ``requests`` requests inside ``starmap`` (see above)."""
    logs.configure("info", io.StringIO())
    tune_gc()
    config = yaml.safe_load(config_path.read_text())
    served = await _serve(f"{config_path.stem}.ir", config, config_path.parent)  # runs side by side
    try:
        for _ in range(20):
            await _request(served, raw)
        caller, serve = served.caller, served.serve

        def one() -> None:
            serve(raw)
            if caller.busy:
                raise RuntimeError("a warm request had to wait")

        deque(starmap(one, repeat((), requests)), maxlen=0)
        if served.transport.writes < 20 + requests or served.transport.closed:
            raise RuntimeError("the in-process relay did not answer")
        print("ANSWERED", served.transport.writes, flush=True)
    finally:
        await served.runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc", description=count_instructions.__doc__)
    parser.add_argument("config", type=Path)
    parser.add_argument("request", type=Path)
    parser.add_argument("requests", type=int)
    args = parser.parse_args(argv)
    install_uvloop()  # as `mcpproxy serve` does, when it is installed
    asyncio.run(_loop_once(args.config, args.request.read_bytes(), args.requests))


if __name__ == "__main__":
    main()
