"""Two counts in the books (issue 22, item 4): billed tokens and the server's rate-limit charge,
a daily budget that stops on the one the server's per-day 429 shows it counts, and the learned
accounting per key and model that `estimate` reads."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from batchrun.ledger import (
    BILLED,
    CHARGE,
    DailyBudget,
    Ledger,
    Scope,
    counted_by_server,
    key_fingerprint,
)

SCOPE = Scope("api.openai.com", key_fingerprint("sk-test"), "gpt-4o-mini")
DAY = dt.date(2026, 12, 7)
TPD_429 = ("Rate limit reached for gpt-4o-mini in organization org-x on tokens per day (TPD): "
           "Limit 2000, Used {used}, Requested 300. Please try again in 6m0s.")


def ledger_at(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "l.sqlite3", lambda: dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC))


@pytest.mark.parametrize(("tpd", "rpd"), [(0, 0), (0, 100), (10_000, 0), (10_000, 100)])
def test_the_ledger_keeps_billed_tokens_and_the_charge(tmp_path: Path, tpd: int,
                                                       rpd: int) -> None:
    ledger = ledger_at(tmp_path)
    budget = DailyBudget(ledger, SCOPE, tpd=tpd, rpd=rpd)
    for _ in range(3):
        day = budget.reserve(500)  # prompt estimate + max_tokens, as admission charged it
        assert day == DAY
        budget.settle(day, 500, 120)  # the answer's usage
    unsent = budget.reserve(500)
    assert unsent == DAY
    budget.unreserve(unsent, 500)  # never sent: neither count keeps it
    ledger.close()
    usage = Ledger(tmp_path / "l.sqlite3").usage(SCOPE, DAY)
    assert (usage.tokens, usage.charge, usage.requests) == (360, 1_500, 3)


def test_a_ledger_from_before_the_second_count_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE usage (host TEXT NOT NULL, key_fingerprint TEXT NOT NULL, model "
               "TEXT NOT NULL, day TEXT NOT NULL, tokens INTEGER NOT NULL DEFAULT 0, requests "
               "INTEGER NOT NULL DEFAULT 0, exhausted INTEGER NOT NULL DEFAULT 0, tpd INTEGER "
               "NOT NULL DEFAULT 0, rpd INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (host, "
               "key_fingerprint, model, day))")
    db.execute("INSERT INTO usage (host, key_fingerprint, model, day, tokens, requests) VALUES "
               "(?,?,?,?,?,?)", (SCOPE.host, SCOPE.key_fingerprint, SCOPE.model, "2026-12-07",
                                 700, 2))
    db.commit()
    db.close()
    ledger = ledger_at(tmp_path)
    assert ledger.usage(SCOPE) == ledger.usage(SCOPE, DAY)
    assert (ledger.usage(SCOPE).tokens, ledger.usage(SCOPE).charge) == (700, 0)
    DailyBudget(ledger, SCOPE, tpd=0, rpd=0).reserve(50)
    ledger.flush()
    assert ledger.usage(SCOPE).charge == 50
    ledger.close()


def test_which_count_a_per_day_429_shows() -> None:
    assert counted_by_server(TPD_429.format(used=1_990), billed=600, charge=2_000) == CHARGE
    assert counted_by_server(TPD_429.format(used=640), billed=600, charge=2_000) == BILLED
    # an RPD message says nothing of tokens; equal counts cannot tell
    rpd = "Rate limit reached ... on requests per day (RPD): Limit 200, Used 200, Requested 1."
    assert counted_by_server(rpd, 600, 2_000) is None
    assert counted_by_server(TPD_429.format(used=5), 100, 100) is None
    assert counted_by_server("", 600, 2_000) is None


def test_the_budget_stops_on_the_count_the_server_showed(tmp_path: Path) -> None:
    ledger = ledger_at(tmp_path)
    budget = DailyBudget(ledger, SCOPE, tpd=2_000, rpd=0)
    assert budget.counts == BILLED  # the default: billed tokens
    for _ in range(4):
        day = budget.reserve(500)
        assert day == DAY
        budget.settle(day, 500, 150)  # billed 600 in all, charged 2,000
    # The server's per-day 429 counts ~2,000 used: its charge, not what it billed.
    budget.exhaust(DAY, TPD_429.format(used=2_000))
    assert ledger.daily_counts(SCOPE) == CHARGE
    ledger.close()

    # The next day (and every process) keeps the budget on the charge.
    later = Ledger(tmp_path / "l.sqlite3",
                   lambda: dt.datetime(2026, 12, 8, 1, tzinfo=dt.UTC))
    budget = DailyBudget(later, SCOPE, tpd=2_000, rpd=0)
    assert budget.counts == CHARGE
    for _ in range(4):
        day = budget.reserve(500)
        assert day == dt.date(2026, 12, 8)
        budget.settle(day, 500, 150)
    assert budget.reserve(500) is None  # 2,000 charged: spent, though only 600 were billed
    assert budget.used_today() == (2_000, 4)
    assert "2,000 of 2,000 tokens used on 2026-12-08" in budget.describe()
    later.close()
    usage = Ledger(tmp_path / "l.sqlite3").usage(SCOPE, dt.date(2026, 12, 8))
    assert (usage.tokens, usage.charge) == (600, 2_000)


def test_learned_accounting_per_key_and_model(tmp_path: Path) -> None:
    ledger = ledger_at(tmp_path)
    other_model = Scope(SCOPE.host, SCOPE.key_fingerprint, "gpt-4o")
    assert ledger.accounting(SCOPE) is None
    DailyBudget(ledger, SCOPE, tpd=0, rpd=0).record_accounting(0.52)
    ledger.record_accounting(other_model, 1.1)
    ledger.record_accounting(SCOPE, float("nan"))  # not evidence: the last good one stays
    ledger.record_accounting(SCOPE, -1.0)
    ledger.close()
    again = Ledger(tmp_path / "l.sqlite3")
    assert again.accounting(SCOPE) == 0.52 and again.accounting(other_model) == 1.1
    assert again.accounting(Scope("localhost:8000", SCOPE.key_fingerprint, "gpt-4o")) is None
    again.close()
