"""An asyncio event loop on virtual time, for engine tests that must not sleep.

Whenever every task is waiting for a timer, the loop jumps its clock to the next timer instead of
sleeping, so an hour of backoff, cooldowns and `--wait` passes in milliseconds while every
`asyncio.sleep`, `call_later` and `loop.time()` sees consistent time. Tests that use it talk to
fake clients, not sockets: real I/O would be answered in real time, which this clock ignores.

    result = run_virtual(lambda clock: main(clock))  # loop.time() starts at 0;
                                                      # clock.now_utc() moves with it

If nothing is scheduled and nothing can wake the loop, the run is deadlocked; instead of hanging
until the per-test timeout, the loop raises `VirtualDeadlock`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import selectors
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
START = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
# Real seconds to wait for a wake-up from another thread before calling it a deadlock.
_REAL_GRACE_S = 0.2


class VirtualDeadlock(RuntimeError):
    """Every task waits for something that no timer and no thread will ever deliver."""


class _Selector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # Only another thread (call_soon_threadsafe) could wake us now; give it a moment.
            ready = super().select(_REAL_GRACE_S)
            if not ready:
                raise VirtualDeadlock("no timer is pending and no task can make progress")
            return ready
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _Selector()
        super().__init__(selector)
        selector.loop = self
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)


@dataclass
class VirtualClock:
    """The wall clock of a virtual run: START plus the loop's elapsed time."""

    loop: VirtualTimeLoop
    start: dt.datetime = START

    def now_utc(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.loop.time())

    def monotonic(self) -> float:
        return self.loop.time()


def run_virtual(
    main: Callable[[VirtualClock], Coroutine[Any, Any, T]], start: dt.datetime = START
) -> T:
    """Run `main(clock)` to completion on virtual time and return its result."""
    loop = VirtualTimeLoop()
    clock = VirtualClock(loop, start)
    try:
        return loop.run_until_complete(main(clock))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
