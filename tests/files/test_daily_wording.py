"""What a stop at the API's per-day limit says batchrun used: its own count, not the limit.
(After a per-day 429 with a TPD known, the message said "2,000,000 of 2,000,000 tokens used"
when batchrun had used 2,500: the rest was spent elsewhere, or the server counts differently.)"""

from __future__ import annotations

from pathlib import Path

from batchrun.files.ledger import DailyBudget, Ledger, Scope

SCOPE = Scope("api.openai.com", "fp", "gpt-4o-mini")


def test_a_day_the_api_says_is_spent_names_what_batchrun_used(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite3")
    try:
        budget = DailyBudget(ledger, SCOPE, tpd=2_000_000, rpd=0)
        day = budget.reserve(2_500)
        assert day is not None
        budget.settle(day, 2_500, 2_500)
        budget.exhaust(day)
        said = budget.describe("Rate limit reached ... tokens per day (TPD): Limit 2000000")
    finally:
        ledger.close()
    assert "the API says its per-day limit is spent" in said
    assert "2,500 of 2,000,000 tokens" in said
    assert "2,000,000 of 2,000,000" not in said


def test_a_budget_batchrun_spent_itself_still_counts_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite3")
    try:
        budget = DailyBudget(ledger, SCOPE, tpd=1_000, rpd=0)
        day = budget.reserve(900)
        assert day is not None
        budget.settle(day, 900, 990)
        said = budget.describe()
    finally:
        ledger.close()
    assert said.startswith("Daily token budget reached for gpt-4o-mini: 990 of 1,000 tokens used")


def test_a_per_day_request_limit_of_the_api_is_not_called_a_token_budget(tmp_path: Path) -> None:
    # With --tpd given, the API's per-day *request* 429 was reported as "Daily token budget
    # reached", sending the user to raise the wrong limit.
    ledger = Ledger(tmp_path / "l.sqlite3")
    try:
        budget = DailyBudget(ledger, SCOPE, tpd=2_000_000, rpd=0)
        day = budget.reserve(2_500)
        assert day is not None
        budget.settle(day, 2_500, 2_500)
        budget.exhaust(day)
        said = budget.describe("Rate limit reached for gpt-4o-mini in organization org-x on "
                               "requests per day (RPD): Limit 200, Used 200, Requested 1.")
    finally:
        ledger.close()
    assert said.startswith("Daily request budget reached for gpt-4o-mini: the API says its "
                           "per-day request limit is spent")
    assert "batchrun used 1 request and 2,500 of 2,000,000 tokens" in said
    assert "token budget" not in said


def test_the_request_limit_is_still_named_when_the_stop_is_met_again(tmp_path: Path) -> None:
    # A resume the same day meets the spent day without the server's words: it said "Daily
    # token budget reached" although the API's per-day 429 had been about requests.
    ledger = Ledger(tmp_path / "l.sqlite3")
    try:
        budget = DailyBudget(ledger, SCOPE, tpd=100_000, rpd=0)
        day = budget.reserve(70)
        assert day is not None
        budget.settle(day, 70, 80)
        budget.exhaust(day, "… on requests per day (RPD): Limit 5, Used 5, Requested 1.")
    finally:
        ledger.close()
    ledger = Ledger(tmp_path / "l.sqlite3")
    try:
        said = DailyBudget(ledger, SCOPE, tpd=100_000, rpd=0).describe()
    finally:
        ledger.close()
    assert said.startswith("Daily request budget reached for gpt-4o-mini: the API says its "
                           "per-day request limit is spent")
