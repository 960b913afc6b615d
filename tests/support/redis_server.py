"""A real ``redis-server`` (Debian's package, installed by ``scripts/bootstrap.sh``) for tests.

It listens on a free loopback port with no persistence (no RDB snapshots, no AOF, a throw-away
directory) and can be stopped and started again on the same port, so a test can take Redis away
in the middle of a run and bring it back.

Fixtures: ``redis_server`` (session scope, started once) and ``redis_db`` (function scope: the
same server, started if a test stopped it, emptied).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import free_port

READY_TIMEOUT = 10.0


class RedisServerError(RuntimeError):
    """redis-server is missing or did not start."""




class RedisServer:
    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise RedisServerError("redis-server is not installed; run scripts/bootstrap.sh")
        self.binary = found
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--logfile", str(self._dir / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._ping():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RedisServerError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def flush(self) -> None:
        assert self._command(b"FLUSHALL") == b"+OK\r\n"

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _ping(self) -> bool:
        try:
            return self._command(b"PING") == b"+PONG\r\n"
        except OSError:
            return False

    def _command(self, name: bytes) -> bytes:
        """One inline command over a fresh connection (no client library needed here)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(name + b"\r\n")
            return sock.recv(64)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_db(redis_server: RedisServer) -> RedisServer:
    """The session's Redis, running and empty."""
    redis_server.start()
    redis_server.flush()
    return redis_server
