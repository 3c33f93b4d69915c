"""What a user watches while a job runs: a live rich display on a terminal, plain lines elsewhere.

A Listener of engine events; the CLI owns it. Nothing in the core imports this module.
"""

from __future__ import annotations

import time
from collections import deque
from typing import IO, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from batchrun.events import (
    BudgetUsed,
    Event,
    JobStarted,
    RequestFinished,
    StateChanged,
    Stats,
    Throttled,
)
from batchrun.tiers import Limits

PLAIN_EVERY_S = 10.0
RATE_WINDOW_S = 60


class _Rates:
    """Requests and tokens finished in the last minute, kept per second: memory and time stay
    constant whatever the rate (a deque per event held 400,000 entries at 7,000 req/s)."""

    def __init__(self) -> None:
        self._seconds: deque[list[int]] = deque()  # [second, requests, tokens]

    def add(self, tokens: int) -> None:
        second = int(time.monotonic())
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1][1] += 1
            self._seconds[-1][2] += tokens
        else:
            self._seconds.append([second, 1, tokens])

    def last_minute(self) -> tuple[int, int]:
        """Counted, not extrapolated: limits are per sliding minute, and so is this."""
        oldest = int(time.monotonic()) - RATE_WINDOW_S
        while self._seconds and self._seconds[0][0] <= oldest:
            self._seconds.popleft()
        return sum(s[1] for s in self._seconds), sum(s[2] for s in self._seconds)


def compact(n: float) -> str:
    """12,345 -> 12.3K; 2,000,000 -> 2M: short enough for an 80-column status line."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{n:.0f}"


def _against(value: float, limit: int, unit: str) -> str:
    if not limit:
        return f"{compact(value)} {unit}"
    return f"{compact(value)}/{compact(limit)} {unit} ({value / limit:.0%})"


def _exact(n: int) -> str:
    """Limits are shown exactly: 2M and 200K, but 123,456 as it was given."""
    short = compact(n)
    return short if short[-1].isdigit() or float(short[:-1]) * {
        "K": 1e3, "M": 1e6, "B": 1e9}[short[-1]] == n else f"{n:,}"


def _fmt_eta(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def describe_limits(limits: Limits) -> str:
    parts = [(limits.rpm, "RPM"), (limits.tpm, "TPM"), (limits.rpd, "RPD"), (limits.tpd, "TPD")]
    return " · ".join(f"{_exact(v) if v else 'unlimited'} {name}" for v, name in parts)


class ProgressDisplay:
    """Subscribe with `display(event)`; use as a context manager around the run."""

    def __init__(self, stats: Stats, stream: IO[str], quiet: bool = False,
                 console: Console | None = None) -> None:
        self.stats = stats
        self.quiet = quiet
        self.console = console or Console(file=stream, highlight=False)
        self._budgets: dict[str, BudgetUsed] = {}
        if not self.console.is_terminal:
            # A log file or pipe: one event, one line, however long.
            self.console.soft_wrap = True
        self.live_mode = self.console.is_terminal and not quiet
        self._rates = _Rates()
        self._last_plain = 0.0
        self._detail = ""
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._task = self._progress.add_task("batchrun", total=None)
        self._live: Live | None = None

    def __enter__(self) -> ProgressDisplay:
        if self.live_mode:
            # Rendered at each refresh (4 a second), not at each event: thousands a second.
            self._live = Live(console=self.console, refresh_per_second=4, transient=False,
                              get_renderable=self.render)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(None, None, None)
            self._live = None

    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        match event:
            case JobStarted():
                self._started(event)
            case RequestFinished(tokens_in=tin, tokens_out=tout):
                self._rates.add(tin + tout)
            case BudgetUsed(model=model):
                self._budgets[model] = event
            case Throttled(pause_s=pause):
                self._detail = f"cooling down {pause:.1f}s after a 429 (rate limit)"
            case StateChanged(state=state, detail=detail):
                self._detail = detail if state in ("draining", "paused-daily") else ""
                if not self.live_mode:
                    self._plain(force=True)
        if self._live is None and not isinstance(event, JobStarted):
            self._plain()

    def _started(self, event: JobStarted) -> None:
        self.console.print(
            f"batchrun: {event.total:,} requests in {event.input} → {event.output}"
            + (f" ({event.already_done:,} already done)" if event.already_done else "")
        )
        for model, limits in event.limits.items():
            self.console.print(f"  {model}: {describe_limits(limits)}")
        self.console.print(f"  sending to {event.base_url}")

    def _limits(self) -> tuple[int, int]:
        rpm = sum(lim.rpm for lim in self.stats.limits.values())
        tpm = sum(lim.tpm for lim in self.stats.limits.values())
        return rpm, tpm

    def _eta_s(self) -> float | None:
        """Time left at the slower of what the limits allow and what we achieve now.

        A rate-of-progress ETA is fooled by the opening burst; the limits are not.
        """
        s = self.stats
        left = s.total - s.done
        if left <= 0:
            return 0.0
        requests, tokens = self._rates.last_minute()
        rates = [requests / 60] if requests else []
        rpm, tpm = self._limits()
        if rpm:
            rates.append(rpm / 60)
        if tpm and requests and tokens:
            rates.append(tpm / 60 / (tokens / requests))
        rate = min(rates, default=0.0)
        return left / rate if rate > 0 else None

    def _state_line(self) -> str:
        s = self.stats
        eta = self._eta_s()
        eta_text = "?" if eta is None else _fmt_eta(eta)
        return (f"{s.state} · ETA {eta_text} · in flight {s.in_flight:,} · "
                f"failed {s.failed:,} · 429s {s.throttled:,}")

    def _rate_line(self) -> str:
        requests, tokens = self._rates.last_minute()
        rpm, tpm = self._limits()
        line = f"last minute: {_against(requests, rpm, 'req')} · {_against(tokens, tpm, 'tok')}"
        if self._budgets:
            used = sum(b.tokens for b in self._budgets.values())
            budget = sum(b.tpd for b in self._budgets.values())
            line += f" · today {_against(used, budget, 'tok')}" if budget else ""
        return line

    def render(self) -> Group:
        self._progress.update(self._task, total=self.stats.total or None,
                              completed=self.stats.done)
        lines: list[RenderableType] = [
            self._progress, Text(self._state_line()), Text(self._rate_line(), style="dim")]
        if self._detail:
            lines.append(Text(self._detail, style="yellow"))
        return Group(*lines)

    def _plain(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_plain < PLAIN_EVERY_S:
            return
        self._last_plain = now
        s = self.stats
        detail = f" · {self._detail}" if self._detail else ""
        self.console.print(f"[{s.done:,}/{s.total:,}] {self._state_line()} · {self._rate_line()}"
                           f"{detail}", markup=False)
