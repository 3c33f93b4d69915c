from __future__ import annotations

import pytest

from batchrun.display.progress import describe_limits
from batchrun.policy.prices import price
from batchrun.policy.tiers import (
    PRESETS,
    TIERS,
    Daily,
    Limits,
    batch_queue_tokens,
    daily,
    daily_source,
    family,
    preset,
)


def test_dated_names_map_to_their_family() -> None:
    assert family("gpt-4o-mini-2024-07-18") == "gpt-4o-mini"
    assert family("gpt-4o-2024-08-06") == "gpt-4o"
    assert family("gpt-4.1-mini") == "gpt-4.1-mini"
    assert family("gpt-3.5-turbo-0125") == "gpt-3.5-turbo"
    assert family("llama-3-70b") is None


def test_published_tier1_numbers() -> None:
    # No tier publishes a daily token limit: the guides' "TPD" is the Batch API's queue limit.
    assert preset("gpt-4o-mini", "tier1") == Limits(rpm=500, tpm=200_000, rpd=10_000,
                                                   batch_queue_tokens=2_000_000)
    assert preset("gpt-4o", "tier1") == Limits(rpm=500, tpm=30_000, batch_queue_tokens=90_000)
    assert preset("gpt-4o-mini", "tier5") == Limits(rpm=30_000, tpm=150_000_000,
                                                   batch_queue_tokens=15_000_000_000)
    assert preset("mystery-model", "tier1") is None


def test_no_preset_has_a_daily_token_limit_and_the_queue_goes_to_the_batch_api() -> None:
    for tier in TIERS:
        for model in PRESETS:
            limits = preset(model, tier)
            assert limits is not None and limits.tpd == 0, (model, tier)
    assert batch_queue_tokens("gpt-4o-2024-08-06", "tier1") == 90_000
    assert batch_queue_tokens("gpt-4o-mini", "tier1") == 2_000_000
    assert batch_queue_tokens("llama-3-70b", "tier1") == 0


def test_where_a_daily_limit_comes_from() -> None:
    mini = preset("gpt-4o-mini", "tier1")
    assert mini is not None
    assert daily_source(mini, "rpd") == "published RPD"
    assert daily_source(mini, "tpd") == "none published"
    mine = mini.override(tpd=2_000_000, rpd=None)
    assert daily_source(mine, "tpd") == "--tpd" and daily_source(mine, "rpd") == "published RPD"
    assert daily_source(mini.override(rpd=100), "rpd") == "--rpd"


def test_which_daily_limit_binds() -> None:
    lim = Limits(rpd=10_000).override(tpd=1_000_000)
    # 2.4M tokens in 2,000 requests: the token budget takes 3 days, the requests fit in one
    d = daily(lim, tokens=2_400_000, requests=2_000)
    assert (d.binds, d.limit, d.source, d.days) == ("tpd", 1_000_000, "--tpd", 3)
    # 30,000 small requests: the published RPD takes 3 days
    d = daily(lim, tokens=300_000, requests=30_000)
    assert (d.binds, d.source, d.days) == ("rpd", "published RPD", 3)
    # what is used today counts: 9,500 of 10,000 requests leave 500 for today
    assert daily(lim, 1_000, 1_000, used=(0, 9_500)).days == 2
    # ... so the requests bind, though the job fills more of the token budget
    assert daily(lim, 900_000, 1_000, used=(0, 9_500)).binds == "rpd"
    assert daily(Limits(), 10**12, 10**9) == Daily(None, 0, "none published", 1, 1)


def test_a_day_the_server_said_is_spent_starts_the_job_tomorrow() -> None:
    d = daily(Limits(), 1_000, 10, spent_on="2026-12-07")
    assert d.days == 2 and d.source == "the server's per-day 429 on 2026-12-07"
    # today's counts no longer matter; tomorrow is a fresh day of 10,000 requests
    d = daily(Limits(rpd=10_000), 1_000, 15_000, used=(0, 10), spent_on="2026-12-07")
    assert (d.binds, d.days) == ("rpd", 3)


def test_overrides_and_zero_means_unlimited() -> None:
    lim = Limits(rpm=500, tpm=200_000).override(rpm=0, tpm=None, tpd=5)
    assert lim == Limits(rpm=0, tpm=200_000, tpd=5)
    assert describe_limits(lim) == "unlimited RPM · 200K TPM · unlimited RPD · 5 TPD"
    with pytest.raises(ValueError, match="must be 0"):
        Limits().override(rpm=-1)


def test_prices() -> None:
    p = price("gpt-4o-mini-2024-07-18")
    assert p is not None and p.cost(1_000_000, 1_000_000) == pytest.approx(0.75)
    assert price("unknown-model") is None
