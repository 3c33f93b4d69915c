"""--max-cost: the job's spend beside the daily budget, for the sync engine (per request) and
the Batch API path (per part). A request or part is sent only when its worst case fits under the
cap with what is spent and what is in flight; each answer settles at its real cost and gives the
rest back. The sums live here; the arithmetic is policy.spend's, the durable record
files.spend's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from batchrun.errors import BadLine, InputError
from batchrun.files.jobs import read_jobs
from batchrun.files.spend import KEPT, SpendJournal
from batchrun.policy.classify import Outcome
from batchrun.policy.decide import outcome_usage
from batchrun.policy.prices import Price, Via, price
from batchrun.policy.request import CHAT_URL
from batchrun.policy.sizing import Size
from batchrun.policy.spend import (
    answer_usd,
    body_worst_usd,
    fits,
    unseen_tokens,
    worst_case_usd,
)
from batchrun.policy.tokens import max_output_tokens
from batchrun.routing.spec import EndpointConfig

SHOWN = 10  # lines named in the refusal; the count says how many more


class Spend:
    """One attempt's share of the cap: its price (its endpoint's), its worst case, and its key
    in the spend file once sent."""

    __slots__ = ("key", "price", "worst")

    def __init__(self, price: Price | None, worst: float) -> None:
        self.price, self.worst, self.key = price, worst, ""


class CostCap:
    """The job's spend for this run, on one path's prices. `cap` None: nothing is capped, the
    spend is only recorded (for `job_cost_usd`). `price_of(model, endpoint)`: the price of a
    model at an endpoint of --endpoints ("" without), its own or the table's."""

    def __init__(self, cap: float | None, journal: SpendJournal,
                 price_of: Callable[[str, str], Price | None], via: Via = Via.SYNC) -> None:
        self.cap, self.journal, self.via = cap, journal, via
        self._price_of = price_of
        self.at_start = journal.spent
        self.reserved = 0.0
        self.in_flight = 0
        self.settled = asyncio.Event()

    def on_path(self, via: Via) -> CostCap:
        """The same cap and spend record at another path's prices (the Batch API's)."""
        return CostCap(self.cap, self.journal, self._price_of, via)

    @property
    def spent(self) -> float:
        """The whole job's spend so far (every run)."""
        return self.journal.spent

    def reserve(self, model: str, size: Size, endpoint: str = "",
                body: dict[str, Any] | None = None) -> Spend | None:
        """Hold a request's worst case; None when it does not fit under the cap now. Under a
        cap, a model with no price and a chat line with no maximum output were refused before
        the run (`refuse_uncappable`); without one, an unpriced model holds nothing."""
        p = self._price_of(model, endpoint)
        worst = self.worst(model, size, endpoint, body)
        # Batch API parts still on the server (`resume --via sync` runs beside them) hold
        # their worst case too, until they are collected.
        held = self.reserved + self.journal.kept_usd
        if self.cap is not None and not fits(self.cap, self.spent, held, worst):
            return None
        self.reserved += worst
        self.in_flight += 1
        return Spend(p, worst)

    def worst(self, model: str, size: Size, endpoint: str = "",
              body: dict[str, Any] | None = None) -> float:
        """A request's worst case at its endpoint's price on this path (0: no price)."""
        p = self._price_of(model, endpoint)
        if p is None:
            return 0.0
        return worst_case_usd(p, size.prompt, size.chars, size.max_output or 0, self.via,
                              unseen_tokens(body or {}, model))

    def remaining(self) -> float:
        """What the cap leaves after what is spent and what is held (inf: no cap)."""
        if self.cap is None:
            return float("inf")
        return self.cap - self.spent - self.journal.held_usd

    def request_worst(self, model: str, url: str, body: dict[str, Any], prompt: int) -> float:
        """A request's worst case at this path's prices, from its body (the Batch API path
        plans from lines, not Sizes)."""
        p = self._price_of(model, "")
        return 0.0 if p is None else body_worst_usd(p, url, body, prompt, self.via)

    def hold_part(self, key: str, worst: float) -> bool:
        """A Batch API part about to be created: held (and recorded, kept across runs until it
        is collected) if its worst case fits; False when it does not (nothing is held). A part
        held already (its create was asked by an earlier run) stays held."""
        name = KEPT + key
        if name in self.journal.held:
            return True
        if self.cap is not None and not fits(self.cap, self.spent, self.journal.held_usd,
                                             worst):
            return False
        if self.cap is not None:
            self.journal.reserve(worst, name)
        return True

    def settle_part(self, key: str, model: str, billed: list[int], worst: float) -> None:
        """A collected part: its answered lines' usage (`billed`: prompt, completion, cached
        prompt tokens, answers without usage) at this path's prices; its hold is closed. An
        answer that reports no usage may have billed anything up to its worst: the part then
        keeps its whole worst case."""
        p = self._price_of(model, "")
        usd = 0.0 if p is None else p.cost(billed[0], billed[1], billed[2], self.via)
        if billed[3]:
            usd = max(usd, worst)
        name = KEPT + key
        if name in self.journal.held or usd:
            self.journal.settle(name if name in self.journal.held else "-", usd)

    def release(self, spend: Spend) -> None:
        """An admitted request that was not sent after all gives its worst case back whole."""
        self._close(spend)

    def sent(self, spend: Spend) -> None:
        """Recorded before the request leaves: a kill -9 from here on counts it at its worst.
        Without a cap too: a later `resume --max-cost` counts this run's spend, and a request
        billed but unanswered at a kill -9 must not be missing from it."""
        if self.cap is not None or spend.worst:
            spend.key = self.journal.reserve(spend.worst)

    def settle(self, spend: Spend, outcome: Outcome | None) -> None:
        """The attempt's answer (None: abandoned unanswered), recorded before its result line
        is written, so the file never says less than the server billed for lines in the
        output."""
        p, usd = spend.price, spend.worst
        if outcome is not None and p is not None:
            usd = answer_usd(p, outcome_usage(outcome), outcome.body, outcome.status,
                             spend.worst, self.via)
        if spend.key or usd:
            self.journal.settle(spend.key or "-", usd)
        self._close(spend)

    def _close(self, spend: Spend) -> None:
        self.reserved = max(0.0, self.reserved - spend.worst)
        self.in_flight -= 1
        self.settled.set()


def refuse_uncappable(max_cost: float, models: Iterable[str], input_path: Path,
                      model: str, priced: Callable[[str], bool]) -> None:
    """Before anything is sent: a cap can be kept only on requests whose most possible bill is
    known. A model with no price (`priced`: where the job may send it) has none (it is never
    counted as free); a chat line that sets no max_tokens (or max_completion_tokens) could
    answer at any length. Raises InputError (exit 2) naming them."""
    unpriced = sorted(m for m in models if not priced(m))
    if unpriced:
        raise InputError(
            f"--max-cost {max_cost:g} cannot be kept: batchrun has no list price for "
            f"{', '.join(unpriced)}, so it cannot know what a request costs. Drop --max-cost, "
            "use a model from the price table (batchrun estimate lists the prices), or give "
            "its price in the endpoints file ([endpoint.prices.\"MODEL\"]).")
    open_ended = [(item.line_no, item.custom_id)
                  for item in read_jobs(input_path, model)
                  if not isinstance(item, BadLine) and item.url == CHAT_URL
                  and max_output_tokens(item.body) is None]
    if open_ended:
        named = ", ".join(f"{cid!r} (line {n})" for n, cid in open_ended[:SHOWN])
        more = f" and {len(open_ended) - SHOWN:,} more" if len(open_ended) > SHOWN else ""
        one = len(open_ended) == 1
        raise InputError(
            f"--max-cost needs every request's most possible cost, and {len(open_ended):,} "
            f"line{'' if one else 's'} of {input_path} set{'s' if one else ''} no max_tokens (or "
            f"max_completion_tokens), so {'its answer' if one else 'their answers'} could be any "
            f"length: {named}{more}. Add max_tokens to {'it' if one else 'them'}, or drop "
            "--max-cost. Nothing was sent.")


def price_table(endpoints: Sequence[EndpointConfig]) -> Callable[[str, str], Price | None]:
    """A model's price at an endpoint: the endpoint's own when its entry gives one, else the
    list-price table's (also for the one endpoint of a job without --endpoints, named "")."""
    by_name = {config.name: config for config in endpoints}

    def price_of(model: str, endpoint: str) -> Price | None:
        config = by_name.get(endpoint)
        return config.price_for(model) if config is not None else price(model)

    return price_of


def priced_everywhere(endpoints: Sequence[EndpointConfig]) -> Callable[[str], bool]:
    """Whether a model has a price at every endpoint that may send it."""
    def priced(model: str) -> bool:
        serving = [config for config in endpoints if config.serves(model)]
        if not serving:
            return price(model) is not None
        return all(config.price_for(model) is not None for config in serving)

    return priced
