"""Several hosts on one real redis-server: each `hosts()` call is its own RedisState connection
on a faked UTC day. A pytest plugin (conftest.py registers it) for the `hosts` fixture."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from batchrun.files.ledger import Scope, key_fingerprint
from batchrun.policy.tiers import Limits
from batchrun.state import StateUrl
from batchrun.state._redis import RedisGate, RedisState
from tests.helpers.cli import FAKE_KEY

SCOPE = Scope("api.example.com", key_fingerprint(FAKE_KEY), "gpt-4o-mini")
DAY = dt.datetime(2026, 11, 27, 23, 59, 30, tzinfo=dt.UTC)


class Day:
    def __init__(self) -> None:
        self.now = DAY

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
async def hosts(redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    opened: list[RedisState] = []

    async def connect(now_utc: Callable[[], dt.datetime] | None = None,
                      name: str = "") -> RedisState:
        state = await RedisState.connect(StateUrl(redis_url), now_utc or Day(),
                                         host_id=name or f"host{len(opened)}",
                                         keys=(FAKE_KEY,))
        opened.append(state)
        return state

    yield connect
    for state in opened:
        await state.close()


async def _no_sleep(_s: float) -> None:
    await asyncio.sleep(0)


def redis_gate(state: RedisState, limits: Limits) -> RedisGate:
    return state.budget(SCOPE, limits.tpd, limits.rpd).gate(
        limits, None, lambda: 0.0, _no_sleep)
