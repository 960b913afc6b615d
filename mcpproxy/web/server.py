"""Runs the proxy: event loop, listening socket, graceful shutdown and reload on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog
from aiohttp import web

from mcpproxy.config import ConfigError, load_config
from mcpproxy.config.model import Config
from mcpproxy.web.app import apply_config, build_app
from mcpproxy.web.protocol import ProxyRunner, runner_kwargs

log = structlog.get_logger("mcpproxy")


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def serve(config_path: str, config: Config) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code."""
    fast = install_uvloop()
    return asyncio.run(_serve(config_path, config, fast))


async def _serve(config_path: str, config: Config, uvloop: bool) -> int:
    app = build_app(config)
    runner = ProxyRunner(app, **runner_kwargs(shutdown_timeout=config.server.shutdown_grace_s))
    await runner.setup()
    site = web.TCPSite(
        runner,
        config.server.host,
        config.server.port,
        reuse_port=config.server.workers > 1 or None,
        backlog=1024,
    )
    await site.start()
    log.info("listening", host=config.server.host, port=config.server.port, uvloop=uvloop)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = asyncio.create_task(_reload(app, config_path))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()
    log.info("stopping", grace_s=config.server.shutdown_grace_s)
    with contextlib.suppress(Exception):
        await runner.cleanup()
    log.info("stopped")
    return 0


async def _reload(app: web.Application, config_path: str) -> None:
    """SIGHUP: a valid new table applies to new requests; an invalid one is refused, old kept."""
    try:
        config = load_config(config_path)
        await apply_config(app, config)
    except ConfigError as exc:
        log.error("reload_refused", error=str(exc), kept="previous configuration")
    except Exception as exc:  # a reload must never take the running proxy down
        log.error("reload_failed", error=type(exc).__name__, kept="previous configuration")
