"""A strict rate-limited server for engine tests on virtual time, with its own accounting.

Written apart from batchrun's limiter and calibration: it charges each request by its own rule
(`charge` below: characters / chars_per_token of the message contents, or a fixed table),
keeps one continuously refilling token bucket that starts full, and answers as OpenAI does:
x-ratelimit-* headers (or none), a 429 "Rate limit reached ... Limit L, Used U, Requested R"
when the bucket cannot pay, and "Request too large ..." when a request exceeds the limit.
It plugs into tests.helpers.scripted_server.Server as its `answer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchrun.http.client import Kind, Outcome, classify
from batchrun.policy.request import Request
from tests.helpers.cli import FAKE_KEY


def chars_of(body: dict[str, Any]) -> int:
    total = 0
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
    return total


def by_characters(per_token: float) -> Callable[[dict[str, Any]], int]:
    """OpenAI's documented habit: a prompt estimate from characters, plus n x max_tokens."""

    def charge(body: dict[str, Any]) -> int:
        out = int(body.get("max_tokens") or 16) * int(body.get("n") or 1)
        return math.ceil(chars_of(body) / per_token) + out

    return charge


@dataclass
class StrictServer:
    tpm: int
    charge: Callable[[dict[str, Any]], int]
    window_s: float = 60.0
    latency_s: float = 0.3
    headers: str = "none"  # "none", "admission" (window scope, snapshot after the charge)
    # The prompt_tokens its answers report; None: the prompt part of its charge (a server that
    # bills what it rate-limits). OpenAI's differs: it bills tiktoken's count.
    usage: Callable[[dict[str, Any]], int] | None = None
    level: float = field(init=False)
    updated: float = 0.0
    refused: int = 0
    admitted: list[tuple[float, int]] = field(default_factory=list)  # (time, charge)

    def __post_init__(self) -> None:
        self.level = self.cap

    @property
    def cap(self) -> float:
        return self.tpm * self.window_s / 60

    @property
    def rate(self) -> float:
        return self.tpm / 60

    def _refill(self, now: float) -> None:
        self.level = min(self.cap, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def _headers(self) -> dict[str, str]:
        if self.headers == "none":
            return {}
        return {"x-ratelimit-limit-tokens": str(self.tpm),
                "x-ratelimit-remaining-tokens": str(max(0, math.floor(self.level)))}

    def _error(self, message: str, request: Request) -> Outcome:
        body = {"error": {"message": message, "type": "tokens", "code": "rate_limit_exceeded"}}
        return classify(429, self._headers(), orjson.dumps(body), request.url, FAKE_KEY)

    def __call__(self, request: Request, attempt: int, now: float) -> tuple[float, Outcome]:
        self._refill(now)
        cost = self.charge(request.body)
        if cost > self.tpm:
            self.refused += 1
            return 0.01, self._error(
                f"Request too large for gpt-4o-mini in organization org-x on tokens per min "
                f"(TPM): Limit {self.tpm}, Requested {cost}. The input or output tokens must be "
                "reduced in order to run successfully.", request)
        if self.level + 1e-9 < cost:
            self.refused += 1
            wait = (cost - self.level) / self.rate
            used = round(self.tpm - self.level * 60 / self.window_s)
            return 0.01, self._error(
                f"Rate limit reached for gpt-4o-mini in organization org-x on tokens per min "
                f"(TPM): Limit {self.tpm}, Used {used}, Requested {cost}. Please try again in "
                f"{wait:.3f}s.", request)
        self.level -= cost
        self.admitted.append((now, cost))
        out = int(request.body.get("max_tokens") or 16) * int(request.body.get("n") or 1)
        prompt = self.usage(request.body) if self.usage else cost - out
        body = {"choices": [{"message": {"content": "hi"}}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": 3}}
        return self.latency_s, classify(200, self._headers(), orjson.dumps(body), request.url,
                                        FAKE_KEY)

    def ideal_s(self) -> float:
        """A perfect client's time: every charge paid the instant the bucket can, plus one
        latency (the bench's definition: total charge less the starting bucket, over the rate)."""
        total = sum(c for _, c in self.admitted)
        return max(0.0, total - self.cap) / self.rate + self.latency_s


def ok_kind(outcome: Outcome) -> bool:
    return outcome.kind is Kind.OK
