"""The local half of admission when Redis paces: in-flight slots only.

The shared bucket in Redis decides when each request may go, for every host at once. A local
Limiter pacing on top of it would throttle twice: it would pace this host at the whole limit
(harmless) but also read x-ratelimit-remaining-*, which with N hosts reflect everyone's use,
as "the server refills slower than we count", correct its bucket down and make it wait where
the shared bucket has room (tests/state/test_state_redis.py shows the wait; bench/README.md measured
the end-to-end cost at 2 and 4 hosts on the simulator as nil, since each host needs only 1/N of
the limit). One pacer is simpler to reason about than two that disagree, so this limiter
keeps the Limiter's in-flight cap (Little's law over the real limits) and its view of the
limits (a lower x-ratelimit-limit-* or a TPM a refusal taught is still adopted, so requests
too large for it fail fast), and never waits for budget.
"""

from __future__ import annotations

from batchrun.pacing.limiter import Limiter, ServerState, Ticket


class SlotLimiter(Limiter):
    shared_pause = 0.0  # the last shared cooldown a per-minute 429 set, for the Throttled event

    async def acquire(self, cost: int) -> Ticket:
        async with self._lock:
            while self.in_flight >= self.max_in_flight:
                self._slot_freed.clear()
                await self._slot_freed.wait()
            self.in_flight += 1
            self._mean_cost = cost if not self._mean_cost else 0.95 * self._mean_cost + 0.05 * cost
            return Ticket(cost, self._clock(), 0.0, 0)

    def release(self, ticket: Ticket, state: ServerState | None, ok: bool = False) -> None:
        # Limits only: what remains is the shared bucket's business.
        limits = None if state is None else ServerState(state.limit_requests, state.limit_tokens)
        super().release(ticket, limits, ok)

    def adopt(self, rpm: int, tpm: int) -> None:
        """Limits another host learned (via Redis): lower ones are adopted, as from headers."""
        now = self._clock()
        self.pacer.answered(Ticket(0, now, 0.0, 0), ServerState(rpm or None, tpm or None), now)

    def rate_limited(self, ticket: Ticket, hint_s: float | None) -> float:
        return self.shared_pause
