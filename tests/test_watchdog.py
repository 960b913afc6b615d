"""The per-connection timer (mcpproxy.web.watchdog) on a real event loop."""

from __future__ import annotations

import asyncio

from mcpproxy.web.watchdog import Watchdog


class Checks:
    """Records when the check ran; answers the delays it is given, then None."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *answers: float) -> None:
        self.loop = loop
        self.start = loop.time()
        self.times: list[float] = []
        self.answers = list(answers)

    def __call__(self) -> float | None:
        self.times.append(self.loop.time() - self.start)
        return self.answers.pop(0) if self.answers else None


async def test_runs_at_the_earliest_deadline_asked_for() -> None:
    loop = asyncio.get_running_loop()
    for order in ((0.05, 0.5), (0.5, 0.05)):
        checks = Checks(loop)
        dog = Watchdog(loop, checks)
        for delay in order:
            dog.within(delay)
        await asyncio.sleep(0.3)
        assert len(checks.times) == 1 and 0.04 <= checks.times[0] < 0.25


async def test_a_later_deadline_keeps_the_earlier_timer() -> None:
    loop = asyncio.get_running_loop()
    checks = Checks(loop)
    dog = Watchdog(loop, checks)
    dog.within(0.05)
    dog.within(0.2)  # does not push the check back
    await asyncio.sleep(0.12)
    assert len(checks.times) == 1


async def test_the_check_says_when_to_look_again_and_when_to_stop() -> None:
    loop = asyncio.get_running_loop()
    checks = Checks(loop, 0.05, 0.05)
    dog = Watchdog(loop, checks)
    dog.within(0.02)
    await asyncio.sleep(0.4)
    assert len(checks.times) == 3  # two re-arms, then None
    assert checks.times[1] - checks.times[0] >= 0.04 and checks.times[2] - checks.times[1] >= 0.04


async def test_cancelled_never_runs() -> None:
    loop = asyncio.get_running_loop()
    checks = Checks(loop)
    dog = Watchdog(loop, checks)
    dog.within(0.02)
    dog.cancel()
    await asyncio.sleep(0.1)
    assert checks.times == []
