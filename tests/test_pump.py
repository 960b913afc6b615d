"""``relay`` of mcpproxy/_pump.c and of its twin mcpproxy/_pump.py, on real socket pairs.

Each test runs both (the C one is skipped where it is not built): the relay in a thread, as
mcpproxy.web.offload runs it, with an "upstream" and a "caller" socket pair whose far ends the
test drives. Checked: the body's bytes reach the caller unchanged however the reads cut them
(all but the read that holds the end, handed back for the loop to write), the end is found
(and what follows it handed back), every way of stopping early, a caller that does
not read (no timeout while it is the one behind), and broken framing refused as
:class:`mcpproxy.http1.ChunkScanner` refuses it.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from mcpproxy.http1 import ChunkScanner, ProtocolViolation
from tests.support.twins import c_module, python_twin

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["c", "python"])
def pump(request: pytest.FixtureRequest) -> ModuleType:
    return c_module("_pump") if request.param == "c" else python_twin("_pump")


class Run:
    """One relay between two socket pairs, in a thread: ``up`` and ``client`` are the far ends."""

    def __init__(self, pump: ModuleType, idle_ms: int = 5000) -> None:
        self.up, upstream = socket.socketpair()
        self.client, caller = socket.socketpair()
        for sock in (upstream, caller):
            sock.setblocking(False)  # as the event loop's sockets are
        self.cancel = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._ends = (upstream, caller)
        self.result: tuple[int, int, bytes, bytes] | None = None
        self.error: BaseException | None = None

        def work() -> None:
            try:
                self.result = pump.relay(upstream.fileno(), caller.fileno(), self.cancel, idle_ms)
            except BaseException as exc:  # handed to the test
                self.error = exc

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()

    def outcome(self, timeout: float = 10) -> tuple[int, int, bytes, bytes]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the relay did not stop"
        assert self.error is None, self.error
        assert self.result is not None
        return self.result

    def received(self, size: int, timeout: float = 10) -> bytes:
        """Exactly ``size`` bytes from the caller's far end."""
        self.client.settimeout(timeout)
        data = bytearray()
        while len(data) < size:
            piece = self.client.recv(size - len(data))
            assert piece, f"the caller's socket closed after {len(data)} of {size} bytes"
            data += piece
        return bytes(data)

    def reading(self) -> Callable[[], bytes]:
        """Read the caller's far end in a thread from now on; the function returned, called once
        the relay is done, closes the relay's end and returns everything read."""
        data = bytearray()

        def read() -> None:
            while piece := self.client.recv(65536):
                data.extend(piece)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()

        def finish() -> bytes:
            self.thread.join(10)
            self._ends[1].close()  # the reader sees the end
            reader.join(10)
            assert not reader.is_alive()
            return bytes(data)

        return finish

    def close(self) -> None:
        for sock in (self.up, self.client, *self._ends):
            sock.close()
        os.close(self.cancel)


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    made: list[Run] = []
    yield made
    for run in made:
        run.close()


def start(runs: list[Run], pump: ModuleType, **kwargs: Any) -> Run:
    run = Run(pump, **kwargs)
    runs.append(run)
    return run


def chunk(data: bytes, ext: bytes = b"") -> bytes:
    return b"%x%b\r\n%b\r\n" % (len(data), ext, data)


def event(n: int) -> bytes:
    return b'data: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":%d}}\n\n' % n


def test_relays_the_body_to_its_end_and_hands_back_what_follows(pump: ModuleType, runs: list[Run]) -> None:
    run = start(runs, pump)
    body = b"".join(chunk(event(n)) for n in range(5)) + b"0\r\n\r\n"
    for n in range(5):
        run.up.sendall(chunk(event(n)))
        assert run.received(len(chunk(event(n)))) == chunk(event(n))  # each event as it comes
    run.up.sendall(b"0\r\n\r\nHTTP/1.1 200 OK\r\n")  # the end, and bytes past it
    # the end's read is handed back, not written: the loop writes it
    assert run.outcome() == (pump.ENDED, len(body) - 5, b"0\r\n\r\n", b"HTTP/1.1 200 OK\r\n")


def test_an_end_with_nothing_after_it_hands_back_nothing(pump: ModuleType, runs: list[Run]) -> None:
    run = start(runs, pump)
    finish = run.reading()
    body = chunk(b"x" * 300, b";name=v") + b"0\r\nX-Trailer: 1\r\n\r\n"
    run.up.sendall(body)
    outcome, relayed, tail, leftover = run.outcome()
    assert (outcome, leftover) == (pump.ENDED, b"")
    assert tail and body.endswith(tail) and relayed == len(body) - len(tail)
    assert finish() + tail == body


@pytest.mark.parametrize("seed", range(6))
def test_reads_cut_anywhere_change_nothing(pump: ModuleType, runs: list[Run], seed: int) -> None:
    """Size lines, data, CRLFs and trailers cut over reads at random (one byte at a time too)."""
    rng = random.Random(seed)
    chunks = [
        chunk(rng.randbytes(rng.randint(1, 3000)), rng.choice([b"", b";a=b", b" ; x"])) for _ in range(12)
    ]
    chunks[3] = chunks[3].replace(b"\r\n", b"\r\r\n", 1)  # CRs before a size line's LF are dropped
    body = b"".join(chunks) + rng.choice([b"0\r\n\r\n", b"000\r\nA: b\r\nC: d\r\n\r\n"])
    run = start(runs, pump)
    finish = run.reading()  # a caller reading as the bytes come: one-byte writes fill buffers fast
    pos = 0
    while pos < len(body):
        step = 1 if seed == 0 else rng.randint(1, 700)
        run.up.sendall(body[pos : pos + step])
        pos += step
        if rng.random() < 0.2:
            time.sleep(0.001)  # let a read end here
    outcome, relayed, tail, leftover = run.outcome()
    assert (outcome, leftover) == (pump.ENDED, b"")
    assert finish() + tail == body
    assert relayed == len(body) - len(tail)


BROKEN = {
    "not hex": b"zz\r\nhello\r\n",
    "no size": b"\r\nhello\r\n",
    "16 digits": b"0000000000000005\r\nhello\r\n",
    "data not followed by CRLF": b"5\r\nhelloXY",
    "size line too long": b"5;" + b"e" * 5000 + b"\r\nhello\r\n",
    "trailer line too long": b"0\r\nA: " + b"b" * 5000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_framing_stops_the_relay_as_the_scanner_refuses_it(
    pump: ModuleType, runs: list[Run], name: str
) -> None:
    wire = BROKEN[name]
    with pytest.raises(ProtocolViolation):  # the rules the relay on the loop applies
        ChunkScanner().feed(wire)
    run = start(runs, pump)
    first = chunk(event(1))
    run.up.sendall(first)
    assert run.received(len(first)) == first
    run.up.sendall(wire)
    outcome, relayed, tail, _ = run.outcome()
    assert outcome == pump.MALFORMED
    assert relayed <= len(first) + len(wire) and tail == b""


def test_an_upstream_that_closes_before_the_end(pump: ModuleType, runs: list[Run]) -> None:
    run = start(runs, pump)
    run.up.sendall(chunk(event(1)))
    run.received(len(chunk(event(1))))
    run.up.close()
    assert run.outcome() == (pump.UPSTREAM_CLOSED, len(chunk(event(1))), b"", b"")


@pytest.mark.parametrize("how", ["close", "half-close"])
def test_a_caller_that_goes_away(pump: ModuleType, runs: list[Run], how: str) -> None:
    run = start(runs, pump)
    run.up.sendall(chunk(event(1)))
    run.received(len(chunk(event(1))))
    if how == "close":
        run.client.close()
    else:
        run.client.shutdown(socket.SHUT_WR)  # the relay on the loop closes such a caller too
    assert run.outcome()[0] == pump.CALLER_GONE


def test_a_silent_upstream_times_out(pump: ModuleType, runs: list[Run]) -> None:
    began = time.monotonic()
    run = start(runs, pump, idle_ms=200)
    run.up.sendall(chunk(event(1)))
    run.received(len(chunk(event(1))))
    assert run.outcome() == (pump.TIMEOUT, len(chunk(event(1))), b"", b"")
    assert time.monotonic() - began >= 0.2


def test_cancel(pump: ModuleType, runs: list[Run]) -> None:
    run = start(runs, pump)
    run.up.sendall(chunk(event(1)))
    run.received(len(chunk(event(1))))
    os.eventfd_write(run.cancel, 1)
    assert run.outcome() == (pump.CANCELLED, len(chunk(event(1))), b"", b"")


def test_a_caller_that_does_not_read_is_waited_for_not_timed_out(pump: ModuleType, runs: list[Run]) -> None:
    """8 MiB through a caller that reads nothing for 0.6 s, three times the idle limit: the
    relay stops reading the upstream meanwhile (the upstream's writes block) and loses nothing."""
    run = start(runs, pump, idle_ms=200)
    piece = chunk(bytes(range(256)) * 256)
    total = 128 * len(piece) + 5
    writer_done = threading.Event()

    def write() -> None:
        for _ in range(128):
            run.up.sendall(piece)
        run.up.sendall(b"0\r\n\r\n")
        writer_done.set()

    threading.Thread(target=write, daemon=True).start()
    time.sleep(0.6)
    assert not writer_done.is_set(), "the relay read on while the caller did not"
    assert run.thread.is_alive()
    finish = run.reading()
    outcome, relayed, tail, leftover = run.outcome()
    assert (outcome, leftover) == (pump.ENDED, b"")
    assert finish() + tail == piece * 128 + b"0\r\n\r\n"
    assert relayed == total - len(tail)
