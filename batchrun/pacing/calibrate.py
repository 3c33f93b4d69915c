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
  LEARNED  the fit an earlier run or another host learned (`start`, from the ledger or Redis):
         ranked above usage, which on OpenAI is not its limiter's count, below this run's 429s;
         where this run's usage agrees with it within its margin, the usage fit says the charge.

What is kept between runs and hosts (`Learned`) is the prompt's part alone, as k and its basis:
the output is always charged as the request sets it. A ratio of the whole charge learned on
Chinese prose with max_tokens 20 (about 0.55) admitted an English request with max_tokens 2000
at half its charge; a ratio to our own count of the prompt still under-admits English after
Chinese on a characters-counting server, while k x characters is right for both.

A prediction comes from the best kind of evidence that has enough samples, so a server whose
usage is not what its limiter counts (OpenAI bills tiktoken's count, rate-limits characters) is
corrected by its first 429, whose exact figure then rules. Usage only ever lowers our own count:
a server may bill an overhead its limiter does not charge (7 tokens a request cost a whole-minute
job 7 points of its share), and one that charges more than it bills answers with 429s. Each
kind forgets old samples geometrically (EXACT fast: its samples are exact), so a server that
changes its accounting mid-run is followed. Without evidence the charge is our own count:
max(tiktoken, characters / 4) plus the output. The fitted prompt charge carries a margin (1 %
plus the fit's relative error; in whole tokens, `whole_tokens`) and stays within a factor of
our own count: an under-estimate costs 429s, an over-estimate only speed.

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
# How much better (in relative error) the other basis must fit the charges to take over.
BASIS_MARGIN = 0.005
# The margin on a prompt charge predicted from a learned k alone: one number for every request,
# while the server's charge per token of ours varies some from request to request.
LEARNED_MARGIN = 0.03


CHARS, TOKENS = "chars", "tokens"
# Stored ratios of versions before `Learned` were of the whole charge, a bare number: they do
# not parse as a `Learned` and are dropped (relearned), never read as a prompt's k.
_BASES = (CHARS, TOKENS)


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
        return self.own_prompt + self.output

    @property
    def own_prompt(self) -> int:
        return max(self.chars, self.tokens)

    def basis(self, name: str) -> int:
        return self.chars if name == CHARS else self.tokens


@dataclass(frozen=True, slots=True)
class Learned:
    """The server's prompt charge as learned: k x the prompt's `basis` count (CHARS, the
    characters estimate, or TOKENS, tiktoken's), the output charged as the request sets it.
    What the ledger and Redis keep for the next run, every host and `estimate`."""

    basis: str
    k: float

    def prompt(self, visible: Visible) -> float:
        return self.k * visible.basis(self.basis)

    @property
    def plausible(self) -> bool:
        """Evidence, not a garbled figure: a known basis and a k within MAX_FACTOR of 1."""
        return self.basis in _BASES and math.isfinite(self.k) and (
            1 / MAX_FACTOR <= self.k <= MAX_FACTOR)

    def text(self) -> str:
        """As the ledger and Redis store it: versioned by its form (see `parse`)."""
        return f"{self.basis}:{self.k!r}"

    @classmethod
    def parse(cls, stored: object) -> Learned | None:
        """A stored Learned, or None: absent, damaged, implausible, or a whole-charge ratio
        of an earlier version (a bare number), which is not a prompt's k."""
        text = stored.decode(errors="replace") if isinstance(stored, bytes) else str(stored)
        basis, _, k_text = text.partition(":")
        try:
            k = float(k_text)
        except ValueError:
            return None
        learned = cls(basis, k)
        return learned if learned.plausible else None


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
    learned: Learned | None = None  # LEARNED's: what `start` was given
    basis: str = CHARS  # the basis that explains the charges, as far as `_best` has said

    def add(self, visible: Visible, prompt_charge: float, keep: float) -> None:
        self.by_chars.add(visible.chars, prompt_charge, keep)
        self.by_tokens.add(visible.tokens, prompt_charge, keep)
        self.samples = keep * self.samples + 1

    def _best(self) -> tuple[str, _Fit]:
        # One basis must explain the charges clearly better to take over from the other: where
        # both explain them alike (short, even prompts), the choice followed each answer's
        # noise, and every change of basis was a write to the ledger or Redis.
        chars, tokens = self.by_chars.relative_error, self.by_tokens.relative_error
        if self.basis == CHARS and tokens + BASIS_MARGIN < chars:
            self.basis = TOKENS
        elif self.basis == TOKENS and chars + BASIS_MARGIN < tokens:
            self.basis = CHARS
        return (CHARS, self.by_chars) if self.basis == CHARS else (TOKENS, self.by_tokens)

    def prompt(self, visible: Visible) -> tuple[float, float]:
        """The predicted prompt charge and the margin on it (a share of it)."""
        if self.learned is not None:
            # One k for every request, while the server's charge per unit varies some.
            return self.learned.prompt(visible), LEARNED_MARGIN
        basis, fit = self._best()
        return fit.k * visible.basis(basis), MARGIN + fit.relative_error

    def summary(self) -> Learned:
        if self.learned is not None:
            return self.learned
        basis, fit = self._best()
        return Learned(basis, fit.k)


class Calibration:
    """One route's learned accounting (see the module docstring)."""

    def __init__(self) -> None:
        self._evidence = {source: _Evidence() for source in Source}

    def start(self, learned: Learned) -> None:
        """Start from (or follow) the accounting learned before: the ledger's or another host's
        (`learned()`). It rules over this run's usage, which on OpenAI is not what its limiter
        counts (believing usage again would mean relearning the charge from 429s), and yields
        to this run's own 429 figures, which are exact."""
        if learned.plausible:
            evidence = self._evidence[Source.LEARNED]
            evidence.learned, evidence.samples = learned, 1.0

    def observe(self, source: Source, visible: Visible, charged: float) -> None:
        """`charged`: what the server says it charged this request (EXACT: the whole charge)
        or counted of its prompt (USAGE). Implausible figures are not evidence."""
        prompt = charged - visible.output if source is Source.EXACT else charged
        if visible.chars <= 0 or visible.tokens <= 0 or prompt <= 0:
            return
        own = visible.own_prompt
        if not own / MAX_FACTOR <= prompt <= own * MAX_FACTOR:
            return
        self._evidence[source].add(visible, prompt, _FORGET[source])

    def _usage_agrees(self) -> bool:
        """Does this run's usage say what the learned fit says, within its margin? Then the usage,
        fitted request by request, is the better word: a host that follows what another host
        learned from the same usage is as fast as alone (one k and its margin for the rest of the
        run cost four hosts sharing Redis 3 points, bench/README.md). Usage that disagrees (on
        OpenAI it is not what the limiter counts) leaves the learned fit in charge."""
        usage, learned = self._evidence[Source.USAGE], self._evidence[Source.LEARNED].learned
        if learned is None or usage.samples < _MIN_SAMPLES[Source.USAGE] - 1e-9:
            return False
        fit = usage.by_chars if learned.basis == CHARS else usage.by_tokens
        return fit.k > 0 and abs(fit.k / learned.k - 1) <= LEARNED_MARGIN

    def learned(self) -> Learned | None:
        """The server's prompt charge as far as the evidence says (None: no evidence yet), for
        the ledger's learned accounting (Budget.record_accounting), which `estimate` and the
        next run start from."""
        source = self.source
        return None if source is None else self._evidence[source].summary()

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
        if source is Source.LEARNED and self._usage_agrees():
            source = Source.USAGE
        own = visible.own_prompt
        prompt = whole_tokens(*self._evidence[source].prompt(visible))
        # Usage is what the server bills, which may include what its limiter does not count
        # (a fixed overhead per request): it may lower our count, never raise it. Only a 429's
        # figure can, and a server that counts more than both says so with its first 429.
        ceiling = own if source is Source.USAGE else math.floor(own * MAX_FACTOR)
        return min(ceiling, max(math.ceil(own / MAX_FACTOR), prompt)) + visible.output


def whole_tokens(predicted: float, margin: float) -> int:
    """A predicted charge with its margin, in the whole tokens a server charges: the two rounded
    to the nearest token (a half up), never below the prediction rounded up. A margin under half
    a token, charged as a whole one, was 7 % of a 14-token prompt (bench cell T: 35 where the
    server charged 34); from half a token up it is kept (ten tokens of a 1,000-token prompt)."""
    # The tolerance: a fit of k = 1 times 14 may come out 14.000000000000002, not a 15th token.
    up = math.ceil(predicted - 1e-9)
    return max(up, math.floor(predicted * (1 + margin) + 0.5))
