"""A user who tells batchrun a lower limit than the server's is held to it, not to half of it.

Found end to end: against a server with 1 s windows and 1,200 RPM, `--rpm 600` ran at about
300 RPM. The server's x-ratelimit-remaining-requests describes its own 1 s window, refilled at
1,200 RPM; read as if it were our 600 RPM bucket it looks short after every burst, and each
round trip cut the rate by 3 %. Here the engine's Limiter (acquire / release / rate_limited)
runs on virtual time against a server model written for this test, so minutes take
milliseconds.
"""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass

import pytest

from batchrun.pacing.limiter import Limiter, ServerState, Ticket
from tests.helpers.virtual_time import VirtualClock, run_virtual

TOLD_RPM, TOLD_TPM = 600, 200_000  # what the user told batchrun
COST = 12  # a small request: "hello N", max_tokens 5


@dataclass
class WindowBucket:
    """A per-minute limit enforced over a 1 s window that refills continuously."""

    per_minute: int
    window_s: float = 1.0
    share: float = 1.0
    level: float = 0.0
    at: float = 0.0

    def __post_init__(self) -> None:
        self.level = self.capacity

    @property
    def capacity(self) -> float:
        return self.per_minute / 60 * self.window_s

    def refill(self, now: float) -> float:
        self.level = min(self.capacity,
                         self.level + (now - self.at) * self.per_minute / 60 * self.share)
        self.at = now
        return self.level


@dataclass
class WindowServer:
    """Headers as the simulator writes them for scope "window": the limit per minute, and what
    is left of the current window's share (stale by one round trip when measured at admission).
    """

    rpm: int
    tpm: int
    timing: str  # "admission" or "response"
    latency_s: float = 0.3
    share: float = 1.0  # the part of every refill that is ours (another client takes the rest)

    def __post_init__(self) -> None:
        self.requests = WindowBucket(self.rpm, share=self.share)
        self.tokens = WindowBucket(self.tpm, share=self.share)
        self.admitted: list[float] = []
        self.refused = 0

    def admit(self, cost: int, now: float) -> bool:
        if self.requests.refill(now) < 1 or self.tokens.refill(now) < cost:
            self.refused += 1
            return False
        self.requests.level -= 1
        self.tokens.level -= cost
        self.admitted.append(now)
        return True

    def headers(self, now: float) -> ServerState:
        return ServerState(self.rpm, self.tpm, int(self.requests.refill(now)),
                           int(self.tokens.refill(now)))


async def _send(limiter: Limiter, server: WindowServer, loop: asyncio.AbstractEventLoop) -> None:
    while True:
        ticket: Ticket = await limiter.acquire(COST)
        if not server.admit(COST, loop.time()):
            await asyncio.sleep(0.005)  # a 429 comes back at once
            limiter.release(ticket, None)
            await asyncio.sleep(limiter.rate_limited(ticket, None))
            continue
        at_admission = server.headers(loop.time())
        await asyncio.sleep(server.latency_s)
        state = at_admission if server.timing == "admission" else server.headers(loop.time())
        limiter.release(ticket, state, ok=True)
        return


def _run(server: WindowServer, n: int) -> None:
    async def main(clock: VirtualClock) -> None:
        loop = asyncio.get_running_loop()
        limiter = Limiter(TOLD_RPM, TOLD_TPM, clock=loop.time)
        await asyncio.gather(*(_send(limiter, server, loop) for _ in range(n)))

    run_virtual(main)


def _achieved_rpm(admitted: list[float]) -> float:
    # The first second's burst is the bucket starting full; count from the second after.
    steady = [t for t in admitted if t >= 1.0]
    return (len(steady) - 1) / (steady[-1] - steady[0]) * 60


@pytest.mark.parametrize("timing", ["admission", "response"])
def test_a_server_allowing_twice_the_told_rpm_never_holds_us_below_it(timing: str) -> None:
    """As the simulator runs by default (answers at loopback speed); the user's 600 RPM went at
    about 200 here before the fix, the limiter's rate cut to its floor by the headers."""
    server = WindowServer(2 * TOLD_RPM, 1_000_000, timing, latency_s=0.002)
    _run(server, n=2 * TOLD_RPM)  # two minutes at the told rate
    assert server.refused == 0
    assert _achieved_rpm(server.admitted) >= 0.95 * TOLD_RPM
    # ...and no faster than told once the first burst is spent.
    steady = [t for t in server.admitted if t >= 30]
    for i, start in enumerate(steady):
        if start + 60 <= steady[-1]:
            assert bisect.bisect_left(steady, start + 60) - i <= 1.02 * TOLD_RPM


def test_another_client_taking_most_of_a_bigger_limit_still_slows_us_down() -> None:
    """The price of believing a bigger limit header: when another client on the key leaves us
    less than we were told (30 % of 1,200 RPM), the headers no longer cut our rate. They still
    lower our bucket to what the server holds, and the few 429s that get through cut the rate:
    7 of 600 requests refused here (2 before the fix), at the rate that is left."""
    server = WindowServer(2 * TOLD_RPM, 1_000_000, "admission", latency_s=0.3, share=0.3)
    _run(server, n=TOLD_RPM)
    assert server.refused <= 0.015 * TOLD_RPM
    assert _achieved_rpm(server.admitted) >= 0.95 * 0.3 * 2 * TOLD_RPM
