"""What a server charges a request against its rate limit, learned from what it says.

Servers do not count as we do. OpenAI's limiter charges an estimate of the prompt made from its
characters plus n x max output tokens; others charge their own tokenizer's count or their own
guess. Each (endpoint, model) route keeps one `Calibration` and admits by `charge(visible)`: the
server's charge predicted from what is visible before sending.

The model: charge = k x basis + output, where output is n x max output tokens (as we charge it)
and basis is one of two prompt measures, the characters estimate (ceil(characters / 4)) or
tiktoken's count; k and the basis are fitted (least squares through the origin, one fit per
basis; the basis whose fit leaves the smaller error wins, so mixed prose, code and Chinese tell a
characters-counting server from a tokenizing one). Evidence, best first:

  EXACT  a 429's "Requested R" for the very request we sent: R is the server's charge of it.
  USAGE  the prompt_tokens a server reports for a request it answered: the server's own count of
         the prompt, which is its rate charge on servers that charge what they bill.
  LEARNED  the ratio an earlier run or another host learned (`start`, from the ledger or Redis):
         ranked above usage, which on OpenAI is not its limiter's count, below this run's 429s;
         where this run's usage agrees with it within its margin, the usage fit says the charge.

A prediction comes from the best kind of evidence that has enough samples, so a server whose
usage is not what its limiter counts (OpenAI bills tiktoken's count, rate-limits characters) is
corrected by its first 429, whose exact figure then rules. Usage only ever lowers our own count:
a server may bill an overhead its limiter does not charge (7 tokens a request cost a whole-minute
job 7 points of its share), and one that charges more than it bills answers with 429s. Each
kind forgets old samples geometrically (EXACT fast: its samples are exact), so a server that
changes its accounting mid-run is followed. Without evidence the charge is our own count:
max(tiktoken, characters / 4) plus the output. The fitted prompt charge carries a margin (1 %
plus the fit's relative error) and stays within a factor of our own count: an under-estimate
costs 429s, an over-estimate only speed.

Pure: no clock, no I/O; the route feeds it each answer's evidence (lanes.Route.settle).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

# The margin on a learned prompt charge: rounding in the server's estimate (ceil per message)
# and noise in the evidence must not turn into 429s.
MARGIN = 0.01
# A learned prompt charge stays within this factor of our own count either way (a garbled
# "Requested" figure or a usage of zero must not admit ten times too fast).
MAX_FACTOR = 4.0
# The margin on a charge predicted from a learned ratio alone: one number for every request,
# while the server's charge per token of ours varies some from request to request.
LEARNED_MARGIN = 0.03


class Source(enum.IntEnum):
    USAGE = 1
    LEARNED = 2  # what an earlier run (or another host on the key) learned: `Calibration.start`
    EXACT = 3


# How fast each kind of evidence forgets (the weight an old sample keeps per new one), and how
# many samples it needs before its prediction is used.
_FORGET = {Source.USAGE: 0.9, Source.LEARNED: 0.0, Source.EXACT: 0.5}
_MIN_SAMPLES = {Source.USAGE: 3.0, Source.LEARNED: 1.0, Source.EXACT: 1.0}


@dataclass(frozen=True, slots=True)
class Visible:
    """What we know of a request before sending it (sizing.Size has all of it)."""

    chars: int  # the characters estimate of the prompt: ceil(characters / 4)
    tokens: int  # tiktoken's count of the prompt, chat formula included
    output: int  # n x max output tokens, as we charge it (assumed when the request sets none)

    @property
    def own(self) -> int:
        """Our own count, used until the server has said anything."""
        return max(self.chars, self.tokens) + self.output


@dataclass(slots=True)
class _Fit:
    """Weighted least squares of prompt charge = k x basis, through the origin, forgetting."""

    sxx: float = 0.0
    sxy: float = 0.0
    syy: float = 0.0

    def add(self, x: float, y: float, keep: float) -> None:
        self.sxx = keep * self.sxx + x * x
        self.sxy = keep * self.sxy + x * y
        self.syy = keep * self.syy + y * y

    @property
    def k(self) -> float:
        return self.sxy / self.sxx if self.sxx > 0 else 1.0

    @property
    def relative_error(self) -> float:
        """The fit's residual spread as a share of the charges it explains."""
        if self.syy <= 0:
            return 0.0
        sse = max(0.0, self.syy - self.sxy * self.sxy / self.sxx) if self.sxx > 0 else self.syy
        return math.sqrt(sse / self.syy)


@dataclass(slots=True)
class _Evidence:
    by_chars: _Fit = field(default_factory=_Fit)
    by_tokens: _Fit = field(default_factory=_Fit)
    samples: float = 0.0
    ratio: float = 1.0  # the server's charge per token of our own count, recent samples first

    def add(self, visible: Visible, prompt_charge: float, keep: float) -> None:
        self.by_chars.add(visible.chars, prompt_charge, keep)
        self.by_tokens.add(visible.tokens, prompt_charge, keep)
        self.samples = keep * self.samples + 1

    def prompt(self, visible: Visible) -> float:
        """The predicted prompt charge, margin included."""
        fit, x = min(((self.by_chars, visible.chars), (self.by_tokens, visible.tokens)),
                     key=lambda pair: pair[0].relative_error)
        return fit.k * x * (1 + MARGIN + fit.relative_error)


class Calibration:
    """One route's learned accounting (see the module docstring)."""

    def __init__(self) -> None:
        self._evidence = {source: _Evidence() for source in Source}

    def start(self, ratio: float) -> None:
        """Start from (or follow) the accounting learned before: the ledger's or another host's
        ratio (`ratio()`). It rules over this run's usage, which on OpenAI is not what its
        limiter counts (believing usage again would mean relearning the charge from 429s), and
        yields to this run's own 429 figures, which are exact."""
        if math.isfinite(ratio) and 1 / MAX_FACTOR <= ratio <= MAX_FACTOR:
            learned = self._evidence[Source.LEARNED]
            learned.ratio, learned.samples = ratio, 1.0

    def observe(self, source: Source, visible: Visible, charged: float) -> None:
        """`charged`: what the server says it charged this request (EXACT: the whole charge)
        or counted of its prompt (USAGE). Implausible figures are not evidence."""
        prompt = charged - visible.output if source is Source.EXACT else charged
        if visible.chars <= 0 or visible.tokens <= 0 or prompt <= 0:
            return
        own = max(visible.chars, visible.tokens)
        if not own / MAX_FACTOR <= prompt <= own * MAX_FACTOR:
            return
        evidence = self._evidence[source]
        evidence.add(visible, prompt, _FORGET[source])
        if source is Source.USAGE:
            prompt = min(prompt, own)  # as charge() believes it
        share = (prompt + visible.output) / visible.own
        keep = _FORGET[source]
        evidence.ratio = share if evidence.samples <= 1 else keep * evidence.ratio + (
            1 - keep) * share

    def ratio(self) -> float | None:
        """The server's charge per token of our own count, as far as the evidence says (None:
        no evidence yet): one number for the ledger's learned accounting (Budget.
        record_accounting), which `estimate` and the next run start from."""
        source = self.source
        return None if source is None else self._evidence[source].ratio

    @property
    def source(self) -> Source | None:
        """The evidence predictions come from now; None: our own count."""
        for source in sorted(Source, reverse=True):
            if self._evidence[source].samples >= _MIN_SAMPLES[source] - 1e-9:
                return source
        return None

    def charge(self, visible: Visible) -> int:
        """What to admit this request at: the server's charge as far as we know it."""
        source = self.source
        if source is None or visible.chars <= 0 or visible.tokens <= 0:
            return visible.own
        if source is Source.LEARNED:
            return self._learned_charge(visible)
        return self._fitted_charge(source, visible)

    def _learned_charge(self, visible: Visible) -> int:
        """One number for the whole charge carries the margin a fitted prompt does."""
        if self._usage_agrees():
            return self._fitted_charge(Source.USAGE, visible)
        ratio = self._evidence[Source.LEARNED].ratio * (1 + LEARNED_MARGIN)
        return math.ceil(visible.own * ratio)

    def _usage_agrees(self) -> bool:
        """Does this run's usage say what the learned ratio says, within its margin? Then the
        usage, fitted request by request, is the better word: a host that follows what another
        host learned from the same usage is as fast as alone (one number and its margin for the
        rest of the run cost four hosts sharing Redis 3 points, bench/README.md). Usage that
        disagrees (on OpenAI it is not what the limiter counts) leaves the learned ratio."""
        usage, learned = self._evidence[Source.USAGE], self._evidence[Source.LEARNED]
        return (usage.samples >= _MIN_SAMPLES[Source.USAGE] - 1e-9
                and abs(usage.ratio / learned.ratio - 1) <= LEARNED_MARGIN)

    def _fitted_charge(self, source: Source, visible: Visible) -> int:
        own = max(visible.chars, visible.tokens)
        prompt = self._evidence[source].prompt(visible)
        # Usage is what the server bills, which may include what its limiter does not count
        # (a fixed overhead per request): it may lower our count, never raise it. Only a 429's
        # figure can, and a server that counts more than both says so with its first 429.
        ceiling = own if source is Source.USAGE else own * MAX_FACTOR
        prompt = min(ceiling, max(own / MAX_FACTOR, prompt))
        return math.ceil(prompt) + visible.output
