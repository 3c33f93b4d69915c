"""The virtual-time loop the engine tests run on: time jumps, order holds, deadlocks fail fast."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from tests.helpers.virtual_time import START, VirtualClock, VirtualDeadlock, run_virtual


def test_an_hour_of_sleeping_passes_at_once_and_in_order() -> None:
    async def main(clock: VirtualClock) -> list[tuple[str, float]]:
        woke: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await asyncio.sleep(seconds)
            woke.append((name, asyncio.get_running_loop().time()))

        async with asyncio.TaskGroup() as tg:
            tg.create_task(sleeper("hour", 3600))
            tg.create_task(sleeper("second", 1))
            tg.create_task(sleeper("minute", 60))
        return woke

    assert run_virtual(main) == [("second", 1.0), ("minute", 60.0), ("hour", 3600.0)]


def test_the_wall_clock_moves_with_the_loop() -> None:
    async def main(clock: VirtualClock) -> dt.datetime:
        await asyncio.sleep(13 * 3600)
        return clock.now_utc()

    assert run_virtual(main) == START + dt.timedelta(hours=13)


def test_a_deadlock_raises_instead_of_hanging() -> None:
    async def main(clock: VirtualClock) -> None:
        await asyncio.Event().wait()

    with pytest.raises(VirtualDeadlock):
        run_virtual(main)


def test_timeouts_fire_on_virtual_time() -> None:
    async def main(clock: VirtualClock) -> float:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(600):
                await asyncio.Event().wait()
        return asyncio.get_running_loop().time()

    assert run_virtual(main) == 600.0
