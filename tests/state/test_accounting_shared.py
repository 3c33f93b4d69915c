"""The learned accounting shared through `--state redis://` (issue 22 item 1), against a real
redis-server: what one host's route learned of the server's charge, another host's route admits
by, without a 429 of its own."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from batchrun.backends.sync.lanes import Job, Route, Upstream
from batchrun.policy.classify import Kind, Outcome
from batchrun.policy.request import Request
from batchrun.policy.sizing import size_of
from batchrun.policy.tiers import Limits
from batchrun.state import open_gate
from tests.helpers.charging import CHINESE, by_chars, refusal
from tests.helpers.redis_hosts import SCOPE

LIMITS = Limits(rpm=6_000, tpm=60_000)


async def _no_sleep(_s: float) -> None:
    await asyncio.sleep(0)


def _route(state: Any) -> Route:
    budget = state.budget(SCOPE, 0, 0)
    upstream = Upstream("", object(), SCOPE.host, lambda _m: LIMITS,  # type: ignore[arg-type]
                        lambda _m, _l: budget)
    gate = open_gate(budget, LIMITS, None, lambda: 0.0, _no_sleep)
    return Route(upstream, SCOPE.model, LIMITS, gate)


def _job(i: int) -> Job:
    body = {"model": "gpt-4o-mini", "max_tokens": 20,
            "messages": [{"role": "user", "content": (CHINESE * 2)[i:i + 150]}]}
    return Job(Request(i, f"c{i}", "/v1/chat/completions", body), size_of(
        Request(i, f"c{i}", "/v1/chat/completions", body), 0))


async def test_a_host_admits_at_the_charge_another_host_learned(
        hosts: Any) -> None:
    one = await hosts()
    route = _route(one)
    job = _job(0)
    ticket = await route.admit(job, 0.0)
    assert ticket is not None and job.charged == job.size.visible.own
    server_charge = by_chars(job.request.body)  # about 40 % of our count on Chinese
    await route.settle(job, ticket, refusal(
        "Rate limit reached for gpt-4o-mini in organization org-x on tokens per min (TPM): "
        f"Limit 60000, Used 59990, Requested {server_charge}. Please try again in 1s."))
    await one.close()  # its writes are done

    two = await hosts()
    theirs = _route(two)
    charged = []
    for i in range(1, 4):
        job = _job(i)
        ticket = await theirs.admit(job, 0.0)
        assert ticket is not None
        await theirs.settle(job, ticket, Outcome(Kind.OK, 200, body={}))
        charged.append((job.charged, job.size.visible.own, by_chars(job.request.body)))
    # Its first admission may go before Redis has answered (at our own count); from then on it
    # admits at the server's charge as the other host learned it, within the margin.
    for ours_charged, own, server in charged[1:]:
        assert ours_charged < own
        assert server <= ours_charged <= math.ceil(server * 1.1)
