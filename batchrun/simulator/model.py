"""The simulator's model of a server's rate limits, free of sockets and of batchrun's own code.

The simulator checks batchrun, so it must not share its arithmetic: it counts tokens with its own
walk of the request (characters / 4, as OpenAI's admission does) and keeps its own buckets.
It never imports batchrun's token count (batchrun.policy.tokens) or its limiter
(batchrun.pacing.limiter).
`Simulator` serves this model over HTTP; bench/throughput.py drives it on virtual time.

Habits (all in `Habits`), the ways real servers differ:

- header_timing: x-ratelimit-remaining-* measured when the request is admitted ("admission") or
  when its response is sent ("response"), after the requests admitted during its round trip.
- header_scope: the headers describe the enforced bucket ("window"), a whole-minute bucket while
  enforcement uses `window_s` ("minute"), or there are no rate headers at all ("none").
- refill: buckets refill continuously ("continuous") or fill up at once at each window boundary
  ("quantized").
- shared: the share (0..1) of every limit another client of the same key uses; the headers then
  show less than this client spent.
- lower_at_s / lower_to: `lower_at_s` seconds after the first request, every limit drops to
  `lower_to` times what it was (and the limit headers say so).
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass
from typing import Any, Literal

HeaderTiming = Literal["admission", "response"]
HeaderScope = Literal["window", "minute", "none"]
Refill = Literal["continuous", "quantized"]


@dataclass(slots=True)
class SimLimits:
    rpm: int = 0
    tpm: int = 0
    rpd: int = 0
    tpd: int = 0
    window_s: float = 60.0


@dataclass(slots=True)
class Habits:
    header_timing: HeaderTiming = "admission"
    header_scope: HeaderScope = "window"
    refill: Refill = "continuous"
    shared: float = 0.0
    lower_at_s: float | None = None
    lower_to: float = 1.0


def _text_chars(value: Any) -> int:
    """Characters of every string inside a prompt, roles and part types included."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    return 0


def prompt_chars_tokens(body: dict[str, Any]) -> int:
    """The server's rough count of a prompt: a token per four characters (token arrays as is)."""
    prompt = body.get("messages", body.get("input"))
    if isinstance(prompt, list) and prompt and all(isinstance(x, int) for x in prompt):
        return len(prompt)
    return math.ceil(_text_chars(prompt) / 4)


def admission_charge(body: dict[str, Any], embeddings: bool) -> int:
    """What admission takes from the tokens bucket: the prompt estimate plus n x max tokens."""
    if embeddings:
        return prompt_chars_tokens(body)
    out = int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)
    return prompt_chars_tokens(body) + out * int(body.get("n") or 1)


def usage_prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt tokens the simulator bills: its own approximation, not a tokenizer.

    A token per four characters, plus for chat a few tokens of format per message and for
    priming the reply, as real APIs bill.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        return max(1, prompt_chars_tokens(body))
    return sum(math.ceil(_text_chars(m) / 4) + 3 for m in messages) + 3


@dataclass(slots=True)
class Refusal:
    """Why a request was not admitted, in the terms of OpenAI's 429 message."""

    what: str
    kind: str
    limit: int
    used: int
    requested: int
    wait_s: float


class Bucket:
    """`window_s` seconds of a per-minute limit, refilled continuously or per window."""

    __slots__ = ("capacity", "level", "limit", "quantized", "rate", "refill_share", "start",
                 "updated", "window_s")

    def __init__(self, per_minute: int, window_s: float, now: float, quantized: bool = False,
                 shared: float = 0.0) -> None:
        self.window_s = window_s
        self.quantized = quantized
        self.refill_share = 1.0 - shared
        self.start = now
        self.updated = now
        self.set_limit(per_minute)
        self.level = self.capacity * self.refill_share

    def set_limit(self, per_minute: int) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = self.rate * self.window_s
        if hasattr(self, "level"):
            self.level = min(self.level, self.capacity)

    def _window(self, t: float) -> int:
        return math.floor((t - self.start) / self.window_s)

    def refill(self, now: float) -> None:
        if now <= self.updated:
            return
        if self.quantized:
            if self._window(now) != self._window(self.updated):
                self.level = self.capacity * self.refill_share
        else:
            # Another client of the key takes its share of every refill.
            self.level = min(self.capacity,
                             self.level + (now - self.updated) * self.rate * self.refill_share)
        self.updated = now

    def shortfall(self, amount: float) -> float:
        """Seconds until `amount` fits; 0 if it fits now (a full bucket takes anything)."""
        need = min(amount, self.capacity * self.refill_share)
        if self.level >= need:
            return 0.0
        if self.quantized:
            return (self._window(self.updated) + 1) * self.window_s + self.start - self.updated
        return (need - self.level) / (self.rate * self.refill_share)

    def reset_s(self) -> float:
        if self.quantized:
            return self.shortfall(self.capacity)
        return max(0.0, (self.capacity - self.level) / (self.rate * self.refill_share))


class RateModel:
    """One model's limits on one server: admission, daily counts and the headers it reports."""

    def __init__(self, limits: SimLimits, habits: Habits, now: float) -> None:
        self.limits = limits
        self.habits = habits
        self._lowered = False
        self._first: float | None = None
        quantized = habits.refill == "quantized"

        def bucket(per_minute: int, window_s: float, q: bool) -> Bucket | None:
            return Bucket(per_minute, window_s, now, q, habits.shared) if per_minute else None

        self.requests = bucket(limits.rpm, limits.window_s, quantized)
        self.tokens = bucket(limits.tpm, limits.window_s, quantized)
        # What "minute" headers describe: the same admissions against a whole minute's budget.
        self._minute = [bucket(limits.rpm, 60.0, False), bucket(limits.tpm, 60.0, False)]
        self.day: dt.date | None = None
        self.day_tokens = 0
        self.day_requests = 0

    def _pairs(self) -> list[tuple[Bucket | None, Bucket | None]]:
        return [(self.requests, self._minute[0]), (self.tokens, self._minute[1])]

    def _maybe_lower(self, now: float) -> None:
        h = self.habits
        if self._first is None:
            self._first = now
        if h.lower_at_s is None or self._lowered or now < self._first + h.lower_at_s:
            return
        self._lowered = True
        for pair in self._pairs():
            for b in pair:
                if b is not None:
                    b.refill(now)
                    b.set_limit(max(1, round(b.limit * h.lower_to)))

    def admit(self, cost: int, now: float, now_utc: dt.datetime) -> Refusal | None:
        """Take one request and `cost` tokens, or say which limit refuses them."""
        self._maybe_lower(now)
        today = now_utc.date()
        if self.day != today:
            self.day, self.day_tokens, self.day_requests = today, 0, 0
        until_midnight = (
            dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.UTC) - now_utc
        ).total_seconds()
        lim = self.limits
        if lim.rpd and self.day_requests + 1 > lim.rpd:
            return Refusal("requests per day (RPD)", "requests", lim.rpd, self.day_requests, 1,
                           until_midnight)
        if lim.tpd and self.day_tokens + cost > lim.tpd:
            return Refusal("tokens per day (TPD)", "tokens", lim.tpd, self.day_tokens, cost,
                           until_midnight)
        for (b, minute), amount, what, kind in zip(
            self._pairs(), (1, cost), ("requests per min (RPM)", "tokens per min (TPM)"),
            ("requests", "tokens"), strict=True,
        ):
            if b is None:
                continue
            b.refill(now)
            assert minute is not None
            minute.refill(now)
            wait = b.shortfall(amount)
            if wait > 0:
                return Refusal(what, kind, b.limit, round(b.capacity - b.level), amount, wait)
        for (b, minute), amount in zip(self._pairs(), (1, cost), strict=True):
            if b is not None and minute is not None:
                b.level -= amount
                minute.level -= amount
        self.day_tokens += cost
        self.day_requests += 1
        return None

    def headers(self, now: float) -> dict[str, str]:
        """The x-ratelimit-* headers as the server would write them at `now`."""
        scope = self.habits.header_scope
        out: dict[str, str] = {}
        if scope == "none":
            return out
        for name, (b, minute) in zip(("requests", "tokens"), self._pairs(), strict=True):
            shown = minute if scope == "minute" else b
            if shown is None:
                continue
            shown.refill(now)
            out[f"x-ratelimit-limit-{name}"] = str(shown.limit)
            out[f"x-ratelimit-remaining-{name}"] = str(max(0, int(shown.level)))
            out[f"x-ratelimit-reset-{name}"] = fmt_duration(shown.reset_s())
        return out


def fmt_duration(seconds: float) -> str:
    """OpenAI's way of writing a duration: 120ms, 1.5s, 2m3s, 1h2m0s."""
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs:.0f}s"


def draw_latency(base_s: float, jitter_s: float, tail: float, rng: random.Random) -> float:
    """A request's latency: base ± uniform jitter; a `tail` share of requests take 10 times it."""
    t = max(0.0, base_s + rng.uniform(-1, 1) * jitter_s) if jitter_s else base_s
    if tail and rng.random() < tail:
        t *= 10
    return t
