"""The dated price table: cached input billed at its own price, Batch and flex at half, and a
model the table does not know has no price (never zero)."""

from __future__ import annotations

import pytest

from batchrun.policy.prices import Via, price, request_cost


def test_cached_prompt_tokens_are_billed_at_the_cached_price_not_twice() -> None:
    p = price("gpt-4o-mini")
    assert p is not None
    # 1,500 prompt tokens of which 1,408 came from the cache, 100 output: what OpenAI bills.
    expected = (92 * 0.15 + 1_408 * 0.075 + 100 * 0.60) / 1_000_000
    assert p.cost(1_500, 100, cached_in=1_408) == pytest.approx(expected)


def test_the_batch_api_and_flex_are_billed_at_half() -> None:
    p = price("gpt-5-mini-2025-08-07")
    assert p is not None and p.flex
    full = p.cost(1_000_000, 1_000_000, cached_in=500_000)
    assert p.cost(1_000_000, 1_000_000, cached_in=500_000, via=Via.BATCH) == pytest.approx(full / 2)
    assert p.cost(1_000_000, 1_000_000, cached_in=500_000, via=Via.FLEX) == pytest.approx(full / 2)


def test_the_longest_family_wins_and_an_unknown_model_has_no_price() -> None:
    mini, full = price("gpt-4o-mini-2024-07-18"), price("gpt-4o-2024-08-06")
    assert mini is not None and full is not None and mini.input < full.input
    assert price("llama-3-70b") is None
    assert price("gpt-4o-mini") is not None and not price("gpt-4o-mini").flex  # type: ignore[union-attr]


def test_request_cost_bills_cached_input_and_names_no_price_as_none() -> None:

    assert request_cost("gpt-4o-mini", 1_500, 100, cached_in=1_408, via=Via.BATCH) == (
        pytest.approx((92 * 0.15 + 1_408 * 0.075 + 100 * 0.60) / 2_000_000))
    assert request_cost("llama-3-70b", 1_500, 100) is None
