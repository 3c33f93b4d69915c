"""What a user watches while a job runs: a live rich display on a terminal, plain lines elsewhere.

A Listener of engine events; the CLI owns it. Nothing in the core imports this module.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
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
from rich.table import Table
from rich.text import Text

from batchrun.events import (
    BudgetUsed,
    Event,
    JobStarted,
    RequestFinished,
    RequestSent,
    RouteChanged,
    StateChanged,
    Stats,
    Throttled,
)
from batchrun.files.ledger import fmt_wait, until_midnight, utc_now
from batchrun.policy.tiers import Limits, daily_source, family
from batchrun.report.tally import EndpointTally
from batchrun.routing.rules import BACK

PLAIN_EVERY_S = 10.0
RATE_WINDOW_S = 60


class _Rates:
    """Requests and tokens finished in the last minute, kept per second: memory and time stay
    constant whatever the rate (a deque per event held 400,000 entries at 7,000 req/s)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._seconds: deque[list[int]] = deque()  # [second, requests, tokens]

    def add(self, tokens: int) -> None:
        second = int(self._clock())
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1][1] += 1
            self._seconds[-1][2] += tokens
        else:
            self._seconds.append([second, 1, tokens])

    def last_minute(self) -> tuple[int, int]:
        """Counted, not extrapolated: limits are per sliding minute, and so is this."""
        oldest = int(self._clock()) - RATE_WINDOW_S
        while self._seconds and self._seconds[0][0] <= oldest:
            self._seconds.popleft()
        return sum(s[1] for s in self._seconds), sum(s[2] for s in self._seconds)


@dataclass(slots=True)
class _Model:
    """What the display knows of one model's share of the job."""

    limits: Limits
    rates: _Rates
    total: int = 0
    finished: int = 0
    sent: int = 0
    charged: int = 0  # tokens charged at admission, over `sent`


def eta_s(left: int, limits: Limits, mean_charge: float | None, observed_per_s: float | None,
          weight: float) -> float | None:
    """Seconds to finish `left` requests of one model; None when nothing tells the rate yet.

    The rate the limits allow (the estimate's arithmetic) carries the ETA at first: the rate
    observed in the opening seconds is distorted by the burst a full bucket allows. The observed
    rate takes over as `weight` (0..1) grows, capped at the limits' rate, so a job held back by
    latency or 429s shows it, and a burst never promises more than the limits can sustain.
    """
    if left <= 0:
        return 0.0
    allowed = [limits.rpm / 60] if limits.rpm else []
    if limits.tpm and mean_charge:
        allowed.append(limits.tpm / 60 / mean_charge)
    limit_rate = min(allowed, default=None)
    if limit_rate is None:
        rate = observed_per_s
    elif observed_per_s is None:
        rate = limit_rate
    else:
        rate = (1 - weight) * limit_rate + weight * min(observed_per_s, limit_rate)
    return left / rate if rate else None


def compact(n: float) -> str:
    """12,345 -> 12.3K; 2,000,000 -> 2M: short enough for an 80-column status line."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{n:.0f}"


def _against(value: float, limit: int, unit: str) -> str:
    unit = f" {unit}" if unit else ""
    if not limit:
        return f"{compact(value)}{unit}"
    return f"{compact(value)}/{compact(limit)}{unit} {value / limit:.0%}"


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


def describe_daily(limits: Limits) -> str:
    """What ends a job's day on the per-minute path, and where each limit came from."""
    parts = [f"{_exact(n)} {what} ({daily_source(limits, name)})"
             for n, what, name in ((limits.rpd, "requests", "rpd"), (limits.tpd, "tokens", "tpd"))
             if n]
    parts.append("the server's per-day 429")
    budget = "" if limits.tpd else " · no daily token budget (--tpd N keeps one)"
    return "the day ends at " + " or ".join(parts) + budget


class PipeSafeConsole(Console):
    """A console whose reader may go away (`batchrun submit … | head`). rich's answer to a
    broken pipe is SystemExit, which, raised inside an engine event, would end the job as
    crashed; the job goes on instead and the results file is its result. What this console
    prints from then on is dropped."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        drop_output(self.file)


def drop_output(stream: IO[str]) -> None:
    """Point a stream whose reader has gone at /dev/null: Python's own flush at exit (of what
    is still buffered) would otherwise fail and change the exit code."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: not a real file
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class ProgressDisplay:
    """Subscribe with `display(event)`; use as a context manager around the run."""

    def __init__(self, stats: Stats, stream: IO[str], quiet: bool = False,
                 console: Console | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 endpoints: EndpointTally | None = None) -> None:
        self.stats = stats
        self._endpoints = endpoints  # --endpoints: a gauge line per endpoint
        self._endpoint_rates: dict[str, _Rates] = {}
        self._endpoint_budgets: dict[str, BudgetUsed] = {}
        self._clock = clock
        self._models: dict[str, _Model] = {}
        self._started_at = clock()
        self._cooling_until = 0.0
        self.quiet = quiet
        self.console = console or PipeSafeConsole(file=stream, highlight=False)
        self._budgets: dict[str, BudgetUsed] = {}
        if not self.console.is_terminal:
            # A log file or pipe: one event, one line, however long.
            self.console.soft_wrap = True
        self.live_mode = self.console.is_terminal and not quiet
        self._rates = _Rates(clock)
        self._last_plain = -math.inf
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

    def note(self, message: str) -> None:
        """A message for the user while the job runs (quiet or not). Printed by the display's
        own console, so a live display puts it above itself; printed apart, it would be
        overwritten by the display's next refresh."""
        self.console.print(message, markup=False)

    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        match event:
            case JobStarted():
                self._started(event)
            case RequestSent(model=model, cost=cost):
                m = self._model(model)
                m.sent += 1
                m.charged += cost
            case RequestFinished(model=model, from_cache=True):
                # Not sent: no part of the last minute's requests against the limits.
                self._model(model).finished += 1
            case RequestFinished(model=model, tokens_in=tin, tokens_out=tout):
                self._rates.add(tin + tout)
                if event.endpoint:
                    self._endpoint_rates.setdefault(event.endpoint, _Rates(self._clock)).add(
                        tin + tout)
                m = self._model(model)
                m.finished += 1
                m.rates.add(tin + tout)
            case BudgetUsed(model=model, endpoint=name):
                if name:  # --endpoints: each endpoint's own budget, on its own line
                    self._endpoint_budgets[name] = event
                else:
                    self._budgets[model] = event
            case Throttled(pause_s=pause):
                self._cooling_until = max(self._cooling_until, self._clock() + pause)
            case RouteChanged(endpoint=name, model=model, state=state, detail=detail):
                said = (f"is back in rotation for {model}" if state == BACK else
                        f"is out for {model}: {state} ({detail})")
                self.console.print(f"endpoint {name} {said}", markup=False)
            case StateChanged(state=state, detail=detail):
                self._detail = detail if state in ("draining", "paused-daily", "batch") else ""
                if not self.live_mode:
                    self._plain(force=True)
        if self._live is None and not isinstance(event, JobStarted):
            self._plain()

    def _model(self, name: str) -> _Model:
        m = self._models.get(name)
        if m is None:
            limits = self.stats.limits.get(name, Limits())
            m = self._models[name] = _Model(limits, _Rates(self._clock))
        return m

    def _started(self, event: JobStarted) -> None:
        self._started_at = self._clock()
        # Which model the already-done lines belong to is not known without reading them all:
        # share them out in proportion, which is exact for one model and close for several.
        valid = sum(event.models.values())
        for name, count in event.models.items():
            done = round(event.already_done * count / valid) if valid else 0
            self._models[name] = _Model(event.limits.get(name, Limits()), _Rates(self._clock),
                                        total=max(0, count - done))
        done_note = f" ({event.already_done:,} already done)" if event.already_done else ""
        self.console.print(f"batchrun: {event.total:,} requests{done_note} in {event.input}",
                           markup=False)
        self.console.print(f"  results → {event.output}", markup=False)
        for model, limits in event.limits.items():
            self.console.print(f"  {model}: {describe_limits(limits)}", markup=False)
            self.console.print(f"  {model}: {describe_daily(limits)}", markup=False)
            if limits == Limits() and family(model) is None:
                self.console.print(
                    f"  (no preset limits for {model}: batchrun paces by the server's "
                    "x-ratelimit headers and 429s; give --rpm/--tpm/--tpd to set them)",
                    markup=False)
        via = f" via proxy {event.proxy}" if event.proxy else ""
        to = ", ".join(f"{name} ({host})" for name, host in event.endpoints.items())
        self.console.print(f"  sending to {to or event.base_url}{via}", markup=False)

    def _eta_s(self) -> float | None:
        """The job ends when its slowest model does: each runs in its own lane."""
        elapsed = self._clock() - self._started_at
        weight = min(1.0, elapsed / RATE_WINDOW_S)
        etas: list[float] = []
        for m in self._models.values():
            if not m.total:
                continue
            requests, tokens = m.rates.last_minute()
            observed = requests / max(1.0, min(elapsed, RATE_WINDOW_S)) if requests else None
            mean = m.charged / m.sent if m.sent and m.charged else (
                tokens / requests if requests else None)
            eta = eta_s(m.total - m.finished, m.limits, mean, observed, weight)
            if eta is None:
                return None
            etas.append(eta)
        return max(etas, default=None)

    def _when(self) -> str:
        s = self.stats
        if s.state == "paused-daily":
            return f"resumes 00:00 UTC, in {fmt_wait(until_midnight(utc_now()))}"
        if s.state in ("running", "cooling"):
            eta = self._eta_s()
            return "ETA ?" if eta is None else f"ETA {_fmt_eta(eta)}"
        return ""

    def _state_line(self) -> str:
        s = self.stats
        when = self._when()
        return " · ".join(part for part in (
            s.state, when, f"in flight {s.in_flight:,}", f"failed {s.failed:,}",
            f"429s {s.throttled:,}", f"{s.from_cache:,} from cache" if s.from_cache else "",
            ) if part)

    def _gauges(self, name: str, m: _Model, units: bool = True) -> tuple[str, str, str]:
        """Requests and tokens of the last minute, and today's budget, against their limits."""
        requests, tokens = m.rates.last_minute()
        req, tok = ("req", "tok") if units else ("", "")
        today = ""
        budget = self._budgets.get(name)
        if budget is not None and budget.tpd:
            today = _against(budget.tokens, budget.tpd, tok)
        elif budget is not None and budget.rpd:
            today = _against(budget.requests, budget.rpd, "req")
        return _against(requests, m.limits.rpm, req), _against(tokens, m.limits.tpm, tok), today

    def _ranked(self) -> list[tuple[str, _Model]]:
        """The models in the job, the busiest against its limits first. "?" holds bad input
        lines: recorded, never sent, with no limits."""
        models = [(n, m) for n, m in self._models.items()
                  if n != "?" and (m.finished or m.sent or m.total)]

        def load(item: tuple[str, _Model]) -> float:
            m = item[1]
            requests, tokens = m.rates.last_minute()
            return max(requests / m.limits.rpm if m.limits.rpm else 0.0,
                       tokens / m.limits.tpm if m.limits.tpm else 0.0)

        return sorted(models, key=load, reverse=True)

    def _rate_text(self) -> str:
        """The gauges as one line: every model, named when there are several."""
        ranked = self._ranked() or [("", _Model(Limits(), _Rates(self._clock)))]
        parts = []
        for name, m in ranked:
            req, tok, today = self._gauges(name, m)
            named = f"{name} " if len(ranked) > 1 else ""
            parts.append(f"{named}{req} · {tok}" + (f" · today {today}" if today else ""))
        return "last minute: " + " | ".join(parts)

    def _rate_renderable(self) -> RenderableType:
        """One line for one model; a row per model when there are several, so that each
        model's gauges stay within 80 columns."""
        ranked = self._ranked()
        if len(ranked) <= 1:
            return Text(self._rate_text(), style="dim")
        table = Table(box=None, padding=(0, 2, 0, 0), pad_edge=False, show_edge=False,
                      style="dim", header_style="dim")
        for column in ("last minute", "requests", "tokens", "today"):
            table.add_column(column, no_wrap=True, overflow="ellipsis")
        for name, m in ranked:
            table.add_row(name, *self._gauges(name, m, units=False))
        return table

    def _detail_line(self) -> str:
        left = self._cooling_until - self._clock()
        if left > 0 and self.stats.state in ("running", "cooling"):
            return f"cooling down {left:.1f}s after a 429 (rate limit)"
        return self._detail

    def render(self) -> Group:
        self._progress.update(self._task, total=self.stats.total or None,
                              completed=self.stats.done)
        lines: list[RenderableType] = [self._progress, Text(self._state_line()),
                                       self._rate_renderable()]
        lines += [Text(line, style="dim") for line in self._endpoint_lines()]
        detail = self._detail_line()
        if detail:
            lines.append(Text(detail, style="yellow"))
        return Group(*lines)

    def _plain(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last_plain < PLAIN_EVERY_S:
            return
        self._last_plain = now
        s = self.stats
        detail = self._detail_line()
        self.console.print(f"[{s.done:,}/{s.total:,}] {self._state_line()} · {self._rate_text()}"
                           + (f" · {detail}" if detail else ""), markup=False)
        for line in self._endpoint_lines():
            self.console.print(f"  {line}", markup=False)

    def _endpoint_lines(self) -> list[str]:
        """--endpoints: one compact gauge line per endpoint (last minute, its 429s, out)."""
        if self._endpoints is None:
            return []
        lines = []
        for name, c in sorted(self._endpoints.endpoints.items()):
            rates = self._endpoint_rates.get(name)
            requests, tokens = rates.last_minute() if rates else (0, 0)
            out = "".join(f" · out ({model}: {why})" for model, why in c.out.items())
            budget = self._endpoint_budgets.get(name)
            today = ""
            if budget is not None and (budget.tpd or budget.rpd):
                today = " · today " + (_against(budget.tokens, budget.tpd, "tok") if budget.tpd
                                       else _against(budget.requests, budget.rpd, "req"))
            lines.append(f"{name}: {compact(requests)} req · {compact(tokens)} tok last minute · "
                         f"{c.ok + c.failed:,} done · {c.rate_limited:,} 429s{today}{out}")
        return lines
