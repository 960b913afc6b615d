"""One timer per connection for all of its timeouts, re-armed only when a deadline comes closer.

A keep-alive or idle timeout moves with every request; cancelling and re-arming a timer for
each (three or four times a request between the caller and the upstream side) cost more than
the rest of the timeout handling. Here the timer may fire early — the owner's check then says
how long is left — but never late.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Watchdog:
    """Calls ``check`` no later than the earliest deadline asked for with :meth:`within`.

    ``check`` returns the seconds until it should run again, or None when nothing is left to
    watch.
    """

    __slots__ = ("_call_at", "_check", "_clock", "_handle", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, check: Callable[[], float | None]) -> None:
        # The loop's methods, looked up once: compiled, a call by name on the loop is a lookup
        # each time, and a connection asks for a deadline on every request.
        self._clock: Callable[[], float] = loop.time
        self._call_at: Callable[[float, Callable[[], None]], asyncio.TimerHandle] = loop.call_at
        self._check = check
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0

    def within(self, delay: float) -> None:
        """Make sure ``check`` runs at most ``delay`` seconds from now."""
        when = self._clock() + delay
        if self._handle is not None:
            if self._when <= when:
                return
            self._handle.cancel()
        self._when = when
        self._handle = self._call_at(when, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        delay = self._check()
        if delay is not None:
            self.within(max(delay, 0.0))
