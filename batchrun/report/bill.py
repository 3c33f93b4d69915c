"""A job's cost over all its runs, from the tokens its manifest says the server billed."""

from __future__ import annotations

from typing import Any

from batchrun.policy.prices import PRICES_AS_OF, Via, request_cost


def job_bill(billed: dict[str, dict[str, list[int]]]) -> dict[str, Any]:
    """`status`'s figures: tokens billed (cached input a part of input), their cost at list
    prices (None when no model billed has one) and the models without a price, named."""
    tokens = {"input": 0, "cached_input": 0, "output": 0}
    cost: float | None = None
    unpriced: set[str] = set()
    for via, models in billed.items():
        for model, (tokens_in, cached_in, tokens_out) in models.items():
            tokens["input"] += tokens_in
            tokens["cached_input"] += cached_in
            tokens["output"] += tokens_out
            usd = request_cost(model, tokens_in, tokens_out, cached_in, _via(via))
            if usd is None:
                unpriced.add(model)
            else:
                cost = (cost or 0.0) + usd
    if cost is None and not unpriced:
        cost = 0.0
    return {"tokens": tokens, "cost_usd": None if cost is None else round(cost, 6),
            "prices_as_of": PRICES_AS_OF, "unpriced_models": sorted(unpriced)}


def _via(name: str) -> Via:
    try:
        return Via(name)
    except ValueError:  # a manifest written by a later version: its path at sync price
        return Via.SYNC
