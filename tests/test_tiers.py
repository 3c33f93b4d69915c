from __future__ import annotations

import pytest

from batchrun.progress import describe_limits
from batchrun.tiers import Limits, family, preset, price


def test_dated_names_map_to_their_family() -> None:
    assert family("gpt-4o-mini-2024-07-18") == "gpt-4o-mini"
    assert family("gpt-4o-2024-08-06") == "gpt-4o"
    assert family("gpt-4.1-mini") == "gpt-4.1-mini"
    assert family("gpt-3.5-turbo-0125") == "gpt-3.5-turbo"
    assert family("llama-3-70b") is None


def test_published_tier1_numbers() -> None:
    assert preset("gpt-4o-mini", "tier1") == Limits(rpm=500, tpm=200_000, rpd=10_000,
                                                   tpd=2_000_000)
    assert preset("gpt-4o", "tier1") == Limits(rpm=500, tpm=30_000, tpd=90_000)
    assert preset("gpt-4o-mini", "tier5") == Limits(rpm=30_000, tpm=150_000_000,
                                                   tpd=15_000_000_000)
    assert preset("mystery-model", "tier1") is None


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
