"""The simulator plays each server habit, as its HTTP clients see it, and counts on its own."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from batchrun.simulator import Habits, SimConfig, SimLimits, SimServer, Simulator
from batchrun.simulator import config_from_argv as sim_config
from batchrun.simulator.model import draw_latency


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def post(session: aiohttp.ClientSession, server: SimServer, content: str = "hi",
               max_tokens: int = 10) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = {"model": "m", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": content}]}
    async with session.post(f"{server.base_url}/chat/completions", json=body,
                            headers={"Authorization": "Bearer sk-x"}) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def remaining_seen(config: SimConfig, requests: int = 2) -> list[str | None]:
    """x-ratelimit-remaining-requests of `requests` requests sent together."""
    async with SimServer(Simulator(config)) as server, aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(post(session, server) for _ in range(requests)))
    return sorted((h.get("x-ratelimit-remaining-requests") for _, h, _ in answers),
                  key=lambda v: v or "")


@pytest.mark.parametrize(("timing", "expected"), [("admission", ["8", "9"]),
                                                  ("response", ["8", "8"])])
async def test_headers_are_measured_at_admission_or_at_response(timing: str,
                                                               expected: list[str]) -> None:
    # Both requests are admitted before either answers: only response-time headers count both.
    config = SimConfig(SimLimits(rpm=600, window_s=1.0), latency_s=0.05,
                       habits=Habits(header_timing=timing))  # type: ignore[arg-type]
    assert await remaining_seen(config) == expected


@pytest.mark.parametrize(("scope", "expected"), [("window", ["9"]), ("minute", ["599"]),
                                                 ("none", [None])])
async def test_headers_describe_the_window_the_minute_or_nothing(scope: str,
                                                                 expected: list[Any]) -> None:
    config = SimConfig(SimLimits(rpm=600, window_s=1.0),
                       habits=Habits(header_scope=scope))  # type: ignore[arg-type]
    assert await remaining_seen(config, 1) == expected


async def test_another_client_on_the_key_leaves_less_than_we_spent() -> None:
    config = SimConfig(SimLimits(rpm=600), habits=Habits(shared=0.5))
    assert await remaining_seen(config, 1) == ["299"]


async def test_a_lowered_limit_shows_in_the_headers_and_is_enforced() -> None:
    clock = FakeClock()
    config = SimConfig(SimLimits(rpm=600), habits=Habits(lower_at_s=10, lower_to=0.5))
    async with SimServer(Simulator(config, clock=clock)) as server, \
            aiohttp.ClientSession() as session:
        _, before, _ = await post(session, server)
        clock.now = 10.0
        _, after, _ = await post(session, server)
    assert before["x-ratelimit-limit-requests"] == "600"
    assert after["x-ratelimit-limit-requests"] == "300"
    # 10 s refilled the minute's bucket to its new, lower top; one request since.
    assert after["x-ratelimit-remaining-requests"] == "299"


@pytest.mark.parametrize(("refill", "admitted_after_half_a_window"),
                         [("continuous", 5), ("quantized", 0)])
async def test_windows_refill_continuously_or_all_at_once(refill: str,
                                                          admitted_after_half_a_window: int
                                                          ) -> None:
    clock = FakeClock()
    config = SimConfig(SimLimits(rpm=600, window_s=1.0),
                       habits=Habits(refill=refill))  # type: ignore[arg-type]
    async with SimServer(Simulator(config, clock=clock)) as server, \
            aiohttp.ClientSession() as session:
        first = [await post(session, server) for _ in range(12)]
        clock.now = 0.5
        later = [await post(session, server) for _ in range(12)]
        clock.now = 1.0
        next_window = [await post(session, server) for _ in range(12)]
    ok = [sum(s == 200 for s, _, _ in batch) for batch in (first, later, next_window)]
    assert ok[0] == 10 and ok[1] == admitted_after_half_a_window
    assert ok[2] == (5 if refill == "continuous" else 10)


async def test_admission_charges_characters_over_four_plus_max_tokens() -> None:
    """Its own count, not batchrun's tokenizer: the 429 message states what it charged."""
    config = SimConfig(SimLimits(tpm=60, window_s=1.0))  # one token a second
    async with SimServer(Simulator(config)) as server, aiohttp.ClientSession() as session:
        await post(session, server)  # a full bucket takes anything: this empties it
        status, _, body = await post(session, server, content="x" * 397, max_tokens=7)
    # "user" and 397 characters: 401 / 4 -> 101, plus 7.
    assert status == 429 and "Requested 108." in body["error"]["message"]


def test_a_heavy_tail_makes_one_request_in_a_hundred_ten_times_slower() -> None:
    rng = random.Random(7)
    draws = [draw_latency(0.3, 0.0, 0.01, rng) for _ in range(20_000)]
    slow = [d for d in draws if d > 0.3]
    assert all(d == pytest.approx(3.0) for d in slow) and 0.007 < len(slow) / len(draws) < 0.013


def test_every_habit_is_a_command_line_flag() -> None:
    config, port = sim_config([
        "--port", "9000", "--rpm", "500", "--window", "10", "--latency", "0.3", "--jitter",
        "0.1", "--tail", "0.01", "--headers-at", "response", "--header-scope", "minute",
        "--refill", "quantized", "--shared", "0.3", "--lower-at", "20", "--lower-to", "0.6"])
    assert port == 9000 and config.limits == SimLimits(rpm=500, window_s=10.0)
    assert (config.latency_s, config.jitter_s, config.latency_tail) == (0.3, 0.1, 0.01)
    assert config.habits == Habits("response", "minute", "quantized", 0.3, 20.0, 0.6)


def test_the_simulator_runs_as_a_module() -> None:
    """`python -m batchrun.simulator` is the command the docs give."""
    run = subprocess.run([sys.executable, "-m", "batchrun.simulator", "--help"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: python -m batchrun.simulator")
    assert "--batch-seconds" in run.stdout
