"""List prices per model family, in one dated table.

US dollars per 1M tokens, from OpenAI's pricing page as of PRICES_AS_OF. Three prices per model:
input, cached input (prompt tokens the server served from its prompt cache, reported as
`usage.prompt_tokens_details.cached_tokens`, a part of `prompt_tokens`) and output. The Batch API
and flex processing (`service_tier: "flex"`) are billed at half of each ("Batch API rates, with
prompt-caching discounts on top"); `flex` says which models offer flex at all. A model missing
from the table has no price: callers name it, they never count it as free.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

PRICES_AS_OF = "2026-11-01"


class Via(enum.Enum):
    """How a request is sent, which decides its rate."""

    SYNC = "sync"
    BATCH = "batch"  # the Batch API: half price
    FLEX = "flex"  # service_tier "flex": Batch API rates


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per 1M tokens at list price on the per-minute path."""

    input: float
    cached_input: float
    output: float
    flex: bool = False  # the model takes service_tier "flex"

    def cost(self, tokens_in: int, tokens_out: int, cached_in: int = 0,
             via: Via = Via.SYNC) -> float:
        """What a request's tokens are billed. `cached_in` is the part of `tokens_in` the server
        served from its prompt cache (it is billed at the cached price, not twice)."""
        cached = max(0, min(cached_in, tokens_in))
        usd = ((tokens_in - cached) * self.input + cached * self.cached_input
               + tokens_out * self.output) / 1_000_000
        return usd if via is Via.SYNC else usd / 2


# Embeddings have no prompt cache: their cached price is their input price. gpt-3.5-turbo has
# none either.
PRICES: dict[str, Price] = {
    "gpt-5": Price(1.25, 0.125, 10.00, flex=True),
    "gpt-5-mini": Price(0.25, 0.025, 2.00, flex=True),
    "gpt-5-nano": Price(0.05, 0.005, 0.40, flex=True),
    "o3": Price(2.00, 0.50, 8.00, flex=True),
    "o4-mini": Price(1.10, 0.275, 4.40, flex=True),
    "gpt-4o-mini": Price(0.15, 0.075, 0.60),
    "gpt-4o": Price(2.50, 1.25, 10.00),
    "gpt-4.1": Price(2.00, 0.50, 8.00),
    "gpt-4.1-mini": Price(0.40, 0.10, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.025, 0.40),
    "gpt-3.5-turbo": Price(0.50, 0.50, 1.50),
    "text-embedding-3-small": Price(0.02, 0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.13, 0.0),
    "text-embedding-ada-002": Price(0.10, 0.10, 0.0),
    # Snapshots still served that bill other than their family (looked up before the family).
    "gpt-4o-2024-05-13": Price(5.00, 5.00, 15.00),
    "gpt-3.5-turbo-1106": Price(1.00, 1.00, 2.00),
}

_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


def undated(model: str) -> str:
    """A model's name without its snapshot date: gpt-5-mini-2025-08-07 is gpt-5-mini."""
    return _DATED.sub("", model.strip().lower())


@functools.cache
def price_family(model: str) -> str | None:
    """The table's row for a model name or a dated snapshot of one, or None. Only the date is
    taken off: a longer name (o3-pro, gpt-5-pro, gpt-4o-realtime-preview) is another model,
    often billed several times its prefix's price, so it has no price rather than a wrong one."""
    name = model.strip().lower()
    if name in PRICES:
        return name
    name = undated(name)
    return name if name in PRICES else None


def price(model: str) -> Price | None:
    """The list price of a model, or None for a model the table does not know."""
    fam = price_family(model)
    return PRICES[fam] if fam else None


def request_cost(model: str, tokens_in: int, tokens_out: int, cached_in: int = 0,
                 via: Via = Via.SYNC) -> float | None:
    """What one answered request is billed at list price, or None for a model with no price
    (callers name such a model, they never count it as free). `tokens_in` is the usage's
    prompt_tokens, `cached_in` its prompt_tokens_details.cached_tokens (a part of tokens_in)."""
    p = price(model)
    return None if p is None else p.cost(tokens_in, tokens_out, cached_in, via)
