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


@pytest.mark.parametrize("model", ["o3-pro", "gpt-5-pro", "o3-deep-research",
                                   "gpt-4o-mini-realtime-preview", "gpt-4o-realtime-preview",
                                   "o4-mini-deep-research"])
def test_a_model_that_only_starts_like_a_priced_one_has_no_price(model: str) -> None:
    # Each bills several times its prefix's price (o3-pro $20/$80 against o3's $2/$8): priced
    # as the prefix, a --max-cost job on it spent up to ten times its cap.
    assert price(model) is None


def test_a_dated_snapshot_billed_at_its_own_price_is_not_priced_as_its_family() -> None:
    # gpt-4o's first snapshot bills $5 / $15, twice the family's $2.50 / $10 (no prompt cache).
    first = price("gpt-4o-2024-05-13")
    assert first is not None and (first.input, first.output) == (5.00, 15.00)
    assert first.cached_input == first.input
    assert price("gpt-4o-2024-11-20") == price("gpt-4o")
