"""One throughput run on virtual time: batchrun's Limiter against the simulator's rate model.

A minute of traffic takes milliseconds: an asyncio event loop whose clock jumps to the next timer
instead of waiting for it. The Limiter is the engine's (same acquire / release / rate_limited
calls, same FIFO with retries first); the server is batchrun.simulator.model, the simulator's own
buckets and token count; latency is drawn as the simulator draws it. Sockets, JSON and the
checkpoint writer are left out: bench/throughput.py's real-socket cells show what they cost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import random
import selectors
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from batchrun.http.client import server_state
from batchrun.pacing.limiter import Limiter
from batchrun.policy.tokens import char_estimate, max_output_tokens, prompt_tokens
from batchrun.simulator.model import Habits, RateModel, SimLimits, admission_charge, draw_latency

CHAT = "/v1/chat/completions"
UTC_NOON = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
ERROR_RTT_S = 0.005  # a 429 comes back at once: one loopback round trip


class _JumpingSelector(selectors.DefaultSelector):
    """Polls real file descriptors without blocking; a wait for a timer moves the clock instead."""

    def __init__(self, loop: VirtualLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if not events and timeout:
            self._loop.now += timeout
        return events


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


@dataclass(frozen=True)
class Server:
    limits: SimLimits
    habits: Habits = field(default_factory=Habits)
    latency_s: float = 0.3
    jitter_s: float = 0.0
    tail: float = 0.0


@dataclass
class Result:
    wall: float
    ideal: float
    ok: int
    rate_limited: int

    @property
    def share(self) -> float:
        return self.ideal / self.wall

    @property
    def per_ok(self) -> float:
        return self.rate_limited / max(1, self.ok)


def client_cost(body: dict[str, Any]) -> int:
    """What the engine charges a request (its `_job`): batchrun's own count."""
    return max(prompt_tokens(CHAT, body), char_estimate(body)) + (max_output_tokens(body) or 0)


def ideal_seconds(server: Server, bodies: list[dict[str, Any]]) -> float:
    """An oracle that knows the server: each request goes the moment the server would admit it."""
    model = RateModel(server.limits, server.habits, 0.0)
    t = 0.0
    for body in bodies:
        cost = admission_charge(body, embeddings=False)
        while (refusal := model.admit(cost, t, UTC_NOON)) is not None:
            t += refusal.wait_s + 1e-9
    return t + server.latency_s


async def _run(server: Server, bodies: list[dict[str, Any]], rpm: int, tpm: int,
               seed: int) -> tuple[float, int, int]:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    model = RateModel(server.limits, server.habits, loop.time())
    limiter = Limiter(rpm, tpm, None, loop.time)
    pending = deque((body, client_cost(body)) for body in bodies)
    retries: deque[tuple[dict[str, Any], int]] = deque()
    changed = asyncio.Event()
    counts = {"ok": 0, "429": 0}
    last_done = 0.0

    async def attempt(body: dict[str, Any], cost: int, ticket: Any) -> None:
        nonlocal last_done
        refusal = model.admit(admission_charge(body, False), loop.time(), UTC_NOON)
        if refusal is not None:
            await asyncio.sleep(ERROR_RTT_S)
            counts["429"] += 1
            limiter.release(ticket, None)
            limiter.rate_limited(ticket, refusal.wait_s)
            retries.append((body, cost))
            changed.set()
            return
        early = model.headers(loop.time()) if server.habits.header_timing == "admission" else None
        await asyncio.sleep(draw_latency(server.latency_s, server.jitter_s, server.tail, rng))
        headers = early if early is not None else model.headers(loop.time())
        limiter.release(ticket, server_state(headers), ok=True)
        counts["ok"] += 1
        last_done = loop.time()
        changed.set()

    async with asyncio.TaskGroup() as tg:
        while counts["ok"] < len(bodies):
            if not (retries or pending):
                changed.clear()
                await changed.wait()
                continue
            body, cost = retries.popleft() if retries else pending.popleft()
            ticket = await limiter.acquire(cost)
            tg.create_task(attempt(body, cost, ticket))
    return last_done, counts["ok"], counts["429"]


def run_virtual(server: Server, bodies: list[dict[str, Any]], rpm: int, tpm: int,
                seed: int = 0) -> Result:
    """One job through the Limiter against the rate model, told limits `rpm`/`tpm`."""
    loop = VirtualLoop()
    try:
        wall, ok, limited = loop.run_until_complete(_run(server, bodies, rpm, tpm, seed))
    finally:
        loop.close()
    return Result(wall, ideal_seconds(server, bodies), ok, limited)


def share_text(share: float) -> str:
    return "n/a" if math.isnan(share) else f"{share:.1%}"
